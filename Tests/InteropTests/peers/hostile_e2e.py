#!/usr/bin/env python3
"""Attacks on one real unibusd process (loopback, dev mode: plain client TCP,
plain HTTP control plane, plaintext routes), each followed by proof that the
node still serves (GET /healthz and a fresh authenticated nats-py round trip
in a room) and that the attacker got nothing; and one attack on two more
nodes linked by mutual-TLS routes.

    hostile_e2e.py BIN_DIR      (holding unibusd and unibus)

1. control-plane header attacks (timestamps, nonces, signatures, header and
   body sizes);  2. slow-loris on the control port;  3. reserved namespaces
   and room overlaps, key-notice snooping;  4. room policy ranges and
   unencrypted rooms, with version-2 operations built and signed here
   (parents = the node's heads), and envelopes the node must refuse
   (version 1, bad parents, outside the time window, wrong endpoint,
   checkpoint body limits);  5. broker: second CONNECT, pre-auth PUB, SUB
   flood, inbox forgery, reply-once;  6. route peer impersonation, RS+
   flood, replicated operations out of causal order (parked, folded when
   the predecessor arrives), tampered parents, repeats, version 1;
   7. route relay over mutual TLS: a holder of a valid cluster certificate
   splices two nodes' handshakes (each node's AUTH forwarded to the other);
   8. connection churn.

Prints one line per check and "N passed, N failed"; exit 1 on failure,
3 when a Python peer library is missing.
"""
import asyncio
import base64
import concurrent.futures
import datetime
import hashlib
import http.client as httpclient
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import eventually, free_port, wait_for  # noqa: E402

try:
    import nats
    import nkeys
    import nacl.signing  # noqa: F401  (nkeys needs it; named so a missing one exits 3)
except ImportError as error:
    sys.stderr.write(f"interop peer missing: {error}; pip install nats-py nkeys pynacl\n")
    sys.exit(3)

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), ".build", "debug")
HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WORK = ""   # the run's temporary directory (set by main)
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {str(detail)[:1500]}"), flush=True)


def b64(data):
    """Canonical unpadded standard base64 (what Base64.decode accepts)."""
    return base64.b64encode(data).decode().rstrip("=")


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def binary(name):
    """The binary's path; waits a little while it is being rebuilt."""
    path = os.path.join(BIN, name)
    deadline = time.time() + 240
    while not os.access(path, os.X_OK) and time.time() < deadline:
        time.sleep(2)
    return path


def cli(*args):
    run = subprocess.run([binary("unibus"), *args], capture_output=True, text=True, timeout=30)
    return run.returncode, run.stdout + run.stderr


def route_proof(nonce, signer, verifier, cluster, certificate="-"):
    """What a node signs on a route (RouteConnection.proofBytes): the other
    end's nonce, both ids, the cluster and the SHA-256 (hex) of the signer's
    own leaf certificate ("-" on a plaintext route)."""
    return f"UNIBUS-ROUTE-2\n{nonce}\n{signer}\n{verifier}\n{cluster}\n{certificate}".encode()


def server_keypair():
    """A fresh server nkey pair ("N…") made here."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)
    pair = nkeys.from_seed(bytearray(seed))
    return pair, pair.public_key.decode()


# ---------------------------------------------------------------- HTTP helpers

class Node:
    def __init__(self):
        self.client = self.control = self.route = 0
        self.process = None
        self.node_id = ""
        self.root = ""
        self.log = ""

    @property
    def url(self):
        return f"http://{HOST}:{self.control}"


NODE = Node()


def http(method, path, headers=None, body=None, timeout=5):
    """(status, body text); (None, reason) when the node closed without answering."""
    connection = httpclient.HTTPConnection(HOST, NODE.control, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, httpclient.HTTPException) as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        connection.close()


def signed_headers(method, path, body, seed, timestamp=None, nonce=None, node_id=None):
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    nonce = nonce if nonce is not None else b64url(os.urandom(16))
    canonical = f"UNIBUS-REQUEST-1\n{method}\n{path}\n{hashlib.sha256(body).hexdigest()}\n{timestamp}\n{nonce}\n{node_id or NODE.node_id}"
    pair = nkeys.from_seed(seed.encode())
    return {"unibus-key": pair.public_key.decode(), "unibus-timestamp": timestamp, "unibus-nonce": nonce,
            "unibus-signature": b64url(pair.sign(canonical.encode()))}


def signed_request(method, path, body, seed, **overrides):
    headers = signed_headers(method, path, body, seed, **{k: v for k, v in overrides.items() if k in ("timestamp", "nonce")})
    for key, value in overrides.items():
        if key.startswith("unibus-"):
            headers[key] = value
    if method == "POST":
        headers["content-type"] = "application/json"
    return http(method, path, headers=headers, body=body if method == "POST" else None)


def raw_http(data, timeout=5, read_limit=1 << 20):
    """Sends raw bytes to the control port; (status or None, whole answer, closed by the node)."""
    sock = socket.create_connection((HOST, NODE.control), timeout=timeout)

    def complete(answer):
        if len(answer) >= read_limit:
            return True
        head, separator, rest = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head) if separator else None
        return bool(length) and len(rest) >= int(length.group(1))
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass
        answer, closed = read_until(sock, complete, timeout=timeout)
    finally:
        sock.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return (int(match.group(1)) if match else None), answer.decode(errors="replace"), closed


def error_only(body):
    """The body is a JSON object holding nothing but an error message."""
    try:
        return list(json.loads(body).keys()) == ["error"]
    except ValueError:
        return False


def metric(name):
    status, text = http("GET", "/metrics")
    if status != 200:
        return None
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M)
    return int(float(match.group(1))) if match else None


def metric_grew(name, before, at_least, label):
    """Checks that a counter grew by `at_least`; only notes it when the node does not export it."""
    after = metric(name)
    if before is None or after is None:
        print(f"     note: {name} is not exported by /metrics; {label} checked by its refusal only")
        return
    check(f"{label}: {name} grew by at least {at_least}", after - before >= at_least, f"{before} -> {after}")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return -1


# ---------------------------------------------------------------- NATS helpers

def raw_nats(seed=None, bad_signature=False, timeout=3):
    """A raw client socket: INFO read, and (with a seed) CONNECT sent with the
    nonce signed by that seed, then PING. Returns (socket, info, answer so far)."""
    sock = socket.create_connection((HOST, NODE.client), timeout=timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise ConnectionError("closed before INFO")
        data += chunk
    line, _, rest = data.partition(b"\r\n")
    info = json.loads(line[5:])
    if seed is None:
        return sock, info, rest
    pair = nkeys.from_seed(seed.encode())
    message = info["nonce"].encode() + (b"x" if bad_signature else b"")
    connect = {"verbose": False, "pedantic": False, "nkey": pair.public_key.decode(), "sig": b64url(pair.sign(message)),
               "name": "hostile", "protocol": 1}
    sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
    return sock, info, rest


def read_until(sock, predicate, timeout=3.0, initial=b""):
    """Reads until predicate(data) or close or timeout; returns (data, closed)."""
    data = initial
    deadline = time.time() + timeout
    closed = False
    while not predicate(data) and time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return data, closed


def read_to_close(sock, timeout=3.0, initial=b""):
    return read_until(sock, lambda _: False, timeout, initial)


async def nats_connect(person, **options):
    options.setdefault("allow_reconnect", False)
    options.setdefault("max_reconnect_attempts", 0)
    options.setdefault("connect_timeout", 3)
    return await nats.connect(f"nats://{HOST}:{NODE.client}", nkeys_seed_str=person["seed"],
                              inbox_prefix=f"_INBOX.{person['nkey']}".encode(), **options)


class Errors:
    """An error_cb that remembers the texts."""

    def __init__(self):
        self.texts = []

    async def cb(self, error):
        self.texts.append(str(error))

    def has(self, text):
        """nats-py lower-cases server errors; the exact text is checked on raw sockets."""
        return any(text.lower() in t.lower() for t in self.texts)


PEOPLE = {}


async def serves(label):
    """(b): /healthz on a new connection and an authenticated nats-py round trip in a room."""
    status, body = None, ""
    deadline = time.time() + 3
    while time.time() < deadline:
        status, body = http("GET", "/healthz", timeout=2)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    ok_http = status == 200 and json.loads(body).get("status") == "ok"
    trip = None
    try:
        nc = await nats_connect(PEOPLE["alice"])
        try:
            subject = f"rooms.ops.health.{os.urandom(4).hex()}"
            sub = await nc.subscribe(subject)
            await nc.publish(subject, label.encode())
            trip = (await sub.next_msg(timeout=3)).data
        finally:
            await nc.close()
    except Exception as error:  # noqa: BLE001
        trip = f"{type(error).__name__}: {error}"
    alive = NODE.process.poll() is None
    check(f"{label}: the node still serves (healthz 200, NATS round trip)", alive and ok_http and trip == label.encode(),
          f"process alive={alive} healthz={status} {body[:100]!r} round trip={trip!r}")


# ---------------------------------------------------------------- operations signed here

def log_heads(seed=None):
    """GET /v1/log/heads (signed): {"heads", "checkpoint", "count", "digest"}, or {} when refused."""
    status, body = signed_request("GET", "/v1/log/heads", b"", seed or PEOPLE["admin"]["seed"])
    return json.loads(body) if status == 200 else {}


def operation_time(offset_seconds=0.0):
    """RFC 3339 UTC with milliseconds, as SignedOperation.sign writes it."""
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def operation_id(data):
    """An operation's id: SHA-256 (lowercase hex) of its signed bytes."""
    return hashlib.sha256(data).hexdigest()


