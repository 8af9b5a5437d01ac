#!/usr/bin/python3
"""A TLS server for faults, the upstream side of the TLS tests (standard library only).

    tls_faults.py --port P --control-port C --mode MODE [--cert FILE --key FILE]

Modes of the data port (one per process):
  serve          a real TLS server with the given certificate (which may be expired, for another name,
                 or from a CA nobody trusts): HTTP/1.1 keep-alive, every request answered 200 "ok" with
                 X-Upstream: faults; the body of a request (Content-Length) is read and counted;
                 /close-delimited?n=N answers N bytes (0..255 repeated) without Content-Length, then
                 close_notify and close (&notify=0: no close_notify, a truncated stream); close=1 in
                 the query: answered with Connection: close, then closed
  alert          reads the ClientHello and answers a fatal handshake_failure alert, then closes
  garbage        reads the ClientHello, answers a real ServerHello (made by the ssl module with the
                 given certificate) followed by bytes that are no TLS record, then closes
  plain-http     answers the ClientHello with a plain HTTP/1.1 400 response, then closes (a plain HTTP
                 server on a port configured for TLS)
Control port (not counted): GET /stats -> JSON {connections, hellos, handshakes, requests}:
connections accepted on the data port, ClientHellos read (first record byte 0x16), completed handshakes
(serve), HTTP requests answered (serve).
"""
import argparse
import http.server
import json
import socket
import socketserver
import ssl
import threading

ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"  # alert record: fatal (2), handshake_failure (40)
GARBAGE = b"\x00 this is not a TLS record \xff" * 8

STATS = {"connections": 0, "hellos": 0, "handshakes": 0, "requests": 0}
LOCK = threading.Lock()


def bump(key):
    with LOCK:
        STATS[key] += 1


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        d = sock.recv(n - len(out))
        if not d:
            raise EOFError("peer closed after %d of %d bytes" % (len(out), n))
        out += d
    return out


def read_record(sock):
    """One TLS record (header and body) as sent by the peer."""
    head = recv_exact(sock, 5)
    return head + recv_exact(sock, int.from_bytes(head[3:5], "big"))


def read_client_hello(sock):
    rec = read_record(sock)
    if rec[0] == 0x16:
        bump("hellos")
    return rec


def first_record(flight):
    return flight[:5 + int.from_bytes(flight[3:5], "big")]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        bump("connections")
        sock = self.request
        sock.settimeout(60)
        try:
            getattr(self, "mode_" + ARGS.mode.replace("-", "_"))(sock)
        except (OSError, EOFError, ssl.SSLError, ValueError):
            pass  # the peer gave up: what these faults are for

    def mode_alert(self, sock):
        read_client_hello(sock)
        sock.sendall(ALERT_HANDSHAKE_FAILURE)

    def mode_plain_http(self, sock):
        read_client_hello(sock)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
                     b"bad request")

    def mode_garbage(self, sock):
        hello = read_client_hello(sock)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = CONTEXT.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(hello)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        flight = outgoing.read()
        server_hello = first_record(flight)
        assert server_hello[0] == 0x16 and server_hello[5] == 0x02, "not a ServerHello: %r" % flight[:8]
        sock.sendall(server_hello + GARBAGE)

    def mode_serve(self, sock):
        tls = CONTEXT.wrap_socket(sock, server_side=True)
        bump("handshakes")
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = tls.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
                elif k.strip().lower() == b"connection" and v.strip().lower() == b"close":
                    close = True
            if b"close=1" in head.split(b"\r\n", 1)[0]:
                close = True
            while len(buf) < length:
                d = tls.recv(65536)
                if not d:
                    return
                buf += d
            buf = buf[length:]
            bump("requests")
            target = head.split(b"\r\n", 1)[0].split(b" ")[1] if b" " in head else b"/"
            if target.startswith(b"/close-delimited?"):
                q = dict(kv.split(b"=", 1) for kv in target.split(b"?", 1)[1].split(b"&"))
                self.close_delimited(tls, int(q[b"n"]), q.get(b"notify", b"1") == b"1")
                return
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream: faults\r\n"
                        + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
            if close:
                return


    def close_delimited(self, tls, n, notify):
        """200 without Content-Length: n bytes of 0..255 repeated, then close_notify (unless notify is
        false: a truncation, as an attacker cutting the TCP connection would make it) and close."""
        tls.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Upstream: faults\r\n\r\n")
        piece = bytes(range(256)) * 256
        left = n
        while left > 0:
            tls.sendall(piece[:min(left, len(piece))])
            left -= len(piece)
        if notify:
            tls.unwrap()
        else:
            tls.shutdown(socket.SHUT_RDWR)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Control(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with LOCK:
            body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    global ARGS, CONTEXT
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--mode", choices=("serve", "alert", "garbage", "plain-http"), required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    ARGS = p.parse_args()
    CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if ARGS.cert:
        CONTEXT.load_cert_chain(ARGS.cert, ARGS.key)
    data = Server(("127.0.0.1", ARGS.port), Handler)
    threading.Thread(target=data.serve_forever, daemon=True).start()
    control = http.server.ThreadingHTTPServer(("127.0.0.1", ARGS.control_port), Control)
    control.serve_forever()


if __name__ == "__main__":
    main()
