#!/usr/bin/env python3
"""deploy/deploy-cluster.sh and deploy/systemd/unibusd.service, on loopback:

1. the template (deploy/nodes.env.example) is refused, exit 2, naming the
   variables that still say CHANGE_ME, and nothing is written;
2. a nodes.env for three nodes on 127.0.0.1 (free ports): the dry run
   prints the expected commands (shell-quoted, in order: certificates and
   the admin's log here, then each node, then the bring-up a, b, c) and
   writes nothing;
3. --yes with DEPLOY_SSH, DEPLOY_COPY and DEPLOY_SYSTEMCTL stand-ins that run
   here, and DEPLOY_PREFIX: one directory per node holds the binary, the
   unit, the configuration (JSON with the expected keys, every path inside
   that node's directory), certificates (keys 0600) and an initialised data
   directory (0700): the admin's log on the first node only, the root pinned
   on all three, the admin's secret on none; systemctl is called a, b, c;
4. a second --yes changes no data directory, certificate or log;
5. the three nodes start from their deployed configuration files
   (`unibusd run --config`, or the same settings as flags while this
   unibusd has no --config), serve over TLS, link their routes and agree on
   the membership log; one is drained (`unibusd drain`, or SIGUSR2 while
   this unibusd has no drain) and exits 0, the others stop on SIGTERM, 0;
6. as root, the real paths: in a private mount namespace over scratch
   copies of /etc, /usr/local/bin and /var/lib (the machine is not
   touched), a one-node deploy without DEPLOY_PREFIX makes user unibus and
   the owners and modes documented, init runs as unibus, and the node
   serves as unibus, without capabilities, from the installed files (ready,
   and its client port greets with INFO) (skipped when not root or without
   unshare);
7. the installed unit passes `systemd-analyze verify --root=NODE_DIR`
   (with /bin/kill and systemd's units added there, as on a real host).

    deploy_e2e.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import free_port, wait_for  # noqa: E402

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), ".build", "debug"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "deploy", "deploy-cluster.sh")
TEMPLATE = os.path.join(ROOT, "deploy", "nodes.env.example")
UNIT = os.path.join(ROOT, "deploy", "systemd", "unibusd.service")
NAMES = ("a", "b", "c")
CONFIG_KEYS = {"name", "listen", "advertise", "control_listen", "advertise_control", "data_dir", "tls_cert", "tls_key",
               "cluster_name", "cluster_listen", "routes", "cluster_cert", "cluster_key", "cluster_ca"}
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {str(detail)[:3000]}"), flush=True)


def missing(name, why):
    """A peer or tool this scenario needs is absent: a failure, never a skip (CI installs them)."""
    check(name, False, why)


def deploy(work, *args, **overrides):
    """deploy-cluster.sh in `work`; (status, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_")}
    environment.update(DEPLOY_BIN_DIR=BIN, **overrides)
    done = subprocess.run(["bash", SCRIPT, *args], cwd=work, env=environment, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def listing(directory):
    """Every file and directory under `directory`, relative to it."""
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, dirs, files in os.walk(directory) for f in dirs + files)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ports_for(names):
    """{name: {client, cluster, control}}: free loopback ports, all different."""
    numbers = []
    while len(numbers) < 3 * len(names):
        port = free_port()
        if port not in numbers:
            numbers.append(port)
    return {n: dict(zip(("client", "cluster", "control"), numbers[3 * i:3 * i + 3])) for i, n in enumerate(names)}


def fill(work, ports, **extra):
    """nodes.env from the template: every CHANGE_ME replaced, three nodes on 127.0.0.1."""
    values = {"CLUSTER_NAME": "e2e", "LISTEN_HOST": "127.0.0.1"}
    for n in NAMES:
        values[f"NODE_{n}_HOST"] = f"host-{n}"
        values[f"NODE_{n}_ADDR"] = "127.0.0.1"
    values.update(extra)
    lines = []
    for line in open(TEMPLATE).read().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if "=" in line and name in values else line)
    lines += [f"{name}={value}" for name, value in values.items()]
    for n in NAMES:
        for kind in ("client", "cluster", "control"):
            lines.append(f"NODE_{n}_{kind.upper()}_PORT={ports[n][kind]}")
    path = os.path.join(work, "nodes.env")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def commands(output):
    """The printed commands, each split as a shell would (comments left out)."""
    return [shlex.split(line) for line in output.splitlines() if line.strip() and not line.startswith("#")]


