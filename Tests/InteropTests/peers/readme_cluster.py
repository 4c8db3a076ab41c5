#!/usr/bin/env python3
"""Runs the README's cluster example exactly as written, but with 127.0.0.1-3
for its addresses and free ports for 4222/4280/6222, so the block a newcomer
pastes is known to work.

    readme_cluster.py BIN_DIR      (holding unibusd and unibus)

Prints one line per check and "N passed, N failed"; exit 1 on failure.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import free_port  # noqa: E402

BIN = os.path.abspath(sys.argv[1])
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {detail}"))


readme = open(os.path.join(ROOT, "README.md")).read()
marker = readme.find("<!-- cluster-example -->")
block = re.search(r"```sh\n(.*?)```", readme[marker:], re.S) if marker >= 0 else None
check("the README has the marked cluster example", block is not None)
if block:
    script = block.group(1)
    ports = {"4222": str(free_port()), "4280": str(free_port()), "6222": str(free_port())}
    script = script.replace("10.0.0.", "127.0.0.").replace("10.0.1.", "127.0.0.")
    for port, replacement in ports.items():
        script = script.replace(f":{port}", f":{replacement}")
    script = script.replace("deploy/make-certs.sh", os.path.join(ROOT, "deploy", "make-certs.sh"))
    check("the example was rewritten for loopback only", "10.0." not in script and all(f":{p}" not in script for p in ports), script)
    with tempfile.TemporaryDirectory() as work:
        environment = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        # The nodes the block starts in the background are stopped however it ends.
        wrapped = "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n" + script
        # In its own process group: on a timeout the whole group goes (the
        # block's trap does not run when bash itself is killed).
        block = subprocess.Popen(["bash", "-c", wrapped], cwd=work, env=environment, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output = block.communicate(timeout=180)[0]
            status = block.returncode
        except subprocess.TimeoutExpired as error:
            os.killpg(block.pid, signal.SIGKILL)
            output, status = (block.communicate()[0] or "") + f"\ntimed out: {error}", -1
        check("the README's cluster example runs to the end (exit 0)", status == 0, output[-3000:])
        check("its unibus check passes across the three nodes", "check golden: OK" in output, output[-3000:])

failed = results.count(False)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
