"""Another app that shares a Queue and a Dict with storage_app.py by name."""

import time

import modal

app = modal.App("kiln-test-storage-producer")
image = modal.Image.debian_slim()


@app.function(image=image)
def produce(queue_name: str, dict_name: str) -> None:
    q = modal.Queue.from_name(queue_name).hydrate()
    modal.Dict.from_name(dict_name)["producer"] = "kiln-test-storage-producer"
    q.put(time.time())  # the consumer measures how long the item took to reach it


@app.local_entrypoint()
def main(queue_name: str, dict_name: str) -> None:
    produce.remote(queue_name, dict_name)
    print("produced")
