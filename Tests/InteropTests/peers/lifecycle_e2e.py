#!/usr/bin/env python3
"""Upgrading a cluster with lame duck (issue 15), through three real nodes:

- `unibus check --mode loop --persist` runs while every node in turn is put
  in lame-duck mode with SIGUSR2, exits 0 and is started again (a rolling
  restart): its clients move to the other nodes and the persisted room
  loses nothing; a loop in a room that is not persisted runs alongside and
  reports what it lost;
- a route peer that speaks another route protocol version is refused, and
  the error and the log name both versions.

    lifecycle_e2e.py BIN_DIR
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unibus_cluster  # noqa: E402
from unibus_cluster import Cluster, check, identity, report, results, run  # noqa: E402

BIN = sys.argv[1]
unibus_cluster.configure(BIN)
LAME_DUCK = ["--lame-duck-grace", "0.5", "--lame-duck-duration", "1", "--lame-duck-peer-wait", "10"]


def log_text(work, name):
    with open(os.path.join(work, f"node-{name}.log")) as handle:
        return handle.read()


def main(work, cluster):
    for name in cluster.names:
        cluster.extra[name] = LAME_DUCK
    admin = os.path.join(work, "admin.json")
    root, outcomes = cluster.init(admin)
    check("init three nodes", all(status == 0 for _, status, _ in outcomes), outcomes)
    for name in cluster.names:
        cluster.start(name)
    check("three nodes link", cluster.wait_routes("abc", 2))
    ca = cluster.client_pki["ca.pem"]
    people = {name: identity(work, name) for name in ("alice", "bob")}
    for name, person in people.items():
        status, output = run("unibus", "user", "add", "--identity", admin, "--node", cluster.node("a"), "--ca", ca,
                             "--sign-pub", person["nkey"], "--exchange-key", person["kx"], "--handle", name)
        check(f"user add {name}", status == 0, output)
    check("membership converged", cluster.converged("abc")[0])

    # --- a rolling restart in lame duck under two check loops ------------------
    seeds = [arg for n in "abc" for arg in ("--server", cluster.server(n))]
    nodes = [arg for n in "abc" for arg in ("--node", cluster.node(n))]
    common = [*nodes, "--ca", ca, "--root", root, "--rate", "100", "--duration", "30"]
    persisted = subprocess.Popen([os.path.join(BIN, "unibus"), "check", "--mode", "loop", "--persist", "--identity", people["alice"]["path"],
                                  *seeds, "--subscriber-identity", people["bob"]["path"],
                                  *[arg for n in "cab" for arg in ("--subscriber-server", cluster.server(n))], *common],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plain = subprocess.Popen([os.path.join(BIN, "unibus"), "check", "--mode", "loop", "--identity", people["bob"]["path"],
                              *[arg for n in "bca" for arg in ("--server", cluster.server(n))], *common],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)   # the loops have set up their rooms and are sending
    for name in cluster.names:
        process = cluster.processes.pop(name)
        started = time.time()
        process.send_signal(signal.SIGUSR2)
        code = process.wait(timeout=60)
        check(f"node {name}: SIGUSR2, lame duck, exit 0", code == 0, code)
        check(f"node {name}: logged entering lame duck and stopped after it",
              "entering lame-duck mode" in log_text(work, name) and '"after":"lame duck"' in log_text(work, name), log_text(work, name)[-1500:])
        print(f"     node {name} drained in {time.time() - started:.1f} s")
        cluster.start(name)
        check(f"node {name}: back and linked", cluster.wait_routes("abc", 2, timeout=30))
    output = persisted.communicate(timeout=120)[0]
    summary = next((line for line in output.splitlines() if line.startswith("check loop:")), "")
    print("     persisted: " + summary)
    check("persisted room across the rolling restart: lost=0, nothing unacknowledged, clients moved",
          persisted.returncode == 0 and " lost=0 " in summary and "unacknowledged=0" in summary and "failover observed" in summary,
          output[-3000:])
    output = plain.communicate(timeout=120)[0]
    summary = next((line for line in output.splitlines() if line.startswith("check loop:")), "")
    print("     not persisted: " + summary)
    check("a room that is not persisted reports what it lost (a number, never silence)",
          " lost=" in summary and "failover observed" in summary, output[-3000:])

    # --- route protocol versions -------------------------------------------------
    cert, key = cluster.route_pki["c"]
    context = ssl.create_default_context(cafile=cluster.route_pki["ca"])
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    node_b = cluster.info("b")["node_id"]
    with socket.create_connection(("127.0.0.1", cluster.ports["a"]["route"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as link:
            reader = link.makefile("rb")
            first = reader.readline().decode()
            info = {"server_id": node_b, "name": "future", "cluster": "e2e", "root": root, "nonce": "n" * 22, "proto": 2,
                    "version": "9.0.0"}
            link.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
            answer = b""
            try:
                while b"\n" not in answer:
                    chunk = link.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
    answer = answer.decode(errors="replace")
    check("a node's route INFO says its protocol version", '"proto":1' in first, first)
    check("a peer of another route protocol version is refused, naming both versions",
          answer.startswith("-ERR") and "route protocol version 2 (unibusd 9.0.0)" in answer and "this node speaks version 1" in answer, answer)
    deadline = time.time() + 10
    while time.time() < deadline and "route protocol version 2" not in log_text(work, "a"):
        time.sleep(0.05)
    check("the refusal is logged with both versions", "route protocol version 2" in log_text(work, "a"), log_text(work, "a")[-1000:])

    # --- backup and restore of a data directory (the runbook's commands) ---------
    backup = os.path.join(work, "backup-c.tar.gz")
    status, output = run("unibusd", "drain", "--pid", str(cluster.processes["c"].pid), "--timeout", "60")
    cluster.processes.pop("c").wait(timeout=10)
    check("backup: node c drained", status == 0, output)
    done = subprocess.run(["tar", "-C", work, "-czpf", backup, "data-c"], capture_output=True, text=True)
    check("backup: tar of the stopped node's data directory", done.returncode == 0, done.stderr)
    cluster.start("c")
    check("backup: node c back", cluster.wait_routes("abc", 2, timeout=30))
    carol = identity(work, "carol")
    status, output = run("unibus", "user", "add", "--identity", admin, "--node", cluster.node("a"), "--ca", ca,
                         "--sign-pub", carol["nkey"], "--exchange-key", carol["kx"], "--handle", "carol")
    check("a user added after the backup", status == 0, output)
    check("membership converged with carol", cluster.converged("abc")[0])
    status, output = run("unibusd", "drain", "--pid", str(cluster.processes["c"].pid), "--timeout", "60")
    cluster.processes.pop("c").wait(timeout=10)
    subprocess.run(["rm", "-rf", cluster.data("c")], check=True)
    done = subprocess.run(["tar", "-C", work, "-xzpf", backup], capture_output=True, text=True)
    mode = oct(os.stat(cluster.data("c")).st_mode & 0o777) if os.path.exists(cluster.data("c")) else None
    check("restore: the data directory is back with its mode (0700)", done.returncode == 0 and mode == "0o700", (done.stderr, mode))
    cluster.start("c")
    check("restore: the restored node links", cluster.wait_routes("abc", 2, timeout=30))
    converged, states = cluster.converged("abc", timeout=30)
    check("restore: the restored node catches up with what came after the backup (carol)", converged, states)
    status, output = run("unibus", "user", "list", "--identity", admin, "--node", cluster.node("c"), "--ca", ca, "--json")
    check("restore: node c lists carol", status == 0 and "carol" in output, output[-500:])

    # --- a reload cannot do what start refuses -----------------------------------
    import shutil
    certs = os.path.dirname(cluster.route_pki["ca"])

    def reload_refused(marker):
        before = log_text(work, "a").count("reload refused")
        cluster.processes["a"].send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and log_text(work, "a").count("reload refused") == before:
            time.sleep(0.05)
        lines = [l for l in log_text(work, "a").splitlines() if "reload refused" in l]
        return len(lines) > before and marker in lines[-1], lines[-1:] if lines else log_text(work, "a")[-500:]

    saved = {name: open(os.path.join(certs, name), "rb").read() for name in ("cluster-ca.pem", "a-client.pem", "a-client.key")}
    try:
        shutil.copy(os.path.join(certs, "client-ca.pem"), os.path.join(certs, "cluster-ca.pem"))
        refused, detail = reload_refused("cluster_ca")
        check("reload: a cluster CA changed in place is refused (restart-only)", refused, detail)
        with open(os.path.join(certs, "cluster-ca.pem"), "wb") as f:
            f.write(saved["cluster-ca.pem"])
        shutil.copy(cluster.route_pki["a"][0], os.path.join(certs, "a-client.pem"))
        shutil.copy(cluster.route_pki["a"][1], os.path.join(certs, "a-client.key"))
        refused, detail = reload_refused("issued the client-facing certificate")
        check("reload: a client-facing certificate from the cluster CA is refused, as at start", refused, detail)
    finally:
        for name, data in saved.items():
            with open(os.path.join(certs, name), "wb") as f:
                f.write(data)
        os.chmod(os.path.join(certs, "a-client.key"), 0o600)
    check("node a still serves after the refused reloads", cluster.wait_routes("abc", 2))
    cluster.stop_all()


with tempfile.TemporaryDirectory() as work:
    cluster = Cluster(work)
    try:
        main(work, cluster)
    except Exception as error:  # report, then fail
        import traceback
        traceback.print_exc()
        check("scenario ran to the end", False, error)
    finally:
        cluster.kill_all()
    status = report(results, work)
sys.exit(status)
