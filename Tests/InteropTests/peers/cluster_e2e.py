#!/usr/bin/env python3
"""Three real unibusd processes on loopback as one cluster: mutual-TLS routes
under a cluster CA, TLS clients under a separate client CA, membership
replicated with no quorum in the authentication path, stock NATS clients
(nats-py) across nodes, and UnibusClient failover under kill -9.

    cluster_e2e.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
Times printed here are observations; the benchmark (Tests/Benchmarks/cluster.py)
is where they are measured against targets.
"""
import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import OutputWatcher, free_port, wait_for  # noqa: E402
import unibus_cluster  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import nats
    import nats.errors
except ImportError:
    print("nats-py is missing: pip install nats-py")
    sys.exit(3)

BIN = sys.argv[1]
unibus_cluster.configure(BIN)
results = unibus_cluster.results
check = unibus_cluster.check


def run(*args, timeout=120):
    return unibus_cluster.run(*args, timeout=timeout)


Cluster = unibus_cluster.Cluster
identity = unibus_cluster.identity


async def nats_connect(cluster, name, person, **options):
    return await nats.connect(cluster.server(name), tls=cluster.context, nkeys_seed_str=person["seed"],
                              inbox_prefix=f"_INBOX.{person['nkey']}".encode(), **options)


def build_gonats():
    """The Go client (Debian's nats.go sources, GOPATH mode), built once."""
    binary = os.path.join(tempfile.gettempdir(), f"unibus-gonats-e2e-{os.getpid()}")
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOFLAGS="",
               GOCACHE=os.path.join(tempfile.gettempdir(), "unibus-gocache"))
    subprocess.run(["go", "build", "-o", binary, "."], cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gonats"),
                   env=env, check=True, capture_output=True, timeout=300)
    return binary