def printed_configs(output):
    """{node: JSON} from the dry run's `printf '%s\\n' JSON > .../config/NODE.json` lines."""
    configs = {}
    for words in commands(output):
        if words[:1] == ["printf"] and len(words) == 5 and words[3] == ">":
            configs[os.path.basename(words[4])[:-len(".json")]] = json.loads(words[2])
    return configs


def refused_template():
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(TEMPLATE, os.path.join(work, "nodes.env"))
        before = listing(work)
        status, out, err = deploy(work)
        check("the template is refused with exit 2", status == 2, f"status {status}\n{out}\n{err}")
        check("the refusal names a variable still holding CHANGE_ME",
              "CHANGE_ME" in err and "CLUSTER_NAME" in err and "NODE_a_HOST" in err, err)
        check("a refused run writes nothing", listing(work) == before, listing(work))
        status, _, err = deploy(work, "--yes")
        check("the template is refused with --yes too (exit 2)", status == 2 and "CHANGE_ME" in err, f"{status} {err}")


def dry_run(work, ports):
    env = fill(work, ports)
    before = listing(work)
    status, out, err = deploy(work, env)
    check("the dry run exits 0", status == 0, f"{status}\n{out}\n{err}")
    check("the dry run writes nothing", listing(work) == before, listing(work))
    try:
        lines = commands(out)
        check("every printed line is a comment or a shell-quoted command", True)
    except ValueError as error:
        check("every printed line is a comment or a shell-quoted command", False, f"{error}\n{out}")
        return
    text = [" ".join(words) for words in lines]
    certs = f"bash {ROOT}/deploy/make-certs.sh ./unibus-deploy/certs a=127.0.0.1 b=127.0.0.1 c=127.0.0.1"
    check("it would make the certificates with deploy/make-certs.sh", certs in text, out)
    check("it would sign the first node's log here, with the admin identity",
          f"{BIN}/unibusd init --data-dir ./unibus-deploy/genesis --admin-identity ./admin.json --handle admin" in text, out)
    configs = printed_configs(out)
    check("it would write one configuration per node", sorted(configs) == list(NAMES), configs)
    for n in NAMES:
        config = configs.get(n, {})
        check(f"node {n}'s configuration has the expected keys", set(config) == CONFIG_KEYS, sorted(config))
        check(f"node {n}'s configuration has its ports and real paths",
              config.get("listen") == f"127.0.0.1:{ports[n]['client']}"
              and config.get("control_listen") == f"127.0.0.1:{ports[n]['control']}"
              and config.get("cluster_listen") == f"127.0.0.1:{ports[n]['cluster']}"
              and config.get("advertise") == f"tls://127.0.0.1:{ports[n]['client']}"
              and config.get("advertise_control") == f"https://127.0.0.1:{ports[n]['control']}"
              and config.get("data_dir") == "/var/lib/unibus"
              and config.get("tls_key") == f"file:///etc/unibus/tls/{n}-client.key"
              and config.get("cluster_ca") == "/etc/unibus/tls/cluster-ca.pem"
              and config.get("routes") == [f"tls://127.0.0.1:{ports[m]['cluster']}" for m in NAMES], config)
    ssh = {n: [i for i, w in enumerate(lines) if w[:4] == ["ssh", "-o", "BatchMode=yes", f"root@host-{n}"]] for n in NAMES}
    for n in NAMES:
        scripts = [lines[i][4] for i in ssh[n]]
        check(f"node {n}: user, directories, files and init over ssh, then the start",
              len(scripts) == 3 and "useradd --system" in scripts[0] and "install -d -m 0700 -o unibus -g unibus /var/lib/unibus" in scripts[0]
              and "install -m 0600 -o unibus -g unibus" in scripts[1]
              and "runuser -u unibus -- /usr/local/bin/unibusd init --data-dir /var/lib/unibus --root ROOT_NKEY" in scripts[1]
              and ("unibus-deploy/membership.sqlite3" in scripts[1]) == (n == "a")
              and scripts[2] == "set -eu; systemctl daemon-reload && systemctl enable --now unibusd", scripts)
        copies = [w for w in lines if w[:2] == ["scp", "-q"] and w[3].startswith(f"root@host-{n}:")]
        check(f"node {n}: the binary, unit, configuration, certificates and keys copied with scp",
              {os.path.basename(w[3]) for w in copies} >= {"unibusd", "unibusd.service", "unibusd.json", "cluster-ca.pem",
                                                           f"{n}-client.key", f"{n}-route.key"}, copies)
        check(f"node {n}: the admin identity is never copied", not any("admin.json" in " ".join(w) for w in copies), copies)
    starts = [ssh[n][-1] for n in NAMES if ssh[n]]
    installs = [i for n in NAMES for i in ssh[n][:-1]]
    check("the nodes start a, b, c, after every node is installed",
          len(starts) == 3 and starts == sorted(starts) and max(installs) < min(starts), ssh)
    check("the bring-up order is explained", "# Bring-up order: a, then b c." in out and "deadlock" in out, out[-1500:])
    # Another SSH user: the remote commands go through sudo.
    fill(work, ports, SSH_USER="deploy")
    status, out, err = deploy(work, env)
    remote = [w for w in commands(out) if w[:1] == ["ssh"]]
    check("with SSH_USER=deploy every remote command runs through sudo -n, as deploy@host",
          status == 0 and remote and all(w[3].startswith("deploy@") and w[4].startswith("sudo -n sh -euc ") for w in remote),
          f"{status} {err} {remote[:2]}")
    fill(work, ports)


