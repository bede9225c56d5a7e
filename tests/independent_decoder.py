#!/usr/bin/env python3
"""An independent decoder and encoder for strongroom's sealed-blob format v1 (local-key
backend), written from docs/FORMAT.md alone (Python's `cryptography` package, no strongroom
code).

    python3 tests/independent_decoder.py
        What CI runs. Decodes every vector in tests/data/envelope_vectors.json (written by the
        Rust encoder) and tests/data/envelope_vectors_python.json (written by this file),
        checks the plaintext, checks that a tampered copy and a copy read as another version
        are refused, and checks that the encoder below reproduces every blob of both files
        byte for byte (and the Python file as a whole). Prints '<n> passed, <m> failed' and
        exits non-zero on failure.

    python3 tests/independent_decoder.py --write-python-vectors
        Rewrites tests/data/envelope_vectors_python.json from PYTHON_CASES. Only for a
        deliberate change to the cases; the blobs of existing cases must not change.

    python3 tests/independent_decoder.py --write-record-vectors
        Rewrites tests/data/record_vectors.json (sealed record bodies, the record
        associated-data domain of docs/FORMAT.md "Record bodies") from RECORD_CASES.

The Rust side opens every vector of the Python file with its reader (tests/envelope.rs),
and its encoder reproduces every record vector (src/crypto/envelope.rs).
"""
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
FLAGS = 0x01  # bit 0: key commitment present
BACKEND_LOCAL = 0x01

HERE = os.path.dirname(os.path.abspath(__file__))
RUST_VECTORS = os.path.join(HERE, "data", "envelope_vectors.json")
PYTHON_VECTORS = os.path.join(HERE, "data", "envelope_vectors_python.json")
RECORD_VECTORS = os.path.join(HERE, "data", "record_vectors.json")


def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def identity(credential_id, scope_kind, owner, version):
    return lp(credential_id.encode()) + lp(scope_kind.encode()) + lp(owner.encode()) + struct.pack(">Q", version)


def record_identity(kind, owner, key, version):
    return lp(kind.encode()) + lp(owner.encode()) + lp(key.encode()) + struct.pack(">Q", version)


def local_key_id(master: bytes) -> str:
    return "local:" + hashlib.sha256(b"strongroom/key-id/v1" + master).digest()[:8].hex()


def wrap_aad(ident: bytes, version=VERSION, flags=FLAGS, backend=BACKEND_LOCAL) -> bytes:
    return b"strongroom/wrap/v1" + bytes([version, flags, backend]) + ident


def data_aad(ident: bytes, version=VERSION, flags=FLAGS) -> bytes:
    return b"strongroom/data/v1" + bytes([version, flags]) + ident


def record_wrap_aad(ident: bytes, version=VERSION, flags=FLAGS, backend=BACKEND_LOCAL) -> bytes:
    return b"strongroom/record-wrap/v1" + bytes([version, flags, backend]) + ident


def record_data_aad(ident: bytes, version=VERSION, flags=FLAGS) -> bytes:
    return b"strongroom/record-data/v1" + bytes([version, flags]) + ident


def aads(record: bool):
    """The (wrap, data) associated-data functions of a domain: credentials or records."""
    return (record_wrap_aad, record_data_aad) if record else (wrap_aad, data_aad)


def synthetic_wrap_nonce(master: bytes, aad: bytes, dek: bytes) -> bytes:
    prk = hmac.new(b"strongroom/derive/v1", master, hashlib.sha256).digest()  # HKDF-Extract
    nonce_key = hmac.new(prk, b"strongroom local wrap nonce v1" + b"\x01", hashlib.sha256).digest()  # HKDF-Expand
    return hmac.new(nonce_key, aad + dek, hashlib.sha256).digest()[:12]


