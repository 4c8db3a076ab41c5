#!/usr/bin/env python3
"""The broker side by side with nats-server, driven by the same client.

    python3 Tests/Benchmarks/broker.py [--rounds 3] [--scale 1.0]

Builds unibusd (release) and the Go load generator (the Go NATS client from
Debian's sources, Tests/InteropTests/peers/gonats), starts nats-server and
unibusd on free loopback ports with the same limits, and runs each workload
against both in alternating rounds. Reports medians and the ratio
unibusd / nats-server (for latency and memory, lower is better; the ratio is
still unibusd / nats-server). Broker CPU seconds per delivered message come
from /proc/PID/stat, peak RSS from VmHWM in /proc/PID/status.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "Tests", "InteropTests", "peers"))
from servers import free_port, wait_for  # noqa: E402
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")






def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build():
    subprocess.run(["swift", "build", "-c", "release", "--product", "unibusd"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    binary = os.path.join(ROOT, ".build", "release", "unibusd")
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off",
               GOCACHE=os.environ.get("GOCACHE", "/tmp/unibus-gocache"))
    generator = os.path.join(HERE, ".build", "gonats")
    os.makedirs(os.path.dirname(generator), exist_ok=True)
    subprocess.run(["go", "build", "-o", generator, "."], cwd=os.path.join(ROOT, "Tests/InteropTests/peers/gonats"),
                   env=env, check=True)
    return binary, generator


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies message counts")
    args = parser.parse_args()
    binary, generator = build()

    servers = {}
    nats_port, our_port = free_port(), free_port()
    servers["nats-server"] = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers["unibusd"] = subprocess.Popen([binary, "run", "--listen", f"127.0.0.1:{our_port}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports = {"nats-server": nats_port, "unibusd": our_port}
    for port in ports.values():
        wait_for(port)

    def n(count):
        return max(1000, int(count * args.scale))

    workloads = [
        ("pub", 16, n(2_000_000)), ("pub", 128, n(2_000_000)), ("pub", 1024, n(1_000_000)), ("pub", 16384, n(100_000)),
        ("pubsub", 16, n(1_000_000)), ("pubsub", 128, n(1_000_000)), ("pubsub", 1024, n(500_000)), ("pubsub", 16384, n(50_000)),
        ("fanout", 128, n(300_000)),
        ("reqrep", 128, n(20_000)),
    ]
    results = {}
    delivered = {name: 0 for name in servers}
    cpu = {name: 0.0 for name in servers}
    try:
        for _ in range(args.rounds):
            for mode, size, count in workloads:
                for name in ("nats-server", "unibusd"):
                    pid = servers[name].pid
                    before = cpu_seconds(pid)
                    output = subprocess.run([generator, "bench", "-url", f"nats://127.0.0.1:{ports[name]}",
                                             "-mode", mode, "-size", str(size), "-n", str(count)],
                                            check=True, capture_output=True, text=True, timeout=600).stdout
                    spent = cpu_seconds(pid) - before
                    row = json.loads(output)
                    results.setdefault((mode, size, name), []).append(row)
                    receivers = {"pub": 0, "pubsub": 1, "fanout": 5, "reqrep": 2}[mode]
                    if receivers:
                        delivered[name] += count * receivers
                        cpu[name] += spent
        rss = {name: peak_rss_mib(process.pid) for name, process in servers.items()}
    finally:
        for process in servers.values():
            process.terminate()
            process.wait()

    def median(values):
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    print(f"{'workload':<22} {'nats-server':>14} {'unibusd':>14} {'ratio':>7}")
    for mode, size, count in workloads:
        label = {"pub": "publish only", "pubsub": "1 pub / 1 sub", "fanout": "fan-out 1->5", "reqrep": "request/reply"}[mode]
        ref = results[(mode, size, "nats-server")]
        ours = results[(mode, size, "unibusd")]
        if mode == "reqrep":
            for key, title in (("msgs_per_sec", "req/s"), ("p50_us", "p50 us"), ("p99_us", "p99 us")):
                a, b = median([r[key] for r in ref]), median([r[key] for r in ours])
                print(f"{label + ' ' + str(size) + ' B ' + title:<22} {a:>14.1f} {b:>14.1f} {b / a:>6.2f}x")
        else:
            a, b = median([r["msgs_per_sec"] for r in ref]), median([r["msgs_per_sec"] for r in ours])
            print(f"{label + ' ' + str(size) + ' B':<22} {a:>14.0f} {b:>14.0f} {b / a:>6.2f}x   msgs/s")
    per_message = {name: cpu[name] / max(delivered[name], 1) * 1e6 for name in servers}
    print(f"{'CPU us per delivery':<22} {per_message['nats-server']:>14.3f} {per_message['unibusd']:>14.3f} "
          f"{per_message['unibusd'] / per_message['nats-server']:>6.2f}x")
    print(f"{'peak RSS MiB':<22} {rss['nats-server']:>14.1f} {rss['unibusd']:>14.1f} {rss['unibusd'] / rss['nats-server']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
