#!/usr/bin/env python3
"""A network partition between real hosts, made of Linux network namespaces.

    partition_e2e.py BIN_DIR      (holding unibusd and unibus; needs root for `ip netns`)

Three namespaces, one unibusd each, on two networks built from veth pairs and
bridges: a cluster network (routes, mutual TLS under the cluster CA) and a
client network (TLS clients and the control plane, which this script uses
from the root namespace). Cutting node c's cluster link partitions it from a
and b while the test still reaches all three. While partitioned, changes are
made on both sides, including the same room id created on each; c keeps
authenticating from its own copy. After healing, every node must hold the
same log and the same state, the conflict resolved the same way everywhere.

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import make_cluster_pki, make_test_pki, wait_until  # noqa: E402
import unibus_cluster  # noqa: E402

BIN = sys.argv[1]
results = []
TAG = f"ub{os.getpid() % 10000}"
NODES = ("a", "b", "c")
CLUSTER_IP = {n: f"10.77.1.{i + 1}" for i, n in enumerate(NODES)}
CLIENT_IP = {n: f"10.77.2.{i + 1}" for i, n in enumerate(NODES)}
HOST_CLIENT_IP = "10.77.2.254"


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {str(detail)[:2000]}"), flush=True)


def sh(*args, check_status=True):
    done = subprocess.run(args, capture_output=True, text=True)
    if check_status and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def run(*args, timeout=60):
    done = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


class Network:
    """Namespaces <tag>-a/b/c; bridges <tag>cl (cluster) and <tag>ci (clients)."""

    def __init__(self):
        self.created = []

    def build(self):
        for bridge in ("cl", "ci"):
            sh("ip", "link", "add", TAG + bridge, "type", "bridge")
            self.created.append(("link", TAG + bridge))
            sh("ip", "link", "set", TAG + bridge, "up")
        sh("ip", "addr", "add", HOST_CLIENT_IP + "/24", "dev", TAG + "ci")
        for node in NODES:
            ns = f"{TAG}-{node}"
            sh("ip", "netns", "add", ns)
            self.created.append(("netns", ns))
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            for net, ip in (("cl", CLUSTER_IP[node]), ("ci", CLIENT_IP[node])):
                host, inside = f"{TAG}{net}{node}h", f"{TAG}{net}{node}n"
                sh("ip", "link", "add", host, "type", "veth", "peer", "name", inside)
                self.created.append(("link", host))
                sh("ip", "link", "set", inside, "netns", ns)
                sh("ip", "link", "set", host, "master", TAG + net)
                sh("ip", "link", "set", host, "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", ip + "/24", "dev", inside)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")

    def cut(self, node, up):
        """Takes node's cluster link down (partition) or up (heal)."""
        sh("ip", "link", "set", f"{TAG}cl{node}h", "up" if up else "down")

    def destroy(self):
        for kind, name in reversed(self.created):
            if kind == "netns":
                sh("ip", "netns", "del", name, check_status=False)
            else:
                sh("ip", "link", "del", name, check_status=False)


