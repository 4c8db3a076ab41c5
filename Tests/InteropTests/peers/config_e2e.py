#!/usr/bin/env python3
"""Running a node from configuration (issue 15), against the real unibusd:

- every `unibusd run` flag is a configuration key (`config show` lists the
  same set as `run --help`);
- a node starts from a JSON file with `UNIBUS_*` overrides, a flag above
  both, a `file://` secret (the TLS key, 0600) and an `env://` value; each
  runtime setting says where it came from;
- bad configuration fails at start naming the file or variable, the key and
  the problem (group-readable secret, unset variable, unknown key, a value
  out of range, an unsupported reference scheme);
- logs are JSON lines through swift-log, and no secret reaches them;
- /metrics is the swift-prometheus exposition (HELP and TYPE per metric);
- SIGHUP reloads all or nothing: a live setting changes, a change that
  needs a restart is refused by name with nothing applied, a renewed TLS
  certificate at the same path is served to new connections, and a
  setting an admin pushed by signed command stays above the file;
- SIGTERM stops gracefully (exit 0, pid file removed); `unibusd drain`
  puts a node in lame duck and waits for its exit 0.

    config_e2e.py BIN_DIR
"""
import hashlib
import json
import os
import re
import signal
import ssl
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unibus_cluster  # noqa: E402
from unibus_cluster import Cluster, check, report, results, run, ROOT  # noqa: E402
from servers import free_port, wait_for, wait_until  # noqa: E402

BIN = sys.argv[1]
unibus_cluster.configure(BIN)


def log_lines(path):
    with open(path) as handle:
        return [line for line in handle.read().splitlines() if line.strip()]