def envelope_bytes(envelope):
    """The signed bytes: sorted keys, compact, slashes not escaped (JSONEncoder .sortedKeys, .withoutEscapingSlashes)."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def signed_operation(person, operation, nonce=None, parents=None, offset_seconds=0.0, version=2):
    """An operation envelope as SignedOperation.sign makes it (version 2:
    sorted keys, the heads the signer saw as sorted distinct `parents`),
    signed with the actor's Ed25519 key: (bytes, signature) for POST
    /v1/operations. `parents` defaults to the node's current heads
    (GET /v1/log/heads); version 1 leaves them out (the format before causal order)."""
    envelope = {"actor": person["nkey"], "nonce": nonce or b64(os.urandom(12)), "operation": operation,
                "timestamp": operation_time(offset_seconds), "version": version}
    if version != 1:
        envelope["parents"] = sorted(set(log_heads().get("heads", []) if parents is None else parents))
    data = envelope_bytes(envelope)
    signature = nkeys.from_seed(person["seed"].encode()).sign(data)
    return data, signature


def create_room_op(room_id, subject, **policy):
    full = {"encrypt": True, "sign": True, "compress": False, "persist": False, "rotateAfterMessages": 1000,
            "rotateAfterSeconds": 7 * 24 * 3600, "frameWindowSeconds": 300}
    full.update(policy)
    return {"createRoom": {"id": room_id, "policy": full, "subject": subject}}


def submit(person, operation, signer=None):
    data, signature = signed_operation(person, operation)
    if signer is not None:
        signature = nkeys.from_seed(signer["seed"].encode()).sign(data)
    body = json.dumps({"bytes": b64(data), "signature": b64(signature)}).encode()
    return signed_request("POST", "/v1/operations", body, (signer or person)["seed"])


def room_ids():
    status, body = signed_request("GET", "/v1/rooms", b"", PEOPLE["admin"]["seed"])
    return {room["id"]: room for room in json.loads(body)["rooms"]} if status == 200 else {}


# ---------------------------------------------------------------- 1. control-plane headers

async def header_attacks():
    admin = PEOPLE["admin"]
    mallory = PEOPLE["mallory"]
    for stamp in ("-9223372036854775808", "9223372036854775807", "99999999999999999999", "1e9", "", "999999999999"):
        status, body = signed_request("GET", "/v1/users", b"", mallory["seed"], timestamp=stamp)
        refused = status == 401 and error_only(body) and (
            "missing or malformed unibus-timestamp header" in body or "away from the node's clock" in body)
        check(f"unibus-timestamp {stamp!r} is refused (401, timestamp/skew error, no data)", refused, f"{status} {body[:200]}")
    status, body = signed_request("GET", "/v1/users", b"", admin["seed"], nonce="n" * 65)
    check("a 65-byte nonce is refused (401 naming unibus-nonce)", status == 401 and "unibus-nonce" in body and error_only(body),
          f"{status} {body[:200]}")
    status, body = signed_request("GET", "/v1/users", b"", admin["seed"], nonce="abc$def+ghi/jkl=mno")
    check("a non-base64url nonce is refused (401 naming unibus-nonce)", status == 401 and "unibus-nonce" in body and error_only(body),
          f"{status} {body[:200]}")
    status, body = signed_request("GET", "/v1/users", b"", admin["seed"], **{"unibus-signature": "A" * 5000})
    check("a 5 KB signature is refused (401 naming unibus-signature)", status == 401 and "unibus-signature" in body and error_only(body),
          f"{status} {body[:200]}")
    # 10 KB is over both the verifier's 128 characters and the 8 KiB header-field limit: either refusal will do.
    status, body = signed_request("GET", "/v1/users", b"", admin["seed"], **{"unibus-signature": "A" * 10240})
    check("a 10 KB signature is refused (401 from the verifier, or 400 from the header-field limit; no data)",
          (status == 401 and error_only(body)) or (status == 400 and "exchange_key" not in body), f"{status} {body[:200]}")
    status, body = signed_request("GET", "/v1/users", b"", admin["seed"], **{"unibus-key": "U" + "A" * 10000})
    check("a 10 KB unibus-key is refused (4xx, no data)", status is not None and 400 <= status < 500 and "exchange_key" not in body,
          f"{status} {body[:200]}")

    # Header sizes: total over 16 KiB, one field over 8 KiB, more than 64 fields.
    filler = "".join(f"x-filler-{i}: {'f' * 1000}\r\n" for i in range(20)).encode()
    status, answer, closed = raw_http(b"GET /v1/users HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n")
    check("request headers over 16 KiB: answered 4xx or closed", (status is not None and 400 <= status < 500) or (status is None and closed),
          f"{status} closed={closed} {answer[:200]!r}")
    status, answer, closed = raw_http(b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: " + b"b" * 9000 + b"\r\n\r\n")
    check("one header field over 8 KiB: answered 4xx or closed", (status is not None and 400 <= status < 500) or (status is None and closed),
          f"{status} closed={closed} {answer[:200]!r}")
    many = "".join(f"x-h{i}: v\r\n" for i in range(100)).encode()
    status, answer, closed = raw_http(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    check("100 header fields: answered 4xx or closed", (status is not None and 400 <= status < 500) or (status is None and closed),
          f"{status} closed={closed} {answer[:200]!r}")
    huge = b"{" + b" " * 70000 + b"}"
    status, body = http("POST", "/v1/operations", headers={"content-type": "application/json"}, body=huge)
    check("an unsigned 70 KB body is refused (413)", status == 413 and error_only(body), f"{status} {body[:200]}")
    status, body = signed_request("POST", "/v1/operations", huge, admin["seed"])
    check("a signed 70 KB body is refused (413)", status == 413 and error_only(body), f"{status} {body[:200]}")
    status, answer, closed = raw_http(b"POST /v1/operations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      + b"".join(b"4000\r\n" + b"c" * 0x4000 + b"\r\n" for _ in range(6)) + b"0\r\n\r\n")
    check("a chunked body over 64 KiB is refused (413)", status == 413, f"{status} closed={closed} {answer[:200]!r}")
    await serves("after header attacks")


# ---------------------------------------------------------------- 2. slow-loris

async def slow_loris():
    cut_before = metric("unibus_control_connections_cut_total")
    sockets = []
    started = time.time()
    for _ in range(300):
        try:
            sockets.append(socket.create_connection((HOST, NODE.control), timeout=2))
        except OSError:
            sockets.append(None)
    trickling = [s for s in sockets[:20] if s is not None]
    for s in trickling:
        try:
            s.sendall(b"GET /v1/users HTTP/1.1\r\nHost: x\r\nx-slow: ")
        except OSError:
            pass
    await asyncio.sleep(1.0)

    def gone(s):
        if s is None:
            return True
        try:
            s.setblocking(False)
            data = s.recv(4096)
            return data == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            try:
                s.setblocking(True)
            except OSError:
                pass

    # A socket that answered before closing reads as open once, then as
    # closed: closes are remembered, with when they were seen.
    closed_sockets = {}

    def count_gone():
        for i, s in enumerate(sockets):
            if i not in closed_sockets and gone(s):
                closed_sockets[i] = time.time()
        return len(closed_sockets)
    deadline = started + 5
    while count_gone() < 300 - 256 and time.time() < deadline:
        await asyncio.sleep(0.1)
    early = len(closed_sockets)
    check("slow-loris: connections over the cap of 256 are closed at once", early >= 300 - 256,
          f"{early} of 300 closed within {time.time() - started:.1f} s")
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.7):
            for s in trickling:
                try:
                    s.send(b"a")
                except OSError:
                    pass
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    trip = None
    try:
        nc = await nats_connect(PEOPLE["alice"])
        sub = await nc.subscribe("rooms.ops.loris")
        await nc.publish("rooms.ops.loris", b"still here")
        trip = (await sub.next_msg(timeout=3)).data
        await nc.close()
    except Exception as error:  # noqa: BLE001
        trip = f"{type(error).__name__}: {error}"
    check("slow-loris: the NATS port serves while the control port is held", trip == b"still here", trip)
    # The per-request deadline is 10 s from accept; trickled bytes must not
    # extend it. Polled for up to 25 s, but every close must come by 18 s
    # (10 s plus room for a late accept on a loaded machine).
    deadline = started + 25
    while count_gone() < len(sockets) and time.time() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    trickler.join()
    open_after = [i for i in range(len(sockets)) if i not in closed_sockets and not gone(sockets[i])]
    latest = max(closed_sockets.values(), default=started) - started
    check("slow-loris: every idle or trickling socket is closed by the node after the 10 s deadline",
          not open_after and latest <= 18,
          f"{len(open_after)} still open, e.g. indexes {open_after[:10]} (trickling: 0-19); the last closed {latest:.1f} s after connecting")
    metric_grew("unibus_control_connections_cut_total", cut_before, sum(1 for s in sockets if s is not None), "slow-loris")
    leaked = []
    for s in sockets:
        if s is None:
            continue
        try:
            s.setblocking(False)
            leaked.append(s.recv(65536))
        except OSError:
            pass
        s.close()
    check("slow-loris: the held sockets got no data (the trickled requests were never answered)",
          not any(b"users" in d or b"HTTP/1.1 200" in d for d in leaked), [d[:100] for d in leaked if d][:3])
    await serves("after slow-loris")


# ---------------------------------------------------------------- 3. reserved namespaces

async def reserved_namespaces():
    mallory, bob, admin = PEOPLE["mallory"], PEOPLE["bob"], PEOPLE["admin"]
    as_mallory = ["--node", NODE.url, "--identity", mallory["path"]]
    for index, subject in enumerate(("unibus", "unibus.keys", "_INBOX", "_INBOX.x", "$SYS", "$JS.API", "$anything")):
        code, out = cli("room", "create", *as_mallory, "--id", f"evil{index}", "--subject", subject)
        check(f"a member cannot create a room on {subject!r} (reserved)", code != 0 and "reserved" in out, f"exit {code}: {out.strip()[:300]}")
    for index, subject in enumerate(("rooms", "rooms.ops", "rooms.ops.sub")):
        code, out = cli("room", "create", *as_mallory, "--id", f"overlap{index}", "--subject", subject)
        check(f"a room on {subject!r} overlapping rooms.ops is refused", code != 0 and "overlaps" in out, f"exit {code}: {out.strip()[:300]}")
    code, out = cli("room", "create", *as_mallory, "--id", "mallorys", "--subject", "roomsx")
    check("a room on 'roomsx' (no overlap) is created", code == 0, out)
    rooms = room_ids()
    bad = [r for r in rooms if r.startswith("evil") or r.startswith("overlap")]
    check("no refused room exists afterwards", not bad and "mallorys" in rooms, sorted(rooms))

    errors, got = Errors(), []

    async def collect(msg):
        got.append((msg.subject, msg.data))
    nc = await nats_connect(mallory, error_cb=errors.cb)
    wanted = ["unibus.keys.>", "_INBOX.>", f"unibus.keys.{bob['nkey']}", f"_INBOX.{bob['nkey']}.>", ">", "unibus.>", "$SYS.>"]
    for subject in wanted:
        await nc.subscribe(subject, cb=collect)
    await nc.subscribe(f"unibus.keys.{mallory['nkey']}", cb=collect)   # her own: allowed
    await nc.flush()
    await eventually(lambda: all(errors.has(f'Permissions Violation for Subscription to "{s}"') for s in wanted), 5)
    for subject in wanted:
        check(f"subscribing to {subject!r} is a permissions violation",
              errors.has(f'Permissions Violation for Subscription to "{subject}"'), errors.texts)
    check("the violations did not close mallory's connection", nc.is_connected, nc.last_error)
    sock, _, rest = raw_nats(mallory["seed"])
    data, _ = read_until(sock, lambda d: b"PONG\r\n" in d, initial=rest)
    sock.sendall(b"SUB unibus.keys.> 1\r\nSUB _INBOX.> 2\r\nPING\r\n")
    data, closed = read_until(sock, lambda d: d.count(b"PONG\r\n") >= 2, initial=data)
    sock.close()
    check("the node's exact words: -ERR 'Permissions Violation for Subscription to \"unibus.keys.>\"' (and _INBOX.>)",
          b"-ERR 'Permissions Violation for Subscription to \"unibus.keys.>\"'\r\n" in data
          and b"-ERR 'Permissions Violation for Subscription to \"_INBOX.>\"'\r\n" in data and not closed, data)

    bob_notices = []

    async def bob_cb(msg):
        bob_notices.append(msg.data)
    bob_nc = await nats_connect(bob)
    await bob_nc.subscribe(f"unibus.keys.{bob['nkey']}", cb=bob_cb)
    await bob_nc.flush()
    as_admin = ["--node", NODE.url, "--identity", admin["path"]]
    code, out = cli("room", "create", *as_admin, "--id", "hr", "--subject", "corp.hr")
    code2, out2 = cli("room", "add-member", *as_admin, "--id", "hr", "--sign-pub", bob["nkey"])
    await eventually(lambda: any(b'"room":"hr"' in n for n in bob_notices), 5)
    await nc.flush()   # a round trip on mallory's connection: a copy wrongly sent to her would be here by now
    check("control: bob gets the key notice for his new room on unibus.keys.<bob>",
          code == 0 and code2 == 0 and any(b'"room":"hr"' in n for n in bob_notices), f"{out} {out2} {bob_notices}")
    check("mallory received no other user's key notice (nor anything else)", not got, got)
    await nc.close()
    await bob_nc.close()

    # Probe rooms have predictable ids: a member that pre-creates another
    # user's probe room neither blocks that user's check nor gets its demo.
    alice, bob = PEOPLE["alice"], PEOPLE["bob"]
    root = PEOPLE["admin"]["nkey"]   # the root admin (the identity `unibusd init` made), pinned by check and demo
    hijacked = f"probe-d-{alice['nkey']}"
    blocked = f"probe-g-{alice['nkey']}"
    code1, out1 = cli("room", "create", *as_mallory, "--id", hijacked, "--subject", f"probe.d.{alice['nkey']}")
    code2, out2 = cli("room", "add-member", *as_mallory, "--id", hijacked, "--sign-pub", alice["nkey"])
    code3, out3 = cli("room", "add-member", *as_mallory, "--id", hijacked, "--sign-pub", bob["nkey"])
    code4, out4 = cli("room", "create", *as_mallory, "--id", blocked, "--subject", f"probe.g.{alice['nkey']}")
    check("setup: mallory pre-created alice's probe rooms (and added alice and bob to one)",
          code1 == 0 and code2 == 0 and code3 == 0 and code4 == 0, out1 + out2 + out3 + out4)
    code, out = cli("demo", "--alice", alice["path"], "--bob", bob["path"], "--server", f"nats://{HOST}:{NODE.client}", "--node", NODE.url,
                    "--root", root)
    check("alice's demo does not run in mallory's room of the same id", code == 0 and f"room {hijacked} " not in out
          and out.count("verified") == 3, out)
    code, out = cli("check", "--identity", alice["path"], "--server", f"nats://{HOST}:{NODE.client}", "--node", NODE.url,
                    "--root", root, "--count", "3")
    check("alice's check is not blocked by mallory's room under her probe id", code == 0 and "check golden: OK" in out, out)

    # A seed pasted where a public key belongs is refused without being echoed.
    mallory_seed = PEOPLE["mallory"]["seed"]
    code, out = cli("user", "add", "--node", NODE.url, "--identity", PEOPLE["admin"]["path"], "--sign-pub", mallory_seed,
                    "--exchange-key", PEOPLE["mallory"]["kx"], "--handle", "pasted")
    check("a seed given as --sign-pub is refused, named as a secret, and never printed back",
          code != 0 and "seed" in out and mallory_seed not in out and mallory_seed[:12] not in out, out)
    await serves("after reserved-namespace attacks")


# ---------------------------------------------------------------- 4. policy ranges

async def policy_ranges():
    mallory, admin = PEOPLE["mallory"], PEOPLE["admin"]
    status, body = submit(mallory, create_room_op("pyok", "pyok.subject"))
    check("control: a create-room operation built and signed here is accepted (200)", status == 200, f"{status} {body[:200]}")
    cases = [("frame_window_seconds", {"frameWindowSeconds": 10 ** 12}),
             ("frame_window_seconds", {"frameWindowSeconds": 9223372036854775807}),
             ("frame_window_seconds", {"frameWindowSeconds": -1}),
             ("rotate_after_seconds", {"rotateAfterSeconds": 9223372036854775807}),
             ("rotate_after_seconds", {"rotateAfterSeconds": 10 ** 12}),
             ("rotate_after_seconds", {"rotateAfterSeconds": 0}),
             ("rotate_after_messages", {"rotateAfterMessages": 9223372036854775807})]
    for index, (field, policy) in enumerate(cases):
        status, body = submit(mallory, create_room_op(f"range{index}", f"range{index}.s", **policy))
        check(f"policy {policy} is refused (400 naming {field})", status == 400 and field in body and error_only(body), f"{status} {body[:200]}")
    # The actor named is the admin, the signature mallory's: a forged admin operation.
    data, _ = signed_operation(admin, create_room_op("forged", "forged.s"))
    forged = nkeys.from_seed(mallory["seed"].encode()).sign(data)
    status, body = signed_request("POST", "/v1/operations", json.dumps({"bytes": b64(data), "signature": b64(forged)}).encode(),
                                  mallory["seed"])
    check("an operation naming the admin as actor but signed by a member is refused (401)", status == 401 and error_only(body),
          f"{status} {body[:200]}")
    status, body = submit(mallory, create_room_op("plain1", "plain1.s", encrypt=False))
    check("an unencrypted room is refused by default (403)", status == 403 and "unencrypted" in body, f"{status} {body[:200]}")
    rooms = room_ids()
    check("none of the refused rooms exists", not any(r.startswith("range") or r in ("forged", "plain1") for r in rooms) and "pyok" in rooms,
          sorted(rooms))
    code, out = cli("cluster", "settings", "--node", NODE.url, "--identity", mallory["path"], "--allow-unencrypted-rooms", "true")
    check("a member cannot allow unencrypted rooms", code != 0 and "only an admin" in out, f"exit {code}: {out.strip()[:300]}")
    code, out = cli("cluster", "settings", "--node", NODE.url, "--identity", admin["path"], "--allow-unencrypted-rooms", "true")
    check("an admin allows unencrypted rooms", code == 0, out)
    status, body = submit(mallory, create_room_op("plain2", "plain2.s", encrypt=False))
    check("then an unencrypted room is allowed (200)", status == 200, f"{status} {body[:200]}")
    code, out = cli("cluster", "settings", "--node", NODE.url, "--identity", admin["path"], "--allow-unencrypted-rooms", "false")
    check("the admin turns unencrypted rooms off again", code == 0, out)
    await serves("after policy-range attacks")


async def operation_envelopes():
    """What POST /v1/operations refuses in an envelope signed by a registered member."""
    mallory = PEOPLE["mallory"]

    def post(data, signature, path="/v1/operations"):
        body = json.dumps({"bytes": b64(data), "signature": b64(signature)}).encode()
        return signed_request("POST", path, body, mallory["seed"])

    def sign(envelope):
        data = envelope_bytes(envelope)
        return data, nkeys.from_seed(mallory["seed"].encode()).sign(data)

    status, body = post(*signed_operation(mallory, create_room_op("v1room", "v1room.s"), version=1))
    check("a version 1 operation (no parents) is refused (400 naming unibusd migrate)",
          status == 400 and "version 1" in body and "migrate" in body and error_only(body), f"{status} {body[:200]}")
    status, body = post(*signed_operation(mallory, create_room_op("v3room", "v3room.s"), version=3))
    check("a version 3 operation is refused (400 unsupported version)", status == 400 and "unsupported operation version" in body,
          f"{status} {body[:200]}")
    heads = log_heads().get("heads", [])
    base = {"actor": mallory["nkey"], "nonce": b64(os.urandom(12)), "operation": create_room_op("badparents", "badparents.s"),
            "timestamp": operation_time(), "version": 2}
    status, body = post(*sign(dict(base, parents=heads + heads)))
    check("repeated parents are refused (400: sorted, distinct)", bool(heads) and status == 400 and "sorted, distinct" in body,
          f"heads={heads} {status} {body[:200]}")
    status, body = post(*sign(dict(base, parents=[h.upper() for h in heads])))
    check("upper-case hex parents are refused (400)", status == 400 and "operation ids" in body, f"{status} {body[:200]}")
    status, body = post(*sign(dict(base, parents=sorted(os.urandom(32).hex() for _ in range(65)))))
    check("65 parents are refused (400: at most 64)", status == 400 and "0 to 64" in body, f"{status} {body[:200]}")
    base.pop("parents", None)
    status, body = post(*sign(base))
    check("a version 2 operation without parents is refused (400)", status == 400 and "parents" in body, f"{status} {body[:200]}")
    status, body = post(*sign(dict(base, parents=[])))
    check("a non-first operation naming no predecessors is refused (400)", status == 400 and "no predecessors" in body,
          f"{status} {body[:200]}")
    status, body = post(*signed_operation(mallory, create_room_op("unknownparent", "unknownparent.s"), parents=[os.urandom(32).hex()]))
    check("an operation naming a predecessor the node does not hold is refused (409, not parked)",
          status == 409 and "predecessor" in body and error_only(body), f"{status} {body[:200]}")
    window = metric("unibus_membership_outside_window_total")
    status, body = post(*signed_operation(mallory, create_room_op("stale", "stale.s"), offset_seconds=-660))
    check("an operation signed 660 s ago is refused (400: must arrive within 600 s)", status == 400 and "600 s" in body,
          f"{status} {body[:200]}")
    early = signed_operation(mallory, create_room_op("early", "early.s"), offset_seconds=180)
    status, body = post(*early)
    check("an operation dated 180 s ahead is refused (400: at most 120 s ahead)", status == 400 and "ahead" in body,
          f"{status} {body[:200]}")
    status, body = post(*early)
    check("the early operation submitted again is still refused (remembered until it would have expired)",
          status == 400 and "refused earlier" in body, f"{status} {body[:200]}")
    metric_grew("unibus_membership_outside_window_total", window, 3, "the stale and early operations")
    status, body = post(*signed_operation(mallory, create_room_op("skewok", "skewok.s"), offset_seconds=60))
    check("control: an operation dated 60 s ahead (inside the window) is accepted (200)", status == 200, f"{status} {body[:200]}")
    status, body = post(*signed_operation(mallory, create_room_op("wrongdoor", "wrongdoor.s")), path="/v1/checkpoints")
    check("an ordinary operation sent to /v1/checkpoints is refused (400)", status == 400 and "only checkpoints" in body,
          f"{status} {body[:200]}")
    rooms = room_ids()
    check("none of the refused operations made a room",
          not any(r in rooms for r in ("v1room", "v3room", "badparents", "unknownparent", "stale", "early", "wrongdoor")) and "skewok" in rooms,
          sorted(rooms))
    # Body limits: 64 KiB for operations (checked in header_attacks), about 2.7 MB for checkpoints.
    status, body = signed_request("POST", "/v1/checkpoints", b"{" + b" " * 100_000 + b"}", mallory["seed"])
    check("a 100 KB body to /v1/checkpoints is read (400 for its content, not 413)", status == 400 and error_only(body),
          f"{status} {body[:200]}")
    status, body = signed_request("POST", "/v1/checkpoints", b"{" + b" " * 3_000_000 + b"}", mallory["seed"])
    check("a 3 MB body to /v1/checkpoints is refused (413)", status == 413, f"{status} {body[:200]}")
    await serves("after operation-envelope attacks")


# ---------------------------------------------------------------- 5. broker

async def broker_attacks():
    alice, bob, mallory = PEOPLE["alice"], PEOPLE["bob"], PEOPLE["mallory"]
    observed = []

    async def observe(msg):
        observed.append((msg.subject, msg.data[:40]))
    observer = await nats_connect(bob)
    await observer.subscribe("rooms.ops", cb=observe)
    await observer.subscribe("rooms.ops.>", cb=observe)
    await observer.flush()

    # A second CONNECT on an authenticated connection (what follows it must not be published).
    sock, _, rest = raw_nats(alice["seed"])
    data, closed = read_until(sock, lambda d: b"PONG\r\n" in d or b"-ERR" in d, initial=rest)
    authenticated = b"PONG\r\n" in data and b"-ERR" not in data
    other, info, _ = raw_nats()   # a second INFO, for another valid signature
    other.close()
    sock.sendall(b"CONNECT " + json.dumps({"verbose": False, "pedantic": False, "nkey": bob["nkey"],
                                            "sig": b64url(nkeys.from_seed(bob["seed"].encode()).sign(info["nonce"].encode()))}).encode()
                 + b"\r\nPUB rooms.ops 5\r\nevil!\r\nPING\r\n")
    data, closed = read_to_close(sock)
    sock.close()
    check("a second CONNECT (identity switch) gets -ERR 'Authorization Violation' and is closed",
          authenticated and b"-ERR 'Authorization Violation'" in data and closed and b"PONG" not in data, f"auth={authenticated} {data!r} closed={closed}")

    # A large PUB before CONNECT: cut before the payload arrives. A socket
    # may send 8 KiB before its CONNECT is accepted; 12 KiB go, then the
    # node's answer (or its close) is awaited before more is offered, so no
    # timing is measured, only that the node never read 100 KB.
    sock, _, _ = raw_nats()
    sock.sendall(b"PUB rooms.ops 100000\r\n")
    sent, closed = 0, False
    try:
        for _ in range(3):
            sock.sendall(b"p" * 4096)
            sent += 4096
    except OSError:
        closed = True
    answer, closed_first = read_until(sock, lambda d: b"-ERR" in d, timeout=10)
    while sent < 100000 and not closed:
        try:
            sock.sendall(b"p" * 4096)
            sent += 4096
        except OSError:
            closed = True
            break
        time.sleep(0.01)
    more, closed_later = read_to_close(sock, timeout=5, initial=answer)
    sock.close()
    check("a 100 KB PUB before CONNECT is cut with -ERR 'Authorization Violation' before its payload is read",
          b"-ERR 'Authorization Violation'" in more and (closed or closed_later or closed_first) and sent < 100000,
          f"sent {sent} payload bytes, got {more[:200]!r}")
    await asyncio.sleep(0.3)
    check("nothing from either connection reached a subscriber of rooms.ops", not observed, observed)
    await observer.close()

    # A SUB flood beyond 10,000 subscriptions on one connection.
    sock, _, rest = raw_nats(alice["seed"])
    data, _ = read_until(sock, lambda d: b"PONG\r\n" in d, initial=rest)
    lines = b"".join(b"SUB rooms.ops.flood.%d %d\r\n" % (i, i) for i in range(10_010))
    sock.sendall(lines + b"PING\r\n")
    data, closed = read_until(sock, lambda d: d.count(b"PONG\r\n") >= 2, timeout=20, initial=data)
    exceeded = data.count(b"-ERR 'maximum subscriptions exceeded'")
    check("a SUB flood beyond 10,000 gets -ERR 'maximum subscriptions exceeded' (once per extra SUB)",
          exceeded == 10, f"{exceeded} errors; closed={closed}; tail {data[-200:]!r}")
    # The same user on a second connection: the per-user limit (15,000 here)
    # counts over all its connections, so one user cannot flood the routes.
    second, _, rest = raw_nats(alice["seed"])
    data2, _ = read_until(second, lambda d: b"PONG\r\n" in d, initial=rest)
    lines = b"".join(b"SUB rooms.ops.more.%d %d\r\n" % (i, i) for i in range(5_010))
    second.sendall(lines + b"PING\r\n")
    data2, closed2 = read_until(second, lambda d: d.count(b"PONG\r\n") >= 2, timeout=20, initial=data2)
    exceeded2 = data2.count(b"-ERR 'maximum subscriptions exceeded'")
    check("the per-user subscription limit holds across connections (15,000: 10 refused on the second connection)",
          exceeded2 == 10, f"{exceeded2} errors; closed={closed2}; tail {data2[-200:]!r}")
    second.close()
    sock.close()

    # Another user's inbox cannot be published to.
    bob_errors, bob_got, mallory_errors = Errors(), [], Errors()

    async def bob_cb(msg):
        bob_got.append((msg.subject, msg.data))
    bob_nc = await nats_connect(bob, error_cb=bob_errors.cb)
    await bob_nc.subscribe(f"_INBOX.{bob['nkey']}.>", cb=bob_cb)
    await bob_nc.flush()
    mallory_nc = await nats_connect(mallory, error_cb=mallory_errors.cb)
    forged = f"_INBOX.{bob['nkey']}.x"
    await mallory_nc.publish(forged, b"forged reply")
    await mallory_nc.flush()
    await eventually(lambda: mallory_errors.has(f'Permissions Violation for Publish to "{forged}"'), 5)
    await bob_nc.flush()   # a round trip on bob's connection: a forged reply wrongly relayed would be here by now
    check("publishing into another user's inbox is a permissions violation",
          mallory_errors.has(f'Permissions Violation for Publish to "{forged}"'), mallory_errors.texts)
    check("the inbox owner received nothing", not bob_got, bob_got)
    await mallory_nc.close()

    # A reply to a delivered request works once.
    alice_errors, alice_inbox = Errors(), []

    async def responder(msg):
        await msg.respond(b"one")
        await bob_nc.publish(msg.reply, b"two")
        await bob_nc.flush()
    await bob_nc.subscribe("rooms.ops.svc", cb=responder)
    await bob_nc.flush()
    alice_nc = await nats_connect(alice, error_cb=alice_errors.cb)

    async def alice_cb(msg):
        alice_inbox.append(msg.data)
    await alice_nc.subscribe(f"_INBOX.{alice['nkey']}.>", cb=alice_cb)
    await alice_nc.flush()
    reply = None
    try:
        reply = (await alice_nc.request("rooms.ops.svc", b"ping", timeout=3)).data
    except Exception as error:  # noqa: BLE001
        reply = f"{type(error).__name__}: {error}"
    await eventually(lambda: bob_errors.has('Permissions Violation for Publish to "_INBOX.' + alice["nkey"]), 5)
    await alice_nc.flush()   # a round trip: a second reply the node wrongly relayed would be here by now
    check("a reply to a delivered request is allowed", reply == b"one", reply)
    check("a second publish to the same reply subject is a permissions violation",
          bob_errors.has('Permissions Violation for Publish to "_INBOX.' + alice["nkey"]), bob_errors.texts)
    check("the requester got exactly one reply", alice_inbox == [b"one"], alice_inbox)

    # Laundering a reply permit: publish on one's own room with someone else's
    # subject as the reply, receive the echo, then "answer" it. The publish
    # with a foreign reply subject is refused, so no permit is ever granted.
    sock, _, rest = raw_nats(alice["seed"])
    data, _ = read_until(sock, lambda d: b"PONG\r\n" in d, initial=rest)
    targets = [f"_INBOX.{bob['nkey']}.laundered", f"unibus.keys.{bob['nkey']}", "rooms.other"]
    lines = b"SUB rooms.ops 1\r\n" + b"".join(b"PUB rooms.ops %s 4\r\nlure\r\n" % t.encode() for t in targets)
    lines += b"".join(b"PUB %s 6\r\nforged\r\n" % t.encode() for t in targets) + b"PING\r\n"
    sock.sendall(lines)
    data, _ = read_until(sock, lambda d: b"PONG\r\n" in d, timeout=5)
    text = data.decode(errors="replace")
    for target in targets:
        check(f"a publish naming {target.split('.')[0]}… as its reply subject is refused",
              f"with reply \"{target}\"'" in text, text[-400:])
        check(f"no permit to publish to {target.split('.')[0]}… was laundered",
              f"Permissions Violation for Publish to \"{target}\"'" in text, text[-400:])
    check("the lure was not delivered with a foreign reply subject", "MSG rooms.ops 1 _INBOX" not in text, text[-400:])
    sock.close()
    await alice_nc.close()
    await bob_nc.close()
    await serves("after broker attacks")


# ---------------------------------------------------------------- 6. routes

class RoutePeer:
    """A raw plaintext route connection that claims `server_id`."""

    def __init__(self):
        self.claimed = ""   # the server id sent in hello
        self.sock = socket.create_connection((HOST, NODE.route), timeout=3)
        data, _ = read_until(self.sock, lambda d: b"\r\n" in d)
        line, _, self.rest = data.partition(b"\r\n")
        if not line.startswith(b"INFO "):
            raise ConnectionError(f"no route INFO: {data[:200]!r}")
        self.info = json.loads(line[5:])

    def hello(self, server_id, proof=None, pair=None, nonce=None, then=b""):
        nonce = nonce or b64url(os.urandom(18))
        self.claimed = server_id
        info = {"server_id": server_id, "cluster": self.info["cluster"], "root": self.info["root"], "name": "x", "nonce": nonce, "proto": 1}
        if pair is not None:
            proof = b64url(pair.sign(route_proof(self.info["nonce"], server_id, self.info["server_id"], self.info["cluster"])))
        self.sock.sendall(b"INFO " + json.dumps(info).encode() + b"\r\nAUTH " + json.dumps({"sig": proof}).encode() + b"\r\n" + then)

    def data_frame(self, obj):
        payload = json.dumps(obj, sort_keys=True).encode()
        self.sock.sendall(b"RDATA %d\r\n" % len(payload) + payload + b"\r\n")

    def ping(self, timeout=10):
        """PING, then read until PONG: a barrier (a data frame is handled before what follows it)."""
        self.sock.sendall(b"PING\r\n")
        data, closed = read_until(self.sock, lambda d: b"PONG\r\n" in d, timeout=timeout, initial=self.rest)
        self.rest = b""
        return data, closed

    def close(self):
        self.sock.close()


def route_ids():
    status, body = http("GET", "/v1/node")
    return [r["node_id"] for r in json.loads(body).get("cluster", {}).get("routes", [])] if status == 200 else None


def op_frame(data, signature):
    """An RDATA operation frame: the signed bytes and signature, nothing the sender could add."""
    return {"t": "op", "bytes": b64(data), "signature": b64(signature)}


async def replication_order(peer):
    """Operations over a proven route that the causal log must not fold early,
    twice, or from tampered bytes. The peer is a route the node accepted."""
    admin = PEOPLE["admin"]

    def snapshot():
        heads = log_heads()
        return {"count": heads.get("count"), "digest": heads.get("digest"), "heads": heads.get("heads"),
                "waiting": metric("unibus_membership_waiting"), "rooms": set(room_ids())}

    def send(frame):
        peer.data_frame(frame)
        return peer.ping()

    # 1. An operation whose predecessor exists nowhere: parked, never folded.
    before = snapshot()
    orphan, orphan_signature = signed_operation(admin, create_room_op("orphan", "orphan.s"), parents=[os.urandom(32).hex()])
    data, closed = send(op_frame(orphan, orphan_signature))
    after = snapshot()
    check("an RDATA op naming a predecessor that never arrives is not folded (no room, log count and digest unchanged)",
          not closed and b"PONG" in data and "orphan" not in after["rooms"] and after["count"] == before["count"]
          and after["digest"] == before["digest"] and before["count"] is not None,
          f"closed={closed} count {before['count']} -> {after['count']} rooms={sorted(after['rooms'])}")
    check("the node parks it while its predecessor is missing (unibus_membership_waiting grew by 1)",
          before["waiting"] is not None and after["waiting"] == before["waiting"] + 1, f"{before['waiting']} -> {after['waiting']}")
    data, closed = send(op_frame(orphan, orphan_signature))
    again = snapshot()
    check("the parked op sent again changes nothing (waiting gauge, log count, digest)",
          not closed and again["waiting"] == after["waiting"] and again["count"] == after["count"] and again["digest"] == after["digest"],
          f"closed={closed} waiting {after['waiting']} -> {again['waiting']} count {after['count']} -> {again['count']}")

    # 2. A child sent before its parent: parked, then folded when the parent arrives.
    before = snapshot()
    parent, parent_signature = signed_operation(admin, create_room_op("routeparent", "routeparent.s"), parents=before["heads"])
    child, child_signature = signed_operation(admin, create_room_op("routechild", "routechild.s"), parents=[operation_id(parent)])
    data, closed = send(op_frame(child, child_signature))
    parked = snapshot()
    check("an RDATA op sent before its predecessor is parked, not folded",
          not closed and "routechild" not in parked["rooms"] and parked["count"] == before["count"]
          and parked["waiting"] == before["waiting"] + 1, f"closed={closed} count {before['count']} -> {parked['count']} "
          f"waiting {before['waiting']} -> {parked['waiting']} rooms={sorted(parked['rooms'])}")
    data, closed = send(op_frame(parent, parent_signature))
    folded = snapshot()
    check("when the predecessor arrives both are folded (both rooms, count +2, the child is the one head, nothing left waiting)",
          not closed and {"routeparent", "routechild"} <= folded["rooms"] and folded["count"] == before["count"] + 2
          and folded["heads"] == [operation_id(child)] and folded["waiting"] == before["waiting"],
          f"closed={closed} count {before['count']} -> {folded['count']} heads={folded['heads']} "
          f"waiting {before['waiting']} -> {folded['waiting']} rooms={sorted(folded['rooms'])}")

    # 3. Tampered parents: the relay rewrites an operation's parents to an
    #    older operation (as if its actor had not seen the latest head). Its
    #    signature no longer verifies.
    refused_frames = metric("unibus_replication_frames_refused_total")
    before = snapshot()
    honest, honest_signature = signed_operation(admin, create_room_op("routeok", "routeok.s"), parents=before["heads"])
    envelope = json.loads(honest)
    envelope["parents"] = [operation_id(parent)]
    tampered = envelope_bytes(envelope)
    data, closed = send(op_frame(tampered, honest_signature))
    after = snapshot()
    check("an RDATA op with tampered parents is refused (not stored: no room, log count, digest and waiting unchanged)",
          not closed and b"PONG" in data and "routeok" not in after["rooms"] and after["count"] == before["count"]
          and after["digest"] == before["digest"] and after["waiting"] == before["waiting"],
          f"closed={closed} count {before['count']} -> {after['count']} waiting {before['waiting']} -> {after['waiting']}")
    metric_grew("unibus_replication_frames_refused_total", refused_frames, 1, "the tampered parents (bad signature)")
    with open(NODE.log, errors="replace") as file:
        logged = [line for line in file if "replication frame refused" in line and peer.claimed in line]
    check("the node logs the tampered op as refused for its signature",
          any("signature does not verify" in line for line in logged), logged[-3:])
    data, closed = send(op_frame(honest, honest_signature))
    after = snapshot()
    check("control: the same op with the parents it was signed with is stored (the refusal was the tampering)",
          not closed and "routeok" in after["rooms"] and after["count"] == before["count"] + 1 and after["heads"] == [operation_id(honest)],
          f"closed={closed} count {before['count']} -> {after['count']} heads={after['heads']}")

    # 4. A known operation sent again: nothing changes.
    data, closed = send(op_frame(honest, honest_signature))
    again = snapshot()
    check("a known op sent again over the route changes nothing (log count, digest, heads, waiting)",
          not closed and b"PONG" in data and again["count"] == after["count"] and again["digest"] == after["digest"]
          and again["heads"] == after["heads"] and again["waiting"] == after["waiting"],
          f"closed={closed} count {after['count']} -> {again['count']} digest {after['digest']} -> {again['digest']}")

    # 5. A version 1 envelope (no parents), validly signed: no running log takes one.
    replicated_refused = metric("unibus_membership_replicated_refused_total")
    legacy, legacy_signature = signed_operation(admin, create_room_op("legacy", "legacy.s"), version=1)
    data, closed = send(op_frame(legacy, legacy_signature))
    after = snapshot()
    check("a version 1 op (no parents) over the route is refused (not stored, not parked)",
          not closed and "legacy" not in after["rooms"] and after["count"] == again["count"] and after["waiting"] == again["waiting"],
          f"closed={closed} count {again['count']} -> {after['count']} waiting {again['waiting']} -> {after['waiting']}")
    metric_grew("unibus_membership_replicated_refused_total", replicated_refused, 1, "the version 1 op")

    check("after the out-of-order, tampered and repeated frames a new operation through the control plane still applies",
          cli("room", "create", "--node", NODE.url, "--identity", admin["path"], "--id", "afterorder", "--subject", "afterorder.s")[0] == 0
          and "afterorder" in room_ids())


async def route_attacks():
    admin = PEOPLE["admin"]
    opened = metric("unibus_routes_opened_total")
    refused_before = metric("unibus_routes_refused_total")

    # An impersonator: a valid server nkey it does not hold, a garbage proof.
    _, victim_id = server_keypair()
    peer = RoutePeer()
    check("the route INFO carries a nonce, the node id and the cluster root",
          len(peer.info.get("nonce", "")) >= 16 and peer.info.get("server_id") == NODE.node_id and peer.info.get("root") == NODE.root, peer.info)
    peer.hello(victim_id, proof=b64url(os.urandom(20)) + "!!garbage")
    data, closed = read_to_close(peer.sock, initial=peer.rest)
    peer.close()
    text = data.decode(errors="replace")
    check("an AUTH with a garbage proof gets -ERR (does not prove the node id) and is closed",
          closed and re.search(r"-ERR '[^']*AUTH[^']*(prove|verify)", text) is not None, f"closed={closed} {text[:400]}")
    check("the impersonator got no interest, messages or replication", not any(k in data for k in (b"RS+", b"RMSG", b"RDATA")), text[:400])

    # A proof made with another key (valid Ed25519 signature, wrong signer).
    other, _ = server_keypair()
    peer = RoutePeer()
    peer.hello(victim_id, proof=b64url(other.sign(route_proof(peer.info["nonce"], victim_id, peer.info["server_id"], peer.info["cluster"]))))
    data, closed = read_to_close(peer.sock, initial=peer.rest)
    peer.close()
    text = data.decode(errors="replace")
    check("an AUTH signed by a key other than the claimed node id's is refused and closed",
          closed and "-ERR" in text and "AUTH" in text and not any(k in data for k in (b"RS+", b"RMSG", b"RDATA")), f"closed={closed} {text[:400]}")

    # Traffic before AUTH.
    peer = RoutePeer()
    peer.sock.sendall(b"INFO " + json.dumps({"server_id": victim_id, "cluster": peer.info["cluster"], "root": peer.info["root"],
                                             "nonce": b64url(os.urandom(18)), "proto": 1}).encode() + b"\r\nRS+ rooms.>\r\n")
    data, closed = read_to_close(peer.sock, initial=peer.rest)
    peer.close()
    check("RS+ before AUTH is refused and closed", closed and b"-ERR" in data and b"AUTH" in data and b"RS+" not in data, data[:300])
    check("no route was opened by the refused peers", route_ids() == [] and metric("unibus_routes_opened_total") == opened,
          f"routes={route_ids()} opened {opened} -> {metric('unibus_routes_opened_total')}")
    metric_grew("unibus_routes_refused_total", refused_before, 2, "the two bad AUTH proofs")

    # A peer that proves its own key, then sends admin-signed operations out of causal order.
    pair, peer_id = server_keypair()
    peer = RoutePeer()
    peer.hello(peer_id, pair=pair)
    data, closed = peer.ping()
    deadline = time.time() + 3
    while time.time() < deadline and peer_id not in (route_ids() or []):
        await asyncio.sleep(0.05)
    check("control: a peer proving its own server key is accepted as a route", not closed and peer_id in (route_ids() or []),
          f"closed={closed} routes={route_ids()} {data[:300]!r}")
    await replication_order(peer)
    peer.close()

    # A data frame in the same write as AUTH is measured against the active
    # link's limits (it was once measured against the handshake's zero).
    pair, quick_id = server_keypair()
    peer = RoutePeer()
    payload = json.dumps({"t": "sync", "count": 0, "digest": "0" * 64}, sort_keys=True).encode()
    peer.hello(quick_id, pair=pair, then=b"RDATA %d\r\n" % len(payload) + payload + b"\r\n")
    data, closed = peer.ping()
    check("a data frame in the same write as AUTH is taken (the link is not cut over a limit)",
          not closed and b"PONG" in data and b"Maximum Payload" not in data, f"closed={closed} {data[:300]!r}")
    peer.close()

    # A proven peer floods RS+ past the interest limit (20,000 on this node).
    refused_before = metric("unibus_routes_refused_total")
    pair, flood_id = server_keypair()
    peer = RoutePeer()
    peer.hello(flood_id, pair=pair)
    data, closed = peer.ping()
    received = bytearray(data)
    done = threading.Event()

    def reader():
        peer.sock.settimeout(1)
        while not done.is_set():
            try:
                chunk = peer.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            received.extend(chunk)
        done.set()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started, sent = time.time(), 0
    try:
        for start in range(0, 20_100, 5000):
            peer.sock.sendall(b"".join(b"RS+ flood.%d\r\n" % i for i in range(start, min(start + 5000, 20_100))))
            sent = min(start + 5000, 20_100)
            if done.is_set():
                break
    except OSError:
        pass
    done.wait(timeout=30)
    cut = done.is_set()
    done.set()
    thread.join(timeout=3)
    peer.close()
    text = bytes(received).decode(errors="replace")
    check("an RS+ flood past the interest limit is cut with -ERR naming interest entries",
          cut and re.search(r"-ERR '[^']*interest entries", text) is not None,
          f"sent {sent} in {time.time() - started:.1f} s, cut={cut}, tail {text[-300:]!r}")
    check("the flooding peer got no messages", b"RMSG" not in received, text[-300:])
    metric_grew("unibus_routes_refused_total", refused_before, 1, "the RS+ flood")
    deadline = time.time() + 3
    while time.time() < deadline and route_ids():
        await asyncio.sleep(0.05)
    check("no route remains after the attacks", route_ids() == [], route_ids())
    await serves("after route attacks")


# ---------------------------------------------------------------- 7. route relay over mutual TLS

class RelayNode:
    """One extra unibusd with mutual-TLS routes whose --routes names only itself."""

    def __init__(self, name, certs):
        self.name = name
        self.data = os.path.join(WORK, f"relay-{name}")
        self.client, self.control, self.route = free_port(), free_port(), free_port()
        self.cert, self.key = os.path.join(certs, f"{name}-route.pem"), os.path.join(certs, f"{name}-route.key")
        self.ca = os.path.join(certs, "cluster-ca.pem")
        self.log_path = os.path.join(WORK, f"relay-{name}.log")
        self.process = None
        self.log = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [binary("unibusd"), "run", "--data-dir", self.data, "--listen", f"{HOST}:{self.client}",
             "--control-listen", f"{HOST}:{self.control}", "--cluster-listen", f"{HOST}:{self.route}",
             "--routes", f"tls://{HOST}:{self.route}", "--cluster-name", "relay",
             "--cluster-cert", self.cert, "--cluster-key", self.key, "--cluster-ca", self.ca],
            stdout=self.log, stderr=self.log)
        for port in (self.client, self.control, self.route):
            wait_for(port)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log is not None:
            self.log.close()

    def http(self, path):
        connection = httpclient.HTTPConnection(HOST, self.control, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except (OSError, httpclient.HTTPException) as error:
            return None, f"{type(error).__name__}: {error}"
        finally:
            connection.close()

    def metric(self, name):
        status, text = self.http("/metrics")
        match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M) if status == 200 else None
        return int(float(match.group(1))) if match else None

    def routes(self):
        status, body = self.http("/v1/node")
        return [r["node_id"] for r in json.loads(body).get("cluster", {}).get("routes", [])] if status == 200 else None


class TLSRoutePeer:
    """A mutual-TLS route connection made with node c's route certificate and key."""

    def __init__(self, node, cert, key, ca):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        raw = socket.create_connection((HOST, node.route), timeout=5)
        try:
            self.sock = context.wrap_socket(raw)
        except (ssl.SSLError, OSError):
            raw.close()
            raise
        self.sock.settimeout(5)
        data, _ = read_until(self.sock, lambda d: b"\r\n" in d, timeout=5)
        self.info_line, _, self.rest = data.partition(b"\r\n")
        if not self.info_line.startswith(b"INFO "):
            self.sock.close()
            raise ConnectionError(f"no route INFO from {node.name}: {data[:200]!r}")
        self.info = json.loads(self.info_line[5:])

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def auth_line(self, timeout=5):
        """Reads until the node's AUTH line; (line or None, everything read)."""
        data, _ = read_until(self.sock, lambda d: re.search(rb"(^|\r\n)AUTH [^\r\n]*\r\n", d) is not None, timeout=timeout,
                             initial=self.rest)
        self.rest = b""
        match = re.search(rb"(?:^|\r\n)(AUTH [^\r\n]*\r\n)", data)
        return (match.group(1) if match else None), data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


