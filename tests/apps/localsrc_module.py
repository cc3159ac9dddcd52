"""A single module added with `Image.add_local_python_source`."""

VALUE = "from-localsrc-module"
