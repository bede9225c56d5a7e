#!/usr/bin/env python3
"""Local stand-ins for the cloud key services, for tests/kms.rs. Everything listens on
127.0.0.1 only.

- AWS KMS: moto's server (`pip install 'moto[server]'`) with IAM checks on (it verifies the
  SigV4 signatures), a key, a user allowed to use it and a user with no policy.
  The HMAC key for audit checkpoints is an `HMAC_256` key (GenerateMac / VerifyMac).
- Google Cloud KMS, Azure Key Vault and HashiCorp Vault transit: one small HTTP server that
  speaks the documented endpoints used by strongroom (cryptoKeys.encrypt/decrypt with
  additionalAuthenticatedData over key versions that can be created, made primary, disabled
  and scheduled for destruction — decrypt under a version that is not ENABLED answers
  FAILED_PRECONDITION —, cryptoKeyVersions.macSign/macVerify and the JWT-bearer token
  grant; wrapkey/unwrapkey with RSA-OAEP-256, sign/verify with RS256 and ES256 over a
  SHA-256 digest, GET of a key's public part and the client-credentials token grant; transit
  encrypt/decrypt with a derived key and a context, hmac and verify with an HMAC). It checks
  tokens, signatures, key permissions and associated data, and answers access denied and
  wrong-context requests the way the services document.

Prints one JSON line with the endpoints and credentials, then serves until stdin closes.

`kms_servers.py --oaep-wrap PUBLIC_PEM_B64 VALUE_B64` instead prints the RSA-OAEP-256
encryption of VALUE under the public key, base64url: what anyone holding only an Azure
key's public part can compute (the forged-record test uses it).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

GCP_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
GCP_DENIED_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/denied"
GCP_MAC_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/audit-mac/cryptoKeyVersions/1"
AZURE_TENANT = "tenant-1"
AZURE_CLIENT = "client-1"
AZURE_SECRET = "azure-client-secret-CANARY"
VAULT_TOKEN = "vault-token-CANARY"

# Google Cloud KMS key versions of GCP_KEY (cryptoKeyVersions, reference:
# https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys.cryptoKeyVersions):
# number -> {"key", "state"}; encrypt uses the primary version, a ciphertext names its version
# (first byte here), and decrypt with a version that is not ENABLED fails FAILED_PRECONDITION.
gcp_versions = {1: {"key": AESGCM.generate_key(bit_length=256), "state": "ENABLED"}}
gcp_primary = [1]
gcp_mac = os.urandom(32)
vault_master = os.urandom(32)
vault_hmac = {"strongroom": os.urandom(32), "audit": os.urandom(32)}
azure_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
azure_ec = ec.generate_private_key(ec.SECP256R1())
# Azure keys: name -> (latest version, private key, key_ops). `wraponly` may not sign.
AZURE_KEYS = {
    "master": ("v1", azure_rsa, ["wrapKey", "unwrapKey", "sign", "verify"]),
    "audit-ec": ("e1", azure_ec, ["sign", "verify"]),
    "wraponly": ("w1", azure_rsa, ["wrapKey", "unwrapKey"]),
}
sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
issued_tokens = set()
lock = threading.Lock()


def b64d(s):
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_"))


def b64e(b):
    return base64.b64encode(b).decode()


def b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def jwk(name, version, base):
    _, key, ops = AZURE_KEYS[name]
    out = {"kid": f"{base}/keys/{name}/{version}", "key_ops": ops}
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        out.update(kty="RSA", n=b64url(numbers.n.to_bytes(256, "big")), e=b64url(numbers.e.to_bytes(3, "big")))
    else:
        numbers = key.public_key().public_numbers()
        out.update(kty="EC", crv="P-256", x=b64url(numbers.x.to_bytes(32, "big")), y=b64url(numbers.y.to_bytes(32, "big")))
    return out


def azure_sign(key, alg, digest):
    if isinstance(key, rsa.RSAPrivateKey):
        if alg != "RS256":
            return None
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    if alg != "ES256":
        return None
    r, s_ = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    return r.to_bytes(32, "big") + s_.to_bytes(32, "big")


def azure_verify(key, alg, digest, signature):
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            if alg != "RS256":
                return False
            key.public_key().verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:
            if alg != "ES256" or len(signature) != 64:
                return False
            der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.public_key().verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return True
    except Exception:
        return False


def verify_jwt(assertion, token_uri):
    header_b64, claims_b64, sig_b64 = assertion.split(".")
    header = json.loads(b64d(header_b64))
    claims = json.loads(b64d(claims_b64))
    if header.get("alg") != "RS256":
        return "alg must be RS256"
    sa_key.public_key().verify(
        b64d(sig_b64),
        (header_b64 + "." + claims_b64).encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    if claims.get("aud") != token_uri:
        return "aud must be the token URI"
    if "cloudkms" not in claims.get("scope", ""):
        return "scope must include cloudkms"
    if claims.get("exp", 0) < time.time():
        return "assertion expired"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
    # and delayed ACKs add 40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def bearer_ok(self):
        auth = self.headers.get("Authorization", "")
        with lock:
            return auth.startswith("Bearer ") and auth[7:] in issued_tokens

    def gcp_not_enabled(self, name, number, version):
        # What Cloud KMS answers for a key version that is not enabled.
        return self.answer(400, {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": f"{name}/cryptoKeyVersions/{number} is not enabled, current state is: {version['state']}."}})

    def gcp_versions_admin(self, method, path, raw):
        """cryptoKeyVersions.create (POST .../cryptoKeyVersions), .patch of `state`
        (PATCH .../cryptoKeyVersions/N?updateMask=state), .destroy (POST ...:destroy: the
        version becomes DESTROY_SCHEDULED), .restore, and cryptoKeys.updatePrimaryVersion."""
        req = json.loads(raw) if raw else {}
        with lock:
            if method == "POST" and path == GCP_KEY + "/cryptoKeyVersions":
                number = max(gcp_versions) + 1
                gcp_versions[number] = {"key": AESGCM.generate_key(bit_length=256), "state": "ENABLED"}
                return self.answer(200, {"name": f"{GCP_KEY}/cryptoKeyVersions/{number}", "state": "ENABLED"})
            if method == "POST" and path == GCP_KEY + ":updatePrimaryVersion":
                number = int(req["cryptoKeyVersionId"])
                if gcp_versions.get(number, {}).get("state") != "ENABLED":
                    return self.answer(400, {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "The primary version must be enabled."}})
                gcp_primary[0] = number
                return self.answer(200, {"name": GCP_KEY, "primary": {"name": f"{GCP_KEY}/cryptoKeyVersions/{number}", "state": "ENABLED"}})
            rest = path[len(GCP_KEY + "/cryptoKeyVersions/"):]
            number_text, _, verb = rest.partition(":")
            number = int(number_text)
            if number not in gcp_versions:
                return self.answer(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "CryptoKeyVersion not found."}})
            version = gcp_versions[number]
            if method == "PATCH" and verb == "" and req.get("state") in ("ENABLED", "DISABLED"):
                if version["state"] not in ("ENABLED", "DISABLED"):
                    return self.answer(400, {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": f"The request cannot be fulfilled: the version is {version['state']}."}})
                version["state"] = req["state"]
            elif method == "POST" and verb == "destroy":
                version["state"] = "DESTROY_SCHEDULED"
            elif method == "POST" and verb == "restore" and version["state"] == "DESTROY_SCHEDULED":
                version["state"] = "DISABLED"
            else:
                return self.answer(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "unsupported request"}})
            return self.answer(200, {"name": f"{GCP_KEY}/cryptoKeyVersions/{number}", "state": version["state"]})

    def do_PATCH(self):
        path = urllib.parse.urlparse(self.path).path
        raw = self.body()
        if path.startswith("/gcp/v1/" + GCP_KEY + "/cryptoKeyVersions/"):
            if not self.bearer_ok():
                return self.answer(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
            try:
                return self.gcp_versions_admin("PATCH", path[len("/gcp/v1/"):], raw)
            except Exception as e:
                return self.answer(400, {"error": {"message": "bad request: " + type(e).__name__}})
        return self.answer(404, {"error": "no such endpoint"})

    def azure_gate(self, url, parts):
        """The checks every Key Vault call passes: api-version, token, permission, key."""
        if urllib.parse.parse_qs(url.query).get("api-version") != ["7.4"]:
            return self.answer(400, {"error": {"code": "BadParameter", "message": "api-version is required"}})
        if not self.bearer_ok():
            return self.answer(401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})
        if parts[1] == "forbidden":
            return self.answer(403, {"error": {"code": "Forbidden", "message": "The user, group or application does not have keys wrapKey permission on key vault"}})
        if parts[1] not in AZURE_KEYS:
            return self.answer(404, {"error": {"code": "KeyNotFound", "message": "A key with (name/id) was not found"}})
        return None

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        try:
            # --- Azure Key Vault: get key (the public part), with or without a version
            if url.path.startswith("/keys/"):
                parts = url.path.strip("/").split("/")
                refused = self.azure_gate(url, parts)
                if refused:
                    return refused
                latest = AZURE_KEYS[parts[1]][0]
                version = parts[2] if len(parts) > 2 else latest
                if version != latest or len(parts) > 3:
                    return self.answer(404, {"error": {"code": "KeyNotFound", "message": "A key with (name/id) was not found"}})
                return self.answer(200, {"key": jwk(parts[1], version, self.server.base), "attributes": {"enabled": True}})
            return self.answer(404, {"error": "no such endpoint"})
        except Exception as e:
            return self.answer(400, {"error": {"message": "bad request: " + type(e).__name__}})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        raw = self.body()
        try:
            # --- Google: token endpoint (RFC 7523 JWT bearer grant)
            if path == "/gcp/token":
                form = urllib.parse.parse_qs(raw.decode())
                if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                    return self.answer(400, {"error": "unsupported_grant_type"})
                try:
                    why = verify_jwt(form["assertion"][0], self.server.base + "/gcp/token")
                except Exception:
                    why = "bad signature"
                if why:
                    return self.answer(400, {"error": "invalid_grant", "error_description": why})
                token = "ya29." + os.urandom(16).hex()
                with lock:
                    issued_tokens.add(token)
                return self.answer(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
            # --- Google: key versions (cryptoKeyVersions.create and .destroy,
            # cryptoKeys.updatePrimaryVersion)
            if path.startswith("/gcp/v1/" + GCP_KEY + "/cryptoKeyVersions") or path == "/gcp/v1/" + GCP_KEY + ":updatePrimaryVersion":
                if not self.bearer_ok():
                    return self.answer(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
                return self.gcp_versions_admin("POST", path[len("/gcp/v1/"):], raw)
            # --- Google: cryptoKeys.encrypt / decrypt, cryptoKeyVersions.macSign / macVerify
            if path.startswith("/gcp/v1/"):
                name, _, verb = path[len("/gcp/v1/"):].rpartition(":")
                if not self.bearer_ok():
                    return self.answer(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
                if verb in ("macSign", "macVerify"):
                    if name != GCP_MAC_KEY:
                        if name.startswith(GCP_KEY):
                            return self.answer(400, {"error": {"code": 400, "message": "The request cannot be fulfilled: the CryptoKey purpose is not MAC.", "status": "FAILED_PRECONDITION"}})
                        return self.answer(404, {"error": {"code": 404, "message": "CryptoKeyVersion not found.", "status": "NOT_FOUND"}})
                    req = json.loads(raw)
                    tag = hmac.new(gcp_mac, base64.b64decode(req["data"]), hashlib.sha256).digest()
                    if verb == "macSign":
                        return self.answer(200, {"name": name, "mac": b64e(tag), "protectionLevel": "SOFTWARE"})
                    ok = hmac.compare_digest(tag, base64.b64decode(req["mac"]))
                    return self.answer(200, {"name": name, "success": ok, "protectionLevel": "SOFTWARE"})
                if name == GCP_DENIED_KEY:
                    return self.answer(403, {"error": {"code": 403, "message": "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource", "status": "PERMISSION_DENIED"}})
                if name != GCP_KEY:
                    return self.answer(404, {"error": {"code": 404, "message": "CryptoKey not found.", "status": "NOT_FOUND"}})
                req = json.loads(raw)
                aad = base64.b64decode(req.get("additionalAuthenticatedData", ""))
                if verb == "encrypt":
                    with lock:
                        number = gcp_primary[0]
                        version = gcp_versions[number]
                    if version["state"] != "ENABLED":
                        return self.gcp_not_enabled(name, number, version)
                    nonce = os.urandom(12)
                    ct = AESGCM(version["key"]).encrypt(nonce, base64.b64decode(req["plaintext"]), aad)
                    return self.answer(200, {"name": f"{name}/cryptoKeyVersions/{number}", "ciphertext": b64e(bytes([number]) + nonce + ct)})
                if verb == "decrypt":
                    blob = base64.b64decode(req["ciphertext"])
                    with lock:
                        version = gcp_versions.get(blob[0]) if blob else None
                    if version is None:
                        return self.answer(400, {"error": {"code": 400, "message": "Decryption failed: the ciphertext is invalid.", "status": "INVALID_ARGUMENT"}})
                    if version["state"] != "ENABLED":
                        return self.gcp_not_enabled(name, blob[0], version)
                    try:
                        pt = AESGCM(version["key"]).decrypt(blob[1:13], blob[13:], aad)
                    except Exception:
                        return self.answer(400, {"error": {"code": 400, "message": "Decryption failed: the ciphertext is invalid.", "status": "INVALID_ARGUMENT"}})
                    return self.answer(200, {"plaintext": b64e(pt)})
            # --- Azure: client-credentials token
            if path == "/azure/" + AZURE_TENANT + "/oauth2/v2.0/token":
                form = urllib.parse.parse_qs(raw.decode())
                if form.get("client_id") != [AZURE_CLIENT] or form.get("client_secret") != [AZURE_SECRET]:
                    return self.answer(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
                if form.get("grant_type") != ["client_credentials"] or form.get("scope") != ["https://vault.azure.net/.default"]:
                    return self.answer(400, {"error": "invalid_request"})
                token = "eyJ0" + os.urandom(16).hex()
                with lock:
                    issued_tokens.add(token)
                return self.answer(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})
            # --- Azure Key Vault: wrapkey / unwrapkey (RSA-OAEP-256), sign / verify (a digest)
            if path.startswith("/keys/"):
                parts = path.strip("/").split("/")
                refused = self.azure_gate(url, parts)
                if refused:
                    return refused
                latest, key, ops = AZURE_KEYS[parts[1]]
                op = parts[-1]
                if len(parts) != 4 or parts[2] != latest:
                    return self.answer(404, {"error": {"code": "KeyNotFound", "message": "A key with (name/id) was not found"}})
                allowed = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey", "sign": "sign", "verify": "verify"}
                if op not in allowed:
                    return self.answer(404, {"error": "no such endpoint"})
                if allowed[op] not in ops:
                    return self.answer(403, {"error": {"code": "Forbidden", "message": f"Operation {allowed[op]} is not permitted on this key."}})
                req = json.loads(raw)
                kid = f"{self.server.base}/keys/{parts[1]}/{latest}"
                if op in ("sign", "verify"):
                    digest = b64d(req["digest"] if op == "verify" else req["value"])
                    if len(digest) != 32:
                        return self.answer(400, {"error": {"code": "BadParameter", "message": "The digest length is not valid for the algorithm."}})
                    if op == "sign":
                        signature = azure_sign(key, req.get("alg"), digest)
                        if signature is None:
                            return self.answer(400, {"error": {"code": "BadParameter", "message": "Invalid algorithm for the key type."}})
                        return self.answer(200, {"kid": kid, "value": b64url(signature)})
                    return self.answer(200, {"value": azure_verify(key, req.get("alg"), digest, b64d(req["value"]))})
                if req.get("alg") != "RSA-OAEP-256":
                    return self.answer(400, {"error": {"code": "BadParameter", "message": "alg"}})
                oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
                value = b64d(req["value"])
                if op == "wrapkey":
                    return self.answer(200, {"kid": kid, "value": b64url(key.public_key().encrypt(value, oaep))})
                try:
                    pt = key.decrypt(value, oaep)
                except Exception:
                    return self.answer(400, {"error": {"code": "BadParameter", "message": "The parameter is incorrect."}})
                return self.answer(200, {"kid": kid, "value": b64url(pt)})
            # --- Vault transit (derived key: the context selects the key; HMACs need none)
            if path.startswith("/v1/transit/"):
                if self.headers.get("X-Vault-Token") != VAULT_TOKEN:
                    return self.answer(403, {"errors": ["permission denied"]})
                parts = path.strip("/").split("/")
                op, key = parts[2], parts[3]
                algorithm = parts[4] if len(parts) > 4 else "sha2-256"
                if key not in vault_hmac:
                    return self.answer(400, {"errors": ["encryption key not found"]})
                req = json.loads(raw)
                if op in ("hmac", "verify") and (op == "hmac" or "hmac" in req):
                    if algorithm != "sha2-256":
                        return self.answer(400, {"errors": ["unsupported algorithm " + algorithm]})
                    tag = hmac.new(vault_hmac[key], base64.b64decode(req["input"]), hashlib.sha256).digest()
                    if op == "hmac":
                        return self.answer(200, {"data": {"hmac": "vault:v1:" + b64e(tag)}})
                    given = req["hmac"]
                    if not given.startswith("vault:v"):
                        return self.answer(400, {"errors": ["invalid HMAC to verify: no prefix"]})
                    version, _, value = given[len("vault:v"):].partition(":")
                    ok = version == "1" and hmac.compare_digest(b64e(tag), value)
                    return self.answer(200, {"data": {"valid": ok}})
                if key != "strongroom":
                    return self.answer(400, {"errors": ["encryption key not found"]})
                if "context" not in req:
                    return self.answer(400, {"errors": ["missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key"]})
                ctx = base64.b64decode(req["context"])
                k = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=ctx).derive(vault_master)
                if op == "encrypt":
                    nonce = os.urandom(12)
                    ct = AESGCM(k).encrypt(nonce, base64.b64decode(req["plaintext"]), None)
                    return self.answer(200, {"data": {"ciphertext": "vault:v1:" + b64e(nonce + ct), "key_version": 1}})
                if op == "decrypt":
                    blob = base64.b64decode(req["ciphertext"].split(":", 2)[2])
                    try:
                        pt = AESGCM(k).decrypt(blob[:12], blob[12:], None)
                    except Exception:
                        return self.answer(400, {"errors": ["cipher: message authentication failed"]})
                    return self.answer(200, {"data": {"plaintext": b64e(pt)}})
            return self.answer(404, {"error": "no such endpoint"})
        except Exception as e:  # a malformed request is the client's fault
            return self.answer(400, {"error": {"message": "bad request: " + type(e).__name__}})


def start_moto():
    # moto checks SigV4 signatures and IAM policies once its first few (setup) actions are
    # done: the key and two users are made unauthenticated, then every call is checked.
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "7"
    from moto.server import ThreadedMotoServer
    import boto3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = dict(endpoint_url=endpoint, region_name="eu-west-1",
                 aws_access_key_id="AKIASETUP0000000000", aws_secret_access_key="setup")
    kms = boto3.client("kms", **setup)
    key = kms.create_key(Description="strongroom test")["KeyMetadata"]["KeyId"]
    mac_key = kms.create_key(Description="strongroom checkpoints", KeySpec="HMAC_256",
                             KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="strongroom")
    iam.create_user(UserName="nobody")
    allowed = iam.create_access_key(UserName="strongroom")["AccessKey"]
    denied = iam.create_access_key(UserName="nobody")["AccessKey"]
    iam.put_user_policy(UserName="strongroom", PolicyName="kms", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateMac", "kms:VerifyMac"], "Resource": "*"}],
    }))
    return server, {"endpoint": endpoint, "key": key, "mac_key": mac_key, "region": "eu-west-1",
                    "access_key_id": allowed["AccessKeyId"], "secret_access_key": allowed["SecretAccessKey"],
                    "denied_access_key_id": denied["AccessKeyId"], "denied_secret_access_key": denied["SecretAccessKey"]}


def main():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sa = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "client_email": "strongroom@p.iam.gserviceaccount.com",
        "token_uri": httpd.base + "/gcp/token",
    }
    info = {
        "base": httpd.base,
        "gcp": {"endpoint": httpd.base + "/gcp", "key": GCP_KEY, "denied_key": GCP_DENIED_KEY,
                "mac_key": GCP_MAC_KEY, "service_account": sa},
        "azure": {"key_url": httpd.base + "/keys/master/v1", "forbidden_key_url": httpd.base + "/keys/forbidden/v1",
                  "ec_signing_key_url": httpd.base + "/keys/audit-ec", "wrap_only_key_url": httpd.base + "/keys/wraponly/w1",
                  "public_pem": b64url(azure_rsa.public_key().public_bytes(
                      serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)),
                  "authority": httpd.base + "/azure", "tenant": AZURE_TENANT, "client_id": AZURE_CLIENT,
                  "client_secret": AZURE_SECRET},
        "vault": {"addr": httpd.base, "key": "strongroom", "hmac_key": "audit", "token": VAULT_TOKEN},
    }
    moto = None
    if "--no-aws" not in sys.argv:
        try:
            moto, info["aws"] = start_moto()
        except ImportError as e:
            info["aws_error"] = f"moto is not installed ({e}); pip install 'moto[server]'"
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    httpd.shutdown()
    if moto:
        moto.stop()


def oaep_wrap(public_pem_b64, value_b64):
    """RSA-OAEP-256 under a public key alone (no private key, no Key Vault call)."""
    public = serialization.load_pem_public_key(b64d(public_pem_b64))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    print(b64url(public.encrypt(b64d(value_b64), oaep)))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--oaep-wrap":
        oaep_wrap(sys.argv[2], sys.argv[3])
    else:
        main()
