#!/usr/bin/env python3
"""Node operations through three real nodes (issue 14's "done when"):

- signed heartbeats: `unibus node list` shows the three nodes; a stock NATS
  client (nats-py, as an admin) reads a beat as JSON; a member may not;
- the Command Center in headless chromium: `unibus cc open`, the code traded
  for an HttpOnly cookie, the three nodes live; a killed node turns stale on
  the open page (server-sent events); screenshots at 1280x800 and phone width;
  an agent hostname carrying HTML shows as text (stored XSS);
- a signed `settings` command changes max_connections on one node live, with
  a signed result; the setting persists across a restart;
- a replayed command (the same signed bytes, published by nats-py) is
  refused as replayed and counted in /metrics;
- a killswitch turns agent heartbeats off and on;
- the VaultMesh node agent contract against implementations written here
  from the contract alone: a Python client against unibusd (open mode and
  signed mode), and `unibus agent` against a Python Command Center;
- a signed drain: the node goes lame duck and exits 0.

    ops_e2e.py BIN_DIR
"""
import asyncio
import base64
import datetime
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unibus_cluster  # noqa: E402
from unibus_cluster import Cluster, check, identity, results, run  # noqa: E402
from cdp import Browser  # noqa: E402
from servers import eventually, free_port  # noqa: E402

try:
    import nats
    import nkeys
except ImportError as error:
    sys.stderr.write(f"interop peer missing: {error}; pip install nats-py nkeys\n")
    sys.exit(3)

unibus_cluster.configure(sys.argv[1])


def wait(predicate, timeout=30, interval=0.2):
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return value


def fetch(url, context, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


# --- the VaultMesh contract, written here from the contract alone ---------

def contract_heartbeat(**overrides):
    body = {"node_id": str(uuid.uuid4()), "hostname": "vault-py", "os_profile": "DebianVault", "cloudflare_ok": True,
            "services_ok": True, "vaultmesh_root": "/var/lib/vaultmesh",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def post_heartbeat(base, context, body, signer=None, node_id=None):
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if signer:
        timestamp, nonce = int(time.time()), base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        path = "/api/agent/heartbeat"
        canonical = f"UNIBUS-REQUEST-1\nPOST\n{path}\n{hashlib.sha256(raw).hexdigest()}\n{timestamp}\n{nonce}\n{node_id}"
        pair = nkeys.from_seed(signer.encode())
        headers.update({"unibus-key": pair.public_key.decode(), "unibus-timestamp": str(timestamp), "unibus-nonce": nonce,
                        "unibus-signature": base64.urlsafe_b64encode(pair.sign(canonical.encode())).decode().rstrip("=")})
    return fetch(base + "/api/agent/heartbeat", context, "POST", raw, headers)


def contract_valid(body):
    """The contract's checks, independently: every field, its type, UUID v4, RFC 3339."""
    types = {"node_id": str, "hostname": str, "os_profile": str, "cloudflare_ok": bool, "services_ok": bool,
             "vaultmesh_root": str, "timestamp": str}
    for key, kind in types.items():
        if key not in body or type(body[key]) is not kind:
            return f"{key} missing or not {kind.__name__}"
    try:
        if uuid.UUID(body["node_id"]).version != 4:
            return "node_id is not v4"
    except ValueError:
        return "node_id is not a UUID"
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", body["timestamp"]):
        return "timestamp is not RFC 3339"
    return None


class CommandCenter(http.server.BaseHTTPRequestHandler):
    received = []
    problems = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/api/agent/heartbeat" or not self.headers.get("Content-Type", "").startswith("application/json"):
            self.send_response(404)
            self.end_headers()
            return
        try:
            document = json.loads(body)
            problem = contract_valid(document)
        except ValueError:
            problem = "not JSON"
        if problem:
            CommandCenter.problems.append(problem)
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"error": problem}).encode())
            return
        CommandCenter.received.append(document)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args):
        pass


def metric(cluster, name, line):
    status, text, _ = fetch(cluster.node(name) + "/metrics", cluster.context)
    for row in text.splitlines():
        if row.startswith(line + " "):
            return int(float(row.split()[-1]))   # Prometheus values may be written as floats (gauges: 0.0)
    return None