async def route_relay():
    certs = os.path.join(WORK, "relay-certs")
    made = subprocess.run(["bash", os.path.join(ROOT, "deploy", "make-certs.sh"), certs, "a=127.0.0.1", "b=127.0.0.1", "c=127.0.0.1"],
                          capture_output=True, text=True, timeout=120)
    check("relay setup: deploy/make-certs.sh makes the cluster CA and route certificates for a, b, c", made.returncode == 0,
          made.stdout + made.stderr)
    if made.returncode != 0:
        return
    first = len(results)
    admin_path = os.path.join(WORK, "relay-admin.json")
    a, b = RelayNode("a", certs), RelayNode("b", certs)
    attacker = (os.path.join(certs, "c-route.pem"), os.path.join(certs, "c-route.key"), os.path.join(certs, "cluster-ca.pem"))
    try:
        init_a = subprocess.run([binary("unibusd"), "init", "--data-dir", a.data, "--admin-identity", admin_path],
                                capture_output=True, text=True, timeout=30)
        admin_nkey = json.loads(cli("identity", "show", "--identity", admin_path, "--json")[1])["nkey"]
        init_b = subprocess.run([binary("unibusd"), "init", "--data-dir", b.data, "--root", admin_nkey],
                                capture_output=True, text=True, timeout=30)
        check("relay setup: a inited with the admin, b with the admin's nkey as root", init_a.returncode == 0 and init_b.returncode == 0,
              init_a.stdout + init_a.stderr + init_b.stdout + init_b.stderr)
        a.start()
        b.start()
        ids = {}
        for node in (a, b):
            status, body = node.http("/v1/node")
            ids[node.name] = json.loads(body)["node_id"] if status == 200 else None
        await asyncio.sleep(0.5)   # each node has dialed its own URL (and dropped it as a route to self)
        check("relay setup: a and b run with TLS routes, unlinked (each lists only its own URL)",
              all(ids.values()) and ids["a"] != ids["b"] and a.routes() == [] and b.routes() == []
              and a.metric("unibus_routes") == 0 and b.metric("unibus_routes") == 0,
              f"ids={ids} routes a={a.routes()} b={b.routes()}")

        for variant in ("INFO rebuilt with the other node's id and nonce", "INFO and AUTH forwarded byte for byte"):
            refused = {node.name: node.metric("unibus_routes_refused_total") for node in (a, b)}
            opened = {node.name: node.metric("unibus_routes_opened_total") for node in (a, b)}
            to_a = to_b = None
            try:
                to_a = TLSRoutePeer(a, *attacker)
                to_b = TLSRoutePeer(b, *attacker)
                check(f"relay ({variant}): c's route certificate opens TLS to both nodes and each sends its INFO",
                      to_a.info.get("server_id") == ids["a"] and to_b.info.get("server_id") == ids["b"]
                      and len(to_a.info.get("nonce", "")) >= 16 and len(to_b.info.get("nonce", "")) >= 16,
                      f"{to_a.info} {to_b.info}")
                if variant.startswith("INFO rebuilt"):
                    # To b, claim to be a with a's nonce (a's other fields copied); to a, claim to be b with b's nonce.
                    as_a = dict(to_a.info, server_id=to_a.info["server_id"], nonce=to_a.info["nonce"])
                    as_b = dict(to_b.info, server_id=to_b.info["server_id"], nonce=to_b.info["nonce"])
                    sent = to_b.send(b"INFO " + json.dumps(as_a).encode() + b"\r\n") and to_a.send(b"INFO " + json.dumps(as_b).encode() + b"\r\n")
                else:
                    sent = to_b.send(to_a.info_line + b"\r\n") and to_a.send(to_b.info_line + b"\r\n")
                auth_a, seen_a = to_a.auth_line()
                auth_b, seen_b = to_b.auth_line()
                check(f"relay ({variant}): each node answers the spoofed INFO with its own AUTH (the proofs to relay)",
                      sent and auth_a is not None and auth_b is not None, f"sent={sent} a: {seen_a[:300]!r} b: {seen_b[:300]!r}")
                if auth_b is not None:
                    to_a.send(auth_b)
                if auth_a is not None:
                    to_b.send(auth_a)
                outcome = {}
                for name, peer in (("a", to_a), ("b", to_b)):
                    data, closed = read_to_close(peer.sock, timeout=5)
                    outcome[name] = (data, closed)
                for name, other in (("a", "b"), ("b", "a")):
                    data, closed = outcome[name]
                    text = data.decode(errors="replace")
                    check(f"relay ({variant}): {name} refuses {other}'s relayed proof with -ERR naming AUTH and closes",
                          closed and re.search(r"-ERR '[^']*AUTH[^']*(prove|verify)", text) is not None,
                          f"closed={closed} {text[:400]!r}")
                    check(f"relay ({variant}): the relay got no interest, messages or replication from {name}",
                          not any(k in data for k in (b"RS+", b"RMSG", b"RHMSG", b"RDATA")), text[:400])
            except (OSError, ConnectionError, ValueError) as error:
                check(f"relay ({variant}): the relay ran", False, f"{type(error).__name__}: {error}")
            finally:
                for peer in (to_a, to_b):
                    if peer is not None:
                        peer.close()
            await asyncio.sleep(0.3)
            for node in (a, b):
                routes, gauge = node.routes(), node.metric("unibus_routes")
                check(f"relay ({variant}): {node.name} counts no active route (unibus_routes 0, no route in /v1/node, none opened)",
                      routes == [] and gauge == 0 and node.metric("unibus_routes_opened_total") == opened[node.name],
                      f"routes={routes} unibus_routes={gauge} opened {opened[node.name]} -> {node.metric('unibus_routes_opened_total')}")
                after = node.metric("unibus_routes_refused_total")
                check(f"relay ({variant}): {node.name}'s unibus_routes_refused_total grew",
                      refused[node.name] is not None and after is not None and after > refused[node.name], f"{refused[node.name]} -> {after}")
        for node in (a, b):
            status, body = node.http("/healthz")
            alive = node.process.poll() is None
            check(f"after the relay: {node.name} still serves (process alive, healthz 200)",
                  alive and status == 200 and json.loads(body).get("status") == "ok", f"alive={alive} {status} {body[:200]!r}")
    finally:
        failed = not all(results[first:])
        a.stop()
        b.stop()
        if failed:
            for node in (a, b):
                if os.path.exists(node.log_path):
                    print(f"--- relay node {node.name} log (tail)")
                    print(open(node.log_path).read()[-2000:])


