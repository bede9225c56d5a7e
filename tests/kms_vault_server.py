"""HashiCorp Vault stand-in for tests/kms (served by tests/kms_servers.py), written from
Vault's public API reference:

- transit (https://developer.hashicorp.com/vault/api-docs/secret/transit): `encrypt`,
  `decrypt`, `hmac`, `verify`, `keys/:name` (read: `derived`, `latest_version`,
  `min_decryption_version`), `keys/:name/rotate`, `keys/:name/config`, `DELETE keys/:name`.
  A key created with `derived=true` derives its encryption key from the `context`; a key
  created without it IGNORES the context, as real Vault does. A ciphertext whose version is
  below `min_decryption_version` is refused with Vault's "too old" error; a deleted key is
  "encryption key not found" (HTTP 400).
- auth (https://developer.hashicorp.com/vault/api-docs/auth/approle,
  .../auth/kubernetes, .../auth/token): `auth/approle/login` (role_id, secret_id),
  `auth/kubernetes/login` (role, jwt), `auth/token/renew-self`; each answers
  `auth.client_token`, `auth.lease_duration`, `auth.renewable`. Tokens expire after their
  TTL (then 403 permission denied).
- namespaces (`X-Vault-Namespace`): a token is valid only in the namespace it was issued in.
- test-only: `GET /test/vault/stats` (logins, renewals, requests per path) and
  `POST /test/vault/fail` ({"path": ..., "status": ..., "times": n, "retry_after": s}) to
  make the next n requests to a path fail, as a throttled or failing Vault does.
"""

import base64
import hashlib
import hmac
import json
import os
import threading
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ROOT_TOKEN = "vault-token-CANARY"
ROLE_ID = "role-id-1"
SECRET_ID = "secret-id-CANARY"
K8S_JWT = "eyJrubernetes.service-account.CANARY"
NAMESPACE = "team-a"

lock = threading.Lock()
# token -> {"ns": namespace, "expires": epoch or None, "renewable": bool, "ttl": seconds}
tokens = {ROOT_TOKEN: {"ns": "", "expires": None, "renewable": False, "ttl": 0}}
stats = {"logins": 0, "renewals": 0, "paths": {}}
failures = {}  # path -> [status, times left, retry_after]
# Per-namespace transit keys: name -> {"derived", "versions": [secret...], "min": int}
keys = {}
# AppRole roles: token TTL and renewability of what a login issues (the approle role is
# chosen by its role_id: ROLE_ID -> renewable, "role-id-once" -> not renewable).
ROLE_TTL = {"ttl": 3}


def _new_key(derived):
    return {"derived": derived, "versions": [os.urandom(32)], "min": 1}


def reset():
    keys.clear()
    for ns in ("", NAMESPACE):
        keys[(ns, "strongroom")] = _new_key(True)
        keys[(ns, "plain")] = _new_key(False)
        keys[(ns, "audit")] = _new_key(False)


reset()


def info(base):
    return {"addr": base, "key": "strongroom", "plain_key": "plain", "hmac_key": "audit",
            "token": ROOT_TOKEN, "role_id": ROLE_ID, "secret_id": SECRET_ID,
            "k8s_jwt": K8S_JWT, "namespace": NAMESPACE}


def b64e(b):
    return base64.b64encode(b).decode()


def _issue(ns, renewable):
    token = "hvs." + os.urandom(12).hex()
    ttl = ROLE_TTL["ttl"]
    with lock:
        tokens[token] = {"ns": ns, "expires": time.time() + ttl, "renewable": renewable, "ttl": ttl}
        stats["logins"] += 1
    return {"auth": {"client_token": token, "lease_duration": ttl, "renewable": renewable,
                     "policies": ["strongroom"]}}


def _token_ok(h, ns):
    t = h.headers.get("X-Vault-Token", "")
    with lock:
        entry = tokens.get(t)
    if not entry or entry["ns"] != ns:
        return None
    if entry["expires"] is not None and entry["expires"] < time.time():
        return None
    return t


