#!/usr/bin/python3
"""A tiny HTTP/1.1 service for the bulkhead demo (standard library only; run with /usr/bin/python3).

    GET /             {"hello": "from the demo upstream", ...}
    GET /slow?ms=N    answers after N milliseconds (default 2000): shows timeouts
    GET /status/N     answers with status N: shows how 5xx are counted, retried and trip the breaker
    GET /headers      the request line and headers this service saw, as JSON: shows X-Forwarded-For, Via, ...
    POST /echo        the request body back, with its length
    anything else     404 JSON

Keep-alive: ThreadingHTTPServer with protocol_version HTTP/1.1, every reply has a Content-Length, so the proxy can
reuse its pooled connections. usage: demo-upstream.py [--host 127.0.0.1] [--port 8081] [--quiet]
"""
import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 120_000


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream/1"
    quiet = False

    def reply(self, status, obj, extra_headers=()):
        body = (json.dumps(obj, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/":
            self.reply(200, {"hello": "from the demo upstream", "port": self.server.server_address[1],
                             "time": time.time()})
        elif url.path == "/slow":
            try:
                ms = min(MAX_SLOW_MS, max(0, int(q.get("ms", ["2000"])[0])))
            except ValueError:
                return self.reply(400, {"error": "ms must be an integer"})
            time.sleep(ms / 1000.0)
            self.reply(200, {"slept_ms": ms})
        elif url.path.startswith("/status/"):
            try:
                code = int(url.path[len("/status/"):])
                if not 200 <= code <= 599:
                    raise ValueError
            except ValueError:
                return self.reply(400, {"error": "status must be 200..599"})
            extra = [("Retry-After", "1")] if code == 503 else []
            self.reply(code, {"status": code}, extra)
        elif url.path == "/headers":
            self.reply(200, {"method": self.command, "path": self.path, "version": self.request_version,
                             "client": "%s:%d" % self.client_address[:2],
                             "headers": [[k, v] for k, v in self.headers.items()]})
        else:
            self.reply(404, {"error": "not found", "path": url.path})

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n > 0 else b""
        if urlsplit(self.path).path == "/echo":
            self.reply(200, {"length": len(body), "body": body.decode("utf-8", "replace")})
        else:
            self.reply(404, {"error": "not found", "path": self.path})

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("demo-upstream: %s %s\n" % (self.address_string(), fmt % args))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines")
    a = ap.parse_args()
    Handler.quiet = a.quiet
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    sys.stderr.write("demo-upstream: listening on http://%s:%d\n" % (a.host, a.port))
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
