"""Modal Servers (`@app.server`): the user's own HTTP server in each container, behind a URL."""

import subprocess
import sys

import modal

app = modal.App("kiln-test-server")

# A plain HTTP server (the standard library's): it answers which container it runs in, echoes
# request bodies with their size, and streams a long response in pieces.
SERVER = r"""
import hashlib, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body, kind="application/json"):
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", os.environ["MODAL_TASK_ID"])
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for n in range(5):
                line = f"line {n}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/teapot":
            self.reply(418, b"short and stout", "text/plain")
            return
        body = {
            "task": os.environ["MODAL_TASK_ID"],
            "path": self.path,
            "host": self.headers.get("host"),
            "modal_key": self.headers.get("modal-key"),
        }
        self.reply(200, json.dumps(body).encode())

    def do_POST(self):
        data = self.rfile.read(int(self.headers["content-length"]))
        body = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.reply(200, json.dumps(body).encode())

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


def start(port: int) -> subprocess.Popen:
    # Returns at once, as Modal's own example does: kiln routes requests once the port answers.
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port)])


@app.server(port=8000, min_containers=2, unauthenticated=True)
class Open:
    @modal.enter()
    def start(self):
        self.process = start(8000)

    @modal.exit()
    def stop(self):
        self.process.terminate()


@app.server(port=8001, max_containers=1)
class Guarded:
    @modal.enter()
    def start(self):
        self.process = start(8001)


@app.server(port=8002, startup_timeout=3, unauthenticated=True, max_containers=1)
class Silent:
    @modal.enter()
    def start(self):
        print("this server never opens its port")


# A websocket echo server, with aiohttp (the client's runtime dependencies bring it along).
SOCKETS = r"""
import os, sys
from aiohttp import web

async def echo(request):
    socket = web.WebSocketResponse(protocols=("echo.v1",))
    await socket.prepare(request)
    async for message in socket:
        if message.type == web.WSMsgType.TEXT:
            await socket.send_str(f"{os.environ['MODAL_TASK_ID']}: {message.data}")
        elif message.type == web.WSMsgType.BINARY:
            await socket.send_bytes(message.data[::-1])
    return socket

app = web.Application()
app.router.add_get("/ws", echo)
web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]), print=None)
"""


@app.server(port=8003, unauthenticated=True, max_containers=1)
class Sockets:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen([sys.executable, "-c", SOCKETS, "8003"])


@app.server(port=8004, min_containers=2)
@modal.sessioned()
class Sticky:
    @modal.enter()
    def start(self):
        self.process = start(8004)
