"""A local script calling `@fal.function`s, as fal's guide shows."""

import gc
import os
import sys

import fal

# grpcio's stream object can deadlock in its finalizer when the cycle collector reaches a stream
# the client left unread (fal raises a function's exception mid-stream): a client-side bug, seen
# here about once in ten runs. Without the cycle collector the finalizer runs when it is safe;
# the interpreter's own collection at exit still reaches it (seen once in a stack dump:
# "Garbage-collecting … grpc/_channel.py in __del__"), so the script ends without that teardown.
gc.disable()


@fal.function(requirements=["six==1.16.0"])
def add(a, b):
    import six

    print("adding with six", six.__version__)
    return {"sum": a + b}


@fal.function(requirements=["six==1.16.0"])
def fails():
    raise ValueError("no such thing")


@fal.function(requirements=["six==1.16.0"])
def remember(text):
    with open("/data/kiln-note.txt", "w") as f:
        f.write(text)


@fal.function(requirements=["six==1.16.0"])
def recall():
    with open("/data/kiln-note.txt") as f:
        return f.read()


if __name__ == "__main__":
    remember("kept in /data")
    print("recalled", recall())
    print("result", add(2, 40))
    try:
        fails()
    except Exception as exc:  # fal's client re-raises it as UserFunctionException
        print("raised", type(exc).__name__, exc)
    sys.stdout.flush()
    os._exit(0)
