#!/usr/bin/env python3
"""Hostile-connection probe for eddy's connection layer, loopback only.

Run by benches/slowloris.sh against a started server. Bounded: every phase
has a deadline, and the script exits when done (about 30 s).

1. Slow bodies: CONNS connections send a predict's headers
   (Content-Length: 100) and one byte of the body, then stall. While they
   are open: /healthz and /readyz 20 times each, and 50 predicts from
   another client, with status counts and latency (median, max).
2. Header drip: DRIP connections send a request head one byte a second;
   how long until the server closes each (median, max), or how many are
   still open after DRIP_LIMIT_S.
3. Oversized Content-Length (10 MB declared, nothing sent): status and
   time to the answer.

Usage: slowloris.py PUBLIC_PORT ADMIN_PORT [CONNS] [DRIP]
"""
import asyncio
import json
import statistics
import sys
import time
import urllib.request

HOST = "127.0.0.1"
# The drip phase gives up on a connection the server keeps this long.
DRIP_LIMIT_S = 20


async def request(port, raw, timeout=15.0):
    """Sends raw bytes on a new connection; returns (status, seconds)."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        status = int(line.split()[1]) if line else 0
    except (asyncio.TimeoutError, OSError, IndexError, ValueError):
        status = 0
    return status, time.perf_counter() - t0


def summary(results):
    statuses = {}
    for s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    times = [t * 1000 for _, t in results]
    return (f"statuses {dict(sorted(statuses.items()))}, "
            f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")


def gauge(admin_port, name):
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return sum(found) if found else None


async def slow_bodies(port, admin_port, conns):
    head = (b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    held = []
    t0 = time.perf_counter()
    for _ in range(conns):
        try:
            _, w = await asyncio.open_connection(HOST, port)
            w.write(head)
            held.append(w)
        except OSError as e:
            print(f"  connect failed after {len(held)}: {e}")
            break
    await asyncio.gather(*(w.drain() for w in held), return_exceptions=True)
    deadline = time.monotonic() + 15
    open_now = None
    while time.monotonic() < deadline:
        open_now = gauge(admin_port, 'eddy_http_connections{listener="public"}')
        if open_now is None:
            # A server without the gauge: give it a moment to read the heads.
            await asyncio.sleep(1)
            break
        if open_now >= len(held):
            break
        await asyncio.sleep(0.1)
    print(f"slow bodies: {len(held)} connections open in {time.perf_counter() - t0:.1f} s "
          f"(server counts {open_now if open_now is None else int(open_now)})")
    probe = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for path in (b"/healthz", b"/readyz"):
        results = [await request(port, probe % path) for _ in range(20)]
        print(f"  GET {path.decode()} x20: {summary(results)}")
    body = json.dumps({"features": {"x": 1.5, "tag": "a"}}).encode()
    predict = (b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    results = [await request(port, predict) for _ in range(50)]
    print(f"  predict x50 from another client: {summary(results)}")
    for w in held:
        w.close()


async def drip(port, conns):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64 + b"\r\n\r\n"

    async def one():
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            return None
        for b in head:
            if time.perf_counter() - t0 > DRIP_LIMIT_S:
                writer.close()
                return None
            try:
                writer.write(bytes([b]))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 1.0)
                if not data:
                    break
            except asyncio.TimeoutError:
                continue
            except OSError:
                break
        writer.close()
        return time.perf_counter() - t0

    results = await asyncio.gather(*(one() for _ in range(conns)))
    times = [t for t in results if t is not None]
    still = len(results) - len(times)
    closed = (f"median {statistics.median(times):.1f} s, max {max(times):.1f} s"
              if times else "-")
    print(f"header drip (1 byte/s): {len(times)} connections closed by the server after "
          f"{closed}; {still} still open after {DRIP_LIMIT_S} s "
          f"(a whole head would take {len(head)} s)")


async def main():
    port, admin_port = int(sys.argv[1]), int(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 1100
    drips = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    await slow_bodies(port, admin_port, conns)
    await drip(port, drips)
    big = b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    results = [await request(port, big) for _ in range(5)]
    print(f"declared Content-Length 10 MB x5: {summary(results)}")
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics", timeout=5) as r:
        lines = [l for l in r.read().decode().splitlines()
                 if l.startswith("eddy_http_refusals_total") and not l.endswith(" 0")]
    print("refusals counted:", ", ".join(l.split("{", 1)[1] for l in lines) or "none")


asyncio.run(main())
