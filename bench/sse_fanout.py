#!/usr/bin/env python3
"""SSE fan-out benchmark driver: N subscribers on one running panel.

Starts build/bench/bench_sse_fanout (the subscribers, in C so the client stays cheaper than
the server), executes the panel once every stream is open, and adds the server's RSS and CPU
time to the client's report. The fan-out delay of a delivery is its arrival minus the first
arrival of the same event: the first subscriber is served as soon as the event is published.

usage: sse_fanout.py URL KEY PANEL_ID SERVER_PID [N] [BUILD_DIR]
"""
import json
import os
import subprocess
import sys
import time
import urllib.request


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0


def main():
    url, key, panel, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    n = sys.argv[5] if len(sys.argv) > 5 else "5000"
    build = sys.argv[6] if len(sys.argv) > 6 else "build"
    port = url.rsplit(":", 1)[1]
    idle = rss_mib(pid)
    client = subprocess.Popen([os.path.join(build, "bench", "bench_sse_fanout"), port,
                               "/v1/panels/%s/events" % panel, key, n],
                              stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "ready"
    connected = rss_mib(pid)
    cpu0 = cpu_s(pid)
    t0 = time.monotonic()
    req = urllib.request.Request("%s/v1/panels/%s/execute" % (url, panel), method="POST",
                                 headers={"Authorization": "Bearer " + key})
    urllib.request.urlopen(req).read()
    report = json.loads(client.stdout.readline())
    client.wait()
    report["panel_wall_s"] = round(time.monotonic() - t0, 2)
    report["server_cpu_s"] = round(cpu_s(pid) - cpu0, 2)
    report["server_rss_mib"] = {"idle": idle, "with_subscribers": connected}
    print(json.dumps(report))


main()
