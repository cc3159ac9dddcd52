"""Every kind of web endpoint the client has (deployed, then called over HTTP by the tests)."""

import modal

image = modal.Image.debian_slim().pip_install("fastapi", "flask")
app = modal.App("kiln-test-web", image=image)


@app.function()
@modal.fastapi_endpoint()
def hello(name: str = "world"):
    return {"hello": name}


@app.function()
@modal.fastapi_endpoint(method="POST")
def add(body: dict):
    return {"sum": body["a"] + body["b"]}


@app.function()
@modal.asgi_app()
def stream():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    web = FastAPI()

    @web.get("/")
    def root():
        def chunks():
            for i in range(5):
                yield f"chunk {i}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    return web


@app.function()
@modal.wsgi_app()
def flask_app():
    from flask import Flask, request

    web = Flask(__name__)

    @web.route("/")
    def index():
        return f"flask says hi to {request.args.get('who', 'nobody')}"

    return web


@app.function()
@modal.asgi_app()
def echo_socket():
    from fastapi import FastAPI, WebSocket

    web = FastAPI()

    @web.websocket("/ws")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=1000)
                return
            await websocket.send_text(f"echo: {text}")

    return web


@app.function()
@modal.fastapi_endpoint(requires_proxy_auth=True)
def private():
    return {"secret": "only for token holders"}
