"""fal's HTTP over a websocket (`fal.apps.ws`) against an app on kiln."""

import json
import sys

import fal.apps

with fal.apps.ws(sys.argv[1], path="/square") as connection:
    for count in (2, 4):
        print("ws", json.loads(connection.run({"count": count})))
