#!/usr/bin/env python3
"""Interop peer for Unibus tests: real vodozemac, python-olm, nkeys and PyNaCl.

Reads one JSON request from stdin, writes one JSON reply to stdout. Binary
values travel as unpadded standard base64 (the Megolm text format). A missing
library is a hard failure (exit 3): interop tests must not pass without their peer.
"""
import base64
import json
import sys

try:
    import nacl.exceptions
    import nacl.public
    import nkeys
    import olm
    import vodozemac
except ImportError as error:  # pragma: no cover - environment problem
    sys.stderr.write(f"interop peer missing: {error}; install with: pip install vodozemac python-olm nkeys\n")
    sys.exit(3)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# What each library raises when it refuses a key or a message (checked against
# vodozemac 0.10 and python-olm 3.2). Only these become verdicts: any other
# exception is a bug in this peer or a library and fails the test (exit 1)
# instead of passing as a "refusal".
KEY_REFUSALS = (vodozemac.SessionKeyDecodeException, olm.OlmGroupSessionError)
MESSAGE_REFUSALS = (vodozemac.DecodeException, vodozemac.MegolmDecryptionException, olm.OlmGroupSessionError)


def classify(error: Exception) -> str:
    """Maps each library's exception to the verdict names Unibus uses."""
    text = str(error).lower()
    name = type(error).__name__
    if "signature" in text:
        return "bad-signature"
    if "mac" in text:
        return "bad-mac"
    if "padding" in text:
        return "bad-padding"
    if "unknown message index" in text or "unknown_message_index" in text:
        return "unknown-index"
    if "version" in text:
        return "bad-version"
    if "base64" in text:
        return "bad-base64"
    return f"bad-format ({name}: {error})"


def inbound(lib: str, request: dict):
    if lib == "vodozemac":
        if "session_key" in request:
            return vodozemac.InboundGroupSession(vodozemac.SessionKey(request["session_key"]))
        return vodozemac.InboundGroupSession.import_session(vodozemac.ExportedSessionKey(request["exported"]))
    if "session_key" in request:
        return olm.InboundGroupSession(request["session_key"])
    return olm.InboundGroupSession.import_session(request["exported"])


def decrypt(request: dict) -> dict:
    lib = request["lib"]
    results = []
    try:
        session = inbound(lib, request)
    except KEY_REFUSALS as error:  # the verdict is the point: the Swift side compares it exactly
        return {"key_error": classify(error)}
    for message in request["messages"]:
        try:
            if lib == "vodozemac":
                decrypted = session.decrypt(vodozemac.MegolmMessage.from_base64(message))
                results.append({"index": decrypted.message_index, "plaintext": b64(decrypted.plaintext)})
            else:
                plaintext, index = session.decrypt(message)
                results.append({"index": index, "plaintext": b64(plaintext.encode("utf-8", "surrogateescape"))})
        except MESSAGE_REFUSALS as error:  # reported, and compared exactly with Unibus's verdict
            results.append({"error": classify(error)})
    reply = {"results": results, "session_id": session.session_id if lib == "vodozemac" else session.id}
    if "export_at" in request:
        if lib == "vodozemac":
            exported = session.export_at(request["export_at"])
            reply["export"] = exported.to_base64() if exported else None
        else:
            reply["export"] = session.export_session(request["export_at"])
    return reply


def encrypt(request: dict) -> dict:
    """Encrypts `count` messages; returns the ones whose index is in `keep`."""
    lib = request["lib"]
    keep = set(request.get("keep", range(request["count"])))
    session = vodozemac.GroupSession() if lib == "vodozemac" else olm.OutboundGroupSession()
    key = session.session_key.to_base64() if lib == "vodozemac" else session.session_key
    messages = []
    for index in range(request["count"]):
        plaintext = f"{lib} message {index}".encode()
        if lib == "vodozemac":
            encrypted = session.encrypt(plaintext).to_base64()
        else:
            encrypted = session.encrypt(plaintext.decode())
        if index in keep:
            messages.append({"index": index, "plaintext": b64(plaintext), "message": encrypted})
    reply = {"session_key": key, "messages": messages}
    if "export_at" in request:
        if lib == "vodozemac":
            inbound_session = vodozemac.InboundGroupSession(vodozemac.SessionKey(key))
            reply["export"] = inbound_session.export_at(request["export_at"]).to_base64()
        else:
            reply["export"] = olm.InboundGroupSession(key).export_session(request["export_at"])
    return reply


def nkey(request: dict) -> dict:
    """Derives the public key of a seed, signs, and verifies a given signature."""
    pair = nkeys.from_seed(request["seed"].encode())
    reply = {"public_key": pair.public_key.decode(),
             "signature": b64(pair.sign(request["nonce"].encode()))}
    if "verify_signature" in request:
        try:
            pair.verify(request["nonce"].encode(), unb64(request["verify_signature"]))
            reply["verified"] = True
        except nkeys.ErrInvalidSignature:  # a refusal, not a malformed request (that fails the peer)
            reply["verified"] = False
    return reply


def nkey_generate(_: dict) -> dict:
    seed = nkeys.encode_seed(nacl.utils.random(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(seed)
    return {"seed": seed.decode(), "public_key": pair.public_key.decode()}


def sealed_box(request: dict) -> dict:
    """Opens a box sealed by Unibus, and seals a reply to Unibus's key."""
    reply = {}
    if "open" in request:
        secret = nacl.public.PrivateKey(unb64(request["secret"]))
        try:
            reply["opened"] = b64(nacl.public.SealedBox(secret).decrypt(unb64(request["open"])))
        except nacl.exceptions.CryptoError as error:  # PyNaCl's "cannot open"; anything else fails the peer
            reply["open_error"] = str(error)
    if "seal_to" in request:
        public = nacl.public.PublicKey(unb64(request["seal_to"]))
        reply["sealed"] = b64(nacl.public.SealedBox(public).encrypt(unb64(request["plaintext"])))
    return reply


import nacl.utils  # noqa: E402  (after the guarded imports above)

OPERATIONS = {"decrypt": decrypt, "encrypt": encrypt, "nkey": nkey,
              "nkey_generate": nkey_generate, "sealed_box": sealed_box}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(OPERATIONS[request["op"]](request), sys.stdout)