def served_certificate(port):
    """SHA-256 of the DER certificate a new TLS connection to `port` is given."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def file_certificate(path):
    return file_certificate_bytes(open(path, "rb").read())


def file_certificate_bytes(pem):
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return hashlib.sha256(der).hexdigest()


with tempfile.TemporaryDirectory() as work:
    cluster = Cluster(work, names=("a",))
    admin = os.path.join(work, "admin.json")
    root, outcomes = cluster.init(admin)
    check("unibusd init", all(status == 0 for _, status, _ in outcomes), outcomes)
    ports = cluster.ports["a"]
    cert, key = cluster.client_pki["a"]
    ca = cluster.client_pki["ca.pem"]

    # --- one model: the flags ------------------------------------------------
    status, help_text = run("unibusd", "run", "--help")
    flags = set(re.findall(r"--([a-z][a-z0-9-]+)", help_text)) - {"help", "version", "config", "experimental-dump-help"}
    flags = {f for f in flags if not (f.startswith("no-") and f[3:] in flags)}   # --no-x is switch x's off form
    status, shown = run("unibusd", "config", "show", "--json")
    keys = set(json.loads(shown)) if status == 0 else set()
    check("every `run` flag is a configuration key and every key a flag",
          keys == {flag.replace("-", "_") for flag in flags}, sorted(keys ^ {f.replace("-", "_") for f in flags}))

    # --- a node from a file, environment and flags -----------------------------
    config_path = os.path.join(work, "unibusd.json")
    config = {
        "listen": "127.0.0.1:1",   # the environment overrides it
        "control_listen": f"127.0.0.1:{ports['control']}",
        "data_dir": cluster.data("a"),
        "tls_cert": cert,
        "tls_key": "file://" + key,
        "max_connections": 500,
        "max_subscriptions": 777,   # the environment overrides it
        "max_subscriptions_per_user": 1,   # the flag overrides it
        "name": "env://NODE_NAME",
        "log_format": "json",
        "lame_duck_grace": 0.2,
        "lame_duck_duration": 0.5,
        "pid_file": os.path.join(work, "unibusd.pid"),
    }

    def write_config(changes=None, path=config_path):
        body = dict(config, **(changes or {}))
        with open(path, "w") as handle:
            json.dump(body, handle)

    write_config()
    environment = dict(os.environ, UNIBUS_LISTEN=f"127.0.0.1:{ports['client']}", UNIBUS_MAX_SUBSCRIPTIONS="888",
                       NODE_NAME="alpha-node")
    shown = subprocess.run([os.path.join(BIN, "unibusd"), "config", "show", "--config", config_path, "--json"],
                           capture_output=True, text=True, env=environment)
    check("config show --json: value, source and reload class per key", shown.returncode == 0
          and json.loads(shown.stdout)["tls_key"] == {"value": "(secret: file://" + key + ")", "source": "file " + config_path,
                                                      "reference": "file://" + key, "reload": "live"}, shown.stdout[-800:] + shown.stderr)
    shown = subprocess.run([os.path.join(BIN, "unibusd"), "config", "show", "--config", config_path, "--",
                            "--max-subscriptions-per-user", "4242"], capture_output=True, text=True, env=environment)
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line and not line.startswith("#")}
    check("config show: each value with its source", shown.returncode == 0
          and "(file " + config_path + ")" in lines.get("max_connections", "")
          and "(environment UNIBUS_MAX_SUBSCRIPTIONS)" in lines.get("max_subscriptions", "")
          and "(flag)" in lines.get("max_subscriptions_per_user", "")
          and "(default)" in lines.get("max_payload", "")
          and "[restart to change]" in lines.get("listen", ""), shown.stdout + shown.stderr)
    check("config show: a secret shows as its reference", "(secret: file://" + key + ")" in lines.get("tls_key", ""), lines.get("tls_key"))

    log_path = os.path.join(work, "node-a.log")

    def start(extra=(), env=environment, config_file=config_path):
        return subprocess.Popen([os.path.join(BIN, "unibusd"), "run", "--config", config_file, *extra],
                                stdout=subprocess.DEVNULL, stderr=open(log_path, "a"), env=env)

    node = start(["--max-subscriptions-per-user", "4242"])
    wait_for(ports["client"])
    wait_for(ports["control"])
    info = cluster.info("a")
    settings = info["runtime_settings"]
    check("the node serves on the address the environment gave", True)
    check("runtime settings name their source (file, environment, flag, default)",
          settings["max_connections"] == {"value": 500, "source": "flag", "origin": "file " + config_path}
          and settings["max_subscriptions"] == {"value": 888, "source": "flag", "origin": "environment UNIBUS_MAX_SUBSCRIPTIONS"}
          and settings["max_subscriptions_per_user"] == {"value": 4242, "source": "flag", "origin": "flag"}
          and settings["max_payload"]["source"] == "default", settings)
    fleet = subprocess.run([os.path.join(BIN, "unibus"), "node", "list", "--node", cluster.node("a"), "--identity", admin, "--ca", ca,
                            "--json"], capture_output=True, text=True)
    check("an env:// reference gives the node its name (in its beats)", wait_until(lambda: "alpha-node" in subprocess.run(
        [os.path.join(BIN, "unibus"), "node", "list", "--node", cluster.node("a"), "--identity", admin, "--ca", ca, "--json"],
        capture_output=True, text=True).stdout), fleet.stdout[-500:] + fleet.stderr)
    check("the pid file holds the node's pid", open(config["pid_file"]).read().strip() == str(node.pid))

    # --- metrics through swift-prometheus --------------------------------------
    with urllib.request.urlopen(cluster.node("a") + "/metrics", context=cluster.context, timeout=5) as response:
        metrics = response.read().decode()
    check("/metrics: HELP and TYPE for each metric, labels on counters by reason",
          "# HELP unibus_connections Client connections open now." in metrics and "# TYPE unibus_connections gauge" in metrics
          and "# TYPE unibus_auth_failures_total counter" in metrics
          and re.search(r'^unibus_auth_failures_total\{reason="[a-z_]+"\} \d+$', metrics, re.M) is not None, metrics[:2000])

    documented = open(os.path.join(ROOT, "docs", "operations.md")).read()
    exposed = sorted(set(re.findall(r"^# TYPE (unibus_[a-z_]+) ", metrics, re.M)))
    check("every exposed metric is documented in docs/operations.md", exposed and all(f"`{name}`" in documented for name in exposed),
          [name for name in exposed if f"`{name}`" not in documented])

    # --- SIGHUP: a live change ------------------------------------------------
    write_config({"max_connections": 600})
    node.send_signal(signal.SIGHUP)
    changed = wait_until(lambda: cluster.info("a")["runtime_settings"]["max_connections"] == {"value": 600, "source": "flag", "origin": "file " + config_path})
    check("SIGHUP: a changed live setting takes effect", changed, cluster.info("a")["runtime_settings"]["max_connections"])
    check("SIGHUP: the reload is logged with what changed",
          wait_until(lambda: any("configuration reloaded" in l and "max_connections=600" in l for l in log_lines(log_path))),
          log_lines(log_path)[-3:])

    # --- SIGHUP: all or nothing -------------------------------------------------
    write_config({"max_connections": 700, "control_listen": f"127.0.0.1:{free_port()}", "cluster_name": "other"})
    node.send_signal(signal.SIGHUP)
    refused = wait_until(lambda: any("reload refused" in l and "control_listen" in l and "cluster_name" in l for l in log_lines(log_path)))
    check("SIGHUP: a change that needs a restart is refused, naming the keys", refused, log_lines(log_path)[-3:])
    check("SIGHUP: nothing of a refused reload is applied",
          cluster.info("a")["runtime_settings"]["max_connections"]["value"] == 600, cluster.info("a")["runtime_settings"]["max_connections"])
    os.chmod(key, 0o644)
    write_config({"max_connections": 710})
    node.send_signal(signal.SIGHUP)
    check("SIGHUP: a group-readable secret refuses the whole reload",
          wait_until(lambda: any("reload refused" in l and "chmod 600" in l for l in log_lines(log_path)))
          and cluster.info("a")["runtime_settings"]["max_connections"]["value"] == 600, log_lines(log_path)[-2:])
    os.chmod(key, 0o600)

    # --- SIGHUP: a renewed certificate at the same path -------------------------
    before = served_certificate(ports["control"])
    check("the control plane serves the configured certificate", before == file_certificate(cert))
    os.remove(cert)
    os.remove(key)
    subprocess.run(["bash", os.path.join(ROOT, "deploy", "make-certs.sh"), os.path.join(work, "certs"), "a=127.0.0.1,localhost"],
                   check=True, capture_output=True)
    check("the renewed certificate differs", file_certificate(cert) != before)
    write_config({"max_connections": 600})
    node.send_signal(signal.SIGHUP)
    renewed = wait_until(lambda: served_certificate(ports["control"]) == file_certificate(cert))
    check("SIGHUP: new connections get the renewed certificate", renewed)
    peer = ["--server", f"tls://127.0.0.1:{ports['client']}", "--node", cluster.node("a"), "--ca", ca, "--root", root]
    status, output = run("unibus", "check", "--identity", admin, *peer, "--count", "5")
    check("clients still connect over TLS after the renewal", status == 0, output)

    # --- SIGHUP: a FIFO where the certificate was --------------------------------
    # Reading it would wait forever for a writer; the reload must refuse it
    # at once, name it, and leave the node serving with what it had.
    saved_cert = open(cert, "rb").read()
    os.remove(cert)
    os.mkfifo(cert)
    write_config({"max_connections": 620})
    node.send_signal(signal.SIGHUP)
    refused_fifo = wait_until(lambda: any("reload refused" in l and "not a regular file" in l for l in log_lines(log_path)))
    check("SIGHUP: a FIFO at the certificate path refuses the reload at once, named", refused_fifo, log_lines(log_path)[-3:])
    check("SIGHUP: the node still serves, with nothing of the refused reload applied",
          cluster.info("a")["runtime_settings"]["max_connections"]["value"] == 600
          and served_certificate(ports["control"]) == file_certificate_bytes(saved_cert))
    os.remove(cert)
    with open(cert, "wb") as f:
        f.write(saved_cert)

    # --- a signed command stays above the file ---------------------------------
    node_id = cluster.info("a")["node_id"]
    status, output = run("unibus", "node", "set", "--node", cluster.node("a"), "--identity", admin, "--ca", ca,
                         "--target", node_id, "max_connections=999")
    check("a signed settings command applies", status == 0 and "ok" in output, output)
    write_config({"max_connections": 650})
    node.send_signal(signal.SIGHUP)
    kept = wait_until(lambda: any("configuration reloaded" in l and "kept_from_commands" in l for l in log_lines(log_path)))
    setting = cluster.info("a")["runtime_settings"]["max_connections"]
    check("SIGHUP: the command's value stays above the file", kept and setting["value"] == 999 and setting["source"] == "command", setting)
    output = subprocess.run([os.path.join(BIN, "unibusd"), "config", "show", "--config", config_path], capture_output=True, text=True,
                            env=environment).stdout
    check("config show names the command that overrides the file",
          "overridden by a signed command: 999" in output, output)

    admin_seed_for_context = run("unibus", "identity", "nkey", "--identity", admin, "--seed")[1].strip()

    # --- unibus contexts -----------------------------------------------------------
    context_env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(work, "xdg"))

    def cli(*args):
        done = subprocess.run([os.path.join(BIN, "unibus"), *args], capture_output=True, text=True, env=context_env, timeout=120)
        return done.returncode, done.stdout + done.stderr

    status, output = cli("context", "add", "e2e", "--node", cluster.node("a"), "--server", f"tls://127.0.0.1:{ports['client']}",
                         "--ca", ca, "--root", root, "--identity", admin, "--use")
    check("unibus context add --use", status == 0 and "using context e2e" in output, output)
    status, output = cli("context", "ls")
    check("unibus context ls marks the current one", status == 0 and output.startswith("* e2e"), output)
    status, output = cli("check", "--count", "3")
    check("unibus check with no connection flags uses the context", status == 0, output)
    status, output = cli("user", "list", "--json")
    check("an admin command with no connection flags uses the context", status == 0 and "admin" in output, output)
    status, output = cli("user", "list", "--node", "https://127.0.0.1:1")
    check("a flag wins over the context", status != 0 and "127.0.0.1:1" in output, output)
    stored = open(os.path.join(work, "xdg", "unibus", "contexts", "e2e.json")).read()
    check("a context stores the identity's path, never its key", admin in stored and admin_seed_for_context not in stored
          and oct(os.stat(os.path.join(work, "xdg", "unibus", "contexts", "e2e.json")).st_mode & 0o777) == "0o600", stored)
    status, output = subprocess.run([os.path.join(BIN, "unibus"), "check"], capture_output=True, text=True,
                                    env=dict(context_env, UNIBUS_CONTEXT="missing")).returncode, ""
    check("UNIBUS_CONTEXT naming no context is an error", status != 0)

    # --- logs: JSON lines, no secrets ------------------------------------------
    lines = log_lines(log_path)
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    check("every log line is one JSON object with ts, level, component and msg",
          len(lines) > 5 and all(p is not None and {"ts", "level", "component", "msg"} <= set(p) for p in parsed),
          [l for l, p in zip(lines, parsed) if p is None][:3])
    check("components name the emitter", {"unibusd", "config", "node"} <= {p["component"] for p in parsed if p}, {p["component"] for p in parsed if p})
    key_body = "".join(l for l in open(key).read().splitlines() if not l.startswith("-----"))
    admin_seed = run("unibus", "identity", "nkey", "--identity", admin, "--seed")[1].strip()
    node_identity = json.load(open(os.path.join(cluster.data("a"), "node-identity.json")))
    secrets = [key_body[:40], key_body[-40:], admin_seed] + [str(v) for v in node_identity.values() if isinstance(v, str) and len(v) > 30]
    text = "\n".join(lines)
    check("no secret reaches a log line (TLS key, admin seed, node identity)", all(s and s not in text for s in secrets),
          [s[:8] for s in secrets if s in text])

    # --- a switch turned on below can be turned off above ---------------------------
    shown = subprocess.run([os.path.join(BIN, "unibusd"), "config", "show", "--json", "--config", config_path, "--", "--no-allow-plaintext"],
                           capture_output=True, text=True, env=dict(environment, UNIBUS_ALLOW_PLAINTEXT="1"))
    check("--no-allow-plaintext on the command line wins over UNIBUS_ALLOW_PLAINTEXT=1",
          shown.returncode == 0 and json.loads(shown.stdout)["allow_plaintext"]["value"] == "false"
          and json.loads(shown.stdout)["allow_plaintext"]["source"] == "flag", shown.stdout[-300:] + shown.stderr)

    # --- SIGTERM ----------------------------------------------------------------
    node.send_signal(signal.SIGTERM)
    code = node.wait(timeout=30)
    check("SIGTERM: exit 0", code == 0, code)
    check("SIGTERM: the pid file is removed", not os.path.exists(config["pid_file"]))
    check("SIGTERM: the last line says stopped", json.loads(log_lines(log_path)[-1])["msg"] == "stopped", log_lines(log_path)[-1])

    # --- unibusd drain ------------------------------------------------------------
    node = start()
    wait_for(ports["client"])
    check("the pid file is written again", wait_until(lambda: os.path.exists(config["pid_file"])))
    status, output = run("unibusd", "drain", "--pid-file", config["pid_file"], "--timeout", "60")
    check("unibusd drain waits for the node to stop", status == 0 and "stopped" in output, output)
    check("the drained node exited 0", node.wait(timeout=10) == 0)
    check("the drain went through lame duck", any("entering lame-duck mode" in l for l in log_lines(log_path)[-10:]), log_lines(log_path)[-5:])
    status, output = run("unibusd", "drain", "--pid", "999999")
    check("drain of no process says so", status != 0 and "not running" in output, output)

    # --- start errors name the file, key and problem ----------------------------
    def start_error(changes, env=environment, extra=()):
        bad = os.path.join(work, "bad.json")
        write_config(changes, path=bad)
        done = subprocess.run([os.path.join(BIN, "unibusd"), "run", "--config", bad, *extra], capture_output=True, text=True,
                              env=env, timeout=30)
        return done.returncode, done.stdout + done.stderr

    os.chmod(key, 0o640)
    status, output = start_error({})
    check("a group-readable file:// secret is a start error naming file, key and fix",
          status != 0 and 'bad.json: key "tls_key"' in output and "chmod 600" in output, output)
    os.chmod(key, 0o600)
    status, output = start_error({}, env=dict(environment, NODE_NAME=""))
    check("an unset env:// reference is a start error, never the raw string", status != 0 and "env://NODE_NAME" in output
          and "not set" in output, output)
    status, output = start_error({"max_conections": 5})
    check("an unknown key is named with a suggestion", status != 0 and '"max_conections"' in output and '"max_connections"' in output, output)
    status, output = start_error({"max_payload": 1 << 40})
    check("a value out of range names the file and key", status != 0 and 'key "max_payload"' in output and "bad.json" in output, output)
    status, output = start_error({}, env=dict(environment, UNIBUS_MAX_PAYLOAD="lots"))
    check("a bad environment value names the variable", status != 0 and "UNIBUS_MAX_PAYLOAD" in output, output)
    status, output = start_error({"tls_key": "vault://secret/unibus#key"})
    check("an unsupported reference scheme is refused", status != 0 and "vault:// references are not supported" in output, output)
    status, output = start_error({"tls_key": "file://relative/key"})
    check("a relative file:// reference is refused", status != 0 and "file:///absolute/path" in output, output)

sys.exit(report(results, work, names=()))
