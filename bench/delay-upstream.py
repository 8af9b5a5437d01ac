#!/usr/bin/python3
"""A keep-alive HTTP/1.1 upstream that answers every request after a fixed delay (standard library
only), for bench/fairness.sh: the upstream's latency, not its CPU, must be what limits the throughput
of a pool capped below the number of clients.

usage: bench/delay-upstream.py --port 18301 [--delay-ms 20]   (listens on 127.0.0.1 only)
Every request (any method, any path; bodies with Content-Length are read and dropped) gets
200 "ok\\n" after --delay-ms, except GET /__conns, answered at once with the number of connections
accepted so far (how many the proxy opened). Stops on SIGTERM/SIGINT."""
import argparse
import asyncio
import signal

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
ACCEPTED = 0


async def serve(reader, writer, delay):
    global ACCEPTED
    ACCEPTED += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            if head.startswith(b"GET /__conns "):
                body = b"%d\n" % ACCEPTED
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            await asyncio.sleep(delay)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(lambda r, w: serve(r, w, delay), "127.0.0.1", args.port,
                                        backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
