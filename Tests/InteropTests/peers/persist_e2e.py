#!/usr/bin/env python3
"""Persisted rooms through three real unibusd processes (mutual-TLS routes,
TLS clients) and the unibus CLI:

- `unibus send` is acknowledged once stored; history reads back on every node;
- a node killed with -9 catches up when it returns (anti-entropy);
- retention by count is applied on every node;
- joined vs shared history for a late joiner; a removed member reads nothing more;
- a client that restarts (same --state-dir) reads history and its spool is sent;
- kill -9 of a node in the middle of a burst loses no acknowledged frame;
- `unibus check --mode loop --persist` loses nothing and duplicates nothing when
  the subscriber's node, then the publisher's node, is killed.

    persist_e2e.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unibus_cluster  # noqa: E402
from servers import OutputWatcher  # noqa: E402
from unibus_cluster import Cluster, identity, run  # noqa: E402

BIN = sys.argv[1]
unibus_cluster.configure(BIN)
RATE = os.environ.get("UNIBUS_E2E_RATE", "1000")
results = unibus_cluster.results
check = unibus_cluster.check


def main(work):
    cluster = Cluster(work)
    admin = os.path.join(work, "admin.json")
    root, outcomes = cluster.init(admin)
    for name, status, output in outcomes:
        check(f"node {name}: init" + ("" if name == "a" else " with the root's nkey"), status == 0, output)
    for name in "abc":
        cluster.start(name)
    check("three nodes link in a full mesh", cluster.wait_routes("abc", 2))
    as_admin = lambda n: ["--identity", admin, "--node", cluster.node(n), "--ca", cluster.client_pki["ca.pem"]]

    people = {name: identity(work, name) for name in ("alice", "bob", "carol")}
    for name, person in people.items():
        status, output = run("unibus", "user", "add", *as_admin("a"), "--sign-pub", person["nkey"], "--exchange-key", person["kx"],
                             "--handle", name)
        check(f"user add {name}", status == 0, output)

    def peer(name, node, state=True, servers=None):
        args = ["--identity", people[name]["path"], "--ca", cluster.client_pki["ca.pem"], "--root", root,
                "--node", cluster.node(node)]
        for server in (servers or [node]):
            args += ["--server", cluster.server(server)]
        if state:
            args += ["--state-dir", os.path.join(work, "state-" + name)]
        return args

    def send(name, node, room, lines, servers=None, timeout=60, extra=()):
        done = subprocess.run([os.path.join(BIN, "unibus"), "send", *peer(name, node, servers=servers), "--id", room, *extra],
                              input="".join(line + "\n" for line in lines), capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def history(name, node, room, last=1000):
        status, output = run("unibus", "history", *peer(name, node, servers=[node]), "--id", room, "--last", str(last), "--json")
        try:
            document = json.loads(output[output.index("{"):]) if "{" in output else {}
        except ValueError:
            document = {}
        return status, [m.get("text") for m in document.get("messages", [])], document.get("unreadable", {}), output

    # A persisted room: alice owns it, bob is a member from the start.
    status, output = run("unibus", "room", "create", *as_admin("a"), "--id", "hist", "--subject", "rooms.hist", "--persist",
                         "--retain-messages", "100000", "--retain-age", "1d", "--history", "shared")
    check("room create --persist --retain-messages --retain-age --history", status == 0, output)
    for name in ("alice", "bob"):
        status, output = run("unibus", "room", "add-member", *as_admin("a"), "--id", "hist", "--sign-pub", people[name]["nkey"])
        check(f"add-member {name}", status == 0, output)
    converged, states = cluster.converged("abc")
    check("the cluster converges on the room and its members", converged, states)
    status, output = run("unibus", "room", "show", *as_admin("b"), "--id", "hist")
    check("the policy is replicated (room show on b)", "policy.persist: true" in output and "policy.history: shared" in output, output)

    lines = [f"first {i}" for i in range(50)]
    status, output = send("alice", "a", "hist", lines)
    check("unibus send: 50 lines acknowledged as stored", status == 0 and "all stored" in output, output)
    for node in "abc":
        deadline = time.time() + 15
        while True:
            status, texts, unreadable, output = history("bob", node, "hist")
            if texts == lines or time.time() > deadline:
                break
            time.sleep(0.2)
        check(f"history on {node}: every message, in order, decrypted by bob", texts == lines, f"{len(texts)} {unreadable} {output[-500:]}")

    # kill -9 of c; frames sent meanwhile reach c when it returns.
    cluster.kill("c")
    more = [f"while c was down {i}" for i in range(30)]
    status, output = send("alice", "a", "hist", more)
    check("send while c is down: acknowledged (a and b hold them)", status == 0 and "all stored" in output, output)
    cluster.start("c")
    check("c rejoins", cluster.wait_routes("abc", 2))
    deadline = time.time() + 20
    while True:
        status, texts, unreadable, output = history("bob", "c", "hist")
        if texts == lines + more or time.time() > deadline:
            break
        time.sleep(0.3)
    check("c caught up after its restart (anti-entropy): 80 messages in order", texts == lines + more, f"{len(texts)} {output[-400:]}")

    # Retention by count, on every node.
    status, output = run("unibus", "room", "create", *as_admin("a"), "--id", "short", "--subject", "rooms.short", "--persist",
                         "--retain-messages", "10")
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "short", "--sign-pub", people["alice"]["nkey"])
    status, output = send("alice", "b", "short", [f"s{i}" for i in range(25)])
    check("send 25 to a room that keeps 10", status == 0, output)
    for node in "abc":
        deadline = time.time() + 15
        while True:
            status, texts, _, output = history("alice", node, "short")
            if texts == [f"s{i}" for i in range(15, 25)] or time.time() > deadline:
                break
            time.sleep(0.2)
        check(f"retention on {node}: the newest 10 only", texts == [f"s{i}" for i in range(15, 25)], f"{texts} {output[-300:]}")

    # Retention by bytes, on every node: 1 KiB keeps the newest few frames only.
    run("unibus", "room", "create", *as_admin("a"), "--id", "small", "--subject", "rooms.small", "--persist", "--retain-bytes", "1KiB")
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "small", "--sign-pub", people["alice"]["nkey"])
    status, output = send("alice", "c", "small", [f"b{i}" for i in range(20)])
    check("send 20 to a room that keeps 1 KiB", status == 0, output)
    kept = {}
    for node in "abc":
        deadline = time.time() + 15
        while True:
            status, texts, _, output = history("alice", node, "small")
            if (0 < len(texts) < 20 and texts == [f"b{i}" for i in range(20 - len(texts), 20)]) or time.time() > deadline:
                break
            time.sleep(0.2)
        kept[node] = texts
        check(f"retention by bytes on {node}: only the newest frames, in order", 0 < len(texts) < 20
              and texts == [f"b{i}" for i in range(20 - len(texts), 20)], f"{texts} {output[-300:]}")
    check("every node keeps the same newest frames by bytes", len({tuple(t) for t in kept.values()}) == 1, kept)

    # Late joiners: shared history gives carol everything; then removal cuts her off.
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "hist", "--sign-pub", people["carol"]["nkey"])
    # Alice's client gives carol her sessions when it next looks at the room.
    send("alice", "a", "hist", ["welcome carol"])
    deadline = time.time() + 20
    while True:
        status, texts, unreadable, output = history("carol", "b", "hist")
        if texts == lines + more + ["welcome carol"] or time.time() > deadline:
            break
        time.sleep(0.3)
    check("shared history: carol, added later, reads everything retained", texts == lines + more + ["welcome carol"],
          f"{len(texts)} {unreadable} {output[-300:]}")
    status, output = run("unibus", "room", "create", *as_admin("a"), "--id", "joinedroom", "--subject", "rooms.joinedroom", "--persist",
                         "--history", "joined")
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "joinedroom", "--sign-pub", people["alice"]["nkey"])
    send("alice", "a", "joinedroom", ["before bob"])
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "joinedroom", "--sign-pub", people["bob"]["nkey"])
    send("alice", "a", "joinedroom", ["after bob"])
    # Acknowledged once stored on a node and one peer: c may still be catching up.
    deadline = time.time() + 20
    while True:
        status, texts, unreadable, output = history("bob", "c", "joinedroom")
        if texts == ["after bob"] or time.time() > deadline:
            break
        time.sleep(0.3)
    check("joined history: bob reads from his join on only", texts == ["after bob"], f"{texts} {unreadable} {output[-300:]}")
    run("unibus", "room", "remove-member", *as_admin("a"), "--id", "hist", "--sign-pub", people["carol"]["nkey"])
    send("alice", "a", "hist", ["after carol left"])
    status, texts, unreadable, output = history("carol", "a", "hist")
    check("a removed member reads nothing more", status != 0 and "after carol left" not in output, output[-300:])

    # A restarted client: the spool. Every node dies under Alice (she would
    # fail over to any one left); what she sends then waits in her spool,
    # and her next run sends it.
    writer = subprocess.Popen([os.path.join(BIN, "unibus"), "send", *peer("alice", "a"), "--id", "hist", "--timeout", "2"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    writer.stdin.write("before the kill\n")
    writer.stdin.flush()
    deadline = time.time() + 20
    while time.time() < deadline:
        if history("bob", "b", "hist", last=1)[1] == ["before the kill"]:
            break
        time.sleep(0.2)
    # All at once: a client that fails over once must verify the membership
    # again before it seals anything (it could have missed a removal), and
    # with no node left it cannot.
    cluster.kill_all()
    writer.stdin.write("spooled 1\nspooled 2\n")
    writer.stdin.close()
    output = writer.stdout.read()
    writer.wait(timeout=60)
    check("send with every node killed under it: exit 1, two frames unacknowledged (kept in the spool)",
          writer.returncode != 0 and "unacknowledged 2" in output, output[-400:])
    for name in "abc":
        cluster.start(name)
    check("the cluster is back", cluster.wait_routes("abc", 2))
    status, output = send("alice", "a", "hist", ["after the spool"])
    check("the next run sends the spooled frames first, then its own", status == 0 and "all stored" in output, output)
    deadline = time.time() + 20
    while True:
        status, texts, _, output = history("bob", "b", "hist")
        if texts[-4:] == ["before the kill", "spooled 1", "spooled 2", "after the spool"] or time.time() > deadline:
            break
        time.sleep(0.3)
    check("the spool crossed a client restart, in order, once each",
          texts[-4:] == ["before the kill", "spooled 1", "spooled 2", "after the spool"] and texts.count("spooled 1") == 1, texts[-6:])

    # kill -9 of the node a burst goes to: no acknowledged frame is lost.
    burst = [f"burst {i}" for i in range(3000)]
    run("unibus", "room", "create", *as_admin("a"), "--id", "short2", "--subject", "rooms.short2", "--persist")
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "short2", "--sign-pub", people["alice"]["nkey"])
    run("unibus", "room", "add-member", *as_admin("a"), "--id", "short2", "--sign-pub", people["bob"]["nkey"])
    sender = subprocess.Popen([os.path.join(BIN, "unibus"), "send", *peer("alice", "b", servers=["b"]), "--id", "short2", "--progress",
                               "--timeout", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sender.stdin.write("".join(line + "\n" for line in burst))
    sender.stdin.close()
    acknowledged = 0
    for line in sender.stdout:
        match = re.match(r"stored (\d+)", line)
        if match:
            acknowledged = int(match.group(1))
            if acknowledged >= 300:
                cluster.kill("b")
                break
    rest = sender.stdout.read()
    sender.wait(timeout=60)
    for line in rest.splitlines():
        match = re.match(r"stored (\d+)", line)
        if match:
            acknowledged = max(acknowledged, int(match.group(1)))
    check("kill -9 mid-burst: the sender saw acknowledgements before the kill", acknowledged >= 300, rest[-300:])
    cluster.start("b")
    cluster.wait_routes("abc", 2)
    # The sender fails over (nodes tell clients of each other) and goes on;
    # whatever it counted as stored must be on every node, each frame once.
    for node in "bac":
        deadline = time.time() + 20
        while True:
            status, texts, _, output = history("bob", node, "short2", last=5000)
            if len(texts) >= acknowledged or time.time() > deadline:
                break
            time.sleep(0.3)
        check(f"kill -9 mid-burst: {node} holds every acknowledged frame once ({acknowledged} acknowledged, {len(texts)} held)",
              len(texts) >= acknowledged and len(set(texts)) == len(texts) and set(texts) <= set(burst), output[-300:])

    # The loss loop across failovers.
    seeds = lambda *ns: [arg for n in ns for arg in ("--server", cluster.server(n))]
    sub_seeds = lambda *ns: [arg for n in ns for arg in ("--subscriber-server", cluster.server(n))]
    nodes = [arg for n in "abc" for arg in ("--node", cluster.node(n))]

    def loop_with_kill(victim, publisher_seeds, subscriber_seeds):
        loop = subprocess.Popen([os.path.join(BIN, "unibus"), "check", "--mode", "loop", "--persist", "--identity", people["alice"]["path"],
                                 *seeds(*publisher_seeds), *nodes, "--ca", cluster.client_pki["ca.pem"], "--root", root,
                                 "--subscriber-identity", people["bob"]["path"], *sub_seeds(*subscriber_seeds), "--rate", RATE,
                                 "--duration", "6"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The kill lands once the loop has been sending for a second (its
        # first per-second line) of a 6 s run, however long its start took.
        watcher = OutputWatcher(loop)
        sending = watcher.wait_for(lambda line: line.startswith("t="))
        check("the check loop is sending before the kill (its first per-second line)", sending, "no t= line within 30 s")
        cluster.kill(victim)
        output = watcher.finish(timeout=120)
        summary = next((line for line in output.splitlines() if line.startswith("check loop:")), "")
        print("     " + summary)
        return loop.returncode, summary, output

    for victim, publisher, subscriber, who in (("c", "abc", "cab", "subscriber"), ("a", "abc", "bc", "publisher")):
        cluster.wait_routes("abc", 2)
        status, summary, output = loop_with_kill(victim, publisher, subscriber)
        check(f"loop --persist, kill -9 of the {who}'s node: lost=0 duplicates=0",
              status == 0 and " lost=0 " in summary and "duplicates=0" in summary and "unacknowledged=0" in summary
              and "failover observed" in summary, output[-3000:])
        cluster.start(victim)
    cluster.stop_all()


with tempfile.TemporaryDirectory() as work:
    try:
        main(work)
    except Exception as error:  # report, then fail
        import traceback
        traceback.print_exc()
        check("the scenario ran to the end", False, error)
    sys.exit(unibus_cluster.report(results, work))
