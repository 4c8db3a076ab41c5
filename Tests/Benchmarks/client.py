#!/usr/bin/env python3
"""The client library's frame path and two encrypted peers through a node.

    python3 Tests/Benchmarks/client.py [--seconds 2] [--rounds 3] [--count 20000] [--rate 2000]

1. Frames per second per core (unibus-client-bench frames): RoomKeyring.seal
   (send: inner frame, Megolm encrypt + Ed25519 sign, envelope) and
   RoomKeyring.open (receive: envelope, membership, replay check, Ed25519
   verify + MAC + decrypt, window) at 128 B and 1 KiB, interleaved with
   libsodium's raw Ed25519 sign/verify over as many bytes as the frame's
   signature covers, and Megolm encryption alone of an inner frame of the same
   size (what the frame layer adds on top of Megolm).
   Targets: open >= 0.85x raw verify, seal >= 0.85x raw sign.
2. End to end through a local node (release unibusd on loopback, membership
   from a fresh data directory, two users added through the control plane):
   encrypted 128 B messages per second between two UnibusClients, one-way
   latency p50/p99 at a paced rate, and the same two figures for plain NATS
   publishes of 128 B through the same node and client library (the
   reference: what frame cryptography costs end to end).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "Tests", "InteropTests", "peers"))
from servers import free_port, wait_for  # noqa: E402


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def build():
    subprocess.run(["swift", "build", "-c", "release", "--product", "unibus-client-bench"], cwd=HERE, check=True,
                   stdout=subprocess.DEVNULL)
    for product in ("unibusd", "unibus"):
        subprocess.run(["swift", "build", "-c", "release", "--product", product], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return (os.path.join(HERE, ".build", "release", "unibus-client-bench"),
            os.path.join(ROOT, ".build", "release", "unibusd"), os.path.join(ROOT, ".build", "release", "unibus"))


def frames(bench, args):
    rounds = []
    for _ in range(args.rounds):
        output = subprocess.run([bench, "frames", str(args.seconds)], check=True, capture_output=True, text=True).stdout
        rounds.append({(row["case"], row["size"]): row for row in map(json.loads, output.splitlines())})
    failures = []
    print(f"{'size':>5}  {'case (median of rounds)':<26} {'ops/s':>10}")
    for size in (128, 1024):
        def med(case):
            return median([r[(case, size)]["ops_per_sec"] for r in rounds])
        for case in ("sodium-ed25519-sign", "megolm-encrypt", "frame-seal", "sodium-ed25519-verify", "frame-open"):
            print(f"{size:>5}  {case:<26} {med(case):>10.0f}")
        for name, ours, raw in (("seal vs raw sign", "frame-seal", "sodium-ed25519-sign"),
                                ("open vs raw verify", "frame-open", "sodium-ed25519-verify")):
            ratio = median([r[(ours, size)]["ops_per_sec"] / r[(raw, size)]["ops_per_sec"] for r in rounds])
            verdict = "ok" if ratio >= 0.85 else "BELOW TARGET"
            print(f"{size:>5}  ratio {name:<20} {ratio:6.3f}x (target >= 0.85x) {verdict}")
            if ratio < 0.85:
                failures.append(f"{size} B {name}")
        row = rounds[0][("frame-seal", size)]
        print(f"{size:>5}  (frame {row['frame_bytes']} B on the wire; the signature covers {row['signed_bytes']} B)")
        print()
    return failures


def end_to_end(bench, unibusd, unibus, args):
    work = tempfile.mkdtemp(prefix="unibus-client-bench-")
    node = None
    try:
        data = os.path.join(work, "data")
        subprocess.run([unibusd, "init", "--data-dir", data, "--admin-identity", os.path.join(work, "admin.json")],
                       check=True, stdout=subprocess.DEVNULL)
        port, control = free_port(), free_port()
        node = subprocess.Popen([unibusd, "run", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                                 "--control-listen", f"127.0.0.1:{control}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(port)
        wait_for(control)
        node_url = f"http://127.0.0.1:{control}"
        for peer in ("alice", "bob"):
            path = os.path.join(work, peer + ".json")
            keys = json.loads(subprocess.run([unibus, "identity", "new", "--out", path, "--json"], check=True,
                                             capture_output=True, text=True).stdout)
            subprocess.run([unibus, "user", "add", "--identity", os.path.join(work, "admin.json"), "--node", node_url,
                            "--sign-pub", keys["nkey"], "--exchange-key", keys["exchange_key"], "--handle", peer],
                           check=True, stdout=subprocess.DEVNULL)
        root = json.loads(subprocess.run([unibus, "identity", "show", "--identity", os.path.join(work, "admin.json"), "--json"],
                                         check=True, capture_output=True, text=True).stdout)["nkey"]
        rounds = []
        for _ in range(args.rounds):
            output = subprocess.run([bench, "e2e", "--alice", os.path.join(work, "alice.json"), "--root", root,
                                     "--bob", os.path.join(work, "bob.json"), "--server", f"nats://127.0.0.1:{port}",
                                     "--node", node_url, "--count", str(args.count), "--rate", str(args.rate)],
                                    check=True, capture_output=True, text=True, timeout=900).stdout
            rounds.append({row["case"]: row for row in map(json.loads, output.splitlines())})
    finally:
        if node:
            node.terminate()
            node.wait()
        shutil.rmtree(work, ignore_errors=True)

    def med(case, key):
        return median([r[case][key] for r in rounds])
    enc, plain = med("e2e-encrypted-throughput", "msgs_per_sec"), med("e2e-plain-throughput", "msgs_per_sec")
    print(f"end to end through one node, 128 B, alice -> bob (median of {args.rounds} rounds)")
    print(f"  {'':<26} {'encrypted':>12} {'plain NATS':>12} {'ratio':>7}")
    print(f"  {'throughput (msgs/s)':<26} {enc:>12.0f} {plain:>12.0f} {enc / plain:>6.2f}x")
    for key, title in (("p50_us", "latency p50 (us)"), ("p99_us", "latency p99 (us)")):
        a, b = med("e2e-encrypted-latency", key), med("e2e-plain-latency", key)
        print(f"  {title + ' @ ' + str(int(args.rate)) + '/s':<26} {a:>12.1f} {b:>12.1f} {a / b:>6.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per frame case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20000, help="messages per throughput run")
    parser.add_argument("--rate", type=float, default=2000, help="messages per second for the latency run")
    args = parser.parse_args()
    bench, unibusd, unibus = build()
    failures = frames(bench, args)
    end_to_end(bench, unibusd, unibus, args)
    if failures:
        print("below target: " + ", ".join(failures))
        return 1
    print("frame targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