def handle(h, method, path, raw):
    """Answers a Vault request; returns False when the path is not Vault's."""
    if path.startswith("/test/vault/"):
        if path == "/test/vault/stats":
            with lock:
                return h.answer(200, json.loads(json.dumps(stats))) or True
        if path == "/test/vault/fail":
            req = json.loads(raw)
            with lock:
                failures[req["path"]] = [req["status"], req["times"], req.get("retry_after")]
            return h.answer(204, {}) or True
        if path == "/test/vault/ttl":
            ROLE_TTL["ttl"] = json.loads(raw)["ttl"]
            return h.answer(204, {}) or True
    if not path.startswith("/v1/"):
        return False
    ns = h.headers.get("X-Vault-Namespace", "").strip("/")
    with lock:
        stats["paths"][path] = stats["paths"].get(path, 0) + 1
        fail = failures.get(path)
        if fail and fail[1] > 0:
            fail[1] -= 1
            status, _, retry_after = fail
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            h.answer(status, {"errors": ["rate limit quota exceeded" if status == 429 else "internal error"]}, extra)
            return True
    req = json.loads(raw) if raw else {}
    # --- auth
    if path == "/v1/auth/approle/login":
        if req.get("role_id") not in (ROLE_ID, "role-id-once") or req.get("secret_id") != SECRET_ID:
            return h.answer(400, {"errors": ["invalid role or secret ID"]}) or True
        return h.answer(200, _issue(ns, req["role_id"] == ROLE_ID)) or True
    if path == "/v1/auth/kubernetes/login":
        if req.get("role") != "strongroom" or req.get("jwt") != K8S_JWT:
            return h.answer(403, {"errors": ["permission denied"]}) or True
        return h.answer(200, _issue(ns, True)) or True
    if path == "/v1/auth/token/renew-self":
        t = _token_ok(h, ns)
        if not t:
            return h.answer(403, {"errors": ["permission denied"]}) or True
        with lock:
            entry = tokens[t]
            if not entry["renewable"]:
                return h.answer(400, {"errors": ["lease is not renewable"]}) or True
            entry["expires"] = time.time() + entry["ttl"]
            stats["renewals"] += 1
        return h.answer(200, {"auth": {"client_token": t, "lease_duration": entry["ttl"],
                                       "renewable": True}}) or True
    if _token_ok(h, ns) is None:
        return h.answer(403, {"errors": ["permission denied"]}) or True
    parts = path.strip("/").split("/")
    if len(parts) < 4 or parts[1] != "transit":
        return h.answer(404, {"errors": []}) or True
    op, name = parts[2], parts[3]
    key = keys.get((ns, name))
    # --- key management
    if op == "keys":
        if method == "GET":
            if not key:
                return h.answer(404, {"errors": []}) or True
            return h.answer(200, {"data": {
                "name": name, "type": "aes256-gcm96", "derived": key["derived"],
                "latest_version": len(key["versions"]), "min_decryption_version": key["min"],
                "keys": {str(i + 1): 1700000000 for i in range(len(key["versions"]))},
                "deletion_allowed": True, "exportable": False}}) or True
        if method == "DELETE":
            keys.pop((ns, name), None)
            return h.answer(204, {}) or True
        if not key:
            return h.answer(400, {"errors": ["encryption key not found"]}) or True
        if len(parts) > 4 and parts[4] == "rotate":
            key["versions"].append(os.urandom(32))
            return h.answer(200, {"data": {"latest_version": len(key["versions"])}}) or True
        if len(parts) > 4 and parts[4] == "config":
            key["min"] = int(req["min_decryption_version"])
            return h.answer(200, {"data": {"min_decryption_version": key["min"]}}) or True
        return h.answer(404, {"errors": []}) or True
    if not key:
        return h.answer(400, {"errors": ["encryption key not found"]}) or True
    # --- hmac / verify (no context; the key's own HMAC secret, version 1)
    if op in ("hmac", "verify") and (op == "hmac" or "hmac" in req):
        algorithm = parts[4] if len(parts) > 4 else "sha2-256"
        if algorithm != "sha2-256":
            return h.answer(400, {"errors": ["unsupported algorithm " + algorithm]}) or True
        secret = hashlib.sha256(b"hmac" + key["versions"][0]).digest()
        tag = hmac.new(secret, base64.b64decode(req["input"]), hashlib.sha256).digest()
        if op == "hmac":
            return h.answer(200, {"data": {"hmac": "vault:v1:" + b64e(tag)}}) or True
        given = req["hmac"]
        if not given.startswith("vault:v"):
            return h.answer(400, {"errors": ["invalid HMAC to verify: no prefix"]}) or True
        version, _, value = given[len("vault:v"):].partition(":")
        ok = version == "1" and hmac.compare_digest(b64e(tag), value)
        return h.answer(200, {"data": {"valid": ok}}) or True

    def enc_key(version):
        secret = key["versions"][version - 1]
        if not key["derived"]:
            return secret  # the context, if any, is ignored
        if "context" not in req:
            return None
        ctx = base64.b64decode(req["context"])
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=ctx).derive(secret)

    missing_ctx = {"errors": ["missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key"]}
    if op == "encrypt":
        version = len(key["versions"])
        k = enc_key(version)
        if k is None:
            return h.answer(400, missing_ctx) or True
        nonce = os.urandom(12)
        ct = AESGCM(k).encrypt(nonce, base64.b64decode(req["plaintext"]), None)
        return h.answer(200, {"data": {"ciphertext": f"vault:v{version}:" + b64e(nonce + ct),
                                       "key_version": version}}) or True
    if op == "decrypt":
        prefix, v, body = req["ciphertext"].split(":", 2)
        if prefix != "vault" or not v.startswith("v"):
            return h.answer(400, {"errors": ["invalid ciphertext: no prefix"]}) or True
        version = int(v[1:])
        if version < key["min"]:
            return h.answer(400, {"errors": ["ciphertext or signature version is disallowed by policy (too old)"]}) or True
        if version > len(key["versions"]):
            return h.answer(400, {"errors": ["invalid ciphertext: version is too new"]}) or True
        k = enc_key(version)
        if k is None:
            return h.answer(400, missing_ctx) or True
        blob = base64.b64decode(body)
        try:
            pt = AESGCM(k).decrypt(blob[:12], blob[12:], None)
        except Exception:
            return h.answer(400, {"errors": ["cipher: message authentication failed"]}) or True
        return h.answer(200, {"data": {"plaintext": b64e(pt)}}) or True
    return h.answer(404, {"errors": []}) or True
