"""kiln's quick-start app: an ordinary Modal app, unchanged.

    kiln run examples/quickstart.py
"""

import modal

app = modal.App("kiln-quickstart")
image = modal.Image.debian_slim().pip_install("six")


@app.function(image=image)
def square(x: int) -> int:
    return x * x


@app.function(image=image)
def platform_info() -> str:
    import platform

    import six  # installed by the image's pip_install step

    print(f"hello from inside the container (six {six.__version__})")
    return f"{platform.system()} {platform.python_version()}"


@app.function(image=image)
def countdown(n: int):
    for i in range(n, 0, -1):
        yield i


@app.local_entrypoint()
def main(n: int = 1000):
    print("remote:", platform_info.remote())
    print("square(7) =", square.remote(7))
    total = sum(square.map(range(n)))
    print(f"sum of squares below {n} = {total} (expected {sum(i * i for i in range(n))})")
    print("countdown:", list(countdown.remote_gen(5)))
