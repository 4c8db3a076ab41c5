#!/usr/bin/env python3
"""Alternating side-by-side runs of several unibusd builds (and nats-server as
the reference), with the Go NATS client load generator of broker.py, and CPU
time from /proc/PID/task/*/schedstat (nanoseconds; broker.py's 10 ms ticks are
too coarse for short runs). Used to measure build-setting changes such as the
removal of the unsafe exclusivity flag (docs/benchmarks.md).

  python3 Tests/Benchmarks/compare_builds.py --rounds 7 --scale 1.0 --nats \
      before=/path/to/old/unibusd after=.build/release/unibusd

GONATS names the generator binary (built from Tests/InteropTests/peers/gonats
like broker.py builds it)."""
import argparse, json, os, subprocess, sys, time, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "InteropTests", "peers"))
from servers import free_port, wait_for
TICKS = os.sysconf("SC_CLK_TCK")
GEN = os.environ.get("GONATS", "/tmp/gonats")

def cpu(pid):
    # nanosecond CPU time of every thread (/proc/PID/task/*/schedstat), not 10 ms ticks
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--scale", type=float, default=0.5)
ap.add_argument("--nats", action="store_true")
ap.add_argument("--workloads", default="pub:128:2000000,pubsub:16:1000000,pubsub:128:1000000,pubsub:1024:500000,fanout:128:300000,reqrep:128:20000")
ap.add_argument("bins", nargs="+")
a = ap.parse_args()
servers, ports = {}, {}
if a.nats:
    p = free_port(); ports["nats-server"] = p
    servers["nats-server"] = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for spec in a.bins:
    name, path = spec.split("=", 1)
    p = free_port(); ports[name] = p
    servers[name] = subprocess.Popen([path, "run", "--listen", f"127.0.0.1:{p}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for p in ports.values(): wait_for(p)
wl = []
for w in a.workloads.split(","):
    m, s, n = w.split(":"); wl.append((m, int(s), max(1000, int(int(n) * a.scale))))
res = {}; names = list(servers)
try:
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for m, s, n in wl:
            for name in order:
                pid = servers[name].pid
                c0 = cpu(pid)
                out = subprocess.run([GEN, "bench", "-url", f"nats://127.0.0.1:{ports[name]}", "-mode", m, "-size", str(s), "-n", str(n)],
                                     check=True, capture_output=True, text=True, timeout=600).stdout
                spent = cpu(pid) - c0
                row = json.loads(out)
                recv = {"pub": 1, "pubsub": 1, "fanout": 5, "reqrep": 2}[m]
                row["cpu_us"] = spent / (n * recv) * 1e6
                res.setdefault((m, s, name), []).append(row)
finally:
    for pr in servers.values(): pr.terminate(); pr.wait()
ref = names[1] if a.nats else names[0]
tot = {nm: [0.0, 0] for nm in names}
for (m, s_, nm), rows in res.items():
    if m == "pub": continue
    n_ = [n for (mm, ss, n) in wl if mm == m and ss == s_][0] * {"pubsub": 1, "fanout": 5, "reqrep": 2}[m]
    for r in rows:
        tot[nm][0] += r["cpu_us"] * n_; tot[nm][1] += n_
print(f"rounds={a.rounds} scale={a.scale}; ratios vs {ref}; cpu_us = broker CPU us per delivered msg (per published msg for pub-only); medians")
hdr = f"{'workload':<16}" + "".join(f"{n:>16}" for n in names) + "".join(f"{n+'/'+ref:>22}" for n in names if n != ref)
print(hdr)
for m, s, n in wl:
    for key in (["msgs_per_sec", "p50_us", "p99_us", "cpu_us"] if m == "reqrep" else ["msgs_per_sec", "cpu_us"]):
        med = {nm: statistics.median(r[key] for r in res[(m, s, nm)]) for nm in names}
        line = f"{m+' '+str(s)+' '+key.replace('msgs_per_sec','msg/s'):<16}"[:24].ljust(24)
        line = f"{(m+' '+str(s)):<11}{key.replace('msgs_per_sec','msg/s'):<9}"
        line += "".join(f"{med[nm]:>16.3f}" if key != 'msgs_per_sec' else f"{med[nm]:>16.0f}" for nm in names)
        line += "".join(f"{med[nm]/med[ref]:>21.3f}x" for nm in names if nm != ref)
        print(line)
        if key == "msgs_per_sec":
            print(" " * 20 + "  spread " + "  ".join(f"{nm}:[{min(r[key] for r in res[(m,s,nm)]):.0f}..{max(r[key] for r in res[(m,s,nm)]):.0f}]" for nm in names))

agg = {nm: tot[nm][0] / max(tot[nm][1], 1) for nm in names}
print(f"{'CPU us/delivery (all with receivers)':<38}" + "".join(f"{agg[nm]:>10.4f}" for nm in names) + "   " + "  ".join(f"{nm}/{ref} {agg[nm]/agg[ref]:.3f}x" for nm in names if nm != ref))
