#!/usr/bin/env python3
"""An independent decoder and encoder for strongroom's sealed-blob format, versions 2 and 1
(local-key backend), written from docs/FORMAT.md alone (Python's `cryptography` package, no
strongroom code).

    python3 tests/independent_decoder.py
        What CI runs. Decodes every vector of every file in tests/data/ (format 2:
        envelope_vectors_v2.json, written by the Rust encoder, envelope_vectors_v2_python.json
        and record_vectors_v2.json, written by this file; format 1: envelope_vectors.json,
        envelope_vectors_python.json, record_vectors.json), checks the plaintext and the
        associated data, checks that tampered copies, copies read as another version, another
        namespace or with a bound field changed, and a version-2 blob that names a local key's
        format-1 id are refused, and that the encoder below reproduces every blob byte for
        byte (and the files this script writes as a whole). Prints '<n> passed, <m> failed'
        and exits non-zero on failure.

    python3 tests/independent_decoder.py --write-python-vectors
        Rewrites tests/data/envelope_vectors_v2_python.json from PYTHON_V2_CASES.

    python3 tests/independent_decoder.py --write-record-vectors
        Rewrites tests/data/record_vectors_v2.json (sealed record bodies, the record
        associated-data domain of docs/FORMAT.md "Record bodies") from RECORD_V2_CASES.

Only for a deliberate change to the cases; the blobs of existing cases must not change. The
format-1 files are never rewritten: they are checked against the format-1 cases below.

The Rust side opens every vector of the Python files with its reader (tests/envelope.rs),
and its encoder reproduces every one (src/crypto/envelope.rs).
"""
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FLAGS = 0x01  # bit 0: commitment present
BACKEND_LOCAL = 0x01

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
RUST_V1 = os.path.join(DATA, "envelope_vectors.json")
PYTHON_V1 = os.path.join(DATA, "envelope_vectors_python.json")
RECORD_V1 = os.path.join(DATA, "record_vectors.json")
RUST_V2 = os.path.join(DATA, "envelope_vectors_v2.json")
PYTHON_V2 = os.path.join(DATA, "envelope_vectors_v2_python.json")
RECORD_V2 = os.path.join(DATA, "record_vectors_v2.json")


# --- primitives (docs/FORMAT.md, "Notation") -------------------------------------------

