#!/usr/bin/env python3
"""Megolm and Ed25519 side by side, in one run on one machine.

Runs the Swift harness (Unibus Megolm + raw libsodium Ed25519) and vodozemac
(through its Python bindings) with the same sizes and prints rates and the
ratios the targets are stated in. Usage:

    python3 Tests/Benchmarks/megolm.py [--seconds 2] [--rounds 3]

vodozemac is timed through PyO3: each call pays a fixed binding cost, which
the script measures (a call that does no crypto) and reports beside it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import vodozemac

HERE = os.path.dirname(os.path.abspath(__file__))


def interleaved(seconds, cases, slices=20):
    """Rates of `cases` (name -> batch) measured in alternating slices."""
    for batch in cases.values():
        batch()
    operations = {name: 0 for name in cases}
    elapsed = {name: 0.0 for name in cases}
    for _ in range(slices):
        for name, batch in cases.items():
            start = time.perf_counter()
            while True:
                operations[name] += batch()
                spent = time.perf_counter() - start
                if spent >= seconds / slices:
                    break
            elapsed[name] += spent
    return {name: operations[name] / elapsed[name] for name in cases}


def vodozemac_rates(size, seconds):
    plaintext = b"a" * size
    session = vodozemac.GroupSession()

    def encrypt():
        for _ in range(50):
            session.encrypt(plaintext)
        return 50

    sender = vodozemac.GroupSession()
    key = sender.session_key
    batch = [sender.encrypt(plaintext).to_bytes() for _ in range(2000)]
    state = {"inbound": vodozemac.InboundGroupSession(key), "next": 0}

    def decrypt():
        for _ in range(50):
            if state["next"] == len(batch):
                state["inbound"], state["next"] = vodozemac.InboundGroupSession(key), 0
            state["inbound"].decrypt(vodozemac.MegolmMessage.from_bytes(batch[state["next"]]))
            state["next"] += 1
        return 50

    # ed25519-dalek as vodozemac links it: the floor of its decrypt.
    account = vodozemac.Account()
    message = b"b" * (size + 32)
    signature = account.sign(message)
    public = account.ed25519_key

    def verify():
        for _ in range(50):
            public.verify_signature(message, signature)
        return 50

    def binding_call():
        for _ in range(1000):
            session.message_index  # a property read: the PyO3 call cost, no crypto
        return 1000

    return interleaved(seconds, {"encrypt": encrypt, "decrypt": decrypt,
                                 "dalek_verify": verify, "binding_call": binding_call})


def swift_round(binary, seconds):
    output = subprocess.run([binary, str(seconds)], check=True, capture_output=True, text=True).stdout
    return {(row["case"], row["size"]): row["ops_per_sec"] for row in map(json.loads, output.splitlines())}


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    subprocess.run(["swift", "build", "-c", "release", "--product", "unibus-crypto-bench"],
                   cwd=HERE, check=True, stdout=subprocess.DEVNULL)
    binary = os.path.join(HERE, ".build", "release", "unibus-crypto-bench")

    # Rounds alternate Swift and vodozemac, so that both see the same machine
    # state (this VM's clock speed drifts by 20% over seconds); each ratio is
    # taken within a round, and the medians are reported.
    rounds = []
    for _ in range(args.rounds):
        swift = swift_round(binary, args.seconds)
        vz = {size: vodozemac_rates(size, args.seconds) for size in (128, 1024)}
        rounds.append((swift, vz))

    print(f"{'size':>5}  {'case (median of rounds)':<28} {'ops/s':>10}")
    failures = []
    for size in (128, 1024):
        def med(pick):
            return median([pick(swift, vz[size]) for swift, vz in rounds])
        rows = [
            ("sodium ed25519 sign", med(lambda s, v: s[("sodium-ed25519-sign", size)])),
            ("sodium ed25519 verify", med(lambda s, v: s[("sodium-ed25519-verify", size)])),
            ("unibus megolm encrypt", med(lambda s, v: s[("unibus-megolm-encrypt", size)])),
            ("vodozemac encrypt", med(lambda s, v: v["encrypt"])),
            ("unibus megolm decrypt", med(lambda s, v: s[("unibus-megolm-decrypt", size)])),
            ("vodozemac decrypt", med(lambda s, v: v["decrypt"])),
            ("dalek verify (vodozemac)", med(lambda s, v: v["dalek_verify"])),
            ("vodozemac binding call", med(lambda s, v: v["binding_call"])),
        ]
        for name, value in rows:
            print(f"{size:>5}  {name:<28} {value:>10.0f}")
        ratios = [
            ("encrypt vs vodozemac", med(lambda s, v: s[("unibus-megolm-encrypt", size)] / v["encrypt"]), 1.0),
            ("decrypt vs vodozemac", med(lambda s, v: s[("unibus-megolm-decrypt", size)] / v["decrypt"]), 1.0),
            ("decrypt vs raw verify", med(lambda s, v: s[("unibus-megolm-decrypt", size)] / s[("sodium-ed25519-verify", size)]), 0.9),
            ("encrypt vs raw sign", med(lambda s, v: s[("unibus-megolm-encrypt", size)] / s[("sodium-ed25519-sign", size)]), None),
            ("vodozemac dec vs dalek", med(lambda s, v: v["decrypt"] / v["dalek_verify"]), None),
            ("sodium vs dalek verify", med(lambda s, v: s[("sodium-ed25519-verify", size)] / v["dalek_verify"]), None),
        ]
        for name, value, target in ratios:
            if target is None:
                print(f"{size:>5}  ratio {name:<22} {value:6.2f}x (no target)")
                continue
            verdict = "ok" if value >= target else "BELOW TARGET"
            print(f"{size:>5}  ratio {name:<22} {value:6.2f}x (target >= {target}x) {verdict}")
            if value < target:
                failures.append(f"{size} B {name}")
        print()
    if failures:
        print("below target: " + ", ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
