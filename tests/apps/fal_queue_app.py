"""A deployed fal App whose queue requests can take a while: one runner, one request at a time,
so later requests wait in kiln's queue behind a slow one."""

import time

import fal
from pydantic import BaseModel


class Input(BaseModel):
    name: str = "world"
    sleep: float = 0.0


class Queued(fal.App, keep_alive=60, max_concurrency=1, max_multiplexing=1):
    requirements = ["six==1.16.0"]  # noqa: RUF012 (as fal users write it; the hello app's environment)
    app_name = "queued"

    @fal.endpoint("/")
    def greet(self, request: Input) -> dict:
        time.sleep(request.sleep)
        return {"greeting": f"hello {request.name}"}
