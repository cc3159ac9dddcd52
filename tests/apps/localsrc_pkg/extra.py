"""A sibling module: in containers only when the package's source is included."""