# ---------------------------------------------------------------- 8. churn

def churn_once(i):
    person = PEOPLE["alice"] if i % 2 == 0 else PEOPLE["mallory"]
    bad = i % 2 == 1
    try:
        sock, _, rest = raw_nats(person["seed"], bad_signature=bad)
        data, _ = read_until(sock, lambda d: b"PONG\r\n" in d or b"-ERR" in d, initial=rest)
        sock.close()
    except OSError as error:
        return "error", str(error)
    if bad:
        return ("refused" if b"-ERR 'Authorization Violation'" in data and b"PONG" not in data else "unexpected"), data[:100]
    return ("served" if b"PONG\r\n" in data and b"-ERR" not in data else "unexpected"), data[:100]


async def churn():
    pid = NODE.process.pid
    before_rss = rss_kib(pid)
    baseline = metric("unibus_connections")
    objects = metric("unibus_connection_objects")
    started = time.time()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = await asyncio.gather(*(loop.run_in_executor(pool, churn_once, i) for i in range(2000)))
    elapsed = time.time() - started
    counts = {}
    for kind, _ in outcomes:
        counts[kind] = counts.get(kind, 0) + 1
    examples = [o for o in outcomes if o[0] not in ("served", "refused")][:3]
    check("2,000 connect/close cycles: 1,000 served, 1,000 refused for a bad signature",
          counts.get("served") == 1000 and counts.get("refused") == 1000, f"{counts} {examples}")
    deadline = time.time() + 5
    current = metric("unibus_connections")
    while time.time() < deadline and current != baseline:
        await asyncio.sleep(0.1)
        current = metric("unibus_connections")
    check("the connection gauge returns to its level before the churn", current == baseline, f"{baseline} -> {current}")
    if objects is None:
        print("     note: unibus_connection_objects is not exported by /metrics")
    else:
        deadline = time.time() + 5
        live = metric("unibus_connection_objects")
        while time.time() < deadline and live != objects:
            await asyncio.sleep(0.1)
            live = metric("unibus_connection_objects")
        check("no connection objects outlive the churn (unibus_connection_objects back to its level)", live == objects, f"{objects} -> {live}")
    print(f"     2,000 cycles in {elapsed:.1f} s; RSS {before_rss} KiB -> {rss_kib(pid)} KiB (information only)")
    await serves("after connection churn")


