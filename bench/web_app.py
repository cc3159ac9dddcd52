"""The app bench_web.py serves four ways: through kiln as a web endpoint (`asgi_app`), through
kiln as a Modal Server (uvicorn in the container, proxied), that same container's port without
kiln's gateway, and plain uvicorn on the host (a Starlette app: kiln's own environment has
Starlette and uvicorn, so the host peer needs nothing installed)."""

import subprocess
import sys

import modal

app = modal.App("kiln-bench-web")
image = modal.Image.debian_slim().pip_install("starlette", "uvicorn")


def make_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request):
        return JSONResponse({"hello": "world"})

    return Starlette(routes=[Route("/", hello)])


@app.function(image=image, min_containers=1)
@modal.concurrent(max_inputs=32)
@modal.asgi_app()
def hello():
    return make_app()


@app.function(image=image, scaledown_window=2)
@modal.asgi_app()
def cold():
    """Scales to zero two seconds after its last request: every sample is a cold start."""
    return make_app()


@app.server(image=image, port=8000, min_containers=1, unauthenticated=True)
class Server:
    @modal.enter()
    def start(self):
        command = "import uvicorn, web_app; uvicorn.run(web_app.make_app(), host='0.0.0.0', port=8000, log_level='warning')"
        self.process = subprocess.Popen([sys.executable, "-c", command], cwd="/root")
