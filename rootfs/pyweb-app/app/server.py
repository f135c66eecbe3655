"""A small notes service: the python web app of images/pyweb.yaml (several modules, JSON, a template)."""

import http.server
import json
import sys

from notes.store import Store
from notes.views import render_index

STORE = Store()


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status: int, body: str, kind: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            self._send(200, render_index(STORE.all()), "text/html; charset=utf-8")
        elif self.path == "/notes":
            self._send(200, json.dumps(STORE.all(), sort_keys=True), "application/json")
        else:
            self._send(404, "not found\n", "text/plain")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            note = STORE.add(json.loads(self.rfile.read(length) or b"{}").get("text", ""))
        except ValueError as e:
            self._send(400, f"{e}\n", "text/plain")
            return
        self._send(201, json.dumps(note, sort_keys=True), "application/json")

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"notes service listening on port {port}", flush=True)
    server.serve_forever()
