#!/usr/bin/env python3
"""Convex through the gateway vs straight to the deployment: calls/s, latency, gateway CPU.

The deployment is the tests' STAND-IN (ogelkit/plugins/convex/tests/standin.py, a Python
server speaking the sync protocol and HTTP API), not Convex: absolute figures say little
about hosted Convex; the difference between the two paths is the gateway's cost.

    .venv/bin/python bench/convex_bench.py            # 5 s per case
    .venv/bin/python bench/convex_bench.py --quick    # 2 s per case
    .venv/bin/python bench/convex_bench.py --no-layers

Cases: HTTP ``POST /api/query`` and WebSocket ``Action`` round trips (``misc:echo``), with 1
and 32 concurrent clients. The gateway runs as its own ``ogelkit run`` process with the
gatekeeper, ratelimit, cost, timeout and usage layers (limits raised so nothing is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ogelkit" / "plugins" / "convex" / "tests"))

from convex_support import LAYERS, convex_config, convex_gateway, standins  # noqa: E402

TIERS = '''
[tiers.free]
connections = 1000
ops_per_second = 1000000
burst = 100000
statement_timeout = "30s"
cost_ceiling = 1000000
'''
CONNECT = {"type": "Connect", "sessionId": "00000000-0000-4000-8000-00000000beef",
           "connectionCount": 0, "lastCloseReason": "InitialConnect"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def http_case(url: str, auth: str, clients: int, seconds: float) -> list[float]:
    lat: list[float] = []
    body = {"path": "misc:echo", "args": {"value": "x"}}
    stop = time.perf_counter() + seconds

    async def one() -> None:
        async with httpx.AsyncClient(timeout=30, headers={"authorization": auth}) as http:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await http.post(url + "/api/action", json=body)
                assert r.status_code == 200 and r.json()["status"] == "success", r.text
                lat.append(time.perf_counter() - t)

    await asyncio.gather(*[one() for _ in range(clients)])
    return lat


async def ws_case(url: str, token: str, token_type: str, clients: int,
                  seconds: float) -> list[float]:
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        async with websockets.connect(url.replace("http", "ws") + "/api/sync",
                                      max_queue=None) as ws:
            await ws.send(json.dumps(CONNECT))
            await ws.send(json.dumps({"type": "Authenticate", "tokenType": token_type,
                                      "value": token, "baseVersion": 0}))
            rid = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await ws.send(json.dumps({"type": "Action", "requestId": rid,
                                          "udfPath": "misc:echo", "args": [{"value": "x"}]}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg["type"] == "ActionResponse" and msg["requestId"] == rid:
                        assert msg["success"], msg
                        break
                lat.append(time.perf_counter() - t)
                rid += 1

    await asyncio.gather(*[one() for _ in range(clients)])
    return lat


def summary(lat: list[float], seconds: float) -> tuple[float, float, float]:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return len(lat) / seconds, statistics.median(lat) * 1e3, p99 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-layers", action="store_true")
    ns = parser.parse_args()
    seconds = 2.0 if ns.quick else ns.seconds
    with standins("bench") as (dep,), convex_gateway(convex_config(
            [dep], tiers=TIERS, layers="" if ns.no_layers else LAYERS)) as gw:
        token = gw.token("bench")
        pid = gw.proc.proc.pid
        print(f"{'case':<22}{'path':<10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'added p50':>11}{'gw CPU/call':>13}")
        for proto in ("http", "ws"):
            for clients in (1, 32):
                rows = {}
                for path in ("direct", "gateway"):
                    if proto == "http":
                        url, auth = ((dep.url, f"Convex {dep.admin_key}") if path == "direct"
                                     else (gw.url(), f"Bearer {token}"))
                        coro = http_case(url, auth, clients, seconds)
                    else:
                        args = ((dep.url, dep.admin_key, "Admin") if path == "direct"
                                else (gw.url(), token, "User"))
                        coro = ws_case(*args, clients, seconds)
                    cpu0 = cpu_seconds(pid)
                    lat = asyncio.run(coro)
                    cpu = cpu_seconds(pid) - cpu0
                    rows[path] = (*summary(lat, seconds), cpu / max(1, len(lat)))
                for path, (rate, p50, p99, cpu) in rows.items():
                    added = p50 - rows["direct"][1]
                    cpu_text = f"{cpu * 1e6:9.0f} us" if path == "gateway" else ""
                    print(f"{proto + ' x' + str(clients):<22}{path:<10}{rate:>10.0f}{p50:>9.2f}"
                          f"{p99:>9.2f}{added if path == 'gateway' else 0:>11.2f}{cpu_text:>13}")


if __name__ == "__main__":
    main()
