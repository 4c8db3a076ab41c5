#!/usr/bin/env python3
"""`unibus check` and `unibus demo` against a real unibusd process with TLS on
both planes (a throwaway CA), including a kill -9 and restart of the node
under `check --mode loop`.

    check_e2e.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import json
import os
import ssl
import urllib.request
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import OutputWatcher, free_port, make_test_pki, wait_for  # noqa: E402

BIN = sys.argv[1]
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {detail}"))


def run(*args, timeout=60):
    done = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


with tempfile.TemporaryDirectory() as work:
    make_test_pki(work)
    ca = os.path.join(work, "ca.pem")
    data = os.path.join(work, "data")
    admin = os.path.join(work, "admin.json")
    port, control = free_port(), free_port()
    status, output = run("unibusd", "init", "--data-dir", data, "--admin-identity", admin, "--handle", "admin")
    check("unibusd init", status == 0, output)
    # check and demo verify the membership log from the pinned root admin (the identity init made).
    root = run("unibus", "identity", "nkey", "--identity", admin)[1].strip()

    def start_node(extra=()):
        process = subprocess.Popen([os.path.join(BIN, "unibusd"), "run", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                                    "--control-listen", f"127.0.0.1:{control}", "--tls-cert", os.path.join(work, "server.pem"),
                                    "--tls-key", os.path.join(work, "server.key"), *extra],
                                   stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "node.log"), "a"))
        wait_for(port)
        wait_for(control)
        return process

    node = start_node()
    peer = ["--server", f"tls://127.0.0.1:{port}", "--node", f"https://127.0.0.1:{control}", "--ca", ca]
    try:
        status, output = run("unibus", "check", "--identity", admin, *peer, "--root", root, "--count", "50")
        check("check golden over TLS passes", status == 0 and "check golden: OK" in output and "received 50" in output, output)

        status, output = run("unibus", "check", "--identity", admin, "--server", f"nats://127.0.0.1:{port}",
                             "--node", f"https://127.0.0.1:{control}", "--root", root)
        check("check without a CA is refused with a reason", status != 0 and "CA" in output, output)

        stranger = os.path.join(work, "stranger.json")
        run("unibus", "identity", "new", "--out", stranger)
        status, output = run("unibus", "check", "--identity", stranger, *peer, "--root", root)
        check("an unknown identity is refused by name", status != 0 and "refused this identity" in output, output)

        # Two users for the demo, added by the admin.
        for name in ("alice", "bob"):
            path = os.path.join(work, name + ".json")
            _, shown = run("unibus", "identity", "new", "--out", path, "--json")
            keys = json.loads(shown)
            status, output = run("unibus", "user", "add", "--node", f"https://127.0.0.1:{control}", "--ca", ca, "--identity", admin,
                                 "--sign-pub", keys["nkey"], "--exchange-key", keys["exchange_key"], "--handle", name)
            check(f"user add {name}", status == 0, output)
        status, output = run("unibus", "demo", "--alice", os.path.join(work, "alice.json"), "--bob", os.path.join(work, "bob.json"),
                             "--server", f"tls://127.0.0.1:{port}", "--node", f"https://127.0.0.1:{control}", "--ca", ca, "--root", root)
        check("demo: three messages received and verified", status == 0 and output.count("verified") == 3, output)
        check("demo: the plain NATS subscriber saw ciphertext only",
              output.count("contains the text: no") == 3 and "YES" not in output, output)

        # Every run must exit 0 (a crash at exit once made 1 in ~25 fail):
        # UNIBUS_CHECK_REPEAT runs of each (20 in CI; Tests/stress/tools.sh runs 200).
        repeat = int(os.environ.get("UNIBUS_CHECK_REPEAT", "20"))
        context = ssl.create_default_context(cafile=ca)

        def operations():
            with urllib.request.urlopen(f"https://127.0.0.1:{control}/v1/node", context=context, timeout=5) as response:
                return json.loads(response.read())["membership"]["operations"]
        before = operations()
        failures = []
        for index in range(repeat):
            status, output = run("unibus", "check", "--identity", admin, *peer, "--root", root, "--count", "5")
            if status != 0 or "check golden: OK" not in output:
                failures.append(f"check #{index}: exit {status}: {output[-300:]}")
            status, output = run("unibus", "demo", "--alice", os.path.join(work, "alice.json"), "--bob", os.path.join(work, "bob.json"),
                                 "--server", f"tls://127.0.0.1:{port}", "--node", f"https://127.0.0.1:{control}", "--ca", ca, "--root", root)
            if status != 0 or output.count("verified") != 3:
                failures.append(f"demo #{index}: exit {status}: {output[-300:]}")
        check(f"check and demo exit 0 in {repeat} runs each", not failures, "; ".join(failures[:3]))
        after = operations()
        check(f"{repeat} more runs of check and demo added nothing to the membership log (one probe room each, reused)",
              after == before, f"{before} -> {after} operations")

        # Loop mode across a kill -9 and restart of the node.
        loop = subprocess.Popen([os.path.join(BIN, "unibus"), "check", "--mode", "loop", "--identity", admin, *peer, "--root", root,
                                 "--duration", "6", "--interval", "5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The kill lands once the loop has been sending for a second (its first
        # per-second line), however long its start took.
        watcher = OutputWatcher(loop)
        sending = watcher.wait_for(lambda line: line.startswith("t="))
        check("the check loop is sending before the kill (its first per-second line)", sending, "no t= line within 30 s")
        node.send_signal(signal.SIGKILL)
        node.wait()
        time.sleep(0.5)   # the node stays down a moment: the loop must ride it out
        node = start_node()
        output = watcher.finish(timeout=60)
        summary = next((line for line in output.splitlines() if line.startswith("check loop:")), "")
        numbers = dict(re.findall(r"(\w[\w-]*)=(\d+)", summary))
        check("check loop survives a node restart", loop.returncode == 0 and "failover observed" in summary, output)
        check("check loop prints a line per second", len([l for l in output.splitlines() if l.startswith("t=")]) >= 4, output)
        sent, received = int(numbers.get("sent", 0)), int(numbers.get("received", 0))
        check("check loop lost at most a handful (publishes in flight at the kill)",
              sent > 500 and sent - received <= 20 and numbers.get("duplicates") == "0", summary)
        # A certificate that does not name the address the client dials is named as such.
        node.terminate()
        node.wait()
        elsewhere = os.path.join(work, "elsewhere")
        os.makedirs(elsewhere)
        other_pki = make_test_pki(elsewhere, server_ips=("10.9.9.9",))
        node = subprocess.Popen([os.path.join(BIN, "unibusd"), "run", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                                 "--control-listen", f"127.0.0.1:{control}", "--tls-cert", other_pki["server.pem"],
                                 "--tls-key", other_pki["server.key"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(port)
        wait_for(control)
        status, output = run("unibus", "user", "list", "--identity", admin, "--node", f"https://127.0.0.1:{control}", "--ca", other_pki["ca.pem"])
        check("a node certificate that does not name the dialed address is named as such",
              status != 0 and "does not name 127.0.0.1" in output and "Couldn't find" not in output, output)

        # A node that requires client certificates (--tls-client-ca): Unibus's own
        # tools present one with --cert/--key, and without it the refusal is named.
        node.terminate()
        node.wait()
        node = start_node(["--tls-client-ca", ca])
        status, output = run("unibus", "check", "--identity", admin, *peer, "--root", root, "--count", "5",
                             "--cert", os.path.join(work, "client.pem"), "--key", os.path.join(work, "client.key"))
        check("check with --cert/--key against a node that requires client certificates", status == 0 and "check golden: OK" in output, output)
        status, output = run("unibus", "check", "--identity", admin, *peer, "--root", root, "--count", "5")
        check("without a client certificate that node refuses, and the error says what to give",
              status != 0 and "requires a client certificate: give --cert and --key" in output, output)
    finally:
        node.terminate()
        node.wait()

failed = results.count(False)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
