"""Protocol frontends: each translates one client protocol into core calls."""
