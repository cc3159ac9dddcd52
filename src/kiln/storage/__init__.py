"""Embedded storage: content-addressed files on disk and one SQLite database for state."""