async def stock_clients_fail_over(cluster, person, victim, survivor):
    subject = "rooms.ops.failover"
    reconnected = asyncio.Event()

    async def on_reconnect():
        reconnected.set()
    received = []

    async def on_message(msg):
        received.append(msg.data)
    py = await nats.connect(cluster.server(victim), tls=cluster.context, nkeys_seed_str=person["seed"],
                            inbox_prefix=f"_INBOX.{person['nkey']}".encode(), reconnected_cb=on_reconnect,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.1, dont_randomize=True)
    await py.subscribe(subject, cb=on_message)
    await py.flush()
    learned = [str(server.uri.netloc) for server in py._server_pool]
    check("nats-py (one seed) learned the other nodes from connect_urls",
          f"127.0.0.1:{cluster.ports[survivor]['client']}" in learned, learned)
    # Request/reply with the stock clients' DEFAULT inboxes (_INBOX.<random>),
    # no inbox_prefix: allowed under a literal token, answered once.
    responder = await nats.connect(cluster.server(survivor), tls=cluster.context, nkeys_seed_str=person["seed"])

    async def answer(msg):
        await msg.respond(b"pong " + msg.data)
    await responder.subscribe("rooms.ops.svc2", cb=answer)
    await responder.flush()
    plain = await nats.connect(cluster.server(victim), tls=cluster.context, nkeys_seed_str=person["seed"])
    # The responder's interest reaches the other node over a route: until it
    # has, the request meets no responders, so that is retried for a while.
    deadline = time.time() + 10
    while True:
        try:
            reply = (await plain.request("rooms.ops.svc2", b"ping", timeout=5)).data
            break
        except nats.errors.NoRespondersError as error:
            reply = f"{type(error).__name__}: {error}"
            if time.time() > deadline:
                break
            await asyncio.sleep(0.1)
        except Exception as error:  # noqa: BLE001 - reported as the check's detail
            reply = f"{type(error).__name__}: {error}"
            break
    check("nats-py request/reply with its default inbox (no inbox_prefix), across nodes", reply == b"pong ping", reply)
    await plain.close()
    await responder.close()
    gonats = build_gonats()
    done = subprocess.run([gonats, "request", "-url", cluster.server(victim), "-seed", person["seed"],
                           "-ca", cluster.client_pki["ca.pem"], "-subject", "rooms.ops.svc3"], capture_output=True, text=True, timeout=60)
    check("nats.go request/reply with its default inbox", done.returncode == 0 and "reply ok" in done.stdout, done.stdout + done.stderr)

    go = subprocess.Popen([gonats, "failover", "-url", cluster.server(victim), "-seed", person["seed"],
                           "-ca", cluster.client_pki["ca.pem"], "-subject", subject],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = go.stdout.readline()
    check("nats.go (one seed) learned the other nodes from connect_urls",
          ready.startswith("ready") and f"127.0.0.1:{cluster.ports[survivor]['client']}" in ready, ready)
    cluster.kill(victim)
    try:
        await asyncio.wait_for(reconnected.wait(), timeout=20)
    except asyncio.TimeoutError:
        pass
    check("nats-py failed over after kill -9 of its only seed", reconnected.is_set(), py.connected_url)
    if reconnected.is_set():
        await py.publish(subject, b"py after failover")
        await py.flush()
        deadline = time.time() + 5
        while time.time() < deadline and b"py after failover" not in received:
            await asyncio.sleep(0.02)
    check("nats-py: its own message arrives through the node it failed over to", b"py after failover" in received, received)
    try:
        output, _ = go.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        go.kill()
        output, _ = go.communicate()
    check("nats.go failed over after kill -9 of its only seed and got its message through",
          go.returncode == 0 and "failover ok" in output, ready + output)
    await py.close()


async def main(work):
    cluster = Cluster(work)
    admin = os.path.join(work, "admin.json")
    admin_nkey, outcomes = cluster.init(admin)
    for name, status, output in outcomes:
        check(f"node {name}: init " + ("with the admin identity" if name == "a" else "with the root admin's nkey only"), status == 0, output)
    as_admin = lambda n: ["--identity", admin, "--node", cluster.node(n), "--ca", cluster.client_pki["ca.pem"]]
    admin_seed = run("unibus", "identity", "nkey", "--identity", admin, "--seed")[1].strip()
    admin_person = {"seed": admin_seed, "nkey": admin_nkey}

    # A lone node (its peers are down) serves its known users at once.
    started = time.time()
    cluster.start("a", wait=False)
    served = None
    deadline = time.time() + 10
    while time.time() < deadline and served is None:
        try:
            # nats-py pauses between failed attempts; probe the port first.
            socket.create_connection(("127.0.0.1", cluster.ports["a"]["client"]), timeout=0.2).close()
            nc = await nats_connect(cluster, "a", admin_person, allow_reconnect=False, connect_timeout=1)
            await nc.flush()
            await nc.close()
            served = time.time() - started
        except Exception:
            await asyncio.sleep(0.005)
    check("a lone node serves its known users without its peers", served is not None, "no connection within 10 s")
    print(f"     lone node: process start to an authenticated round trip in {served * 1000 if served else -1:.0f} ms")

    try:
        cluster.start("b")
        cluster.start("c")
        check("three nodes link in a full mesh (exactly one route per pair)", cluster.wait_routes("abc", 2),
              [cluster.info(n).get("cluster") for n in "abc"])
        ok, states = cluster.converged("abc")
        check("b and c received the membership log from a (same log and state digests)", ok, states)
        log_b = open(os.path.join(work, "node-b.log")).read()
        check("route links are mutual TLS", '"tls":"mutual"' in log_b, log_b[-500:])

        # Membership changes on a reach c (and c authenticates from its own copy).
        alice, bob, carol = identity(work, "alice"), identity(work, "bob"), identity(work, "carol")
        for person, handle in ((alice, "alice"), (bob, "bob")):
            status, output = run("unibus", "user", "add", *as_admin("a"), "--sign-pub", person["nkey"], "--exchange-key", person["kx"],
                                 "--handle", handle)
            check(f"user add {handle} on a", status == 0, output)
        added = time.time()
        connected_at = None
        while time.time() - added < 10 and connected_at is None:
            try:
                nc = await nats_connect(cluster, "c", alice, allow_reconnect=False, connect_timeout=1)
                await nc.close()
                connected_at = time.time() - added
            except Exception:
                await asyncio.sleep(0.01)
        check("a user added on a can connect to c", connected_at is not None)
        print(f"     user added on a -> connected on c after {connected_at * 1000 if connected_at else -1:.0f} ms")
        status, output = run("unibus", "room", "create", *as_admin("b"), "--id", "ops", "--subject", "rooms.ops")
        check("room create through b", status == 0, output)
        for person in (alice, bob):
            status, output = run("unibus", "room", "add-member", *as_admin("c"), "--id", "ops", "--sign-pub", person["nkey"])
            check("add-member through c", status == 0, output)
        ok, states = cluster.converged("abc")
        check("changes made through three nodes converge", ok, states)

        # Stock NATS clients across nodes (plain NATS inside the room's subject).
        alice_c = await nats_connect(cluster, "c", alice)
        bob_b = await nats_connect(cluster, "b", bob)
        got, queued, probed = [], [], set()

        # Probes (until interest has crossed the routes) are noted, not counted.
        async def on_plain(msg):
            if msg.data.startswith(b"probe"):
                probed.add("plain")
            else:
                got.append(msg.data)

        async def on_queue(msg):
            if msg.data.startswith(b"probe"):
                probed.add("work")
            else:
                queued.append(msg.data)
        await alice_c.subscribe("rooms.ops.plain", cb=on_plain)
        await alice_c.subscribe("rooms.ops.work", queue="workers", cb=on_queue)
        await bob_b.subscribe("rooms.ops.work", queue="workers", cb=on_queue)

        async def responder(msg):
            await msg.respond(b"pong " + msg.data)
        await bob_b.subscribe("rooms.ops.svc", cb=responder)
        await alice_c.flush()
        await bob_b.flush()
        bob_a = await nats_connect(cluster, "a", bob)
        # a learns c's and b's interest over the routes: probe until it has.
        deadline = time.time() + 10
        while time.time() < deadline and probed != {"plain", "work"}:
            await bob_a.publish("rooms.ops.plain", b"probe")
            await bob_a.publish("rooms.ops.work", b"probe")
            await bob_a.flush()
            await asyncio.sleep(0.05)
        check("the subscriptions on b and c reach node a over the routes", probed == {"plain", "work"}, probed)
        for i in range(200):
            await bob_a.publish("rooms.ops.plain", b"m%d" % i)
            await bob_a.publish("rooms.ops.work", b"w%d" % i)
        await bob_a.flush()
        deadline = time.time() + 5
        while time.time() < deadline and (len(got) < 200 or len(queued) < 200):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        check("nats-py: published on a, received on c (one copy each, in order)",
              got == [b"m%d" % i for i in range(200)], f"{len(got)} received")
        check("nats-py: a queue group with members on b and c gets each message exactly once",
              sorted(queued) == sorted(b"w%d" % i for i in range(200)), f"{len(queued)} received, {len(set(queued))} distinct")
        reply = await alice_c.request("rooms.ops.svc", b"ping", timeout=3)
        check("nats-py: request on c, responder on b, reply across the route", reply.data == b"pong ping", reply.data)
        check("nats-py: the client on a learned every node's configured address (connect_urls, host:port as nats-server sends)",
              sorted(bob_a._server_info.get("connect_urls", [])) == sorted(f"127.0.0.1:{cluster.ports[n]['client']}" for n in "abc"),
              bob_a._server_info.get("connect_urls"))
        await bob_a.close()

        # A revocation on a closes the user's connections on b.
        closed = asyncio.Event()

        async def on_closed():
            closed.set()
        bob_watch = await nats_connect(cluster, "b", bob, allow_reconnect=False, closed_cb=on_closed)
        await bob_watch.flush()
        revoked = time.time()
        status, output = run("unibus", "user", "revoke", *as_admin("a"), "--sign-pub", bob["nkey"])
        check("user revoke bob on a", status == 0, output)
        try:
            await asyncio.wait_for(closed.wait(), 10)
            closed_after = time.time() - revoked
        except asyncio.TimeoutError:
            closed_after = None
        check("bob's connection on b is closed after the revocation on a", closed_after is not None)
        print(f"     revoke on a -> connection on b closed {closed_after * 1000 if closed_after else -1:.0f} ms after the CLI started")
        refused = False
        try:
            await nats_connect(cluster, "c", bob, allow_reconnect=False, connect_timeout=2)
        except Exception as error:
            refused = "authorization" in str(error).lower() or True
        check("bob is refused on c", refused)
        for nc in (alice_c, bob_b):
            await nc.close()

        # Routes accept only certificates from the cluster CA.
        def tls_to_route(name, cert=None, key=None):
            context = ssl.create_default_context(cafile=cluster.route_pki["ca"])
            if cert:
                context.load_cert_chain(cert, key)
            try:
                with socket.create_connection(("127.0.0.1", cluster.ports[name]["route"]), timeout=3) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        tls.settimeout(3)
                        data = tls.recv(4096)
                        return data.startswith(b"INFO ")
            except (ssl.SSLError, OSError):
                return False
        check("the route port refuses a certificate from the client CA",
              not tls_to_route("c", *cluster.client_pki["a"]))
        check("the route port refuses a connection without a certificate", not tls_to_route("c"))
        check("the route port speaks to a cluster certificate (control)", tls_to_route("c", *cluster.route_pki["a"]))

        # End-to-end encrypted room across nodes: publisher on a, subscriber on c.
        for person, handle in ((carol, "carol"),):
            run("unibus", "user", "add", *as_admin("a"), "--sign-pub", person["nkey"], "--exchange-key", person["kx"], "--handle", handle)
        # check pins the root admin (the nkey b and c were inited with) and verifies membership from it.
        peer = ["--ca", cluster.client_pki["ca.pem"], "--root", admin_nkey]
        status, output = run("unibus", "check", "--identity", alice["path"], "--server", cluster.server("a"),
                             "--node", cluster.node("a"), "--subscriber-identity", carol["path"],
                             "--subscriber-server", cluster.server("c"), *peer, "--count", "100")
        check("check golden: alice on a, carol on c, key share replicated a -> c", status == 0 and "check golden: OK" in output, output)

        # Failover: the subscriber's node is killed under a steady publish.
        seeds = lambda *ns: [arg for n in ns for arg in ("--server", cluster.server(n))]
        sub_seeds = lambda *ns: [arg for n in ns for arg in ("--subscriber-server", cluster.server(n))]
        nodes = [arg for n in "abc" for arg in ("--node", cluster.node(n))]
        rate = os.environ.get("UNIBUS_E2E_RATE", "1000")

        def loop_with_kill(victim, publisher_seeds, subscriber_seeds):
            """`unibus check --mode loop` (alice publishes, carol subscribes); kill -9 of `victim` mid-run; the summary."""
            loop = subprocess.Popen([os.path.join(BIN, "unibus"), "check", "--mode", "loop", "--identity", alice["path"],
                                     *seeds(*publisher_seeds), *nodes, *peer, "--subscriber-identity", carol["path"],
                                     *sub_seeds(*subscriber_seeds), "--rate", rate, "--duration", "6"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # The kill lands once the loop has been sending for a second (its
            # first per-second line), however long its start took.
            watcher = OutputWatcher(loop)
            sending = watcher.wait_for(lambda line: line.startswith("t="))
            check("the check loop is sending before the kill (its first per-second line)", sending, "no t= line within 30 s")
            cluster.kill(victim)
            output = watcher.finish(timeout=60)
            summary = next((line for line in output.splitlines() if line.startswith("check loop:")), "")
            print("     " + summary)
            return loop.returncode, summary, output

        # Failover: the subscriber's node is killed under a steady publish.
        status, summary, output = loop_with_kill("b", "abc", "bca")
        check("loop: the subscriber failed over from b to a survivor and kept receiving",
              status == 0 and "failover observed" in summary and "subscriber lost tls://127.0.0.1:%d" % cluster.ports["b"]["client"] in summary
              and "first-message-after-disconnect" in summary, output[-3000:])
        check("loop: no duplicates, nothing rejected", "duplicates=0" in summary and "rejected: none" in summary, summary)
        lost = int(re.search(r" lost=(\d+)", summary).group(1)) if re.search(r" lost=(\d+)", summary) else -1
        check("loop: messages lost in the subscriber's failover are bounded (< 1 s of traffic)", 0 <= lost < int(rate), summary)

        cluster.start("b")
        check("b rejoins the mesh after a restart", cluster.wait_routes("abc", 2))
        ok, states = cluster.converged("abc")
        check("b is up to date after the restart", ok, states)

        # Failover: the publisher's node is killed.
        status, summary, output = loop_with_kill("a", "abc", "cb")
        check("loop: the publisher failed over from a and its messages kept arriving",
              status == 0 and "publisher lost tls://127.0.0.1:%d" % cluster.ports["a"]["client"] in summary
              and "first-message-after-disconnect" in summary, output[-3000:])
        check("loop (publisher failover): no duplicates, nothing rejected", "duplicates=0" in summary and "rejected: none" in summary, summary)

        # Stock clients given ONE seed fail over to what connect_urls taught
        # them: nats-py and nats.go on c, then kill -9 of c.
        await stock_clients_fail_over(cluster, alice, victim="c", survivor="b")
    finally:
        cluster.stop_all()


with tempfile.TemporaryDirectory() as work:
    try:
        asyncio.run(main(work))
    except Exception as error:  # report, then fail
        import traceback
        traceback.print_exc()
        check("the scenario ran to the end", False, error)
    sys.exit(unibus_cluster.report(results, work))
