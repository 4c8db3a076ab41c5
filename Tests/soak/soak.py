#!/usr/bin/env python3
"""Memory soak: connect/close churn, pub/sub, request/reply and failed
authentications against unibusd and nats-server side by side (same load, same
run), RSS sampled every few seconds and printed next to each other.

    Tests/soak/soak.py UNIBUSD [--minutes 10] [--smoke]

With ten minutes (the default) RSS after warm-up must stay flat: no more than
5 % growth between minute 2 and the end. --smoke runs 20 s per server and
only checks that both still serve (CI). Exit 1 on failure.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "InteropTests", "peers"))
from servers import free_port, wait_for  # noqa: E402

try:
    import nkeys
except ImportError as error:
    sys.stderr.write(f"soak peer missing: {error}; pip install nkeys\n")
    sys.exit(3)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


def read_line(sock):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def connect(port, pair, good=True):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    info = json.loads(read_line(sock)[5:].strip())
    signature = pair.sign(info["nonce"].encode()) if good else b"\0" * 64
    connect_args = {"verbose": False, "pedantic": False, "nkey": pair.public_key.decode(),
                    "sig": base64.urlsafe_b64encode(signature).decode().rstrip("="), "protocol": 1}
    sock.sendall(b"CONNECT " + json.dumps(connect_args).encode() + b"\r\nPING\r\n")
    return sock


def expect(sock, marker):
    data = b""
    deadline = time.time() + 5
    while marker not in data and time.time() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return marker in data


def load(port, pair, stop, counts):
    """One worker: churn, pub/sub, request/reply, failed auth, in turn."""
    round_ = 0
    while not stop.is_set():
        round_ += 1
        try:
            sock = connect(port, pair, good=round_ % 4 != 0)
            if round_ % 4 == 0:
                sock.recv(4096)   # -ERR 'Authorization Violation', then closed
                counts["failed_auth"] += 1
            else:
                inbox = f"_INBOX.{pair.public_key.decode()}.{round_}"
                sock.sendall(f"SUB soak.{round_ % 50} 1\r\nSUB {inbox} 2\r\nSUB svc.{round_ % 7} q 3\r\n".encode()
                             + f"PUB soak.{round_ % 50} 5\r\nhello\r\nPUB svc.{round_ % 7} {inbox} 3\r\nask\r\nPING\r\n".encode())
                if expect(sock, b"PONG\r\n"):
                    counts["ok"] += 1
            sock.close()
        except OSError:
            counts["errors"] += 1


def soak(name, port, pid, seconds, pair, samples):
    stop = threading.Event()
    counts = {"ok": 0, "failed_auth": 0, "errors": 0}
    workers = [threading.Thread(target=load, args=(port, pair, stop, counts), daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    started = time.time()
    while time.time() - started < seconds:
        time.sleep(min(5, seconds / 4))
        samples.append((name, time.time() - started, rss_kib(pid)))
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("unibusd")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    seconds = 20 if args.smoke else args.minutes * 60
    nats_server = shutil.which("nats-server")
    if not nats_server:
        sys.stderr.write("soak: nats-server missing (apt-get install nats-server)\n")
        return 3
    seed = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    user = seed.public_key.decode()
    failures = []
    samples = []
    with tempfile.TemporaryDirectory() as work:
        allowlist = os.path.join(work, "users.json")
        with open(allowlist, "w") as file:
            json.dump({"users": [{"nkey": user, "permissions": {}}]}, file)
        config = os.path.join(work, "nats.conf")
        with open(config, "w") as file:
            file.write("authorization { users = [ { nkey: %s } ] }\n" % user)
        for name in ("unibusd", "nats-server"):
            port = free_port()
            command = ([args.unibusd, "run", "--listen", f"127.0.0.1:{port}", "--allowlist", allowlist] if name == "unibusd"
                       else [nats_server, "-a", "127.0.0.1", "-p", str(port), "-c", config])
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(port)
                counts = soak(name, port, process.pid, seconds, seed, samples)
                print(f"{name}: {counts}")
                try:
                    probe = connect(port, seed)
                    serving = expect(probe, b"PONG\r\n")
                    probe.close()
                except OSError:
                    serving = False
                if not serving:
                    failures.append(f"{name} stopped serving")
                if counts["ok"] == 0:
                    failures.append(f"{name}: no successful round")
            finally:
                process.terminate()
                process.wait(timeout=10)
    print(f"{'t (s)':>8} {'unibusd RSS KiB':>16} {'nats-server RSS KiB':>20}")
    ours = [s for s in samples if s[0] == "unibusd"]
    theirs = [s for s in samples if s[0] == "nats-server"]
    for index in range(max(len(ours), len(theirs))):
        t = ours[index][1] if index < len(ours) else theirs[index][1]
        a = ours[index][2] if index < len(ours) else ""
        b = theirs[index][2] if index < len(theirs) else ""
        print(f"{t:8.0f} {a:>16} {b:>20}")
    if not args.smoke and seconds >= 240:
        after_warmup = [rss for _, t, rss in ours if t >= 120]
        if after_warmup:
            growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0]
            print(f"unibusd RSS growth from minute 2 to the end: {growth * 100:.1f} %")
            if growth > 0.05:
                failures.append(f"unibusd RSS grew {growth * 100:.1f} % after warm-up (limit 5 %)")
    for failure in failures:
        print("FAIL " + failure)
    print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