def commitment(dek: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(b"strongroom/commit/v1" + dek + nonce).digest()


def encode(master: bytes, ident: bytes, dek: bytes, nonce: bytes, plaintext: bytes,
           record=False) -> bytes:
    """Seals `plaintext` for the credential (or, with record=True, the record) `ident` under
    a local master key, with the given data key and payload nonce (a real writer draws both
    at random; vectors fix them)."""
    if len(master) != 32 or len(dek) != 32 or len(nonce) != 12:
        raise ValueError("master key and DEK are 32 bytes, the nonce 12")
    wrap_aad, data_aad = aads(record)
    key_id = local_key_id(master).encode()
    w_aad = wrap_aad(ident)
    wrap_nonce = synthetic_wrap_nonce(master, w_aad, dek)
    backend_bytes = wrap_nonce + AESGCM(master).encrypt(wrap_nonce, dek, w_aad)
    assert len(backend_bytes) == 60
    section = bytes([len(key_id)]) + key_id + backend_bytes
    header = bytes([VERSION, FLAGS, BACKEND_LOCAL]) + struct.pack(">H", len(section))
    payload = AESGCM(dek).encrypt(nonce, plaintext, data_aad(ident))
    return header + section + nonce + commitment(dek, nonce) + payload


def decode(blob: bytes, master: bytes, ident: bytes, record=False):
    wrap_aad, data_aad = aads(record)
    if len(blob) < 5 or blob[0] != VERSION or blob[1] != FLAGS:
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
    commit = blob[17 + w:49 + w]
    ct = blob[49 + w:]
    if backend != BACKEND_LOCAL or key_id != local_key_id(master) or len(backend_bytes) != 60:
        raise ValueError("not wrapped by this local key")
    w_aad = wrap_aad(ident, version, flags, backend)
    dek = AESGCM(master).decrypt(backend_bytes[:12], backend_bytes[12:], w_aad)
    # A writer derives the wrap nonce (SIV); check it, proving the writer rule is documented too.
    if synthetic_wrap_nonce(master, w_aad, dek) != backend_bytes[:12]:
        raise ValueError("wrap nonce is not the documented synthetic nonce")
    if not hmac.compare_digest(commitment(dek, nonce), commit):
        raise ValueError("commitment mismatch")
    return AESGCM(dek).decrypt(nonce, ct, data_aad(ident, version, flags))


# The cases of tests/data/envelope_vectors_python.json. Keys, data keys and nonces are fixed
# test patterns (described in PYTHON_DESCRIPTION), never random draws.
MASTER_ASCENDING = bytes(range(0x20, 0x40))  # 20 21 ... 3f
MASTER_DESCENDING = bytes(range(0xFF, 0xDF, -1))  # ff fe ... e0

PYTHON_CASES = [
    # (name, master key, credential id, scope kind, owner, version, plaintext)
    ("python: empty payload, per_app_shared", MASTER_ASCENDING,
     "py-0001", "per_app_shared", "billing", 1, b""),
    ("python: JSON fields, per_app_per_user", MASTER_ASCENDING,
     "py-0002", "per_app_per_user", "crm/carol@example.org", 7,
     json.dumps({"password": "correct horse battery staple", "totp_seed": "JBSWY3DPEHPK3PXP"},
                separators=(",", ":")).encode()),
    ("python: 300-byte binary payload, per_agent, version 2^64-1", MASTER_ASCENDING,
     "0190f00d-0000-7000-8000-00000000beef", "per_agent", "agent-42", 2**64 - 1,
     bytes(255 - (i % 256) for i in range(300))),
    ("python: unicode owner, per_user, version 2^32", MASTER_ASCENDING,
     "py-0004", "per_user", "zoë-Ωμέγα-用户", 2**32, "pässwörd-🔑".encode()),
    ("python: one-block payload, system_wide, version 2^63, second master key", MASTER_DESCENDING,
     "py-0005", "system_wide", "", 2**63, b"0123456789abcdef"),
    ("python: 1000-byte payload, per_app_per_user with unicode app and user", MASTER_DESCENDING,
     "py-0006", "per_app_per_user", "café/josé", 256,
     bytes(b"strongroom-"[i % 11] for i in range(1000))),
]

PYTHON_DESCRIPTION = (
    "strongroom envelope format v1 vectors encoded by tests/independent_decoder.py "
    "(Python `cryptography`, written from docs/FORMAT.md without strongroom code); the Rust "
    "reader must open every one (tests/envelope.rs). master_key_hex, dek_hex and nonce_hex are "
    "fixed test patterns chosen by the Python encoder, not random draws: the master keys are "
    "20 21 ... 3f and ff fe ... e0; for the case at index i (from 0), DEK byte j is "
    "(0x40 + 16*i + j) mod 256 and nonce byte j is (0xb0 + 16*i + j) mod 256. "
    "Regenerate with `python3 tests/independent_decoder.py --write-python-vectors`."
)


def dek_pattern(i: int) -> bytes:
    return bytes((0x40 + 16 * i + j) % 256 for j in range(32))


def nonce_pattern(i: int) -> bytes:
    return bytes((0xB0 + 16 * i + j) % 256 for j in range(12))


def python_vectors_document() -> dict:
    vectors = []
    for i, (name, master, cid, kind, owner, version, plaintext) in enumerate(PYTHON_CASES):
        dek, nonce = dek_pattern(i), nonce_pattern(i)
        blob = encode(master, identity(cid, kind, owner, version), dek, nonce, plaintext)
        vectors.append({
            "name": name,
            "master_key_hex": master.hex(),
            "master_key_id": local_key_id(master),
            "credential_id": cid,
            "scope_kind": kind,
            "owner": owner,
            "version": version,
            "dek_hex": dek.hex(),
            "nonce_hex": nonce.hex(),
            "plaintext_hex": plaintext.hex(),
            "blob_hex": blob.hex(),
        })
    return {"description": PYTHON_DESCRIPTION, "vectors": vectors}


def python_vectors_text() -> str:
    return json.dumps(python_vectors_document(), indent=2, ensure_ascii=False) + "\n"


# The cases of tests/data/record_vectors.json: sealed record bodies.
RECORD_CASES = [
    # (name, master key, kind, owner, key, version, plaintext)
    ("record: empty body, version 1", MASTER_ASCENDING,
     "lease", "refresh", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 1, b""),
    ("record: OAuth pending flow, JSON body", MASTER_ASCENDING,
     "oauth.pending", "user:alice", "state-Zm9vYmFy", 2,
     json.dumps({"code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                 "redirect_uri": "https://app.example/callback"},
                separators=(",", ":")).encode()),
    ("record: unicode owner with / and :, version 2^64-1, second master key", MASTER_DESCENDING,
     "integration", "agent:zoë/Ωμέγα", "github", 2**64 - 1, "tökén-🔑".encode()),
]

RECORD_DESCRIPTION = (
    "strongroom sealed record bodies (format v1 with the record associated-data domain, "
    "docs/FORMAT.md \"Record bodies\"), encoded by tests/independent_decoder.py (Python "
    "`cryptography`, written from docs/FORMAT.md without strongroom code); the Rust encoder "
    "must reproduce every blob and the Rust reader open it (src/crypto/envelope.rs, "
    "tests/envelope.rs). master_key_hex, dek_hex and nonce_hex are fixed test patterns, not "
    "random draws: the master keys are 20 21 ... 3f and ff fe ... e0; for the case at index "
    "i (from 0), DEK byte j is (0x70 + 16*i + j) mod 256 and nonce byte j is "
    "(0xe0 + 16*i + j) mod 256. Regenerate with "
    "`python3 tests/independent_decoder.py --write-record-vectors`."
)


def record_vectors_document() -> dict:
    vectors = []
    for i, (name, master, kind, owner, key, version, plaintext) in enumerate(RECORD_CASES):
        dek = bytes((0x70 + 16 * i + j) % 256 for j in range(32))
        nonce = bytes((0xE0 + 16 * i + j) % 256 for j in range(12))
        ident = record_identity(kind, owner, key, version)
        blob = encode(master, ident, dek, nonce, plaintext, record=True)
        vectors.append({
            "name": name,
            "master_key_hex": master.hex(),
            "master_key_id": local_key_id(master),
            "kind": kind,
            "owner": owner,
            "key": key,
            "version": version,
            "wrap_aad_hex": record_wrap_aad(ident).hex(),
            "data_aad_hex": record_data_aad(ident).hex(),
            "dek_hex": dek.hex(),
            "nonce_hex": nonce.hex(),
            "plaintext_hex": plaintext.hex(),
            "blob_hex": blob.hex(),
        })
    return {"description": RECORD_DESCRIPTION, "vectors": vectors}


def record_vectors_text() -> str:
    return json.dumps(record_vectors_document(), indent=2, ensure_ascii=False) + "\n"


def check_record_vector(v) -> list:
    """Decode, tamper, domain and re-encode checks for one record vector."""
    master = bytes.fromhex(v["master_key_hex"])
    blob = bytes.fromhex(v["blob_hex"])
    ident = record_identity(v["kind"], v["owner"], v["key"], v["version"])
    plaintext = bytes.fromhex(v["plaintext_hex"])
    checks = [("associated data as documented",
               record_wrap_aad(ident).hex() == v["wrap_aad_hex"]
               and record_data_aad(ident).hex() == v["data_aad_hex"])]
    try:
        checks.append(("decodes", decode(blob, master, ident, record=True) == plaintext))
    except Exception as e:  # noqa: BLE001
        checks.append((f"decodes ({e})", False))
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    later = v["version"] + 1 if v["version"] < 2**64 - 1 else 0
    refusals = (
        ("tampered tag refused", bytes(tampered), ident, True),
        ("other version refused", blob, record_identity(v["kind"], v["owner"], v["key"], later), True),
        ("other key refused", blob, record_identity(v["kind"], v["owner"], v["key"] + "x", v["version"]), True),
        ("refused as a credential blob with the same identity bytes", blob, ident, False),
    )
    for label, b, i, record in refusals:
        try:
            decode(b, master, i, record=record)
            checks.append((label, False))
        except Exception:  # noqa: BLE001
            checks.append((label, True))
    mine = encode(master, ident, bytes.fromhex(v["dek_hex"]), bytes.fromhex(v["nonce_hex"]),
                  plaintext, record=True)
    checks.append(("encoder reproduces the blob byte for byte", mine.hex() == v["blob_hex"]))
    return checks


def check_vector(v) -> list:
    """Decode, tamper and re-encode checks for one vector; a list of (label, ok)."""
    master = bytes.fromhex(v["master_key_hex"])
    blob = bytes.fromhex(v["blob_hex"])
    ident = identity(v["credential_id"], v["scope_kind"], v["owner"], v["version"])
    checks = [("key id", local_key_id(master) == v["master_key_id"])]
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
    try:
        mine = encode(master, ident, bytes.fromhex(v["dek_hex"]), bytes.fromhex(v["nonce_hex"]),
                      bytes.fromhex(v["plaintext_hex"]))
        checks.append(("encoder reproduces the blob byte for byte", mine.hex() == v["blob_hex"]))
    except Exception as e:  # noqa: BLE001
        checks.append((f"encodes ({e})", False))
    return checks


def main(argv):
    if argv[1:] == ["--write-python-vectors"]:
        with open(PYTHON_VECTORS, "w", encoding="utf-8") as f:
            f.write(python_vectors_text())
        print(f"wrote {len(PYTHON_CASES)} vectors to {os.path.relpath(PYTHON_VECTORS)}")
        return 0
    if argv[1:] == ["--write-record-vectors"]:
        with open(RECORD_VECTORS, "w", encoding="utf-8") as f:
            f.write(record_vectors_text())
        print(f"wrote {len(RECORD_CASES)} vectors to {os.path.relpath(RECORD_VECTORS)}")
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2

    passed = failed = 0

    def record(label, ok):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
        passed += bool(ok)
        failed += not ok

    for path in (RUST_VECTORS, PYTHON_VECTORS):
        source = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            doc = json.loads(text)
        except (OSError, ValueError) as e:
            record(f"{source}: readable ({e})", False)
            continue
        record(f"{source}: has vectors", len(doc.get("vectors", [])) >= 4)
        for v in doc.get("vectors", []):
            for label, ok in check_vector(v):
                record(f"{source}: {v['name']}: {label}", ok)
        if path == PYTHON_VECTORS:
            record(f"{source}: the file is exactly what --write-python-vectors writes",
                   text == python_vectors_text())

    source = os.path.basename(RECORD_VECTORS)
    try:
        with open(RECORD_VECTORS, encoding="utf-8") as f:
            text = f.read()
        doc = json.loads(text)
        record(f"{source}: has vectors", len(doc.get("vectors", [])) >= 3)
        for v in doc.get("vectors", []):
            for label, ok in check_record_vector(v):
                record(f"{source}: {v['name']}: {label}", ok)
        record(f"{source}: the file is exactly what --write-record-vectors writes",
               text == record_vectors_text())
    except (OSError, ValueError) as e:
        record(f"{source}: readable ({e})", False)

    print(f"decoder: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
