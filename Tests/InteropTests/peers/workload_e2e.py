#!/usr/bin/env python3
"""Workload login with JWT (issue 16) through a three-node cluster of real
unibusd processes (mutual-TLS routes, TLS clients), with tokens made by an
independent library (PyJWT with `cryptography`):

- an admin adds a login role with `unibus role add` (RSA and Ed25519 keys as
  PEM, the EC key as a JWK); every node lists it;
- valid RS256, ES256 and EdDSA logins (`unibus login`), one through each
  node, whose workloads then use the bus: each sends to the role's persisted
  room, and a member reads all three, decrypted;
- the known attacks, each refused with its reason and no identity written:
  alg none, RS->HS confusion (HMAC keyed with the RSA public key, built by
  hand), a kid naming no pinned key, jku/x5u headers (ignored: a local
  server sees no request), expired, not yet valid, wrong issuer, wrong
  audience, missing or non-string user claim, bound claim mismatch, a
  replayed jti, a token for another role, a token bound to another key;
- a forged workload login injected by a peer node over a mutual-TLS route
  (a compromised node holding a cluster certificate): refused by every node
  (the key is no user anywhere and cannot connect) and by a client verifying
  the log itself; the same for a node reusing a real workload's token;
- expiry by the clock: a workload connected to all three nodes is
  disconnected by every node when its login ends, cannot reconnect, and
  logs in again with a fresh token (same key); removing the role logs out
  its workloads everywhere.

    workload_e2e.py BIN_DIR
"""
import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unibus_cluster  # noqa: E402
from unibus_cluster import Cluster, identity, report, run  # noqa: E402
from servers import free_port, wait_until  # noqa: E402

try:
    import jwt
    import nats
    import nkeys
    from jwt.algorithms import ECAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
except ImportError as error:
    sys.stderr.write(f"interop peer missing: {error}; pip install PyJWT cryptography nats-py nkeys\n")
    sys.exit(3)

BIN = sys.argv[1]
unibus_cluster.configure(BIN)
results = unibus_cluster.results
check = unibus_cluster.check
ISSUER = "https://idp.test"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data):
    """Canonical unpadded standard base64 (what Base64.decode accepts)."""
    return base64.b64encode(data).decode().rstrip("=")


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def nkey_public_bytes(nkey):
    """The 32 key bytes of a user nkey (base32: prefix byte, key, CRC16)."""
    raw = base64.b32decode(nkey + "=" * (-len(nkey) % 8))
    return raw[1:33]


def thumbprint(nkey):
    """RFC 7638 thumbprint of an Ed25519 key as an OKP JWK, computed here independently."""
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(nkey_public_bytes(nkey))}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(jwk.encode()).digest())


class FetchWitness(http.server.BaseHTTPRequestHandler):
    """Counts requests: a jku or x5u URL must never be fetched."""
    hits = 0

    def do_GET(self):  # noqa: N802
        FetchWitness.hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"keys": []}')

    def log_message(self, *args):
        pass


class RogueRoute:
    """A compromised cluster member: a mutual-TLS route opened with a valid
    cluster certificate, completing the handshake with its own node key, then
    sending replication frames (a real node relays what it holds this way)."""

    def __init__(self, port, cert, key, ca):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw)
        self.sock.settimeout(5)
        der = self.sock.getpeercert(binary_form=True)   # unused: the proof names our own leaf
        with open(cert) as f:
            leaf_pem = f.read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        self.fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf_pem)).hexdigest()
        self.buffer = b""
        line = self.read_line()
        assert line.startswith(b"INFO "), line
        self.info = json.loads(line[5:])
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)
        self.pair = nkeys.from_seed(bytearray(seed))
        self.server_id = self.pair.public_key.decode()
        del der

    def read_line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("route closed: " + self.buffer[:300].decode(errors="replace"))
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def handshake(self):
        nonce = b64url(os.urandom(18))
        info = {"server_id": self.server_id, "cluster": self.info["cluster"], "root": self.info["root"], "name": "rogue",
                "nonce": nonce, "proto": self.info.get("proto", 1)}
        proof = f"UNIBUS-ROUTE-2\n{self.info['nonce']}\n{self.server_id}\n{self.info['server_id']}\n{self.info['cluster']}\n{self.fingerprint}"
        signature = b64url(self.pair.sign(proof.encode()))
        self.sock.sendall(b"INFO " + json.dumps(info).encode() + b"\r\nAUTH " + json.dumps({"sig": signature}).encode() + b"\r\n")

    def operation(self, data, signature):
        payload = json.dumps({"t": "op", "bytes": b64(data), "signature": b64(signature)}, sort_keys=True).encode()
        self.sock.sendall(b"RDATA %d\r\n" % len(payload) + payload + b"\r\n")

    def barrier(self):
        """PING, then read until PONG: the frames before it were handled."""
        self.sock.sendall(b"PING\r\n")
        deadline = time.time() + 10
        while b"PONG\r\n" not in self.buffer and time.time() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("route closed: " + self.buffer[-300:].decode(errors="replace"))
            self.buffer += chunk
        return b"PONG\r\n" in self.buffer

    def close(self):
        self.sock.close()