async def main(work):
    cluster = Cluster(work)
    admin = identity(work, "admin")
    member = identity(work, "member")
    agent = identity(work, "agent")
    root, outcomes = cluster.init(admin["path"])
    check("init", all(status == 0 for _, status, _ in outcomes), outcomes)
    fast = ["--beat-interval", "0.5", "--lame-duck-grace", "0.2", "--lame-duck-duration", "1"]
    cluster.extra = {"a": fast + ["--agent-heartbeats", "open"], "b": fast, "c": fast}
    for name in cluster.names:
        cluster.start(name)
    check("three nodes linked", cluster.wait_routes(cluster.names, 2))
    converged, _ = cluster.converged(cluster.names)
    check("logs converged", converged)
    ca = cluster.client_pki["ca.pem"]

    def as_admin(name):
        return ["--node", cluster.node(name), "--identity", admin["path"], "--ca", ca]

    for person, role in ((member, "member"), (agent, "agent")):
        status, output = run("unibus", "user", "add", *as_admin("a"), "--sign-pub", person["nkey"], "--exchange-key", person["kx"],
                             "--handle", role, "--role", role)
        check(f"add the {role}", status == 0, output)
    ids = {name: cluster.info(name)["node_id"] for name in cluster.names}

    # --- heartbeats -------------------------------------------------------
    def listed():
        status, output = run("unibus", "node", "list", *as_admin("a"), "--json")
        if status != 0:
            return None
        view = json.loads(output)
        healthy = [n for n in view["nodes"] if n["status"] == "healthy"]
        return view if len(healthy) == 3 else None
    view = wait(listed)
    check("unibus node list shows three healthy nodes", view and sorted(n["id"] for n in view["nodes"]) == sorted(ids.values()), view)
    status, output = run("unibus", "node", "list", *as_admin("b"))
    check("the table lists every node", status == 0 and all(i[:12] in output for i in ids.values()), output)

    py = await nats.connect(cluster.server("b"), tls=cluster.context, nkeys_seed_str=admin["seed"],
                            inbox_prefix=f"_INBOX.{admin['nkey']}".encode())
    beats = await py.subscribe("unibus.node.*.beat")
    message = await beats.next_msg(timeout=10)
    beat = json.loads(message.data)
    check("a stock NATS client reads a beat as JSON", beat.get("type") == "beat" and beat.get("node") in ids.values()
          and message.subject == f"unibus.node.{beat['node']}.beat" and len(beat.get("signature", "")) == 86, beat)
    check("the beat has the fields the issue names", all(k in beat for k in (
        "name", "version", "started", "uptime_seconds", "pid", "status", "connections", "routes", "peers", "rooms", "log",
        "rss_bytes", "cpu_seconds", "slow_consumers", "clock_offset_ms", "clock_ok")), sorted(beat))
    refusals = []

    async def on_error(error):
        refusals.append(str(error))
    outsider = await nats.connect(cluster.server("b"), tls=cluster.context, nkeys_seed_str=member["seed"],
                                  inbox_prefix=f"_INBOX.{member['nkey']}".encode(), error_cb=on_error)
    denied = await outsider.subscribe("unibus.node.>")
    await outsider.flush(timeout=5)
    violation = await eventually(lambda: any("permissions violation" in r.lower() for r in refusals), 5)
    got = []
    try:
        got.append(await denied.next_msg(timeout=1.5))
    except Exception:  # noqa: BLE001
        pass
    check("a member cannot read beats (Permissions Violation)", violation and not got, (refusals, got))
    await outsider.close()

    # --- the VaultMesh contract: a Python client against unibusd ------------
    base_a = cluster.node("a")
    xss = '<img src=x onerror="document.title=\'pwned\'">'
    status, body, _ = post_heartbeat(base_a, cluster.context, contract_heartbeat(hostname=xss))
    check("open mode: a contract heartbeat is 200 {status: ok}", status == 200 and json.loads(body) == {"status": "ok"}, (status, body))
    for name, body_fields, fragment in (
            ("a missing field", {"services_ok": ...}, "services_ok is missing"),
            ("a wrong type", {"cloudflare_ok": "yes"}, "cloudflare_ok must be a boolean"),
            ("a non-v4 UUID", {"node_id": "550e8400-e29b-11d4-a716-446655440000"}, "node_id must be a UUID v4"),
            ("a bad timestamp", {"timestamp": "yesterday"}, "timestamp must be RFC 3339")):
        status, text, _ = post_heartbeat(base_a, cluster.context, contract_heartbeat(**body_fields))
        error = json.loads(text).get("error", "") if text.startswith("{") else text
        check(f"{name} is 400 naming the field", status == 400 and fragment in error, (status, text))
    status, text, _ = fetch(base_a + "/api/agent/heartbeat", cluster.context, "POST", b"x" * 20000, {"Content-Type": "application/json"})
    check("an oversized heartbeat is refused", status == 413, (status, text[:200]))
    same = contract_heartbeat()
    statuses = [post_heartbeat(base_a, cluster.context, same)[0] for _ in range(14)]
    check("a flooding agent is rate-limited (429)", statuses[:12] == [200] * 12 and 429 in statuses, statuses)

    base_b = cluster.node("b")
    status, text, _ = post_heartbeat(base_b, cluster.context, contract_heartbeat())
    check("signed mode: an unsigned heartbeat is 401", status == 401, (status, text))
    status, text, _ = post_heartbeat(base_b, cluster.context, contract_heartbeat(), signer=member["seed"], node_id=ids["b"])
    check("signed mode: a member's key is 403", status == 403, (status, text))
    signed_id = str(uuid.uuid4())
    status, text, _ = post_heartbeat(base_b, cluster.context, contract_heartbeat(node_id=signed_id), signer=agent["seed"], node_id=ids["b"])
    check("signed mode: a registered agent key is 200", status == 200, (status, text))

    # `unibus agent` against unibusd (signed) and against the Python Command Center.
    env_file = os.path.join(work, "agent.env")
    with open(env_file, "w") as f:
        f.write(f"VAULTMESH_CC_URL={base_b}\nVAULTMESH_NODE_ID={signed_id}\nVAULTMESH_OS_PROFILE=DebianVault\n"
                f"VAULTMESH_ROOT={work}\nVAULTMESH_HEARTBEAT_SECS=1\n")
    id_file = os.path.join(work, "agent-id")
    status, output = run("unibus", "agent", "--env-file", env_file, "--id-file", id_file, "--identity", agent["path"], "--ca", ca,
                         "--count", "1")
    check("unibus agent (signed) is accepted by unibusd", status == 0, output)
    status, text, _ = post_heartbeat(base_b, cluster.context, contract_heartbeat(), signer=agent["seed"], node_id=ids["b"])
    check("one agent key reports one node id (409)", status == 409 and "already reports node_id" in text, (status, text))
    fleet_b = json.loads(run("unibus", "node", "list", *as_admin("b"), "--json")[1])
    check("node list shows the signed agent", any(a["node_id"] == signed_id and a["key"] == agent["nkey"] for a in fleet_b["agents"]),
          fleet_b["agents"])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CommandCenter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cc_url = f"http://127.0.0.1:{server.server_address[1]}"
    with open(env_file, "w") as f:
        f.write(f"# contract variables\nVAULTMESH_CC_URL={cc_url}\nVAULTMESH_ROOT=/nonexistent\nVAULTMESH_HEARTBEAT_SECS=1\n")
    other_id = os.path.join(work, "agent-id-2")
    status, output = run("unibus", "agent", "--env-file", env_file, "--id-file", other_id, "--count", "2")
    received = list(CommandCenter.received)
    check("unibus agent sends contract heartbeats a Python Command Center accepts", status == 0 and len(received) == 2
          and not CommandCenter.problems, (status, output, received, CommandCenter.problems))
    if received:
        kept = open(other_id).read().strip()
        check("the generated node id persists and is reused", all(r["node_id"] == kept for r in received)
              and received[0]["os_profile"] == "ArchVault" and received[0]["services_ok"] is False, received)
    status, output = run("unibus", "agent", "--env-file", env_file, "--id-file", other_id, "--count", "2")
    check("the next run keeps the node id", status == 0 and CommandCenter.received[-1]["node_id"] == open(other_id).read().strip(), output)
    server.shutdown()
    server.server_close()
    status, output = run("unibus", "agent", "--env-file", env_file, "--id-file", other_id, "--count", "2", timeout=60)
    check("an unreachable Command Center: logged, retried next cycle, exit 1", status == 1 and output.count("retrying next cycle") == 2, output)

    # --- the Command Center in a real browser -----------------------------------
    browser = Browser(work)
    try:
        status, url = run("unibus", "cc", "open", *as_admin("a"))
        url = url.strip()
        check("unibus cc open prints a URL with a code in its fragment", status == 0 and "/cc#code=" in url, url)
        status, page, headers = fetch(cluster.node("a") + "/cc", cluster.context)
        csp = headers.get("Content-Security-Policy", headers.get("content-security-policy", ""))
        check("the page is served with a strict CSP", status == 200 and "default-src 'none'" in csp and "script-src 'self'" in csp, headers)
        status, _, _ = fetch(cluster.node("a") + "/cc/fleet", cluster.context)
        check("the fleet needs a session", status == 401, status)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)
        rows = browser.wait("document.body && document.body.dataset.ready === 'true' && "
                            "document.querySelectorAll('#nodes tbody tr[data-status=healthy]').length === 3")
        check("the page shows three healthy nodes", rows, browser.evaluate("document.body.innerText"))
        check("the code left the address bar", browser.evaluate("location.href").endswith("/cc"), browser.evaluate("location.href"))
        check("the session cookie is HttpOnly", browser.evaluate("document.cookie") == "", browser.evaluate("document.cookie"))
        status, _, _ = fetch(base_a + "/cc/session", cluster.context, "POST", json.dumps({"code": url.split("#code=")[1]}).encode(),
                            {"Content-Type": "application/json"})
        check("the code is single-use", status == 401, status)
        shown = browser.wait("Array.from(document.querySelectorAll('#agents td')).some(td => td.textContent.includes('<img src=x'))")
        check("an agent's HTML hostname shows as text", shown and browser.evaluate("document.title") != "pwned"
              and browser.evaluate("document.querySelectorAll('#agents img').length") == 0, browser.evaluate("document.title"))
        cluster.kill("c")
        stale = browser.wait(f"document.querySelector('#nodes tr[data-id=\"{ids['c']}\"]')?.dataset.status === 'stale'", timeout=20)
        check("a killed node turns stale on the open page", stale,
              browser.evaluate("Array.from(document.querySelectorAll('#nodes tr')).map(r => r.dataset.status).join(',')"))
        wide = browser.screenshot(os.path.join(work, "cc-1280x800.png"), 1280, 800)
        narrow = browser.screenshot(os.path.join(work, "cc-phone.png"), 390, 844, mobile=True)
        check("screenshots at 1280x800 and phone width are PNGs", wide[:8] == b"\x89PNG\r\n\x1a\n" and len(wide) > 5000
              and narrow[:8] == b"\x89PNG\r\n\x1a\n" and len(narrow) > 5000, (len(wide), len(narrow)))
        overflow = browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        check("the phone layout does not scroll sideways", overflow, browser.evaluate("document.documentElement.scrollWidth"))
    finally:
        browser.close()

    # --- signed settings, results, replay --------------------------------------
    results_sub = await py.subscribe("unibus.node.*.update_result")
    await py.flush(timeout=5)
    saved = os.path.join(work, "command.json")
    status, output = run("unibus", "node", "set", *as_admin("a"), "--target", ids["b"], "max_connections=1", "--save-command", saved)
    check("settings on one node: a signed ok result", status == 0 and " ok: max_connections=1" in output, output)
    result = json.loads((await results_sub.next_msg(timeout=10)).data)
    check("nats-py sees the result (action, status, detail, error, node, timestamp)", result["node"] == ids["b"]
          and result["status"] == "ok" and all(k in result for k in ("action", "detail", "error", "timestamp")), result)

    def raw_connect(port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        data = b""
        try:
            # INFO, then the refusal (or nothing more: a slot was free).
            sock.settimeout(3.0)
            while data.count(b"\r\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        return sock, data
    # The admin's nats-py connection to b holds the one allowed slot.
    first, first_data = raw_connect(cluster.ports["b"]["client"])
    check("the limit applies live: a new connection is refused", b"maximum connections exceeded" in first_data, first_data[-200:])
    first.close()
    setting = cluster.info("b")["runtime_settings"]["max_connections"]
    check("/v1/node shows the setting and its source", setting["value"] == 1 and setting["source"] == "command", setting)
    status, output = run("unibus", "node", "set", *as_admin("a"), "--target", ids["b"], "max_connections=5000")
    check("the limit goes back up", status == 0, output)

    replayed_before = metric(cluster, "b", 'unibus_control_commands_refused_total{reason="replayed"}') or 0
    await py.publish("unibus.control", open(saved, "rb").read())
    await py.flush()
    refusal = None
    deadline = time.time() + 10
    while time.time() < deadline:
        candidate = json.loads((await results_sub.next_msg(timeout=10)).data)
        if candidate["status"] == "refused":
            refusal = candidate
            break
    check("a replayed command is refused as replayed", refusal and "replayed" in (refusal.get("error") or ""), refusal)
    counted = wait(lambda: (metric(cluster, "b", 'unibus_control_commands_refused_total{reason="replayed"}') or 0) > replayed_before, 10)
    check("the replay is counted in /metrics", counted)
    check("the limit stayed where the newer command put it", cluster.info("b")["runtime_settings"]["max_connections"]["value"] == 5000)

    cluster.kill("b", sig=15)
    cluster.start("b")
    setting = cluster.info("b")["runtime_settings"]["max_connections"]
    check("a pushed setting survives a restart, above the flags", setting["value"] == 5000 and setting["source"] == "command", setting)

    # --- killswitch ------------------------------------------------------------
    status, output = run("unibus", "node", "kill", *as_admin("a"), "--target", ids["a"], "--feature", "agent_heartbeats")
    check("killswitch agent_heartbeats engaged", status == 0, output)
    status, text, _ = post_heartbeat(base_a, cluster.context, contract_heartbeat())
    check("agent heartbeats are refused while it is engaged", status == 503 and "killswitch" in text, (status, text))
    status, output = run("unibus", "node", "kill", *as_admin("a"), "--target", ids["a"], "--feature", "agent_heartbeats", "--lift")
    status2, text, _ = post_heartbeat(base_a, cluster.context, contract_heartbeat())
    check("lifted: heartbeats are taken again", status == 0 and status2 == 200, (output, status2, text))
    await py.close()

    # --- drain -----------------------------------------------------------------
    process = cluster.processes["b"]
    wait(lambda: listed_status("b", ids, as_admin) == "healthy", 15)
    status, output = run("unibus", "node", "drain", *as_admin("a"), "--target", ids["b"])
    check("drain: a signed ok result", status == 0 and "drain ok" in output, output)
    try:
        code = process.wait(timeout=30)
    except Exception:  # noqa: BLE001
        code = None
    cluster.processes.pop("b", None)
    check("the drained node exits 0 after lame duck", code == 0, code)
    log = open(os.path.join(work, "node-b.log")).read()
    check("its log shows lame duck", "entering lame-duck mode" in log, log[-1500:])
    gone = wait(lambda: listed_status("b", ids, as_admin) in ("stopped", "stale"), 15)
    check("the fleet shows the drained node stopped", gone, listed_status("b", ids, as_admin))
    cluster.stop_all()


def listed_status(name, ids, as_admin):
    status, output = run("unibus", "node", "list", *as_admin("a"), "--json")
    if status != 0:
        return None
    for node in json.loads(output)["nodes"]:
        if node["id"] == ids[name]:
            return node["status"]
    return None


if __name__ == "__main__":
    work = tempfile.mkdtemp(prefix="unibus-ops-")
    cluster_names = ("a", "b", "c")
    try:
        asyncio.run(main(work))
    except Exception as error:  # noqa: BLE001
        check("scenario ran to the end", False, repr(error))
    finally:
        for line in os.popen("pkill -f " + work + " 2>/dev/null"):
            pass
    sys.exit(unibus_cluster.report(results, work))
