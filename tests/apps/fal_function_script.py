"""A local script calling `@fal.function`s, as fal's guide shows."""

import sys

import fal


@fal.function(requirements=["six==1.16.0"])
def add(a, b):
    import six

    print("adding with six", six.__version__)
    return {"sum": a + b}


@fal.function(requirements=["six==1.16.0"])
def fails():
    raise ValueError("no such thing")


if __name__ == "__main__":
    print("result", add(2, 40))
    try:
        fails()
    except Exception as exc:  # fal's client re-raises it as UserFunctionException
        print("raised", type(exc).__name__, exc)
    sys.stdout.flush()
