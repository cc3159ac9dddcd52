"""A package run with `modal run -m kiln_pkg.entry`."""