def stand_ins(work):
    """DEPLOY_SSH, DEPLOY_COPY and DEPLOY_SYSTEMCTL for a deploy into local directories."""
    tools = os.path.join(work, "tools")
    os.makedirs(tools)
    scripts = {
        # ssh HOST COMMAND: the command, here, knowing which host it was for.
        "ssh": '#!/bin/sh\nDEPLOY_TEST_HOST=$1; export DEPLOY_TEST_HOST; shift\nexec sh -c "$*"\n',
        # scp LOCAL HOST:PATH: the path is already inside the node's directory (DEPLOY_PREFIX).
        "copy": '#!/bin/sh\necho "$2" >> "$(dirname "$0")/copies.log"\nexec cp "$1" "${2#*:}"\n',
        "systemctl": '#!/bin/sh\necho "$DEPLOY_TEST_HOST $*" >> "$(dirname "$0")/systemctl.log"\n',
    }
    for name, text in scripts.items():
        path = os.path.join(tools, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    return {"DEPLOY_SSH": os.path.join(tools, "ssh"), "DEPLOY_COPY": os.path.join(tools, "copy"),
            "DEPLOY_SYSTEMCTL": os.path.join(tools, "systemctl"), "DEPLOY_PREFIX": os.path.join(work, "hosts")}


def applied(work, ports, overrides):
    status, out, err = deploy(work, "--yes", "nodes.env", **overrides)
    check("--yes into local directories exits 0", status == 0, f"{status}\n{out[-3000:]}\n{err}")
    if status != 0:
        return None
    local = os.path.join(work, "unibus-deploy")
    admin = os.path.join(work, "admin.json")
    check("the local directory is 0700 and the admin identity 0600", mode(local) == 0o700 and mode(admin) == 0o600,
          (oct(mode(local)), oct(mode(admin))))
    done = subprocess.run([os.path.join(BIN, "unibus"), "identity", "nkey", "--identity", admin], capture_output=True, text=True)
    root = done.stdout.strip()
    seed = subprocess.run([os.path.join(BIN, "unibus"), "identity", "nkey", "--identity", admin, "--seed"],
                          capture_output=True, text=True).stdout.strip()
    check("the root admin's nkey is printed", root.startswith("U") and f"# the root admin: {root}" in out, out[:2000])
    node_keys = set()
    for n in NAMES:
        r = os.path.join(overrides["DEPLOY_PREFIX"], n)
        tls, data = os.path.join(r, "etc/unibus/tls"), os.path.join(r, "var/lib/unibus")
        binary = os.path.join(r, "usr/local/bin/unibusd")
        check(f"node {n}: the binary (0755)", os.path.isfile(binary) and mode(binary) == 0o755
              and os.path.getsize(binary) == os.path.getsize(os.path.join(BIN, "unibusd")))
        unit = os.path.join(r, "etc/systemd/system/unibusd.service")
        check(f"node {n}: the unit (0644)", os.path.isfile(unit) and mode(unit) == 0o644 and open(unit).read() == open(UNIT).read())
        modes = {os.path.join(r, "etc/unibus"): 0o755, tls: 0o750, data: 0o700,
                 os.path.join(tls, "cluster-ca.pem"): 0o644, os.path.join(tls, f"{n}-client.pem"): 0o644,
                 os.path.join(tls, f"{n}-route.pem"): 0o644, os.path.join(tls, f"{n}-client.key"): 0o600,
                 os.path.join(tls, f"{n}-route.key"): 0o600, os.path.join(r, "etc/unibus/unibusd.json"): 0o640}
        wrong = {p: oct(mode(p)) if os.path.exists(p) else "missing" for p, m in modes.items() if not os.path.exists(p) or mode(p) != m}
        check(f"node {n}: directories, certificates (0644), keys (0600), data directory (0700), configuration (0640)", not wrong, wrong)
        check(f"node {n}: the staging directory is gone", not os.path.exists(os.path.join(r, "var/lib/unibus-deploy")))
        try:
            config = json.load(open(os.path.join(r, "etc/unibus/unibusd.json")))
        except (OSError, ValueError) as error:
            check(f"node {n}: the configuration is JSON", False, error)
            continue
        check(f"node {n}: the configuration has the expected keys", set(config) == CONFIG_KEYS, sorted(config))
        paths = {key: config[key].removeprefix("file://") for key in
                 ("data_dir", "tls_cert", "tls_key", "cluster_cert", "cluster_key", "cluster_ca") if key in config}
        check(f"node {n}: every path in the configuration is in its directory and exists",
              len(paths) == 6 and all(p.startswith(r + "/") and os.path.exists(p) for p in paths.values()), paths)
        check(f"node {n}: the keys are secret references (file://)",
              config.get("tls_key", "").startswith("file:///") and config.get("cluster_key", "").startswith("file:///"), config)
        identity = os.path.join(data, "node-identity.json")
        log = os.path.join(data, "membership.sqlite3")
        check(f"node {n}: unibusd init made the data directory (log and node key, 0600)",
              os.path.exists(log) and os.path.exists(identity) and mode(log) == 0o600 and mode(identity) == 0o600, listing(data))
        if os.path.exists(log):
            db = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
            operations = db.execute("SELECT count(*) FROM log").fetchone()[0]
            pinned = db.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
            db.close()
            check(f"node {n}: {'the admin' if n == 'a' else 'no user yet (from the routes)'}, root pinned",
                  operations == (1 if n == "a" else 0) and pinned == (root,), (operations, pinned))
        if os.path.exists(identity):
            node_keys.add(digest(identity))
    check("each node made its own key", len(node_keys) == 3)
    # The admin's secrets: its nkey seed and the identity file's two secret keys.
    identity_file = json.load(open(admin))
    secrets = [seed.encode(), identity_file["ed25519_seed"].encode(), identity_file["x25519_secret"].encode()]
    files = [p for p in listing(overrides["DEPLOY_PREFIX"]) if os.path.isfile(os.path.join(overrides["DEPLOY_PREFIX"], p))]
    leaked = [p for p in files if any(secret in open(os.path.join(overrides["DEPLOY_PREFIX"], p), "rb").read() for secret in secrets)]
    check("the admin's secrets are on no node", seed.startswith("SU") and all(secrets) and not leaked, leaked)
    calls = open(os.path.join(work, "tools", "systemctl.log")).read().splitlines()
    expected = [f"root@host-{n} {c}" for n in NAMES for c in ("daemon-reload", "enable --now unibusd")]
    check("systemctl: daemon-reload and enable --now, a then b then c", calls == expected, calls)
    return root


def verify_unit(r):
    """systemd-analyze verify on node r's installed unit, with what a real host has (/bin/kill, systemd's units)."""
    analyze = shutil.which("systemd-analyze")
    units = "/usr/lib/systemd/system" if os.path.isdir("/usr/lib/systemd/system") else "/lib/systemd/system"
    kill = shutil.which("kill", path="/usr/bin:/bin")
    if not analyze or not os.path.isdir(units) or not kill:
        missing("systemd-analyze verify", "systemd-analyze, systemd's units or /bin/kill missing here (deploy/install-deps.sh test installs systemd)")
        return
    os.makedirs(os.path.join(r, "usr/bin"), exist_ok=True)
    for link in ("bin", "lib"):
        if not os.path.lexists(os.path.join(r, link)):
            os.symlink("usr/" + link, os.path.join(r, link))
    shutil.copy(kill, os.path.join(r, "usr/bin/kill"))
    shutil.copytree(units, os.path.join(r, "usr/lib/systemd/system"), symlinks=True, dirs_exist_ok=True)
    command = [analyze, "verify", f"--root={r}", "/etc/systemd/system/unibusd.service"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    check("the installed unit passes systemd-analyze verify, without a warning",
          done.returncode == 0 and not (done.stdout + done.stderr).strip(), f"{shlex.join(command)}: {done.returncode} {done.stdout}{done.stderr}")
    os.remove(os.path.join(r, "usr/local/bin/unibusd"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    check("systemd-analyze verify notices a missing binary (the check above is real)", done.returncode != 0, done.stderr)


def rerun(work, overrides):
    prefix = overrides["DEPLOY_PREFIX"]
    watched = [os.path.join(prefix, n, "var/lib/unibus", f) for n in NAMES for f in ("membership.sqlite3", "node-identity.json")]
    watched += [os.path.join(work, "unibus-deploy/certs/a-client.pem"), os.path.join(work, "unibus-deploy/genesis/membership.sqlite3"),
                os.path.join(work, "admin.json")]
    before = {p: digest(p) for p in watched}
    status, out, err = deploy(work, "--yes", "nodes.env", **overrides)
    check("a second --yes exits 0", status == 0, f"{status}\n{out[-2000:]}\n{err}")
    check("a second --yes changes no data directory, certificate, log or identity",
          {p: digest(p) for p in watched} == before, [p for p in watched if digest(p) != before[p]])
    check("a second --yes makes no certificate and signs no log", "make-certs.sh" not in out and " init --data-dir ./unibus-deploy" not in out, out)


def run_args(binary, config_path):
    """`unibusd run` from a deployed configuration file."""
    return [binary, "run", "--config", config_path]


# Runs in the private mount namespace: scratch /etc, /usr/local/bin and
# /var/lib over the real ones, the deploy as on a real host, then what it made.
NAMESPACE_SCRIPT = """set -eu
mount --bind "$SCRATCH/etc" /etc
mount --bind "$SCRATCH/bin" /usr/local/bin
mount --bind "$SCRATCH/lib" /var/lib
cd "$SCRATCH/work"
bash "$DEPLOY" --yes nodes.env > deploy.out 2>&1 || { echo "deploy failed: $(tail -3 deploy.out)"; exit 1; }
stat -c 'mode %a %U:%G %n' /etc/unibus /etc/unibus/tls /etc/unibus/tls/* /etc/unibus/unibusd.json \
    /var/lib/unibus /var/lib/unibus/* /usr/local/bin/unibusd /etc/systemd/system/unibusd.service
getent passwd unibus | sed 's/^/user /'
[ ! -e /var/lib/unibus-deploy ] && echo "staging gone"
mapfile -t run < <(python3 "$TEST" --run-args /usr/local/bin/unibusd /etc/unibus/unibusd.json)
runuser -u unibus -- "${run[@]}" 2> node.log &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null || true' EXIT
python3 - <<'PY'
import os, socket, ssl, time, urllib.request
context = ssl.create_default_context(cafile="unibus-deploy/certs/client-ca.pem")
for _ in range(150):
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{os.environ['CONTROL']}/readyz", context=context, timeout=2) as response:
            print("readyz", response.status)
            break
    except OSError:
        time.sleep(0.1)
try:
    with socket.create_connection(("127.0.0.1", int(os.environ["CLIENT"])), timeout=5) as client:
        print("client greeting", client.recv(5))
except OSError as error:
    print("client greeting", error)
PY
"""


def real_paths():
    """The deploy without DEPLOY_PREFIX, as root, in a private mount namespace (see the module's docstring)."""
    name = "real paths in a private mount namespace"
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("runuser"):
        missing(name, "needs root, unshare and runuser (CI runs as root; util-linux)")
        return
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        missing(name, "unshare -m is not allowed here")
        return
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["cp", "-a", "/etc", os.path.join(scratch, "etc")], check=True)
        subprocess.run(["cp", "-a", "/usr/local/bin", os.path.join(scratch, "bin")], check=True)
        for d in ("lib", "work", "tools"):
            os.makedirs(os.path.join(scratch, d))
        ports = ports_for(["a"])["a"]
        with open(os.path.join(scratch, "work", "nodes.env"), "w") as f:
            f.write(f'NODES="a"\nCLUSTER_NAME=real\nNODE_a_HOST=localhost\nNODE_a_ADDR=127.0.0.1\nLISTEN_HOST=127.0.0.1\n'
                    f'CLIENT_PORT={ports["client"]}\nCLUSTER_PORT={ports["cluster"]}\nCONTROL_PORT={ports["control"]}\n'
                    f'ADMIN_IDENTITY=./admin.json\n')
        tools = {"ssh": '#!/bin/sh\nshift\nexec sh -c "$*"\n', "copy": '#!/bin/sh\nexec cp "$1" "${2#*:}"\n'}
        for tool, text in tools.items():
            with open(os.path.join(scratch, "tools", tool), "w") as f:
                f.write(text)
            os.chmod(os.path.join(scratch, "tools", tool), 0o755)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_")}
        environment.update(SCRATCH=scratch, DEPLOY=SCRIPT, TEST=os.path.abspath(__file__),
                           CONTROL=str(ports["control"]), CLIENT=str(ports["client"]), DEPLOY_BIN_DIR=BIN, DEPLOY_SYSTEMCTL="true",
                           DEPLOY_SSH=os.path.join(scratch, "tools", "ssh"), DEPLOY_COPY=os.path.join(scratch, "tools", "copy"))
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE_SCRIPT],
                              env=environment, capture_output=True, text=True, timeout=300)
        out = done.stdout
        owners = {line.split()[3]: (line.split()[1], line.split()[2]) for line in out.splitlines() if line.startswith("mode ")}
        expected = {"/etc/unibus": ("755", "root:root"), "/etc/unibus/tls": ("750", "root:unibus"),
                    "/etc/unibus/unibusd.json": ("640", "root:unibus"), "/etc/unibus/tls/a-client.key": ("600", "unibus:unibus"),
                    "/etc/unibus/tls/a-route.key": ("600", "unibus:unibus"), "/etc/unibus/tls/a-client.pem": ("644", "root:root"),
                    "/var/lib/unibus": ("700", "unibus:unibus"), "/var/lib/unibus/membership.sqlite3": ("600", "unibus:unibus"),
                    "/var/lib/unibus/node-identity.json": ("600", "unibus:unibus"), "/usr/local/bin/unibusd": ("755", "root:root")}
        wrong = {p: owners.get(p) for p, want in expected.items() if owners.get(p) != want}
        check("real paths: the deploy as root made user unibus, modes and owners as documented, init as unibus",
              done.returncode == 0 and not wrong and "user unibus:" in out and "/usr/sbin/nologin" in out,
              f"{done.returncode} {wrong}\n{out}\n{done.stderr[-2000:]}")
        check("real paths: the staging directory is gone", "staging gone" in out, out)
        check("real paths: the node serves as unibus from the installed files (ready, and greets a client with INFO)",
              "readyz 200" in out and "client greeting b'INFO '" in out,
              f"{out}\n{done.stderr[-1000:]}\n" + (open(os.path.join(scratch, "work", "node.log")).read()[-2000:]
                                                   if os.path.exists(os.path.join(scratch, "work", "node.log")) else ""))


def greeting(port):
    """The first bytes a node's client port sends (NATS: INFO, before the TLS upgrade)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            return client.recv(5)
    except OSError as error:
        return str(error)


def fetch(url, context):
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return None, None


def serve(work, ports, prefix, root):
    how = "unibusd run --config"
    context = ssl.create_default_context(cafile=os.path.join(work, "unibus-deploy/certs/client-ca.pem"))
    processes = {}
    try:
        for n in NAMES:   # the printed bring-up order
            r = os.path.join(prefix, n)
            # Rehearsal only: the deploy kept the invoking user as owner; the node itself checks the key modes.
            with open(os.path.join(work, f"node-{n}.log"), "a") as log:
                processes[n] = subprocess.Popen(run_args(os.path.join(r, "usr/local/bin/unibusd"), os.path.join(r, "etc/unibus/unibusd.json")),
                                                stdout=subprocess.DEVNULL, stderr=log)
        for n in NAMES:
            try:
                wait_for(ports[n]["client"], timeout=30)
                wait_for(ports[n]["control"], timeout=30)
                up = True
            except RuntimeError as error:
                up = error
            check(f"node {n} started from its deployed configuration ({how})", up is True and processes[n].poll() is None, up)
        deadline, states = time.time() + 30, {}
        while time.time() < deadline:
            states = {n: (fetch(f"https://127.0.0.1:{ports[n]['control']}/readyz", context)[0],
                          fetch(f"https://127.0.0.1:{ports[n]['control']}/v1/node", context)[1]) for n in NAMES}
            if all(s[0] == 200 and s[1] and len(s[1].get("cluster", {}).get("routes", [])) == 2 for s in states.values()):
                break
            time.sleep(0.2)
        check("every node is ready over TLS (the joining ones got the log from their routes)",
              all(s[0] == 200 for s in states.values()), {n: s[0] for n, s in states.items()})
        check("every node has routes to the two others",
              all(s[1] and len(s[1].get("cluster", {}).get("routes", [])) == 2 for s in states.values()), states)
        check("every node greets a client with INFO on its client port",
              all(greeting(ports[n]["client"]) == b"INFO " for n in NAMES), {n: greeting(ports[n]["client"]) for n in NAMES})
        memberships = [s[1]["membership"] for s in states.values() if s[1]]
        check("the three agree on the membership log, started by the root admin",
              len(memberships) == 3 and len({(m["log_digest"], m["state_digest"]) for m in memberships}) == 1
              and all(m["root"] == root and m["operations"] == 1 for m in memberships), memberships)
        c = processes["c"]
        # In the background: node c is this script's child, so it stays a zombie until reaped here (as systemd,
        # the parent under the unit, reaps it); drain must see it exit either way.
        drain = subprocess.Popen([os.path.join(prefix, "c/usr/local/bin/unibusd"), "drain", "--pid", str(c.pid)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            code = c.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        check("node c drained (unibusd drain) and exited 0", code == 0, code)
        try:
            status, output = drain.wait(timeout=30), drain.stdout.read()
        except subprocess.TimeoutExpired:
            drain.kill()
            status, output = None, drain.communicate()[0]
        check("unibusd drain --pid returned 0 once node c exited", status == 0, f"{status} {output}")
        for n in ("a", "b"):
            processes[n].send_signal(signal.SIGTERM)
            try:
                code = processes[n].wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
            check(f"node {n} stopped on SIGTERM with exit 0", code == 0, code)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def main():
    for name in ("unibusd", "unibus"):
        if not os.access(os.path.join(BIN, name), os.X_OK):
            print(f"no {name} in {BIN}")
            return 1
    refused_template()
    with tempfile.TemporaryDirectory() as work:
        ports = ports_for(NAMES)
        dry_run(work, ports)
        overrides = stand_ins(work)
        root = applied(work, ports, overrides)
        if root:
            rerun(work, overrides)
            serve(work, ports, overrides["DEPLOY_PREFIX"], root)
            real_paths()
            verify_unit(os.path.join(overrides["DEPLOY_PREFIX"], "a"))
        failed = results.count(False)
        if failed:
            for n in NAMES:
                path = os.path.join(work, f"node-{n}.log")
                if os.path.exists(path):
                    print(f"--- node-{n}.log (tail)")
                    print(open(path).read()[-3000:])
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run-args"]:   # for the namespace script: BINARY CONFIG HAS_CONFIG, one word a line
        print("\n".join(run_args(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    sys.exit(main())
