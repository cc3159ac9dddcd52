import fal
from pydantic import BaseModel


class Input(BaseModel):
    name: str = "world"


class Output(BaseModel):
    greeting: str
    setups: int


class Nap(BaseModel):
    seconds: float


class Hello(fal.App, keep_alive=60, request_timeout=8):
    requirements = ["six==1.16.0"]  # noqa: RUF012 (as fal users write it)

    def setup(self):
        import six  # from the app's requirements

        self.setups = getattr(self, "setups", 0) + 1
        print("setup done", six.__version__)

    @fal.endpoint("/")
    def hello(self, request: Input) -> Output:
        return Output(greeting=f"hello {request.name}", setups=self.setups)

    @fal.endpoint("/nap")
    def nap(self, request: Nap) -> dict:
        import time

        print("napping", request.seconds, flush=True)
        time.sleep(request.seconds)
        return {"slept": request.seconds}