def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac256(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    assert length <= 32
    return hmac256(prk, info + b"\x01")[:length]


# --- local keys (docs/FORMAT.md, "Local keys") ------------------------------------------

class LocalKey:
    """Both generations of one local master key: the format-2 id and keys, and the
    format-1 id and keys that version-1 blobs may still name."""

    def __init__(self, master: bytes):
        if len(master) != 32:
            raise ValueError("a master key is 32 bytes")
        prk = hkdf_extract(b"strongroom/local-key/v2", master)
        self.id = "local:" + hkdf_expand(prk, b"strongroom/v2/internal/key-id", 16).hex()
        self.wrap_key = hkdf_expand(prk, b"strongroom/v2/internal/wrap-key", 32)
        self.nonce_key = hkdf_expand(prk, b"strongroom/v2/internal/wrap-nonce-key", 32)
        self.id_v1 = "local:" + sha256(b"strongroom/key-id/v1" + master)[:8].hex()
        self.wrap_key_v1 = master
        prk_v1 = hkdf_extract(b"strongroom/derive/v1", master)
        self.nonce_key_v1 = hkdf_expand(prk_v1, b"strongroom local wrap nonce v1", 32)

    def keys_for(self, key_id: str):
        """(wrap key, nonce key, generation) of the rules the key id names, or None."""
        if key_id == self.id:
            return self.wrap_key, self.nonce_key, 2
        if key_id == self.id_v1:
            return self.wrap_key_v1, self.nonce_key_v1, 1
        return None


def generation_of(key_id: str) -> int:
    """The wrap rules a local key id names: 32 hex digits format 2, 16 format 1."""
    digits = key_id[len("local:"):]
    return {32: 2, 16: 1}.get(len(digits), 0) if key_id.startswith("local:") else 0


# --- associated data (docs/FORMAT.md, "Associated data", "Record bodies") ---------------

STATES = ("filled", "valid", "expired", "invalid", "pending")


def bound_digest(bound) -> bytes:
    if bound is None:
        fields = b"\x00"
    else:
        if bound["state"] not in STATES:
            raise ValueError("unknown state")
        fields = (b"\x01" + lp(bound["name"].encode()) + lp(bound["provider"].encode())
                  + lp(bound["handler_type"].encode()) + lp(bound["state"].encode())
                  + bytes([1 if bound["agent_accessible"] else 0]))
        if bound["expires_at"] is None:
            fields += b"\x00"
        else:
            fields += b"\x01" + struct.pack(">q", bound["expires_at"])
        entries = sorted((k.encode(), v.encode()) for k, v in bound["metadata"].items())
        fields += struct.pack(">I", len(entries))
        for k, v in entries:
            fields += lp(k) + lp(v)
    return sha256(b"strongroom/v2/credential/bound-fields" + fields)


class Credential:
    """A credential version's identity (and, format 2, namespace and bound fields)."""

    def __init__(self, credential_id, scope_kind, owner, version, namespace=None, bound=None):
        self.parts = (lp(credential_id.encode()) + lp(scope_kind.encode()) + lp(owner.encode())
                      + u64(version))
        self.namespace = namespace
        self.bound = bound

    def _v2(self) -> bytes:
        if not self.namespace:
            raise ValueError("format 2 needs a namespace")
        return lp(self.namespace.encode()) + self.parts

    def wrap_aad(self, version, flags=FLAGS, backend=BACKEND_LOCAL) -> bytes:
        header = bytes([version, flags, backend])
        if version == 1:
            return b"strongroom/wrap/v1" + header + self.parts
        return b"strongroom/v2/credential/wrap" + header + self._v2()

    def data_aad(self, version, flags=FLAGS) -> bytes:
        header = bytes([version, flags])
        if version == 1:
            return b"strongroom/data/v1" + header + self.parts
        return b"strongroom/v2/credential/data" + header + self._v2() + bound_digest(self.bound)


class RecordBody:
    """A record version's identity (format 2: with a namespace)."""

    def __init__(self, kind, owner, key, version, namespace=None):
        self.parts = lp(kind.encode()) + lp(owner.encode()) + lp(key.encode()) + u64(version)
        self.namespace = namespace

    def _v2(self) -> bytes:
        if not self.namespace:
            raise ValueError("format 2 needs a namespace")
        return lp(self.namespace.encode()) + self.parts

    def wrap_aad(self, version, flags=FLAGS, backend=BACKEND_LOCAL) -> bytes:
        header = bytes([version, flags, backend])
        if version == 1:
            return b"strongroom/record-wrap/v1" + header + self.parts
        return b"strongroom/v2/record/wrap" + header + self._v2()

    def data_aad(self, version, flags=FLAGS) -> bytes:
        header = bytes([version, flags])
        if version == 1:
            return b"strongroom/record-data/v1" + header + self.parts
        return b"strongroom/v2/record/data" + header + self._v2()


# --- payload key and commitment (docs/FORMAT.md) ----------------------------------------

def payload_key_and_commitment(version, dek, nonce, data_aad):
    if version == 1:
        return dek, sha256(b"strongroom/commit/v1" + dek + nonce)
    ctx = sha256(data_aad)
    return (hkdf_expand(dek, b"v2-payload" + nonce + ctx, 32),
            hkdf_expand(dek, b"v2-commit" + nonce + ctx, 32))


def synthetic_wrap_nonce(nonce_key: bytes, wrap_aad: bytes, dek: bytes) -> bytes:
    return hmac256(nonce_key, wrap_aad + dek)[:12]


def encode(master: bytes, binding, dek: bytes, nonce: bytes, plaintext: bytes, version=2,
           generation=None) -> bytes:
    """Seals `plaintext` for `binding` (a Credential or a RecordBody) under a local master
    key, with the given data key and payload nonce (a real writer draws both at random;
    vectors fix them). `generation` picks the key id and wrap rules (default: the blob's
    version; 2 for a version-1 blob re-wrapped onto the key's format-2 id)."""
    if len(dek) != 32 or len(nonce) != 12:
        raise ValueError("the DEK is 32 bytes, the nonce 12")
    key = LocalKey(master)
    generation = generation or version
    key_id = (key.id if generation == 2 else key.id_v1).encode()
    wrap_key, nonce_key, _ = key.keys_for(key_id.decode())
    w_aad = binding.wrap_aad(version)
    wrap_nonce = synthetic_wrap_nonce(nonce_key, w_aad, dek)
    backend_bytes = wrap_nonce + AESGCM(wrap_key).encrypt(wrap_nonce, dek, w_aad)
    assert len(backend_bytes) == 60
    section = bytes([len(key_id)]) + key_id + backend_bytes
    header = bytes([version, FLAGS, BACKEND_LOCAL]) + struct.pack(">H", len(section))
    d_aad = binding.data_aad(version)
    payload_key, commit = payload_key_and_commitment(version, dek, nonce, d_aad)
    return header + section + nonce + commit + AESGCM(payload_key).encrypt(nonce, plaintext, d_aad)


def decode(blob: bytes, master: bytes, binding) -> bytes:
    """docs/FORMAT.md "Decoding, step by step", every MUST and the MAY of step 6a."""
    # 1
    if len(blob) < 5 or blob[0] not in (1, 2) or blob[1] != FLAGS:
        raise ValueError("bad header")
    version, flags, backend = blob[0], blob[1], blob[2]
    # 2
    w = struct.unpack(">H", blob[3:5])[0]
    if len(blob) < 5 + w + 12 + 32 + 16:
        raise ValueError("truncated")
    # 3
    section = blob[5:5 + w]
    n = section[0]
    if n == 0 or n > w - 1:
        raise ValueError("bad key id length")
    key_id = section[1:1 + n].decode("utf-8")
    backend_bytes = section[1 + n:]
    # 4
    nonce = blob[5 + w:17 + w]
    commit = blob[17 + w:49 + w]
    ct = blob[49 + w:]
    # 5
    keys = LocalKey(master).keys_for(key_id)
    if keys is None or backend != BACKEND_LOCAL:
        raise ValueError("not wrapped by this local key")
    wrap_key, nonce_key, generation = keys
    if generation != generation_of(key_id):
        raise ValueError("key id of an unknown form")
    # 5a
    if version == 2 and generation == 1:
        raise ValueError("a version-2 blob names a format-1 local key id")
    # 6
    if len(backend_bytes) != 60:
        raise ValueError("local wrapped key is not 60 bytes")
    w_aad = binding.wrap_aad(version, flags, backend)
    dek = AESGCM(wrap_key).decrypt(backend_bytes[:12], backend_bytes[12:], w_aad)
    # 6a (MAY): the writer derived the wrap nonce (SIV); proves the writer rule is documented.
    if synthetic_wrap_nonce(nonce_key, w_aad, dek) != backend_bytes[:12]:
        raise ValueError("wrap nonce is not the documented synthetic nonce")
    # 7
    d_aad = binding.data_aad(version, flags)
    payload_key, expected = payload_key_and_commitment(version, dek, nonce, d_aad)
    if not hmac.compare_digest(expected, commit):
        raise ValueError("commitment mismatch")
    # 8
    return AESGCM(payload_key).decrypt(nonce, ct, d_aad)


def refused(blob, master, binding) -> bool:
    try:
        decode(blob, master, binding)
        return False
    except Exception:  # noqa: BLE001
        return True


# --- format-1 cases (frozen: their files never change) ----------------------------------

MASTER_ASCENDING = bytes(range(0x20, 0x40))  # 20 21 ... 3f
MASTER_DESCENDING = bytes(range(0xFF, 0xDF, -1))  # ff fe ... e0

PYTHON_V1_CASES = [
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

PYTHON_V1_DESCRIPTION = (
    "strongroom envelope format v1 vectors encoded by tests/independent_decoder.py "
    "(Python `cryptography`, written from docs/FORMAT.md without strongroom code); the Rust "
    "reader must open every one (tests/envelope.rs). master_key_hex, dek_hex and nonce_hex are "
    "fixed test patterns chosen by the Python encoder, not random draws: the master keys are "
    "20 21 ... 3f and ff fe ... e0; for the case at index i (from 0), DEK byte j is "
    "(0x40 + 16*i + j) mod 256 and nonce byte j is (0xb0 + 16*i + j) mod 256. "
    "Regenerate with `python3 tests/independent_decoder.py --write-python-vectors`."
)


def pattern(start: int, i: int, n: int) -> bytes:
    return bytes((start + 16 * i + j) % 256 for j in range(n))


def python_v1_text() -> str:
    vectors = []
    for i, (name, master, cid, kind, owner, version, plaintext) in enumerate(PYTHON_V1_CASES):
        dek, nonce = pattern(0x40, i, 32), pattern(0xB0, i, 12)
        blob = encode(master, Credential(cid, kind, owner, version), dek, nonce, plaintext,
                      version=1)
        vectors.append({
            "name": name, "master_key_hex": master.hex(),
            "master_key_id": LocalKey(master).id_v1, "credential_id": cid,
            "scope_kind": kind, "owner": owner, "version": version, "dek_hex": dek.hex(),
            "nonce_hex": nonce.hex(), "plaintext_hex": plaintext.hex(), "blob_hex": blob.hex(),
        })
    doc = {"description": PYTHON_V1_DESCRIPTION, "vectors": vectors}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


RECORD_V1_CASES = [
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

RECORD_V1_DESCRIPTION = (
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


def record_v1_text() -> str:
    vectors = []
    for i, (name, master, kind, owner, key, version, plaintext) in enumerate(RECORD_V1_CASES):
        dek, nonce = pattern(0x70, i, 32), pattern(0xE0, i, 12)
        body = RecordBody(kind, owner, key, version)
        blob = encode(master, body, dek, nonce, plaintext, version=1)
        vectors.append({
            "name": name, "master_key_hex": master.hex(),
            "master_key_id": LocalKey(master).id_v1, "kind": kind, "owner": owner, "key": key,
            "version": version, "wrap_aad_hex": body.wrap_aad(1).hex(),
            "data_aad_hex": body.data_aad(1).hex(), "dek_hex": dek.hex(), "nonce_hex": nonce.hex(),
            "plaintext_hex": plaintext.hex(), "blob_hex": blob.hex(),
        })
    doc = {"description": RECORD_V1_DESCRIPTION, "vectors": vectors}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --- format-2 cases ---------------------------------------------------------------------

def bound(name, provider, handler_type, state, agent_accessible, expires_at, metadata):
    return {"name": name, "provider": provider, "handler_type": handler_type, "state": state,
            "agent_accessible": agent_accessible, "expires_at": expires_at, "metadata": metadata}


PYTHON_V2_CASES = [
    # (name, master key, namespace, credential id, scope kind, owner, version, bound, plaintext)
    ("python v2: empty payload, per_app_shared, nothing bound", MASTER_ASCENDING, "default",
     "py-0001", "per_app_shared", "billing", 1, None, b""),
    ("python v2: JSON fields, per_app_per_user, metadata with base_url", MASTER_ASCENDING,
     "staging", "py-0002", "per_app_per_user", "crm/carol@example.org", 7,
     bound("crm_db", "postgres", "connection_string", "valid", False, 1767225600000,
           {"env": "staging", "base_url": "https://db.example.org"}),
     json.dumps({"password": "correct horse battery staple", "totp_seed": "JBSWY3DPEHPK3PXP"},
                separators=(",", ":")).encode()),
    ("python v2: 300-byte binary payload, per_agent, version 2^64-1, agent-accessible",
     MASTER_ASCENDING, "tenant-42", "0190f00d-0000-7000-8000-00000000beef", "per_agent",
     "agent-42", 2**64 - 1, bound("agent_key", "anthropic", "api_key", "filled", True, None, {}),
     bytes(255 - (i % 256) for i in range(300))),
    ("python v2: unicode namespace and owner, per_user, version 2^32, negative expiry",
     MASTER_DESCENDING, "ñamespace/zoë", "py-0004", "per_user", "zoë-Ωμέγα-用户", 2**32,
     bound("pässwörd", "custom", "password", "expired", False, -86400000,
           {"ключ": "значение", "a": "b", "é": ""}),
     "pässwörd-🔑".encode()),
    ("python v2: one-block payload, system_wide, version 2^63, a path as namespace",
     MASTER_DESCENDING, "/home/ops/.strongroom", "py-0005", "system_wide", "", 2**63,
     bound("stripe_main", "stripe", "api_key", "pending", False, 0, {}), b"0123456789abcdef"),
]

PYTHON_V2_DESCRIPTION = (
    "strongroom envelope format v2 vectors encoded by tests/independent_decoder.py "
    "(Python `cryptography`, written from docs/FORMAT.md without strongroom code); the Rust "
    "reader must open every one (tests/envelope.rs) and the Rust encoder reproduce it. "
    "master_key_hex, dek_hex and nonce_hex are fixed test patterns chosen by the Python "
    "encoder, not random draws: the master keys are 20 21 ... 3f and ff fe ... e0; for the "
    "case at index i (from 0), DEK byte j is (0x10 + 16*i + j) mod 256 and nonce byte j is "
    "(0x90 + 16*i + j) mod 256. Regenerate with "
    "`python3 tests/independent_decoder.py --write-python-vectors`."
)


def python_v2_text() -> str:
    vectors = []
    for i, (name, master, ns, cid, kind, owner, version, b, plaintext) in enumerate(PYTHON_V2_CASES):
        dek, nonce = pattern(0x10, i, 32), pattern(0x90, i, 12)
        cred = Credential(cid, kind, owner, version, ns, b)
        blob = encode(master, cred, dek, nonce, plaintext)
        vectors.append({
            "name": name, "format": 2, "master_key_hex": master.hex(),
            "master_key_id": LocalKey(master).id, "namespace": ns, "credential_id": cid,
            "scope_kind": kind, "owner": owner, "version": version, "bound": b,
            "dek_hex": dek.hex(), "nonce_hex": nonce.hex(), "plaintext_hex": plaintext.hex(),
            "wrap_aad_hex": cred.wrap_aad(2).hex(), "data_aad_hex": cred.data_aad(2).hex(),
            "blob_hex": blob.hex(),
        })
    doc = {"description": PYTHON_V2_DESCRIPTION, "vectors": vectors}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


RECORD_V2_CASES = [
    # (name, master key, namespace, kind, owner, key, version, plaintext)
    ("record v2: empty body, version 1", MASTER_ASCENDING, "default",
     "lease", "refresh", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 1, b""),
    ("record v2: OAuth pending flow, JSON body", MASTER_ASCENDING, "prod",
     "oauth.pending", "user:alice", "state-Zm9vYmFy", 2,
     json.dumps({"code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                 "redirect_uri": "https://app.example/callback"},
                separators=(",", ":")).encode()),
    ("record v2: unicode owner with / and :, version 2^64-1, second master key",
     MASTER_DESCENDING, "tenant/zoë", "integration", "agent:zoë/Ωμέγα", "github", 2**64 - 1,
     "tökén-🔑".encode()),
]

RECORD_V2_DESCRIPTION = (
    "strongroom sealed record bodies (format v2 with the record associated-data domain, "
    "docs/FORMAT.md \"Record bodies\"), encoded by tests/independent_decoder.py (Python "
    "`cryptography`, written from docs/FORMAT.md without strongroom code); the Rust encoder "
    "must reproduce every blob and the Rust reader open it (src/crypto/envelope.rs, "
    "tests/envelope.rs). master_key_hex, dek_hex and nonce_hex are fixed test patterns, not "
    "random draws: the master keys are 20 21 ... 3f and ff fe ... e0; for the case at index "
    "i (from 0), DEK byte j is (0x30 + 16*i + j) mod 256 and nonce byte j is "
    "(0xd0 + 16*i + j) mod 256. Regenerate with "
    "`python3 tests/independent_decoder.py --write-record-vectors`."
)


def record_v2_text() -> str:
    vectors = []
    for i, (name, master, ns, kind, owner, key, version, plaintext) in enumerate(RECORD_V2_CASES):
        dek, nonce = pattern(0x30, i, 32), pattern(0xD0, i, 12)
        body = RecordBody(kind, owner, key, version, ns)
        blob = encode(master, body, dek, nonce, plaintext)
        vectors.append({
            "name": name, "format": 2, "master_key_hex": master.hex(),
            "master_key_id": LocalKey(master).id, "namespace": ns, "kind": kind,
            "owner": owner, "key": key, "version": version,
            "wrap_aad_hex": body.wrap_aad(2).hex(), "data_aad_hex": body.data_aad(2).hex(),
            "dek_hex": dek.hex(), "nonce_hex": nonce.hex(), "plaintext_hex": plaintext.hex(),
            "blob_hex": blob.hex(),
        })
    doc = {"description": RECORD_V2_DESCRIPTION, "vectors": vectors}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --- checks -----------------------------------------------------------------------------

def next_version(v: int) -> int:
    return v + 1 if v < 2**64 - 1 else 0


def tampered(blob: bytes) -> bytes:
    t = bytearray(blob)
    t[-1] ^= 1
    return bytes(t)


def check_credential_vector(v) -> list:
    """Decode, tamper, move and re-encode checks for one credential vector (either format);
    a list of (label, ok)."""
    version = v.get("format", 1)
    master = bytes.fromhex(v["master_key_hex"])
    blob = bytes.fromhex(v["blob_hex"])
    key = LocalKey(master)
    ns, b = v.get("namespace"), v.get("bound")

    def cred(**change):
        args = dict(credential_id=v["credential_id"], scope_kind=v["scope_kind"],
                    owner=v["owner"], version=v["version"], namespace=ns, bound=b)
        args.update(change)
        return Credential(**args)

    checks = [("key id", v["master_key_id"] in (key.id, key.id_v1)),
              ("the key id's form matches the vector's wrap",
               generation_of(v["master_key_id"]) == (2 if v["master_key_id"] == key.id else 1))]
    if "wrap_aad_hex" in v:
        checks.append(("associated data as documented",
                       cred().wrap_aad(version).hex() == v["wrap_aad_hex"]
                       and cred().data_aad(version).hex() == v["data_aad_hex"]))
    try:
        checks.append(("decodes", decode(blob, master, cred()) == bytes.fromhex(v["plaintext_hex"])))
    except Exception as e:  # noqa: BLE001
        checks.append((f"decodes ({e})", False))
    checks.append(("tampered tag refused", refused(tampered(blob), master, cred())))
    checks.append(("other version refused",
                   refused(blob, master, cred(version=next_version(v["version"])))))
    if version == 2:
        checks.append(("other namespace refused", refused(blob, master, cred(namespace=ns + "x"))))
        if b is not None:
            changes = {
                "agent_accessible flipped": dict(b, agent_accessible=not b["agent_accessible"]),
                "provider changed": dict(b, provider=b["provider"] + "x"),
                "handler type changed": dict(b, handler_type="other_type"),
                "expires_at moved": dict(b, expires_at=(b["expires_at"] or 0) + 1),
                "state changed": dict(b, state="valid" if b["state"] != "valid" else "invalid"),
                "name changed": dict(b, name=b["name"] + "x"),
                "metadata base_url changed": dict(b, metadata=dict(b["metadata"], base_url="https://evil.example")),
            }
            for label, changed in changes.items():
                checks.append((f"{label}: refused", refused(blob, master, cred(bound=changed))))
            checks.append(("read with nothing bound: refused", refused(blob, master, cred(bound=None))))
        # The same blob, wrapped by the key's format-1 rules under its format-1 id: refused.
        mine = encode(master, cred(), bytes.fromhex(v["dek_hex"]), bytes.fromhex(v["nonce_hex"]),
                      bytes.fromhex(v["plaintext_hex"]), version=2, generation=1)
        checks.append(("a version-2 blob naming the format-1 key id is refused",
                       refused(mine, master, cred())))
    generation = 2 if v["master_key_id"] == key.id else 1
    try:
        mine = encode(master, cred(), bytes.fromhex(v["dek_hex"]), bytes.fromhex(v["nonce_hex"]),
                      bytes.fromhex(v["plaintext_hex"]), version=version, generation=generation)
        checks.append(("encoder reproduces the blob byte for byte", mine.hex() == v["blob_hex"]))
    except Exception as e:  # noqa: BLE001
        checks.append((f"encodes ({e})", False))
    return checks


def check_record_vector(v) -> list:
    """Decode, tamper, domain and re-encode checks for one record vector (either format)."""
    version = v.get("format", 1)
    master = bytes.fromhex(v["master_key_hex"])
    blob = bytes.fromhex(v["blob_hex"])
    ns = v.get("namespace")
    plaintext = bytes.fromhex(v["plaintext_hex"])

    def body(**change):
        args = dict(kind=v["kind"], owner=v["owner"], key=v["key"], version=v["version"],
                    namespace=ns)
        args.update(change)
        return RecordBody(**args)

    checks = [("associated data as documented",
               body().wrap_aad(version).hex() == v["wrap_aad_hex"]
               and body().data_aad(version).hex() == v["data_aad_hex"])]
    try:
        checks.append(("decodes", decode(blob, master, body()) == plaintext))
    except Exception as e:  # noqa: BLE001
        checks.append((f"decodes ({e})", False))
    checks.append(("tampered tag refused", refused(tampered(blob), master, body())))
    checks.append(("other version refused",
                   refused(blob, master, body(version=next_version(v["version"])))))
    checks.append(("other key refused", refused(blob, master, body(key=v["key"] + "x"))))
    if version == 2:
        checks.append(("other namespace refused", refused(blob, master, body(namespace=ns + "x"))))
    as_credential = Credential("", "", "", 0, ns)
    as_credential.parts = body().parts  # the same identity bytes, in the credential domain
    checks.append(("refused as a credential blob with the same identity bytes",
                   refused(blob, master, as_credential)))
    mine = encode(master, body(), bytes.fromhex(v["dek_hex"]), bytes.fromhex(v["nonce_hex"]),
                  plaintext, version=version)
    checks.append(("encoder reproduces the blob byte for byte", mine.hex() == v["blob_hex"]))
    return checks


def main(argv):
    if argv[1:] == ["--write-python-vectors"]:
        with open(PYTHON_V2, "w", encoding="utf-8") as f:
            f.write(python_v2_text())
        print(f"wrote {len(PYTHON_V2_CASES)} vectors to {os.path.relpath(PYTHON_V2)}")
        return 0
    if argv[1:] == ["--write-record-vectors"]:
        with open(RECORD_V2, "w", encoding="utf-8") as f:
            f.write(record_v2_text())
        print(f"wrote {len(RECORD_V2_CASES)} vectors to {os.path.relpath(RECORD_V2)}")
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

    files = [
        # (path, checker, minimum vectors, the text this script writes for it, if any)
        (RUST_V2, check_credential_vector, 4, None),
        (PYTHON_V2, check_credential_vector, 4, python_v2_text),
        (RECORD_V2, check_record_vector, 3, record_v2_text),
        (RUST_V1, check_credential_vector, 4, None),
        (PYTHON_V1, check_credential_vector, 4, python_v1_text),
        (RECORD_V1, check_record_vector, 3, record_v1_text),
    ]
    for path, checker, minimum, expected_text in files:
        source = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            doc = json.loads(text)
        except (OSError, ValueError) as e:
            record(f"{source}: readable ({e})", False)
            continue
        record(f"{source}: has vectors", len(doc.get("vectors", [])) >= minimum)
        for v in doc.get("vectors", []):
            for label, ok in checker(v):
                record(f"{source}: {v['name']}: {label}", ok)
        if expected_text is not None:
            record(f"{source}: the file is exactly what this script writes",
                   text == expected_text())

    print(f"decoder: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
