"""Scale-down goes through the kill switch, so a class's @exit runs."""

import time

import modal

app = modal.App("kiln-test-scaledown-exit")


@app.cls(image=modal.Image.debian_slim(), scaledown_window=2)
class Worker:
    @modal.enter()
    def start(self) -> None:
        print("KILN-ENTER-RAN", flush=True)

    @modal.method()
    def work(self, x: int) -> int:
        return x + 1

    @modal.exit()
    def stop(self) -> None:
        print("KILN-EXIT-RAN", flush=True)


@app.local_entrypoint()
def main() -> None:
    assert Worker().work.remote(1) == 2
    time.sleep(6)  # past the scale-down window: the idle container gets the kill switch
    print("KILN-SLEEP-DONE", flush=True)
