"""A fal App with several endpoints: JSON, a server-sent-event stream, and a websocket."""

import fal
from fastapi import WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class Numbers(BaseModel):
    count: int = 3


class Routes(fal.App, keep_alive=60, max_multiplexing=4):
    requirements = ["six==1.16.0"]  # noqa: RUF012 (as fal users write it)
    app_name = "routes"

    @fal.endpoint("/square")
    def square(self, request: Numbers) -> dict:
        return {"squares": [n * n for n in range(request.count)]}

    @fal.endpoint("/stream")
    def stream(self, request: Numbers) -> StreamingResponse:
        def events():
            for n in range(request.count):
                yield f"data: {n}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @fal.endpoint("/echo", is_websocket=True)
    async def echo(self, websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())
