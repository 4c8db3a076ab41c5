"""A cluster of real unibusd processes on loopback for the end-to-end
scenarios (cluster_e2e.py, persist_e2e.py): mutual-TLS routes under a
cluster CA (deploy/make-certs.sh), TLS clients under a separate client CA,
free ports, logs per node in the work directory.

Call configure(BIN_DIR) first (the directory holding unibusd and unibus).
"""
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request

from servers import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = None


# Every check of a scenario, in order (report() tallies them).
results = []


def check(name, condition, detail=""):
    """One line per check: "ok" or "FAIL" with the detail that explains it."""
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {str(detail)[:3000]}"), flush=True)


def configure(bin_dir):
    global BIN
    BIN = bin_dir


def run(*args, timeout=120):
    done = subprocess.run([os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


from servers import free_port  # noqa: E402


class Cluster:
    def __init__(self, work, names=("a", "b", "c")):
        self.work = work
        self.names = names
        # The operator's script makes both CAs and every node's certificates.
        certs = os.path.join(work, "certs")
        subprocess.run(["bash", os.path.join(ROOT, "deploy", "make-certs.sh"), certs, *(f"{n}=127.0.0.1,localhost" for n in names)],
                       check=True, capture_output=True)
        self.client_pki = {"ca.pem": os.path.join(certs, "client-ca.pem")}
        for n in names:
            self.client_pki[n] = (os.path.join(certs, f"{n}-client.pem"), os.path.join(certs, f"{n}-client.key"))
        self.route_pki = {"ca": os.path.join(certs, "cluster-ca.pem")}
        for n in names:
            self.route_pki[n] = (os.path.join(certs, f"{n}-route.pem"), os.path.join(certs, f"{n}-route.key"))
        self.ports = {n: {"client": free_port(), "control": free_port(), "route": free_port()} for n in names}
        self.processes = {}
        self.context = ssl.create_default_context(cafile=self.client_pki["ca.pem"])
        # Extra `unibusd run` arguments per node name (e.g. a short --beat-interval).
        self.extra = {}

    def routes(self):
        return ",".join(f"tls://127.0.0.1:{self.ports[n]['route']}" for n in self.names)

    def data(self, name):
        return os.path.join(self.work, "data-" + name)

    def start(self, name, wait=True):
        p = self.ports[name]
        cert, key = self.route_pki[name]
        args = [os.path.join(BIN, "unibusd"), "run", "--data-dir", self.data(name),
                "--listen", f"127.0.0.1:{p['client']}", "--control-listen", f"127.0.0.1:{p['control']}",
                "--tls-cert", self.client_pki[name][0], "--tls-key", self.client_pki[name][1],
                "--cluster-listen", f"127.0.0.1:{p['route']}", "--routes", self.routes(), "--cluster-name", "e2e",
                "--cluster-cert", cert, "--cluster-key", key, "--cluster-ca", self.route_pki["ca"],
                "--route-ping-interval", "0.5", *self.extra.get(name, [])]
        log = open(os.path.join(self.work, f"node-{name}.log"), "a")
        self.processes[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        if wait:
            wait_for(p["client"])
            wait_for(p["control"])

    def kill(self, name, sig=signal.SIGKILL):
        process = self.processes.pop(name, None)
        if process:
            process.send_signal(sig)
            process.wait()

    def init(self, admin):
        """`unibusd init` on the first node with the admin identity (made there)
        and on the others with the root's nkey only; (root nkey, [(name, status, output)])."""
        first, rest = self.names[0], self.names[1:]
        outcomes = [(first, *run("unibusd", "init", "--data-dir", self.data(first), "--admin-identity", admin))]
        root = json.loads(run("unibus", "identity", "show", "--identity", admin, "--json")[1])["nkey"]
        for name in rest:
            outcomes.append((name, *run("unibusd", "init", "--data-dir", self.data(name), "--root", root)))
        return root, outcomes

    def kill_all(self, sig=signal.SIGKILL):
        """Every node at once (signals first, then the waits): a client cannot fail over between them."""
        processes = [self.processes.pop(name) for name in list(self.processes)]
        for process in processes:
            process.send_signal(sig)
        for process in processes:
            process.wait()

    def stop_all(self):
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)

    def server(self, name):
        return f"tls://127.0.0.1:{self.ports[name]['client']}"

    def node(self, name):
        return f"https://127.0.0.1:{self.ports[name]['control']}"

    def info(self, name):
        with urllib.request.urlopen(self.node(name) + "/v1/node", context=self.context, timeout=5) as response:
            return json.loads(response.read())

    def wait_routes(self, names, count, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if all(len(self.info(n).get("cluster", {}).get("routes", [])) == count for n in names):
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def converged(self, names, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                states = {n: self.info(n)["membership"] for n in names}
                if len({(s["state_digest"], s["log_digest"]) for s in states.values()}) == 1:
                    return True, states
            except OSError as error:
                states = str(error)
            time.sleep(0.05)
        return False, states


def identity(work, name):
    path = os.path.join(work, name + ".json")
    code, out = run("unibus", "identity", "new", "--out", path, "--json")
    keys = json.loads(out)
    seed = run("unibus", "identity", "nkey", "--identity", path, "--seed")[1].strip()
    return {"path": path, "nkey": keys["nkey"], "kx": keys["exchange_key"], "seed": seed}


def report(results, work, names=("a", "b", "c")):
    """Prints the tally (and each node's log tail when something failed); the exit status."""
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    if len(results) != passed:
        for name in names:
            path = os.path.join(work, f"node-{name}.log")
            if os.path.exists(path):
                print(f"--- node-{name}.log (tail)")
                print(open(path).read()[-3000:])
    return 0 if results and all(results) else 1
