#!/usr/bin/env python3
"""Workload login tokens (issue 16, first part): JWTs made by an independent
library (PyJWT with `cryptography`) verified by Unibus's login checks
(`unibus debug jwt-verify`, the code nodes and clients run):

- valid RS256, ES256 and EdDSA logins (keys pinned as PEM and as JWK), the
  login ending at the earlier of `exp` and the role's ttl;
- the known JWT attacks, each refused with its reason: alg none, RS->HS
  confusion (HS256 keyed with the RSA public key, built by hand with hmac),
  a kid naming no pinned key, jku/x5u headers (ignored and never fetched),
  an algorithm the key's type does not match, one the role does not allow,
  a tampered payload, expired, not yet valid, issued in the future, wrong
  issuer, wrong audience, missing or non-string user claim, a bound claim
  mismatch, a token for another role, no jti;
- key binding: a role that requires it accepts only a token whose cnf.jkt
  is the thumbprint of the presenting workload's key.

    jwt_e2e.py BIN_DIR
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

BIN = sys.argv[1]
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {str(detail)[:2000]}"), flush=True)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


with tempfile.TemporaryDirectory() as work:
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    ec_jwk["kid"] = "ec1"
    role = {
        "name": "ci-workers", "issuer": "https://idp.test", "algorithms": ["RS256", "ES256", "EdDSA"],
        "keys": [{"pem": public_pem(rsa_key), "kid": "rsa1"}, {"jwk": ec_jwk}, {"pem": public_pem(ed_key), "kid": "ed1"}],
        "bound_audiences": ["unibus"], "bound_claims": {"project": "ci-*"}, "user_claim": "worker_id", "ttl": 300,
        "claim_mappings": {"project": "project"},
    }
    role_path = os.path.join(work, "role.json")
    with open(role_path, "w") as f:
        json.dump(role, f)

    def claims(**changes):
        body = {"iss": "https://idp.test", "aud": "unibus", "sub": "job-1", "worker_id": "worker-7", "project": "ci-build",
                "iat": now, "nbf": now, "exp": now + 600, "jti": os.urandom(8).hex()}
        for key, value in changes.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def verify(token, path=role_path, extra=()):
        token_path = os.path.join(work, "token.jwt")
        with open(token_path, "w") as f:
            f.write(token)
        done = subprocess.run([os.path.join(BIN, "unibus"), "debug", "jwt-verify", "--role", path, "--jwt", token_path, "--at", str(now), *extra],
                              capture_output=True, text=True, timeout=30)
        return done.returncode, (done.stdout + done.stderr).strip()

    def refused(name, token, reason, **kwargs):
        status, output = verify(token, **kwargs)
        check(f"refused, {name}: {reason}", status != 0 and reason in output, output)

    # --- valid logins -------------------------------------------------------------
    for name, key, alg, kid in (("RS256 (PEM key)", rsa_key, "RS256", "rsa1"), ("ES256 (JWK key)", ec_key, "ES256", "ec1"),
                                ("EdDSA (PEM key)", ed_key, "EdDSA", "ed1")):
        status, output = verify(jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid}))
        login = json.loads(output) if status == 0 else {}
        check(f"a valid {name} token logs in as its user claim, for the role's ttl",
              login.get("handle") == "worker-7" and login.get("role") == "ci-workers" and login.get("expiresAt") == now + 300
              and login.get("metadata") == {"project": "ci-build"}, output)
    status, output = verify(jwt.encode(claims(exp=now + 100), ed_key, algorithm="EdDSA"))
    check("a token without kid is matched by algorithm; its exp ends the login when sooner than the ttl",
          status == 0 and json.loads(output)["expiresAt"] == now + 100, output)
    status, output = verify(jwt.encode(claims(aud=["other", "unibus"]), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}))
    check("an audience list containing a bound audience is accepted", status == 0, output)
    status, output = verify(jwt.encode(claims(exp=now - 100), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}))
    check("expiry within the 150 s leeway is accepted", status == 0, output)

    # --- the attacks ------------------------------------------------------------------
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    refused("alg none", f"{header}.{payload}.", "algorithm none is never accepted")
    # RS->HS confusion: HS256 keyed with the RSA public key's PEM (PyJWT refuses to make it).
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(public_pem(rsa_key).encode(), signing_input, hashlib.sha256).digest()
    refused("RS->HS confusion", f"{header}.{payload}.{b64url(mac)}", "algorithm HS256 is not accepted")
    refused("a kid naming no pinned key", jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "evil"}), "unknown key id evil")

    # jku / x5u: never fetched. A listener records any connection.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connected = []

    def watch():
        deadline = time.time() + 8
        while time.time() < deadline:
            try:
                conn, _ = listener.accept()
                connected.append(True)
                conn.close()
            except OSError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    url = f"http://127.0.0.1:{port}/keys.json"
    refused("jku naming an attacker's key set", jwt.encode(claims(), attacker, algorithm="RS256", headers={"jku": url}),
            "signature does not verify")
    refused("x5u naming an attacker's certificate", jwt.encode(claims(), attacker, algorithm="RS256", headers={"x5u": url}),
            "signature does not verify")
    status, output = verify(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa1", "jku": url}))
    check("a jku header on a token of a pinned key is ignored", status == 0, output)
    watcher.join()
    listener.close()
    check("jku and x5u were never fetched", not connected, connected)

    refused("RS256 naming the EC key", jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec1"}),
            "algorithm not allowed for this key")
    refused("an algorithm the role does not allow", jwt.encode(claims(), rsa_key, algorithm="RS384", headers={"kid": "rsa1"}),
            "algorithm not allowed: the role does not accept RS384")
    good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    head, body, sig = good.split(".")
    tampered = b64url(json.dumps(claims(worker_id="admin")).encode())
    refused("a tampered payload", f"{head}.{tampered}.{sig}", "signature does not verify")
    refused("expired", jwt.encode(claims(exp=now - 1000), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "expired")
    refused("not yet valid", jwt.encode(claims(nbf=now + 1000), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "not yet valid")
    refused("issued in the future", jwt.encode(claims(iat=now + 1000), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}),
            "issued in the future")
    refused("wrong issuer", jwt.encode(claims(iss="https://evil.test"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}),
            "issuer not trusted")
    refused("wrong audience", jwt.encode(claims(aud="vault"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "audience not allowed")
    refused("missing user claim", jwt.encode(claims(worker_id=None), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}),
            "missing or non-string user claim worker_id")
    refused("non-string user claim", jwt.encode(claims(worker_id=7), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}),
            "missing or non-string user claim worker_id")
    refused("bound claim mismatch", jwt.encode(claims(project="prod-deploy"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}),
            "claim project does not match the role")
    refused("no jti", jwt.encode(claims(jti=None), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "no jti")
    refused("no exp", jwt.encode(claims(exp=None), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "no numeric exp")

    other = dict(role, name="deployers", issuer="https://deploy-idp.test", bound_audiences=["deploy"], bound_claims={})
    other_path = os.path.join(work, "other.json")
    with open(other_path, "w") as f:
        json.dump(other, f)
    for_other = jwt.encode(claims(iss="https://deploy-idp.test", aud="deploy"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    status, output = verify(for_other, path=other_path)
    check("a token for the other role logs in there", status == 0, output)
    refused("a token for another role", for_other, "issuer not trusted")

    bad_role = dict(role, algorithms=["HS256"])
    bad_path = os.path.join(work, "bad-role.json")
    with open(bad_path, "w") as f:
        json.dump(bad_role, f)
    status, output = verify(good, path=bad_path)
    check("a role allowing HS256 cannot be written", status != 0 and "not a login role" in output, output)

    # --- lookalikes, weak keys, echoed text ---------------------------------------------
    refused("an issuer spelt with a combining accent (Unicode-equivalent, different bytes)",
            jwt.encode(claims(iss="https://idp.tes\u0074\u0301"), rsa_key, algorithm="RS256", headers={"kid": "rsa1"}), "issuer not trusted")
    kelvin_role = dict(role, bound_claims={"project": "Kube-*"})
    kelvin_path = os.path.join(work, "kelvin.json")
    with open(kelvin_path, "w") as f:
        json.dump(kelvin_role, f)
    refused("a glob matched only by a Unicode lookalike", jwt.encode(claims(project="\u212aube-x"), rsa_key, algorithm="RS256",
            headers={"kid": "rsa1"}), "claim project does not match", path=kelvin_path)
    refused("a handle with a right-to-left override", jwt.encode(claims(worker_id="admin\u202exyz"), rsa_key, algorithm="RS256",
            headers={"kid": "rsa1"}), "the user claim must be 1 to 64 bytes of ASCII")
    status, output = verify(jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "x\n\x1b[31mFAKE login ok"}))
    check("a kid with a newline and an escape is echoed as printable text only", status != 0 and "\x1b" not in output
          and "FAKE login ok" in output and output.count("\n") == 0, repr(output))
    weak = {"kty": "RSA", "n": b64url(rsa_key.public_key().public_numbers().n.to_bytes(256, "big")), "e": "AQ"}
    weak_role = dict(role, keys=[{"jwk": weak, "kid": "weak"}], algorithms=["RS256"])
    weak_path = os.path.join(work, "weak.json")
    with open(weak_path, "w") as f:
        json.dump(weak_role, f)
    status, output = verify(good, path=weak_path)
    check("an RSA key with e = 1 (anyone could forge) cannot be pinned", status != 0 and "fail the public-key check" in output, output)

    # --- key binding ------------------------------------------------------------------
    identity = os.path.join(work, "workload.json")
    subprocess.run([os.path.join(BIN, "unibus"), "identity", "new", "--out", identity], check=True, capture_output=True)
    nkey = subprocess.run([os.path.join(BIN, "unibus"), "identity", "nkey", "--identity", identity], capture_output=True, text=True).stdout.strip()
    raw = base64.b32decode(nkey + "=" * (-len(nkey) % 8))[1:33]
    thumbprint = b64url(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}, separators=(",", ":")).encode()).digest())
    bound_role = dict(role, require_key_binding=True)
    bound_path = os.path.join(work, "bound.json")
    with open(bound_path, "w") as f:
        json.dump(bound_role, f)
    bound = jwt.encode(claims(cnf={"jkt": thumbprint}), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    status, output = verify(bound, path=bound_path, extra=("--workload-key", nkey))
    check("key binding: a token naming the workload's key (cnf.jkt) logs in with that key", status == 0, output)
    other_identity = os.path.join(work, "thief.json")
    subprocess.run([os.path.join(BIN, "unibus"), "identity", "new", "--out", other_identity], check=True, capture_output=True)
    thief = subprocess.run([os.path.join(BIN, "unibus"), "identity", "nkey", "--identity", other_identity], capture_output=True, text=True).stdout.strip()
    refused("key binding, the token presented with another key", bound, "not bound to this key", path=bound_path, extra=("--workload-key", thief))
    refused("key binding, a bearer token", good, "not bound to this key", path=bound_path, extra=("--workload-key", nkey))

passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if results and passed == len(results) else 1)
