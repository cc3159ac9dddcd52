"""HTTP: blob uploads and downloads for the client's large payloads (web endpoints come later)."""
