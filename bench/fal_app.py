"""The fal App bench_fal.py deploys: a greeting, the same work as its Modal peer function."""

import fal
from pydantic import BaseModel


class Input(BaseModel):
    name: str = "world"


class Greeter(fal.App, keep_alive=300, min_concurrency=1):
    requirements = ["six==1.16.0"]  # noqa: RUF012 (as fal users write it)

    @fal.endpoint("/")
    def greet(self, request: Input) -> dict[str, str]:
        return {"greeting": f"hello {request.name}"}
