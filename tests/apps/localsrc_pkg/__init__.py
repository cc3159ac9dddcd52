"""A package added with `Image.add_local_python_source` (and an app run with `modal run -m`)."""

VALUE = "from-localsrc-pkg"