# ---------------------------------------------------------------- main

def identity(work, name):
    path = os.path.join(work, name + ".json")
    subprocess.run([binary("unibus"), "identity", "new", "--out", path], check=True, capture_output=True)
    shown = json.loads(cli("identity", "show", "--identity", path, "--json")[1])
    seed = cli("identity", "nkey", "--identity", path, "--seed")[1].strip()
    return {"path": path, "nkey": shown["nkey"], "kx": shown["exchange_key"], "seed": seed}


async def main(work):
    global WORK
    WORK = work
    data = os.path.join(work, "data")
    admin_path = os.path.join(work, "admin.json")
    subprocess.run([binary("unibusd"), "init", "--data-dir", data, "--admin-identity", admin_path], check=True, capture_output=True)
    admin_seed = cli("identity", "nkey", "--identity", admin_path, "--seed")[1].strip()
    admin_nkey = json.loads(cli("identity", "show", "--identity", admin_path, "--json")[1])["nkey"]
    PEOPLE["admin"] = {"path": admin_path, "nkey": admin_nkey, "seed": admin_seed}
    for name in ("alice", "bob", "mallory"):
        PEOPLE[name] = identity(work, name)
    NODE.client, NODE.control, NODE.route = free_port(), free_port(), free_port()
    NODE.log = os.path.join(work, "node.log")
    log = open(NODE.log, "a")
    NODE.process = subprocess.Popen(
        [binary("unibusd"), "run", "--data-dir", data, "--listen", f"{HOST}:{NODE.client}", "--control-listen", f"{HOST}:{NODE.control}",
         "--cluster-listen", f"{HOST}:{NODE.route}", "--cluster-allow-plaintext", "--routes", f"route://{HOST}:{NODE.route}",
         # Lower limits than the defaults (50,000 per user, 1,000,000 per
         # route peer) so the floods below stay quick; the mechanism is the same.
         "--max-subscriptions-per-user", "15000", "--max-route-interest", "20000"],
        stdout=log, stderr=log)
    try:
        wait_for(NODE.client)
        wait_for(NODE.control)
        wait_for(NODE.route)
        status, body = http("GET", "/v1/node")
        node = json.loads(body)
        NODE.node_id, NODE.root = node["node_id"], node["membership"]["root"]
        as_admin = ["--node", NODE.url, "--identity", admin_path]
        for name in ("alice", "bob", "mallory"):
            person = PEOPLE[name]
            code, out = cli("user", "add", *as_admin, "--sign-pub", person["nkey"], "--exchange-key", person["kx"], "--handle", name)
            check(f"setup: admin adds {name}", code == 0, out)
        code, out = cli("room", "create", *as_admin, "--id", "ops", "--subject", "rooms.ops")
        check("setup: room ops on rooms.ops", code == 0, out)
        for name in ("alice", "bob"):
            code, out = cli("room", "add-member", *as_admin, "--id", "ops", "--sign-pub", PEOPLE[name]["nkey"])
            check(f"setup: {name} joins ops", code == 0, out)
        await serves("baseline")
        for section in (header_attacks, slow_loris, reserved_namespaces, policy_ranges, operation_envelopes, broker_attacks,
                        route_attacks, route_relay, churn):
            started = time.time()
            try:
                await section()
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                check(f"{section.__name__} ran to the end", False, f"{type(error).__name__}: {error}")
            print(f"     {section.__name__}: {time.time() - started:.1f} s", flush=True)
        check("the node process is alive at the end", NODE.process.poll() is None, f"exit status {NODE.process.poll()}")
    finally:
        if NODE.process.poll() is None:
            NODE.process.terminate()
            try:
                NODE.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                NODE.process.kill()
                NODE.process.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    began = time.time()
    with tempfile.TemporaryDirectory() as work:
        try:
            asyncio.run(main(work))
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            check("the scenario ran to the end", False, error)
        passed = sum(results)
        failed = len(results) - passed
        if failed and NODE.log and os.path.exists(NODE.log):
            print("--- node log (tail)")
            print(open(NODE.log).read()[-3000:])
        print(f"     total {time.time() - began:.1f} s")
        print(f"{passed} passed, {failed} failed")
    sys.exit(0 if results and not failed else 1)