def operation_time():
    at = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def login_operation(seed, nkey, kx, role, token, parents):
    """A loginWorkload operation as SignedOperation.sign writes it, signed here with nkeys."""
    envelope = {"actor": nkey, "nonce": b64(os.urandom(12)), "parents": sorted(set(parents)), "timestamp": operation_time(), "version": 2,
                "operation": {"loginWorkload": {"exchangeKey": kx, "role": role, "token": token}}}
    data = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
    return data, nkeys.from_seed(seed.encode()).sign(data)


def main(work):
    cluster = Cluster(work)
    admin = os.path.join(work, "admin.json")
    root, outcomes = cluster.init(admin)
    for name, status, output in outcomes:
        check(f"node {name}: init", status == 0, output)
    for name in "abc":
        cluster.start(name)
    check("three nodes link in a full mesh", cluster.wait_routes("abc", 2))
    ca = cluster.client_pki["ca.pem"]
    as_admin = lambda n: ["--identity", admin, "--node", cluster.node(n), "--ca", ca]  # noqa: E731

    alice = identity(work, "alice")
    status, output = run("unibus", "user", "add", *as_admin("a"), "--sign-pub", alice["nkey"], "--exchange-key", alice["kx"], "--handle", "alice")
    check("user add alice", status == 0, output)
    status, output = run("unibus", "room", "create", *as_admin("a"), "--id", "jobs", "--subject", "rooms.jobs", "--persist",
                         "--retain-messages", "100000", "--retain-age", "1d")
    check("room create jobs (persisted)", status == 0, output)
    status, output = run("unibus", "room", "add-member", *as_admin("a"), "--id", "jobs", "--sign-pub", alice["nkey"])
    check("alice joins jobs", status == 0, output)

    # The identity provider's keys, made here.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    other_idp = ed25519.Ed25519PrivateKey.generate()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = {name: os.path.join(work, name) for name in ("rsa.pem", "ec.jwk", "ed.pem", "other.pem")}
    with open(paths["rsa.pem"], "w") as f:
        f.write(public_pem(rsa_key))
    with open(paths["ec.jwk"], "w") as f:
        f.write(ECAlgorithm.to_jwk(ec_key.public_key()))
    with open(paths["ed.pem"], "w") as f:
        f.write(public_pem(ed_key))
    with open(paths["other.pem"], "w") as f:
        f.write(public_pem(other_idp))

    status, output = run("unibus", "role", "add", *as_admin("a"), "--name", "ci", "--issuer", ISSUER,
                         "--key", paths["rsa.pem"], "--kid", "rsa1", "--key", paths["ec.jwk"], "--kid", "ec1", "--key", paths["ed.pem"], "--kid", "ed1",
                         "--algorithm", "RS256", "--algorithm", "ES256", "--algorithm", "EdDSA", "--audience", "unibus",
                         "--claim", "project=ci-*", "--user-claim", "worker_id", "--room", "jobs", "--ttl", "300",
                         "--claim-mapping", "project=project")
    check("role add ci (RSA and Ed25519 PEM, EC JWK; RS256, ES256, EdDSA; room jobs)", status == 0, output)
    status, output = run("unibus", "role", "add", *as_admin("b"), "--name", "deploy", "--issuer", "https://deploy.idp",
                         "--key", paths["other.pem"], "--algorithm", "EdDSA", "--audience", "deploy", "--user-claim", "worker_id",
                         "--ttl", "300", "--require-key-binding")
    check("role add deploy (another issuer, key binding required)", status == 0, output)
    converged, states = cluster.converged("abc")
    check("the cluster converges on the roles", converged, states)
    status, output = run("unibus", "role", "list", *as_admin("c"), "--json")
    listed = json.loads(output).get("roles", []) if status == 0 else []
    check("role list on node c shows both roles as signed", sorted(r.get("name") for r in listed) == ["ci", "deploy"], output)

    now = int(time.time())

    def claims(**changes):
        body = {"iss": ISSUER, "aud": "unibus", "sub": "job-1", "worker_id": "worker-7", "project": "ci-build",
                "iat": now, "nbf": now, "exp": now + 600, "jti": os.urandom(8).hex()}
        for key, value in changes.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def token_file(name, token):
        path = os.path.join(work, name + ".jwt")
        with open(path, "w") as f:
            f.write(token)
        return path

    def login(name, token, node="a", role="ci", existing=False):
        out = os.path.join(work, name + ".id.json")
        args = ["--role", role, "--jwt", token_file(name, token), "--out", out, "--node", cluster.node(node), "--ca", ca, "--json"]
        status, output = run("unibus", "login", *args, *(["--existing"] if existing else []))
        return status, output, out

    # ---- valid logins, one through each node, then the bus
    valid = {
        "rs256": (jwt.encode(claims(worker_id="rs-worker"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "a"),
        "es256": (jwt.encode(claims(worker_id="es-worker"), ec_key, algorithm="ES256", headers={"kid": "ec1"}), "b"),
        "eddsa": (jwt.encode(claims(worker_id="ed-worker"), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "c"),
    }
    workloads = {}
    for name, (token, node) in valid.items():
        # The role's 300 s ttl ends first (exp is 600 s out), counted from the
        # second the login is signed, somewhere between these two.
        signed_after = int(time.time())
        status, output, out = login(name, token, node)
        signed_before = int(time.time())
        accepted = json.loads(output[output.index("{"):]) if status == 0 and "{" in output else {}
        check(f"{name.upper()} login through node {node}: a workload in jobs until exp/ttl",
              status == 0 and accepted.get("rooms") == ["jobs"] and accepted.get("role") == "ci"
              and signed_after + 300 <= accepted.get("expiresAt", 0) <= signed_before + 300, output)
        check(f"{name.upper()} login: identity file written 0600",
              os.path.exists(out) and stat.S_IMODE(os.stat(out).st_mode) == 0o600, out)
        if status == 0:
            seed = run("unibus", "identity", "nkey", "--identity", out, "--seed")[1].strip()
            workloads[name] = {"path": out, "nkey": accepted["key"], "seed": seed, "node": node, "token": token}
    converged, states = cluster.converged("abc")
    check("every node folds the three logins alike", converged, states)

    def peer(person_path, node):
        return ["--identity", person_path, "--ca", ca, "--root", root, "--node", cluster.node(node), "--server", cluster.server(node)]

    for name, workload in workloads.items():
        done = subprocess.run([os.path.join(BIN, "unibus"), "send", *peer(workload["path"], workload["node"]), "--id", "jobs"],
                              input=f"hello from {name}\n", capture_output=True, text=True, timeout=60)
        check(f"{name.upper()} workload sends to jobs through node {workload['node']} (stored)", done.returncode == 0, done.stdout + done.stderr)

    def read_jobs():
        status, output = run("unibus", "history", *peer(alice["path"], "b"), "--id", "jobs", "--last", "100", "--json")
        try:
            return sorted(m.get("text") for m in json.loads(output[output.index("{"):]).get("messages", []))
        except ValueError:
            return []
    texts = []
    wait_until(lambda: (texts.__setitem__(slice(None), read_jobs()) or len(texts) == 3), timeout=30)
    check("alice reads the three workloads' messages, decrypted",
          len(workloads) == 3 and texts == [f"hello from {n}" for n in sorted(workloads)], texts)
    status, output = run("unibus", "user", "list", *as_admin("c"), "--json")
    check("the workloads are users with role workload and the handle from worker_id",
          status == 0 and output.count('"workload"') >= 3 and "rs-worker" in output and "ed-worker" in output, output[:2000])

    # ---- attacks, each refused with its reason and no identity written
    witness = http.server.HTTPServer(("127.0.0.1", 0), FetchWitness)
    threading.Thread(target=witness.serve_forever, daemon=True).start()
    fetch_url = f"http://127.0.0.1:{witness.server_address[1]}/jwks.json"
    rsa_public_pem = public_pem(rsa_key).encode()

    def hs256_with_public_key():
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
        payload = b64url(json.dumps(claims()).encode())
        mac = hmac.new(rsa_public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(mac)}"

    def alg_none():
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(claims()).encode())}."

    bound_elsewhere = jwt.encode({**claims(), "iss": "https://deploy.idp", "aud": "deploy", "cnf": {"jkt": thumbprint(alice["nkey"])}},
                                 other_idp, algorithm="EdDSA")
    attacks = [
        ("alg none", alg_none(), "ci", "algorithm"),
        ("RS->HS confusion (HS256 keyed with the RSA public key)", hs256_with_public_key(), "ci", "algorithm"),
        ("a kid naming no pinned key", jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"}), "ci", "unknown key id"),
        ("jku and x5u to the attacker's keys (never fetched)",
         jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "rsa1", "jku": fetch_url, "x5u": fetch_url}), "ci", "signature"),
        ("expired", jwt.encode(claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "expired"),
        ("not yet valid", jwt.encode(claims(nbf=now + 3600), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "not yet valid"),
        ("wrong issuer", jwt.encode(claims(iss="https://evil.idp"), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "issuer not trusted"),
        ("wrong audience", jwt.encode(claims(aud="other-service"), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "audience not allowed"),
        ("missing user claim", jwt.encode(claims(worker_id=None), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "user claim"),
        ("non-string user claim", jwt.encode(claims(worker_id=12345), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "user claim"),
        ("bound claim mismatch", jwt.encode(claims(project="prod-deploy"), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "ci", "claim project"),
        ("replayed jti (the RS256 worker's token, another key)", valid["rs256"][0], "ci", "already used"),
        ("a token for another role (deploy's issuer and key)", bound_elsewhere, "ci", "signature does not verify"),
        ("a ci token at role deploy", jwt.encode(claims(), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "deploy", "unknown key id"),
        ("a ci token at role deploy, no kid", jwt.encode(claims(), ed_key, algorithm="EdDSA"), "deploy", "signature does not verify"),
        ("a deploy token bound to alice's key, presented with another key", bound_elsewhere, "deploy", "not bound to this key"),
        ("a role that does not exist", jwt.encode(claims(), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), "nope", "no login role"),
    ]
    for index, (name, token, role, reason) in enumerate(attacks):
        status, output, out = login(f"attack{index}", token, node="abc"[index % 3], role=role)
        check(f"refused: {name} ({reason})", status != 0 and reason in output and ("401" in output or "400" in output), output[-600:])
        check(f"refused: {name}: no identity file", not os.path.exists(out), out)
    check("no jku or x5u URL was fetched by any node", FetchWitness.hits == 0, FetchWitness.hits)
    witness.shutdown()

    # A bound token with the key it names works (the key made first).
    bound = identity(work, "bound")
    bound_token = jwt.encode({**claims(), "iss": "https://deploy.idp", "aud": "deploy", "cnf": {"jkt": thumbprint(bound["nkey"])}},
                             other_idp, algorithm="EdDSA")
    shown = json.loads(run("unibus", "identity", "show", "--identity", bound["path"], "--json")[1])
    check("unibus identity show prints the key's RFC 7638 thumbprint (jkt) as computed here", shown.get("jkt") == thumbprint(bound["nkey"]), shown)
    path = os.path.join(work, "bound.jwt")
    with open(path, "w") as f:
        f.write(bound_token)
    status, output = run("unibus", "login", "--role", "deploy", "--jwt", path, "--out", bound["path"], "--existing",
                         "--node", cluster.node("b"), "--ca", ca)
    check("a key-bound token logs in the key it names (--existing)", status == 0 and "logged in" in output, output)

    # ---- a compromised node injects forged logins over a mutual-TLS route
    before = {n: cluster.info(n)["membership"]["refused"] for n in "abc"}
    forger = identity(work, "forger")
    heads = cluster.info("a")["membership"]["heads"]
    forged_token = jwt.encode(claims(worker_id="forged"), attacker, algorithm="RS256", headers={"kid": "rsa1"})
    forged = login_operation(forger["seed"], forger["nkey"], forger["kx"], "ci", forged_token, heads)
    thief = identity(work, "thief")
    stolen = login_operation(thief["seed"], thief["nkey"], thief["kx"], "ci", valid["eddsa"][0], heads)
    cert, key = cluster.route_pki["c"]
    try:
        rogue = RogueRoute(cluster.ports["a"]["route"], cert, key, cluster.route_pki["ca"])
        rogue.handshake()
        rogue.operation(*forged)
        rogue.operation(*stolen)
        delivered = rogue.barrier()
    except (OSError, ConnectionError, AssertionError) as error:
        delivered = False
        print(f"rogue route: {error}")
    check("a rogue route (valid cluster certificate) delivers a forged login and a stolen-token login to node a", delivered)
    refused_everywhere = wait_until(lambda: all(cluster.info(n)["membership"]["refused"] >= before[n] + 2 for n in "abc"), timeout=20)
    check("both are stored and refused by the rules on every node (replicated, refused alike)", refused_everywhere,
          {n: (before[n], cluster.info(n)["membership"]["refused"]) for n in "abc"})
    for n in "abc":
        status, output = run("unibus", "user", "list", *as_admin(n), "--json")
        check(f"node {n}: neither forged key is a user", status == 0 and forger["nkey"] not in output and thief["nkey"] not in output, output[:500])
    status, output = run("unibus", "log", "show", *as_admin("b"), "--root", root, "--json")
    summary = json.loads(output) if status == 0 else {}
    node_b = cluster.info("b")["membership"]
    check("a client verifying the log itself refuses them too (same refusals, same state digest)",
          summary.get("refused", 0) >= 2 and summary.get("state_digest", summary.get("stateDigest")) == node_b["state_digest"], output[:1000])

    async def connect(person_seed, node, **options):
        return await nats.connect(cluster.server(node), tls=cluster.context, nkeys_seed_str=person_seed, allow_reconnect=False,
                                  connect_timeout=3, **options)

    async def forged_connect():
        try:
            nc = await connect(forger["seed"], "b")
            await nc.close()
            return "connected"
        except Exception as error:  # noqa: BLE001 - any refusal is the expected outcome
            return f"{type(error).__name__}: {error}"
    outcome = asyncio.run(forged_connect())
    check("the forged workload key cannot connect to the bus (Authorization Violation)", "Authorization Violation" in outcome, outcome)
    try:
        rogue.close()
    except Exception:  # noqa: BLE001
        pass

    # ---- expiry by the clock, on every node
    short_exp = int(time.time()) + 12
    short = jwt.encode({**claims(worker_id="short-lived"), "exp": short_exp, "iat": int(time.time()), "nbf": int(time.time())},
                       ed_key, algorithm="EdDSA", headers={"kid": "ed1"})
    status, output, out = login("short", short, node="a")
    check("a login with a 12 s token", status == 0, output)
    short_seed = run("unibus", "identity", "nkey", "--identity", out, "--seed")[1].strip() if status == 0 else ""
    # The login is in a's log when `unibus login` returns; b and c have it once it replicates.
    converged, states = cluster.converged("abc", timeout=8)
    check("the short-lived login reaches every node", converged, states)

    async def expiry():
        closed = {}
        conns = {}
        failures = {}
        for n in "abc":
            def closed_cb(n=n):
                async def cb():
                    closed[n] = time.time()
                return cb
            try:
                conns[n] = await connect(short_seed, n, closed_cb=closed_cb(), disconnected_cb=closed_cb())
                await conns[n].subscribe("rooms.jobs")
                await conns[n].flush(timeout=3)
            except Exception as error:  # noqa: BLE001 (reported by the check below, the scenario goes on)
                failures[n] = repr(error)
        check("the short-lived workload connects to all three nodes", len(conns) == 3 and not failures, failures)
        deadline = short_exp + 15
        while len(closed) < 3 and time.time() < deadline:
            await asyncio.sleep(0.1)
        check("every node closes the workload's connection when its login expires (within 5 s of exp)",
              len(closed) == 3 and all(short_exp - 1 <= t <= short_exp + 5 for t in closed.values()),
              {n: round(t - short_exp, 2) for n, t in closed.items()})
        for nc in conns.values():
            try:
                await nc.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            nc = await connect(short_seed, "b")
            await nc.close()
            again = "connected"
        except Exception as error:  # noqa: BLE001
            again = f"{type(error).__name__}: {error}"
        check("after expiry the key cannot connect (Authorization Violation)", "Authorization Violation" in again, again)
    if short_seed:
        asyncio.run(expiry())
    else:
        check("the expiry scenario ran (it needs the short-lived login)", False, "no identity from the 12 s login")
    fresh = jwt.encode(claims(worker_id="short-lived"), ed_key, algorithm="EdDSA", headers={"kid": "ed1"})
    status, output, _ = login("short", fresh, node="c", existing=True)
    check("the expired workload logs in again with a fresh token (same key)", status == 0 and '"jobs"' in output, output)
    short_nkey = json.loads(run("unibus", "identity", "show", "--identity", out, "--json")[1])["nkey"] if short_seed else ""
    other_role = jwt.encode({**claims(), "iss": "https://deploy.idp", "aud": "deploy", "cnf": {"jkt": thumbprint(short_nkey)}},
                            other_idp, algorithm="EdDSA") if short_nkey else ""
    status, output, _ = login("short", other_role, node="b", role="deploy", existing=True)
    check("a workload renews through its own role only (not into another role's rooms)",
          status != 0 and "renews through that role only" in output, output)

    async def revoke_role():
        nc = await connect(short_seed, "c")
        closed = asyncio.Event()

        async def on_closed():
            closed.set()
        nc._closed_cb = on_closed  # noqa: SLF001 - nats-py keeps the callback here
        status, output = run("unibus", "role", "revoke", *as_admin("a"), "--name", "ci")
        check("role revoke ci", status == 0, output)
        try:
            await asyncio.wait_for(closed.wait(), timeout=10)
            check("removing the role closes its workload's connection on another node", True)
        except asyncio.TimeoutError:
            check("removing the role closes its workload's connection on another node", nc.is_closed, "still open")
    if short_seed:
        asyncio.run(revoke_role())
    else:
        check("the role-removal scenario ran (it needs the short-lived login)", False, "no identity from the 12 s login")
    status, output = run("unibus", "log", "checkpoint", *as_admin("a"), "--root", root)
    check("a checkpoint prunes the logins the role's removal ended", status == 0 and "ended workload logins pruned" in output, output)
    converged, states = cluster.converged("abc")
    check("every node adopts the checkpoint", converged, states)
    for n in "abc":
        status, output = run("unibus", "user", "list", *as_admin(n), "--json")
        check(f"node {n}: the ci workloads are gone from the users, the deploy workload stays",
              status == 0 and "rs-worker" not in output and "short-lived" not in output and bound["nkey"] in output, output[:800])
    status, output, out = login("after-revoke", jwt.encode(claims(), ed_key, algorithm="EdDSA", headers={"kid": "ed1"}), node="b")
    check("after the role is removed its tokens log in nowhere", status != 0 and "no login role" in output, output)
    converged, states = cluster.converged("abc")
    check("the cluster ends converged", converged, states)
    cluster.stop_all()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        try:
            main(work)
        except Exception as error:  # noqa: BLE001 - a crash is a failed check, with the logs
            import traceback
            traceback.print_exc()
            check("scenario ran to the end", False, error)
        status = report(results, work)
    sys.exit(status)
