#!/usr/bin/env python3
"""A real HTTP server for appctl's sync tests: Python's own http.server (ThreadingHTTPServer and
SimpleHTTPRequestHandler, which answer If-Modified-Since with 304) serving a bundle directory on 127.0.0.1.

Usage: bundle-server.py DIR LOG. Prints the port it listens on, then serves until killed. Each response is logged
to LOG as one line: "<path> <status> <body bytes sent>". A file DIR/.misbehave, read at every request, makes
responses for paths under files/ go wrong the way real channels do:
  truncate  the full Content-Length is announced, half the body is sent, the connection is closed
  stall     the full Content-Length is announced, half the body is sent, then nothing for 120 s
  oversize  the body is followed by 1 MiB of extra bytes (Content-Length says so: a padded file)
"""
import http.server
import os
import sys
import time

directory, log_path = sys.argv[1], sys.argv[2]


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=directory, **kwargs)

    def log_message(self, format, *args):
        pass

    def record(self, status, sent):
        with open(log_path, "a") as log:
            log.write(f"{self.path} {status} {sent}\n")

    def do_GET(self):
        try:
            with open(os.path.join(directory, ".misbehave")) as f:
                mode = f.read().strip()
        except FileNotFoundError:
            mode = ""
        local = os.path.join(directory, self.path.lstrip("/"))
        if mode and self.path.startswith("/files/") and os.path.isfile(local):
            with open(local, "rb") as f:
                body = f.read()
            extra = b"\0" * (1 << 20) if mode == "oversize" else b""
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) + len(extra)))
            self.end_headers()
            if mode == "oversize":
                self.wfile.write(body + extra)
                self.record(200, len(body) + len(extra))
                return
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.record(200, len(body) // 2)
            if mode == "stall":
                time.sleep(120)
            self.close_connection = True
            return
        # The standard handler, with the bytes it sends counted.
        f = self.send_head()
        if f is None:
            self.record(304 if self.headers.get("If-Modified-Since") else 404, 0)
            return
        try:
            data = f.read()
            self.wfile.write(data)
            self.record(200, len(data))
        finally:
            f.close()


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
