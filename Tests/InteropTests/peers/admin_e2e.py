#!/usr/bin/env python3
"""The admin CLI against a running unibusd (real process, real TLS with a test
CA on both planes), and a stock NATS client (nats-py) seeing the effects.

    admin_e2e.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import asyncio
import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import eventually, free_port, make_test_pki, wait_for  # noqa: E402

try:
    import nats
    import nats.errors
    import nkeys
except ImportError as error:
    sys.stderr.write(f"interop peer missing: {error}; pip install nats-py\n")
    sys.exit(3)

BIN = sys.argv[1]
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {detail}"))


def signed_request(url, context, method, path, body, seed, node_id, timestamp=None, nonce=None, headers_only=False):
    """A request signed the way the CLI signs, built independently here (Python's nkeys)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    canonical = f"UNIBUS-REQUEST-1\n{method}\n{path}\n{hashlib.sha256(body).hexdigest()}\n{timestamp}\n{nonce}\n{node_id}"
    pair = nkeys.from_seed(seed.encode())
    headers = {"unibus-key": pair.public_key.decode(), "unibus-timestamp": str(timestamp), "unibus-nonce": nonce,
               "unibus-signature": base64.urlsafe_b64encode(pair.sign(canonical.encode())).decode().rstrip("=")}
    request = urllib.request.Request(url + path, data=body if method == "POST" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def check_refused(name, server, context, seed):
    """The broker must refuse this key with its -ERR (raised by nats-py as
    nats.errors.Error); a TLS failure or a timeout is another bug, not a pass."""
    try:
        nc = await nats.connect(server, tls=context, nkeys_seed_str=seed, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3)
    except Exception as error:  # noqa: BLE001 - the kind is checked here, any other is a failed check
        check(name, isinstance(error, nats.errors.Error) and "Authorization Violation" in str(error), repr(error))
        return
    await nc.close()
    check(name, False, "connected")


def cli(*args):
    run = subprocess.run([os.path.join(BIN, "unibus"), *args], capture_output=True, text=True, timeout=30)
    return run.returncode, run.stdout + run.stderr


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_test_pki(tmp)
        data = os.path.join(tmp, "data")
        admin = os.path.join(tmp, "admin.json")
        subprocess.run([os.path.join(BIN, "unibusd"), "init", "--data-dir", data, "--admin-identity", admin],
                       check=True, capture_output=True)
        people = {}
        for name in ("alice", "mallory"):
            path = os.path.join(tmp, name + ".json")
            subprocess.run([os.path.join(BIN, "unibus"), "identity", "new", "--out", path], check=True, capture_output=True)
            shown = json.loads(cli("identity", "show", "--identity", path, "--json")[1])
            seed = cli("identity", "nkey", "--identity", path, "--seed")[1].strip()
            people[name] = {"path": path, "nkey": shown["nkey"], "kx": shown["exchange_key"], "seed": seed}
        port, control = free_port(), free_port()
        node = subprocess.Popen([os.path.join(BIN, "unibusd"), "run", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                                 "--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                                 "--control-listen", f"127.0.0.1:{control}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(port)
            wait_for(control)
            url = f"https://127.0.0.1:{control}"
            as_admin = ["--node", url, "--identity", admin, "--ca", pki["ca.pem"]]
            alice = people["alice"]

            code, out = cli("user", "add", *as_admin, "--sign-pub", alice["nkey"], "--exchange-key", alice["kx"], "--handle", "alice")
            check("admin adds a user", code == 0, out)
            code, out = cli("user", "add", *as_admin, "--sign-pub", alice["nkey"], "--exchange-key", alice["kx"], "--handle", "x", "--role", "admin")
            check("adding an existing key is 'already registered' (exit 1)", code == 1 and "already registered" in out, out)
            code, out = cli("user", "list", *as_admin, "--json")
            users = {u["key"]: u for u in json.loads(out)["users"]} if code == 0 else {}
            check("the duplicate changed nothing (role, handle)",
                  users.get(alice["nkey"], {}).get("role") == "member" and users.get(alice["nkey"], {}).get("handle") == "alice", out)
            code, out = cli("user", "add", "--node", url, "--identity", alice["path"], "--ca", pki["ca.pem"],
                            "--sign-pub", people["mallory"]["nkey"], "--exchange-key", people["mallory"]["kx"], "--handle", "m")
            check("a member may not add users", code == 1 and "only an admin may add users" in out, out)
            code, out = cli("user", "list", "--node", url, "--identity", people["mallory"]["path"], "--ca", pki["ca.pem"])
            check("an unknown caller is refused", code == 1 and "not a registered user" in out, out)
            # Connection mistakes are named with the flag or port to fix (not "I/O on closed channel").
            other = os.path.join(tmp, "other-pki")
            os.makedirs(other)
            other_pki = make_test_pki(other)
            mistakes = [
                (["--node", url, "--ca", other_pki["ca.pem"]], "does not chain to --ca"),
                (["--node", url, "--ca", pki["server.pem"]], "does not chain to --ca"),
                (["--node", f"https://127.0.0.1:{port}", "--ca", pki["ca.pem"]], "is this the control plane's port?"),
                (["--node", f"http://127.0.0.1:{control}"], "use https:// and --ca"),
                (["--node", f"https://127.0.0.1:{free_port()}", "--ca", pki["ca.pem"]], "connection refused (nothing listens there"),
            ]
            for arguments, expected in mistakes:
                code, out = cli("user", "list", "--identity", admin, *arguments)
                check(f"a connection mistake is named: {expected}",
                      code != 0 and expected in out and "I/O on closed channel" not in out and "handshake.cc" not in out, out)
            # --from-identity: the public document `identity show --json` prints, no keys copied by hand.
            carol_path, carol_public = os.path.join(tmp, "carol.json"), os.path.join(tmp, "carol.public.json")
            subprocess.run([os.path.join(BIN, "unibus"), "identity", "new", "--out", carol_path], check=True, capture_output=True)
            with open(carol_public, "w") as file:
                file.write(cli("identity", "show", "--identity", carol_path, "--json")[1])
            code, out = cli("user", "add", *as_admin, "--from-identity", carol_public, "--handle", "carol")
            carol_key = json.loads(open(carol_public).read())["nkey"]
            code2, listed = cli("user", "list", *as_admin, "--json")
            check("user add --from-identity takes both public keys from `identity show --json` output",
                  code == 0 and code2 == 0 and any(u["key"] == carol_key and u["handle"] == "carol" for u in json.loads(listed)["users"]), out)
            code, out = cli("user", "add", *as_admin, "--from-identity", carol_public, "--sign-pub", carol_key, "--handle", "c2")
            check("--from-identity with --sign-pub is refused by name", code != 0 and "--from-identity" in out, out)
            code, out = cli("user", "list", "--node", url, "--identity", admin)
            check("https without --ca is refused", code == 1 and "without --ca" in out, out)
            code, out = cli("room", "create", *as_admin, "--id", "ops", "--subject", "rooms.ops")
            check("create a room", code == 0, out)
            cli("room", "create", *as_admin, "--id", "hr", "--subject", "rooms.hr")
            code, out = cli("room", "create", *as_admin, "--id", "p", "--subject", "rooms.p", "--persist", "--retain-messages", "0")
            check("a persisted room's retention out of range is refused by name", code == 1 and "retain_messages" in out, out)
            code, out = cli("room", "create", *as_admin, "--id", "p", "--subject", "rooms.p", "--retain-age", "1d")
            check("retention without --persist is refused by name", code == 1 and "--persist" in out, out)
            code, out = cli("room", "create", *as_admin, "--id", "p", "--subject", "rooms.p", "--persist", "--retain-age", "2d",
                            "--history", "shared")
            check("create a persisted room", code == 0, out)
            code, out = cli("room", "show", *as_admin, "--id", "p")
            check("room show names its persistence", "policy.persist: true" in out and "policy.retain_age_seconds: 172800" in out
                  and "policy.history: shared" in out, out)
            code, out = cli("room", "add-member", *as_admin, "--id", "ops", "--sign-pub", alice["nkey"])
            check("owner adds a member", code == 0, out)
            code, out = cli("room", "show", *as_admin, "--id", "ops")
            check("room show", code == 0 and "subject: rooms.ops" in out and "policy.encrypt: true" in out, out)
            code, out = cli("room", "members", *as_admin, "--id", "ops", "--json")
            check("members lists both", code == 0 and len(json.loads(out)["members"]) == 2, out)

            context = ssl.create_default_context(cafile=pki["ca.pem"])
            for path in ("/healthz", "/readyz", "/metrics"):
                with urllib.request.urlopen(f"{url}{path}", context=context, timeout=5) as response:
                    body = response.read().decode()
                check(f"GET {path} over TLS", response.status == 200 and ('unibus_auth_failures_total{reason="bad_signature"}' in body if path == "/metrics" else True), body[:80])

            # The request signature, checked at the HTTP level with a signer we did not write.
            admin_seed = cli("identity", "nkey", "--identity", admin, "--seed")[1].strip()
            with urllib.request.urlopen(f"{url}/v1/node", context=context, timeout=5) as response:
                node_id = json.loads(response.read())["node_id"]
            status, body = signed_request(url, context, "GET", "/v1/users", b"", admin_seed, node_id, nonce="fixed-nonce-123")
            check("a request signed by Python's nkeys is accepted", status == 200, body[:100])
            status, body = signed_request(url, context, "GET", "/v1/users", b"", admin_seed, node_id, nonce="fixed-nonce-123")
            check("the same request replayed is refused (401)", status == 401 and "already used" in body, body[:100])
            status, body = signed_request(url, context, "GET", "/v1/users", b"", admin_seed, "NOTHISNODE")
            check("a request signed for another node is refused (401)", status == 401, body[:100])
            status, body = signed_request(url, context, "GET", "/v1/users", b"", admin_seed, node_id, timestamp=int(time.time()) - 300)
            check("a request outside the time window is refused (401)", status == 401 and "clock" in body, body[:100])
            status, body = signed_request(url, context, "POST", "/v1/operations", b"{" + b" " * 70000 + b"}", admin_seed, node_id)
            check("an oversized body is refused (413)", status == 413, body[:100])
            status, body = signed_request(url, context, "POST", "/v1/operations", b"not json", admin_seed, node_id)
            check("a malformed body is refused (400)", status == 400, body[:100])

            # A stock NATS client sees membership.
            server = f"tls://127.0.0.1:{port}"
            await check_refused("an unknown key is refused by the broker", server, context, people["mallory"]["seed"])
            errors, closed = [], asyncio.Event()
            async def on_error(e): errors.append(str(e).lower())
            async def on_closed(): closed.set()
            nc = await nats.connect(server, tls=context, nkeys_seed_str=alice["seed"], error_cb=on_error,
                                    closed_cb=on_closed, allow_reconnect=False, inbox_prefix=f"_INBOX.{alice['nkey']}".encode())
            sub = await nc.subscribe("rooms.ops")
            await nc.publish("rooms.ops", b"hello ops")
            message = await sub.next_msg(timeout=3)
            check("a member uses its room's subject", message.data == b"hello ops")
            await nc.publish("rooms.hr", b"nope")
            await nc.flush()
            await eventually(lambda: any('permissions violation for publish to "rooms.hr"' in e for e in errors), 5)
            check("and not another room's", any('permissions violation for publish to "rooms.hr"' in e for e in errors), errors)

            code, out = cli("room", "add-member", *as_admin, "--id", "hr", "--sign-pub", alice["nkey"])
            hr = await nc.subscribe("rooms.hr")
            await nc.publish("rooms.hr", b"now allowed")
            try:
                message = await hr.next_msg(timeout=3)
                check("add-member takes effect without reconnecting", code == 0 and message.data == b"now allowed", out)
            except Exception as error:  # noqa: BLE001 - any error here is this check's failure, recorded
                check("add-member takes effect without reconnecting", False, f"{error!r} {errors}")

            start = time.monotonic()
            code, out = cli("user", "revoke", *as_admin, "--sign-pub", alice["nkey"])
            try:
                await asyncio.wait_for(closed.wait(), timeout=3)
                check("revoke closes the user's connection", code == 0, f"{out} after {time.monotonic() - start:.2f}s")
            except asyncio.TimeoutError:
                check("revoke closes the user's connection", False, "still connected after 3 s")
            await check_refused("a revoked user cannot reconnect", server, context, alice["seed"])
            code, out = cli("room", "members", *as_admin, "--id", "ops")
            check("revocation removed the user from every room", code == 0 and alice["nkey"] not in out, out)
            # Revoke, then add again: the key is reinstated (a new operation), in no room.
            code, out = cli("user", "add", *as_admin, "--sign-pub", alice["nkey"], "--exchange-key", alice["kx"], "--handle", "alice")
            check("a revoked user can be added again (reinstated)", code == 0, out)
            code, out = cli("user", "list", *as_admin)
            check("the reinstated user is active", code == 0 and "alice" in out and "revoked" not in out.split(alice["nkey"])[-1].split("\n")[0], out)
        finally:
            node.terminate()
            node.wait(timeout=10)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
