#!/usr/bin/env python3
"""End-to-end API benchmark: N panels created, executed and streamed concurrently.

Each client creates a council panel, opens its event stream, executes it and reads the
stream to panel.completed. The council strategy has three sequential LLM rounds (opinions,
peer review, chair), so with a 200 ms provider the critical path of one panel is ~600 ms plus
streaming; the ratio wall/critical shows what concurrency costs.

usage: api_panels.py URL KEY [N] [STRATEGY] [ROUNDS_ON_CRITICAL_PATH] [CALL_MS]
"""
import asyncio
import json
import sys
import time


async def http(host, port, method, path, key, body=None):
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(("%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                  "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % (method, path, host, key, len(data))).encode() + data)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload.strip() else None


async def one_panel(host, port, key, strategy, i, stats):
    t0 = time.monotonic()
    status, p = await http(host, port, "POST", "/v1/panels", key,
                           {"question": "Benchmark question %d: adopt the new protocol?" % i,
                            "strategy": strategy})
    assert status == 201, (status, p)
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(("GET /v1/panels/%s/events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                  "Accept: text/event-stream\r\n\r\n" % (p["id"], host, key)).encode())
    await writer.drain()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    status, _ = await http(host, port, "POST", "/v1/panels/%s/execute" % p["id"], key)
    assert status == 202, status
    t_exec = time.monotonic()
    final = None
    events = 0
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            events += 1
            kind = line[7:].strip()
            if kind in (b"panel.completed", b"panel.failed"):
                final = kind.decode()
                break
    writer.close()
    stats.append((final, time.monotonic() - t_exec, time.monotonic() - t0, events))


async def main():
    url, key = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    strategy = sys.argv[4] if len(sys.argv) > 4 else "council"
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    call_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 200
    host, port = url.split("//")[1].split(":")
    stats = []
    t0 = time.monotonic()
    sem = asyncio.Semaphore(1000)

    async def guarded(i):
        async with sem:
            await one_panel(host, int(port), key, strategy, i, stats)

    await asyncio.gather(*(guarded(i) for i in range(n)))
    wall = time.monotonic() - t0
    done = sum(1 for s in stats if s[0] == "panel.completed")
    per = sorted(s[1] for s in stats)
    critical = rounds * call_ms / 1000.0
    print(json.dumps({"panels": n, "completed": done, "failed": n - done, "wall_s": round(wall, 2),
                      "critical_path_s": critical, "wall_over_critical": round(wall / critical, 2),
                      "panel_s": {"p50": round(per[len(per) // 2], 2),
                                  "p99": round(per[int(0.99 * (len(per) - 1))], 2)},
                      "events_per_panel": round(sum(s[3] for s in stats) / max(1, n), 1)}))


asyncio.run(main())