def main(work):
    network = Network()
    try:
        network.build()
    except (RuntimeError, FileNotFoundError) as error:
        network.destroy()
        check("network namespaces and veth pairs can be created (run as root with iproute2)", False, error)
        return
    check("three hosts on two networks (namespaces, veth pairs, bridges)", True)
    processes = {}
    try:
        client_pki = make_test_pki(work, server_ips=list(CLIENT_IP.values()))
        route_pki = make_cluster_pki(work, NODES, ips={n: [CLUSTER_IP[n]] for n in NODES})
        context = ssl.create_default_context(cafile=client_pki["ca.pem"])
        admin = os.path.join(work, "admin.json")
        data = {n: os.path.join(work, "data-" + n) for n in NODES}
        status, output = run("unibusd", "init", "--data-dir", data["a"], "--admin-identity", admin)
        check("a: init with the admin", status == 0, output)
        root = json.loads(run("unibus", "identity", "show", "--identity", admin, "--json")[1])["nkey"]
        for node in ("b", "c"):
            status, output = run("unibusd", "init", "--data-dir", data[node], "--root", root)
            check(f"{node}: init with the root only", status == 0, output)
        routes = ",".join(f"tls://{CLUSTER_IP[n]}:6222" for n in NODES)

        def start(node):
            cert, key = route_pki[node]
            command = ["ip", "netns", "exec", f"{TAG}-{node}", os.path.join(BIN, "unibusd"), "run", "--data-dir", data[node],
                       "--listen", f"{CLIENT_IP[node]}:4222", "--control-listen", f"{CLIENT_IP[node]}:4280",
                       "--tls-cert", client_pki["server.pem"], "--tls-key", client_pki["server.key"],
                       "--cluster-listen", f"{CLUSTER_IP[node]}:6222", "--routes", routes, "--cluster-name", "partition",
                       "--cluster-cert", cert, "--cluster-key", key, "--cluster-ca", route_pki["ca"], "--route-ping-interval", "0.3"]
            processes[node] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"node-{node}.log"), "a"))

        def info(node):
            with urllib.request.urlopen(f"https://{CLIENT_IP[node]}:4280/v1/node", context=context, timeout=3) as response:
                return json.loads(response.read())

        def wait(condition, timeout=20):
            return wait_until(condition, timeout)

        def routes_of(node):
            return len(info(node).get("cluster", {}).get("routes", []))

        def digests(nodes):
            return {n: (info(n)["membership"]["log_digest"], info(n)["membership"]["state_digest"]) for n in nodes}

        for node in NODES:
            start(node)
        check("the three hosts form a full mesh over the cluster network", wait(lambda: all(routes_of(n) == 2 for n in NODES)))
        check("b and c hold a's log", wait(lambda: len(set(digests(NODES).values())) == 1), digests(NODES))

        def cli(node, *args):
            return run("unibus", *args, "--identity", admin, "--node", f"https://{CLIENT_IP[node]}:4280", "--ca", client_pki["ca.pem"])

        people = {}
        for name in ("alice", "bob", "dave", "erin"):
            path = os.path.join(work, name + ".json")
            people[name] = json.loads(run("unibus", "identity", "new", "--out", path, "--json")[1])
            people[name]["path"] = path

        def add(node, name):
            return cli(node, "user", "add", "--sign-pub", people[name]["nkey"], "--exchange-key", people[name]["exchange_key"], "--handle", name)
        for name in ("alice", "bob"):
            status, output = add("a", name)
            check(f"add {name} before the partition", status == 0, output)
        check("everyone agrees before the partition", wait(lambda: len(set(digests(NODES).values())) == 1), digests(NODES))

        # Partition c from a and b.
        network.cut("c", up=False)
        check("the partition closes c's routes (route PINGs go unanswered)",
              wait(lambda: routes_of("c") == 0 and routes_of("a") == 1 and routes_of("b") == 1), {n: routes_of(n) for n in NODES})
        # Changes on both sides, including a conflict.
        status, output = add("a", "dave")
        check("majority side: add dave", status == 0, output)
        status, output = cli("a", "room", "create", "--id", "shared", "--subject", "rooms.from-a")
        check("majority side: create room shared", status == 0, output)
        time.sleep(0.05)
        status, output = add("c", "erin")
        check("minority side: add erin on the isolated node (no quorum needed)", status == 0, output)
        status, output = cli("c", "room", "create", "--id", "shared", "--subject", "rooms.from-c")
        check("minority side: create a room with the same id", status == 0, output)
        status, output = cli("c", "user", "revoke", "--sign-pub", people["bob"]["nkey"])
        check("minority side: revoke bob", status == 0, output)
        status, output = run("unibus", "check", "--identity", people["alice"]["path"], "--server", f"tls://{CLIENT_IP['c']}:4222",
                             "--node", f"https://{CLIENT_IP['c']}:4280", "--ca", client_pki["ca.pem"], "--root", root, "--count", "10")
        check("the isolated node keeps serving its known users (alice, encrypted round trip)", status == 0 and "check golden: OK" in output, output)
        split = digests(NODES)
        check("while partitioned, the sides differ and a and b agree",
              split["a"] == split["b"] and split["a"] != split["c"], split)

        # Heal.
        healed_at = time.time()
        network.cut("c", up=True)
        check("the mesh re-forms after healing", wait(lambda: all(routes_of(n) == 2 for n in NODES), timeout=30),
              {n: routes_of(n) for n in NODES})
        converged = wait(lambda: len(set(digests(NODES).values())) == 1, timeout=30)
        check("all nodes converge to the same log and state", converged, digests(NODES))
        print(f"     converged {time.time() - healed_at:.2f} s after healing")
        rooms = {}
        for node in NODES:
            status, output = cli(node, "room", "show", "--id", "shared")
            rooms[node] = output
        subjects = {node: ("rooms.from-a" in out, "rooms.from-c" in out) for node, out in rooms.items()}
        check("the conflicting room resolves to one subject, the same on every node",
              len(set(subjects.values())) == 1 and sum(next(iter(subjects.values()))) == 1, rooms)
        users = {}
        for node in NODES:
            status, output = cli(node, "user", "list")
            users[node] = output
        check("both sides' users are everywhere, and bob is revoked everywhere",
              all(people["dave"]["nkey"] in out and people["erin"]["nkey"] in out for out in users.values())
              and len({out for out in users.values()}) == 1 and "revoked" in users["a"], users)
        refused = {n: info(n)["membership"]["refused"] for n in NODES}
        check("the losing room creation is refused identically on every node", set(refused.values()) == {1}, refused)
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        network.destroy()


with tempfile.TemporaryDirectory() as work:
    try:
        main(work)
    except Exception as error:
        import traceback
        traceback.print_exc()
        check("the scenario ran to the end", False, error)
    sys.exit(unibus_cluster.report(results, work, NODES))
