"""fal_client's queue calls across a kiln restart.

`submit <app>` submits requests (one fetched at once, one slow and in progress, two waiting behind
it, one of them with a large body) and prints their IDs as JSON; `collect <app> <json>` waits for
each request ID of the JSON and prints what it returned.
"""

import json
import sys
import time

import fal_client

mode, app = sys.argv[1], sys.argv[2]
if mode == "submit":
    fetched = fal_client.submit(app, arguments={"name": "fetched"})
    print("fetched", fetched.get())
    slow = fal_client.submit(app, arguments={"name": "slow", "sleep": 10})
    while not isinstance(slow.status(), fal_client.InProgress):
        time.sleep(0.1)
    big = fal_client.submit(app, arguments={"name": "b" * 300_000})
    last = fal_client.submit(app, arguments={"name": "last"})
    print("positions", big.status().position, last.status().position)  # behind the slow one
    ids = {"fetched": fetched.request_id, "slow": slow.request_id, "big": big.request_id,
           "last": last.request_id}  # fmt: skip
    print("ids", json.dumps(ids), flush=True)
else:
    for name, request_id in json.loads(sys.argv[3]).items():
        greeting = fal_client.result(app, request_id)["greeting"]
        status = fal_client.status(app, request_id)
        shown = greeting if len(greeting) < 100 else f"{greeting[:7]}… {len(greeting)}"
        print(name, type(status).__name__, shown)
