#!/usr/bin/env python3
"""SSE fan-out benchmark: N subscribers on one running panel.

Opens N concurrent event streams (asyncio, raw sockets), then executes the panel. For every
durable event it records when each subscriber received it; the fan-out delay of a delivery is
its arrival minus the earliest arrival of the same event (the first subscriber is served as
soon as the event is published). Prints p50/p99/max of that delay and the server's RSS.

usage: sse_fanout.py URL KEY PANEL_ID SERVER_PID [N]
"""
import asyncio
import json
import sys
import time
import os
import re
import urllib.request

ID_RE = re.compile(rb"(?:^|\n)id: (\d+)\nevent: ([a-z._]+)\n")


async def subscriber(host, port, path, key, arrivals, ready):
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(("GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                  "Accept: text/event-stream\r\n\r\n" % (path, host, key)).encode())
    await writer.drain()
    status = await reader.readline()
    assert b"200" in status, status
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    ready.append(1)
    # Scan raw chunks instead of parsing line by line: the client must stay cheaper than the
    # server it measures (thousands of subscribers, each getting every token delta).
    tail = b""
    done = False
    while not done:
        chunk = await reader.read(1 << 16)
        if not chunk:
            break
        now = time.monotonic()
        data = tail + chunk
        cut = data.rfind(b"\n\n") + 2  # frames end with a blank line; keep the rest for later
        for m in ID_RE.finditer(data, 0, cut):
            arrivals.setdefault(int(m.group(1)), []).append(now)
            if m.group(2) in (b"panel.completed", b"panel.failed"):
                done = True
        tail = data[cut:]
    writer.close()


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main():
    url, key, panel, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
    host, port = url.split("//")[1].split(":")
    port = int(port)
    path = "/v1/panels/%s/events" % panel
    arrivals, ready = {}, []
    rss_before = rss_kib(pid)
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(subscriber(host, port, path, key, arrivals, ready)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    while len(ready) < n:
        await asyncio.sleep(0.05)
    rss_connected = rss_kib(pid)
    req = urllib.request.Request("%s/v1/panels/%s/execute" % (url, panel), method="POST",
                                 headers={"Authorization": "Bearer " + key})
    t0 = time.monotonic()
    cpu0, client0 = cpu_s(pid), time.process_time()
    await asyncio.get_running_loop().run_in_executor(None, lambda: urllib.request.urlopen(req).read())
    await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    server_cpu, client_cpu = cpu_s(pid) - cpu0, time.process_time() - client0
    delays = []
    complete = 0
    for seq, times in arrivals.items():
        first = min(times)
        delays += [t - first for t in times]
        complete += len(times) == n
    delays.sort()
    pct = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] * 1000
    print(json.dumps({
        "subscribers": n, "events": len(arrivals), "events_seen_by_all": complete,
        "deliveries": len(delays), "fanout_delay_ms": {"p50": round(pct(0.50), 2),
        "p99": round(pct(0.99), 2), "max": round(delays[-1] * 1000, 2)},
        "server_rss_mib": {"idle": round(rss_before / 1024, 1),
                           "with_subscribers": round(rss_connected / 1024, 1)},
        "panel_wall_s": round(wall, 2), "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": round(client_cpu, 2)}))


asyncio.run(main())
