"""Images: Dockerfile-style steps executed in sandboxes, stored as content-addressed layers."""
