#!/usr/bin/env python3
"""An independent decoder for strongroom's sealed-blob format v1, written from docs/FORMAT.md
alone (Python's `cryptography` package, no strongroom code). It decodes every known-answer
vector in tests/data/envelope_vectors.json, checks the plaintext, and checks that a tampered
copy is refused. CI runs it; it prints '<n> passed, <m> failed' and exits non-zero on failure.
"""
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def identity(credential_id, scope_kind, owner, version):
    return lp(credential_id.encode()) + lp(scope_kind.encode()) + lp(owner.encode()) + struct.pack(">Q", version)


def decode(blob: bytes, master: bytes, ident: bytes):
    if len(blob) < 5 or blob[0] != 1 or blob[1] != 1:
        raise ValueError("bad header")
    version, flags, backend = blob[0], blob[1], blob[2]
    w = struct.unpack(">H", blob[3:5])[0]
    if len(blob) < 5 + w + 12 + 32 + 16:
        raise ValueError("truncated")
    section = blob[5:5 + w]
    l = section[0]
    if l == 0 or l > w - 1:
        raise ValueError("bad key id length")
    key_id = section[1:1 + l].decode("utf-8")
    backend_bytes = section[1 + l:]
    nonce = blob[5 + w:17 + w]
    commitment = blob[17 + w:49 + w]
    ct = blob[49 + w:]
    expected_id = "local:" + hashlib.sha256(b"strongroom/key-id/v1" + master).digest()[:8].hex()
    if backend != 1 or key_id != expected_id or len(backend_bytes) != 60:
        raise ValueError("not wrapped by this local key")
    wrap_aad = b"strongroom/wrap/v1" + bytes([version, flags, backend]) + ident
    dek = AESGCM(master).decrypt(backend_bytes[:12], backend_bytes[12:], wrap_aad)
    # A writer derives the wrap nonce (SIV); check it, proving the writer rule is documented too.
    prk = hmac.new(b"strongroom/derive/v1", master, hashlib.sha256).digest()
    nonce_key = hmac.new(prk, b"strongroom local wrap nonce v1" + b"\x01", hashlib.sha256).digest()
    if hmac.new(nonce_key, wrap_aad + dek, hashlib.sha256).digest()[:12] != backend_bytes[:12]:
        raise ValueError("wrap nonce is not the documented synthetic nonce")
    mine = hashlib.sha256(b"strongroom/commit/v1" + dek + nonce).digest()
    if not hmac.compare_digest(mine, commitment):
        raise ValueError("commitment mismatch")
    data_aad = b"strongroom/data/v1" + bytes([version, flags]) + ident
    return AESGCM(dek).decrypt(nonce, ct, data_aad)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "data", "envelope_vectors.json")) as f:
        doc = json.load(f)
    passed = failed = 0
    for v in doc["vectors"]:
        master = bytes.fromhex(v["master_key_hex"])
        blob = bytes.fromhex(v["blob_hex"])
        ident = identity(v["credential_id"], v["scope_kind"], v["owner"], v["version"])
        checks = []
        try:
            checks.append(("decodes", decode(blob, master, ident) == bytes.fromhex(v["plaintext_hex"])))
        except Exception as e:  # noqa: BLE001
            checks.append((f"decodes ({e})", False))
        tampered = bytearray(blob)
        tampered[-1] ^= 1
        other = identity(v["credential_id"], v["scope_kind"], v["owner"], v["version"] + 1 if v["version"] < 2**64 - 1 else 0)
        for label, b, i in (("tampered tag refused", bytes(tampered), ident), ("other version refused", blob, other)):
            try:
                decode(b, master, i)
                checks.append((label, False))
            except Exception:  # noqa: BLE001
                checks.append((label, True))
        for label, ok in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {v['name']}: {label}")
            passed += ok
            failed += not ok
    print(f"decoder: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
