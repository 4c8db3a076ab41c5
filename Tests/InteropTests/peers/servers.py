"""Helpers shared by the peer scripts and benchmarks: free loopback ports and
waiting for a server to accept connections."""
import asyncio
import os
import random
import socket
import subprocess
import threading
import time


_handed_out = set()


def _ports_below_ephemeral_range():
    """From 10000 up to the start of the kernel's ephemeral range (empty if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return 10000, int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0


def free_port():
    """A loopback port that was free a moment ago, chosen at random below the
    kernel's ephemeral range: a port the kernel hands out (bind to port 0)
    can be handed out again to an outgoing connection, such as a node
    dialling its routes, before the process it was meant for binds it.
    Outgoing connections never take a port outside that range. A port is
    handed out once per process, so one cluster's ports are all different."""
    low, high = _ports_below_ephemeral_range()
    for _ in range(200 if low < high else 0):
        candidate = random.randrange(low, high)
        if candidate in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _handed_out.add(candidate)
        return candidate
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server accepted connections on 127.0.0.1:{port} within {timeout} s")


def wait_until(condition, timeout=15):
    """True once condition() is true (OSError counts as not yet), False after timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


async def eventually(condition, timeout=10, interval=0.05):
    """True once condition() is true, False after timeout seconds. Use this,
    not wait_until, inside a coroutine: it awaits between tries, so the
    callbacks the condition depends on get to run (nats-py runs error_cb and
    subscription callbacks as tasks on this event loop; a blocking wait holds
    them back until it gives up, and a fixed sleep hopes they ran in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if condition():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)


class OutputWatcher:
    """Collects a process's text stdout on a thread, so a scenario can wait
    for a line (rather than sleep and hope the process got that far) and
    still get all of the output at the end."""

    def __init__(self, process):
        self.process = process
        self.lines = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, predicate, timeout=30):
        """True once a line satisfying predicate has been printed; False after timeout seconds or at exit."""
        deadline = time.time() + timeout
        with self.changed:
            while not any(predicate(line) for line in self.lines):
                left = deadline - time.time()
                if left <= 0 or (not self.thread.is_alive() and self.process.poll() is not None):
                    return False
                self.changed.wait(min(left, 0.2))
            return True

    def finish(self, timeout=60):
        """Waits for the process to exit (killing it after timeout seconds); all it printed."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.thread.join(timeout=10)
        with self.changed:
            return "".join(self.lines)


def make_test_pki(directory, server_ips=("127.0.0.1",)):
    """A throwaway CA, a server certificate for `server_ips` and a client certificate."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=unibus-test-ca")
    sans = ",".join("IP:" + ip for ip in server_ips)
    for name, extension in (("server", f"subjectAltName={sans},DNS:localhost\nextendedKeyUsage=serverAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        with open(os.path.join(directory, name + ".ext"), "w") as f:
            f.write(extension.replace("\\n", "\n") + "\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
    for name in ("ca.key", "server.key", "client.key"):
        os.chmod(os.path.join(directory, name), 0o600)
    return {name: os.path.join(directory, name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def make_cluster_pki(directory, nodes=("node",), ips=None):
    """A cluster CA (separate from make_test_pki's client CA) and one route
    certificate per node, valid for both ends of a link (server and client
    auth) on 127.0.0.1. Files: cluster-ca.pem, <node>-route.pem/.key."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "cluster-ca.key", "-out", "cluster-ca.pem", "-days", "2", "-subj", "/CN=unibus-test-cluster-ca")
    paths = {"ca": os.path.join(directory, "cluster-ca.pem")}
    for node in nodes:
        name = node + "-route"
        sans = ",".join("IP:" + ip for ip in (ips or {}).get(node, ["127.0.0.1"]))
        with open(os.path.join(directory, name + ".ext"), "w") as f:
            f.write(f"subjectAltName={sans},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        run("x509", "-req", "-in", name + ".csr", "-CA", "cluster-ca.pem", "-CAkey", "cluster-ca.key", "-CAcreateserial",
            "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
        os.chmod(os.path.join(directory, name + ".key"), 0o600)
        paths[node] = (os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key"))
    os.chmod(os.path.join(directory, "cluster-ca.key"), 0o600)
    return paths
