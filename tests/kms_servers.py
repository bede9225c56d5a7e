#!/usr/bin/env python3
"""Local stand-ins for the cloud key services, for tests/kms. Everything listens on
127.0.0.1 only. The Azure stand-ins (Key Vault with key versions, Entra ID, managed
identity) are in tests/kms_azure_server.py and the Vault one (transit, AppRole,
Kubernetes, token renewal, namespaces) in tests/kms_vault_server.py; this server routes to
them.

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kms_azure_server  # noqa: E402  (the Azure stand-ins, beside this file)
import kms_vault_server  # noqa: E402  (the Vault stand-in, beside this file)

GCP_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
GCP_DENIED_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/denied"
GCP_MAC_KEY = "projects/p/locations/global/keyRings/r/cryptoKeys/audit-mac/cryptoKeyVersions/1"

# Google Cloud KMS key versions of GCP_KEY (cryptoKeyVersions, reference:
# https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys.cryptoKeyVersions):
# number -> {"key", "state"}; encrypt uses the primary version, a ciphertext names its version
# (first byte here), and decrypt with a version that is not ENABLED fails FAILED_PRECONDITION.
gcp_versions = {1: {"key": AESGCM.generate_key(bit_length=256), "state": "ENABLED"}}
gcp_primary = [1]
gcp_mac = os.urandom(32)
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

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode() if status != 204 else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
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
        url = urllib.parse.urlparse(self.path)
        raw = self.body()
        if url.path.startswith("/gcp/v1/" + GCP_KEY + "/cryptoKeyVersions/"):
            if not self.bearer_ok():
                return self.answer(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
            try:
                return self.gcp_versions_admin("PATCH", url.path[len("/gcp/v1/"):], raw)
            except Exception as e:
                return self.answer(400, {"error": {"message": "bad request: " + type(e).__name__}})
        if not kms_azure_server.handle(self, "PATCH", url, raw):
            self.answer(404, {"error": "no such endpoint"})

    def do_DELETE(self):
        url = urllib.parse.urlparse(self.path)
        if not kms_vault_server.handle(self, "DELETE", url.path, self.body()):
            self.answer(404, {"error": "no such endpoint"})

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        try:
            if kms_vault_server.handle(self, "GET", url.path, b""):
                return None
            if kms_azure_server.handle(self, "GET", url, b""):
                return None
            return self.answer(404, {"error": "no such endpoint"})
        except Exception as e:
            return self.answer(400, {"error": {"message": "bad request: " + type(e).__name__}})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        raw = self.body()
        try:
            if kms_vault_server.handle(self, "POST", path, raw):
                return None
            if kms_azure_server.handle(self, "POST", url, raw):
                return None
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
        "azure": kms_azure_server.info(httpd.base),
        "vault": kms_vault_server.info(httpd.base),
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
