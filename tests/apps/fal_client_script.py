"""The official fal_client against an app on kiln: sync, queue (submit/status/result), subscribe."""

import sys

import fal_client

app = sys.argv[1]
print("run", fal_client.run(app, arguments={"name": "sync"}))
handle = fal_client.submit(app, arguments={"name": "queued"})
print("status", type(handle.status()).__name__)
print("get", handle.get())
print("subscribe", fal_client.subscribe(app, arguments={"name": "subscribed"}, with_logs=True))
