#!/usr/bin/env python3
"""nats-py (a stock NATS client) against a real unibusd process.

    natspy_broker.py UNIBUSD_BINARY

Each scenario starts what it needs on free loopback ports and stops it.
Prints one line per scenario and a closing "N passed, N failed"; exit 1 on
any failure, 3 if nats-py or nkeys is missing.
"""
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import eventually, free_port, make_test_pki, wait_for  # noqa: E402
import traceback

try:
    import nats
    import nats.errors
    import nkeys
    import nacl.utils
except ImportError as error:
    sys.stderr.write(f"interop peer missing: {error}; pip install nats-py nkeys\n")
    sys.exit(3)

BINARY = sys.argv[1]






class Node:
    def __init__(self, *extra, port=None):
        self.port = port or free_port()
        self.extra = list(extra)
        self.process = None

    def start(self):
        self.process = subprocess.Popen([BINARY, "run", "--listen", f"127.0.0.1:{self.port}", *self.extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.port)
        return self

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"


def new_user():
    seed = nkeys.encode_seed(nacl.utils.random(32), nkeys.PREFIX_BYTE_USER)
    return seed, nkeys.from_seed(seed).public_key.decode()


def write_allowlist(users):
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as f:
        json.dump({"users": users}, f)
    return path


async def pubsub_wildcards_queues_headers(node):
    nc = await nats.connect(node.url)
    got = {"star": [], "full": [], "queue": 0, "headers": None}
    async def star(msg): got["star"].append(msg.subject)
    async def full(msg): got["full"].append(msg.subject)
    async def queued(msg): got["queue"] += 1
    async def headered(msg): got["headers"] = (msg.headers, msg.data)
    await nc.subscribe("orders.*", cb=star)
    await nc.subscribe("orders.>", cb=full)
    for _ in range(3):
        await nc.subscribe("work", queue="workers", cb=queued)
    await nc.subscribe("h", cb=headered)
    await nc.publish("orders.new", b"1")
    await nc.publish("orders.eu.new", b"2")
    for _ in range(10):
        await nc.publish("work", b"job")
    await nc.publish("h", b"body", headers={"X-Trace": "abc", "K": "v"})
    await nc.flush()
    await eventually(lambda: got["queue"] >= 10 and got["headers"] is not None and len(got["full"]) >= 2, 5)
    await nc.close()
    assert got["star"] == ["orders.new"], got
    assert sorted(got["full"]) == ["orders.eu.new", "orders.new"], got
    assert got["queue"] == 10, f"queue group delivered {got['queue']} of 10"
    assert got["headers"] == ({"X-Trace": "abc", "K": "v"}, b"body"), got["headers"]


async def request_reply_and_no_responders(node):
    nc = await nats.connect(node.url)
    async def responder(msg):
        await msg.respond(b"re:" + msg.data)
    await nc.subscribe("svc.echo", cb=responder)
    reply = await nc.request("svc.echo", b"ping", timeout=2)
    assert reply.data == b"re:ping", reply.data
    try:
        await nc.request("svc.nobody", b"x", timeout=2)
        raise AssertionError("expected no responders")
    except nats.errors.NoRespondersError:
        pass
    await nc.close()


async def unsubscribe_with_max_and_drain(node):
    nc = await nats.connect(node.url)
    received = []
    async def cb(msg): received.append(msg.data)
    sub = await nc.subscribe("limited", cb=cb)
    await sub.unsubscribe(limit=2)
    for i in range(5):
        await nc.publish("limited", b"%d" % i)
    await nc.flush()
    await eventually(lambda: len(received) >= 2, 5)
    # nats-py enforces the maximum on its side too; the node's side of
    # UNSUB with a maximum is checked byte for byte in transcripts.py.
    assert received == [b"0", b"1"], received
    await nc.drain()


async def nkey_authentication(_):
    seed, public = new_user()
    _, stranger_public = new_user()
    allowlist = write_allowlist([{"nkey": public}])
    node = Node("--allowlist", allowlist).start()
    try:
        nc = await nats.connect(node.url, nkeys_seed_str=seed.decode(), allow_reconnect=False)
        sub = await nc.subscribe("secure")
        await nc.publish("secure", b"ok")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"ok"
        await nc.close()
        # A valid key that is not allowed, and no credentials at all: both must
        # be the broker's refusal (nats-py raises the -ERR as nats.errors.Error);
        # any other error (a timeout, a reset) propagates and fails the scenario.
        stranger_seed, _ = new_user()
        errors = []
        async def on_error(e): errors.append(e)
        for who, credentials in (("an unknown nkey", {"nkeys_seed_str": stranger_seed.decode()}),
                                 ("a client without credentials", {})):
            try:
                await nats.connect(node.url, allow_reconnect=False, error_cb=on_error, max_reconnect_attempts=0,
                                   connect_timeout=2, **credentials)
                raise AssertionError(f"{who} was allowed to connect")
            except nats.errors.Error as error:
                assert "Authorization Violation" in str(error), (who, error, errors)
    finally:
        node.stop()
        os.unlink(allowlist)


async def permission_violation_callback(_):
    seed, public = new_user()
    allowlist = write_allowlist([{"nkey": public, "permissions": {
        "publish": {"allow": ["allowed.>"]}, "subscribe": {"allow": ["allowed.>", "_INBOX.>"]}}}])
    node = Node("--allowlist", allowlist).start()
    try:
        errors = []
        async def on_error(e): errors.append(str(e))
        nc = await nats.connect(node.url, nkeys_seed_str=seed.decode(), error_cb=on_error)
        sub = await nc.subscribe("allowed.x")
        await nc.publish("denied.x", b"no")
        await nc.subscribe("denied.>")
        await nc.publish("allowed.x", b"yes")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"yes"
        await nc.flush()
        await eventually(lambda: sum("permissions violation" in e.lower() for e in errors) >= 2, 5)
        # nats-py lower-cases the server's -ERR text.
        assert any('permissions violation for publish to "denied.x"' in e.lower() for e in errors), errors
        assert any('permissions violation for subscription to "denied.>"' in e.lower() for e in errors), errors
        assert nc.is_connected, "a permission violation must not close the connection"
        await nc.close()
    finally:
        node.stop()
        os.unlink(allowlist)


async def reconnect_to_restarted_server(_):
    node = Node().start()
    reconnected = asyncio.Event()
    async def on_reconnect(): reconnected.set()
    nc = await nats.connect(node.url, reconnect_time_wait=0.2, max_reconnect_attempts=100,
                            reconnected_cb=on_reconnect)
    sub = await nc.subscribe("after.restart")
    node.stop()
    await asyncio.sleep(0.3)
    node.start()
    await asyncio.wait_for(reconnected.wait(), timeout=10)
    await nc.publish("after.restart", b"back")
    msg = await sub.next_msg(timeout=3)
    assert msg.data == b"back"
    await nc.close()
    node.stop()


async def tls_and_mutual_tls(_):
    with tempfile.TemporaryDirectory() as directory:
        pki = make_test_pki(directory)
        node = Node("--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"]).start()
        try:
            context = ssl.create_default_context(cafile=pki["ca.pem"])
            nc = await nats.connect(f"tls://127.0.0.1:{node.port}", tls=context, allow_reconnect=False)
            sub = await nc.subscribe("over.tls")
            await nc.publish("over.tls", b"secret")
            assert (await sub.next_msg(timeout=2)).data == b"secret"
            await nc.close()
            # A client that does not trust the CA must not get through.
            untrusting = ssl.create_default_context()
            try:
                await nats.connect(f"tls://127.0.0.1:{node.port}", tls=untrusting, allow_reconnect=False,
                                   max_reconnect_attempts=0, connect_timeout=2)
                raise AssertionError("connected without trusting the server's CA")
            except ssl.SSLCertVerificationError as error:
                assert "certificate verify failed" in str(error), error
        finally:
            node.stop()
        node = Node("--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                    "--tls-client-ca", pki["ca.pem"]).start()
        try:
            context = ssl.create_default_context(cafile=pki["ca.pem"])
            context.load_cert_chain(pki["client.pem"], pki["client.key"])
            nc = await nats.connect(f"tls://127.0.0.1:{node.port}", tls=context, allow_reconnect=False)
            await nc.flush()
            await nc.close()
            # In TLS 1.3 the client's handshake completes before the server
            # checks it, so the refusal is an alert ("certificate required")
            # and a close; a client writing CONNECT at that moment sometimes
            # sees only the reset (ConnectionError), not the alert. Every
            # attempt must be one of the two, and the alert must be seen.
            no_cert = ssl.create_default_context(cafile=pki["ca.pem"])
            outcomes = []
            for _ in range(10):
                try:
                    bad = await nats.connect(f"tls://127.0.0.1:{node.port}", tls=no_cert, allow_reconnect=False,
                                             max_reconnect_attempts=0, connect_timeout=2)
                    await bad.flush(timeout=2)
                    raise AssertionError("mutual TLS accepted a client without a certificate")
                except ssl.SSLError as error:
                    assert "CERTIFICATE_REQUIRED" in str(error), error
                    break
                except ConnectionError as error:
                    outcomes.append(repr(error))
            else:
                raise AssertionError(f"never saw the certificate-required alert: {outcomes}")
        finally:
            node.stop()


SCENARIOS = [
    ("pub/sub, wildcards, queue groups, headers", pubsub_wildcards_queues_headers, True),
    ("request/reply and no-responders", request_reply_and_no_responders, True),
    ("UNSUB with max and drain", unsubscribe_with_max_and_drain, True),
    ("nkey authentication (allowed, unknown, none)", nkey_authentication, False),
    ("permission violation callback, connection stays open", permission_violation_callback, False),
    ("reconnect to a restarted server", reconnect_to_restarted_server, False),
    ("TLS and mutual TLS", tls_and_mutual_tls, False),
]


async def main():
    shared = Node().start()
    passed = failed = 0
    try:
        for name, scenario, uses_shared in SCENARIOS:
            try:
                await asyncio.wait_for(scenario(shared if uses_shared else None), timeout=30)
                print(f"ok   {name}")
                passed += 1
            except Exception:  # noqa: BLE001 - any error, of any kind, is this scenario's failure
                print(f"FAIL {name}\n{traceback.format_exc()}")
                failed += 1
    finally:
        shared.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
