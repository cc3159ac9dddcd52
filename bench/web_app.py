"""The app bench_web.py serves twice: through kiln as a web endpoint, and with plain uvicorn
(a Starlette app: kiln's own environment has Starlette, so the peer needs nothing installed)."""

import modal

app = modal.App("kiln-bench-web")
image = modal.Image.debian_slim().pip_install("starlette")


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
