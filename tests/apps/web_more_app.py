"""More web endpoints (deployed, then called over HTTP and from a browser by the tests): docs pages,
class endpoints with `@modal.enter` state, uploads and streams, `web_server`, and failures."""

import modal

# The same first layers as web_app.py (cached), then the multipart parser file uploads need.
image = modal.Image.debian_slim().pip_install("fastapi", "flask").pip_install("python-multipart")
app = modal.App("kiln-test-web-more", image=image)


@app.function()
@modal.fastapi_endpoint(docs=True)
def documented(name: str = "world", times: int = 1):
    """Greets `name`, `times` times."""
    return {"greeting": " ".join([f"hello {name}"] * times)}


@app.cls()
class Greeter:
    @modal.enter()
    def load(self):
        import os

        self.greeting = f"hello from the container {os.environ['MODAL_TASK_ID']}, set in @enter"

    @modal.fastapi_endpoint(label="greeter-hi")
    def hi(self, who: str = "you"):
        return {"who": who, "greeting": self.greeting}


@app.function()
@modal.fastapi_endpoint()
def fails():
    raise ValueError("the secret reason this endpoint failed")


@app.function()
@modal.asgi_app()
def fails_raw():
    async def web(scope, receive, send):  # a bare ASGI app: nothing answers for it
        if scope["type"] == "http":
            raise RuntimeError("the secret reason the bare app failed")

    return web


# One container that takes many requests at once: /release (a second request) lets the streams of
# the first go on, which shows that their first parts arrived before the rest was made.
@app.function(max_containers=1)
@modal.concurrent(max_inputs=20)
@modal.asgi_app()
def files():
    import asyncio
    import hashlib

    from fastapi import FastAPI, Request, UploadFile
    from fastapi.responses import StreamingResponse

    web = FastAPI()
    gates: dict[str, asyncio.Event] = {}

    def gate(name: str) -> asyncio.Event:
        return gates.setdefault(name, asyncio.Event())

    @web.post("/upload")
    async def upload(file: UploadFile):
        digest, size = hashlib.sha256(), 0
        while chunk := await file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return {"name": file.filename, "size": size, "sha256": digest.hexdigest()}

    @web.post("/size")
    async def size(request: Request):
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
        return {"size": received}

    @web.post("/release/{name}")
    async def release(name: str):
        gate(name).set()
        return {"released": name}

    @web.get("/csv/{name}")
    async def csv(name: str, rows: int = 100_000):
        # 100,000 rows of 100 bytes: 10 MB, sent 1,000 rows at a time. The second half waits for
        # /release/<name>.
        async def lines():
            yield "row,payload\n"
            waited = False
            for start in range(0, rows, 1000):
                if start >= rows // 2 and not waited:
                    await gate(name).wait()
                    waited = True
                yield "".join(f"{row:09d},{'x' * 89}\n" for row in range(start, min(start + 1000, rows)))

        return StreamingResponse(lines(), media_type="text/csv")

    @web.get("/events/{name}")
    async def events(name: str):
        async def stream():
            yield "event: ready\ndata: first\n\n"
            await gate(name).wait()
            for n in range(3):
                yield f"event: tick\ndata: {n}\n\n"
            yield "event: done\ndata: bye\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return web


@app.function()
@modal.web_server(8000, startup_timeout=60)
def file_server():
    import pathlib
    import subprocess

    site = pathlib.Path("/tmp/site")
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<h1>served by python -m http.server</h1>\n")
    subprocess.Popen(["python", "-m", "http.server", "8000", "--directory", str(site)])


@app.function()
@modal.web_server(8001, startup_timeout=3)
def never_listens():
    print("this web server never opens its port")
