"""Azure stand-ins for tests/kms (served by tests/kms_servers.py), written from Microsoft's
public API references:

- Key Vault keys (https://learn.microsoft.com/rest/api/keyvault/keys/, api-version 7.4):
  `wrapKey` / `unwrapKey` (RSA-OAEP-256), `sign` (RS256, ES256 over a SHA-256 digest),
  `GET` key (its public JWK and `kid`), `rotate` (a new version), `PATCH` key version
  (`attributes.enabled`). Operations on a URL without a version use the key's current
  version, and every answer names the version in its `kid`. An unwrap by another version
  than the one that wrapped fails as RSA-OAEP decryption under another key does (400
  BadParameter); an operation on a disabled version is 403 "Operation ... is not allowed on
  a disabled key".
- Microsoft Entra ID token endpoint (https://learn.microsoft.com/entra/identity-platform/
  v2-oauth2-client-creds-grant-flow): `client_credentials` with a client secret, or with a
  `client_assertion` (jwt-bearer) that is either a certificate-signed JWT (RS256, `x5t` =
  SHA-1 thumbprint of the registered certificate, aud = the token URL, iss = sub = client
  id; .../certificate-credentials) or a workload identity federated token. The `scope` must
  be `https://<Key Vault or Managed HSM resource>/.default`; the token is good only for that
  resource.
- Managed identity: IMDS (https://learn.microsoft.com/entra/identity/managed-identities-
  azure-resources/how-to-use-vm-token: `GET /metadata/identity/oauth2/token?api-version=
  2018-02-01&resource=...`, header `Metadata: true`, `expires_in` as a string) and App
  Service (https://learn.microsoft.com/azure/app-service/overview-managed-identity:
  `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=...`, header
  `X-IDENTITY-HEADER`, `expires_on` in epoch seconds).

Key Vault checks the token's resource against the host the client addressed: a request
through the tests' redirecting transport carries that host in `X-Original-Host`; a direct
one to 127.0.0.1 counts as the public cloud's `https://vault.azure.net`.
"""

import base64
import datetime
import hashlib
import json
import os
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

TENANT = "tenant-1"
CLIENT = "client-1"
SECRET = "azure-client-secret-CANARY"
FEDERATED_TOKEN = "eyJmZWRlcmF0ZWQ.workload-identity.CANARY"
IDENTITY_HEADER = "identity-header-CANARY"
MI_CLIENT = "mi-client-1"

lock = threading.Lock()
tokens = {}  # token -> resource
stats = {"token_requests": []}


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


azure_rsa = _rsa()
azure_ec = ec.generate_private_key(ec.SECP256R1())
# name -> {"versions": [[version, private key, enabled]], "ops": [...]}; the last is current.
KEYS = {
    "master": {"versions": [["v1", azure_rsa, True]], "ops": ["wrapKey", "unwrapKey", "sign", "verify"]},
    "audit-ec": {"versions": [["e1", azure_ec, True]], "ops": ["sign", "verify"]},
    "wraponly": {"versions": [["w1", azure_rsa, True]], "ops": ["wrapKey", "unwrapKey"]},
}

# The app registration's certificate (for certificate credentials).
cert_key = _rsa()
_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-test")])
cert = (
    x509.CertificateBuilder()
    .subject_name(_name).issuer_name(_name).public_key(cert_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1))
    .not_valid_after(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30))
    .sign(cert_key, hashes.SHA256())
)
CERT_PEM = cert.public_bytes(serialization.Encoding.PEM).decode() + cert_key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
CERT_X5T = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode().rstrip("=")

RESOURCES = {  # the Key Vault / Managed HSM resources of the clouds
    "vault.azure.net", "vault.azure.cn", "vault.usgovcloudapi.net", "vault.microsoftazure.de",
    "managedhsm.azure.net", "managedhsm.azure.cn", "managedhsm.usgovcloudapi.net",
}


def b64d(s):
    s = s + "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_"))


def b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def info(base):
    return {"key_url": base + "/keys/master/v1", "versionless_key_url": base + "/keys/master",
            "forbidden_key_url": base + "/keys/forbidden/v1",
            "ec_signing_key_url": base + "/keys/audit-ec", "wrap_only_key_url": base + "/keys/wraponly/w1",
            "public_pem": b64url(azure_rsa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)),
            "authority": base + "/azure", "tenant": TENANT, "client_id": CLIENT, "client_secret": SECRET,
            "certificate_pem": CERT_PEM, "federated_token": FEDERATED_TOKEN,
            "imds": base, "identity_endpoint": base + "/appservice/token",
            "identity_header": IDENTITY_HEADER, "mi_client_id": MI_CLIENT}


def _issue(h, resource):
    token = "eyJ0" + os.urandom(16).hex()
    with lock:
        tokens[token] = resource
    return token


def _resource_of(scope):
    if not scope.startswith("https://") or not scope.endswith("/.default"):
        return None
    resource = scope[len("https://"):-len("/.default")]
    return resource if resource in RESOURCES else None


def _check_assertion(assertion, token_url):
    """A client assertion: the federated token, or a JWT signed by the certificate's key."""
    if assertion == FEDERATED_TOKEN:
        return None
    try:
        header_b64, claims_b64, sig_b64 = assertion.split(".")
        header = json.loads(b64d(header_b64))
        claims = json.loads(b64d(claims_b64))
    except Exception:
        return "AADSTS50027: the client assertion is not a JWT"
    # Entra ID finds the registered certificate by the assertion's thumbprint first.
    if header.get("alg") != "RS256" or header.get("x5t") != CERT_X5T:
        return "AADSTS700027: the certificate (x5t) is not registered for the application"
    try:
        cert_key.public_key().verify(b64d(sig_b64), (header_b64 + "." + claims_b64).encode(),
                                     padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return "AADSTS700027: the client assertion's signature does not verify"
    if claims.get("aud") != token_url:
        return "AADSTS700016: aud must be the token endpoint"
    if claims.get("iss") != CLIENT or claims.get("sub") != CLIENT:
        return "AADSTS700021: iss and sub must be the client id"
    now = time.time()
    if claims.get("exp", 0) < now or claims.get("nbf", now) > now + 60 or not claims.get("jti"):
        return "AADSTS700024: the assertion is expired, not yet valid or has no jti"
    return None


def _jwk(name, version, key, ops, base):
    out = {"kid": f"{base}/keys/{name}/{version}", "key_ops": ops}
    numbers = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        out.update(kty="RSA", n=b64url(numbers.n.to_bytes(256, "big")), e=b64url(numbers.e.to_bytes(3, "big")))
    else:
        out.update(kty="EC", crv="P-256", x=b64url(numbers.x.to_bytes(32, "big")), y=b64url(numbers.y.to_bytes(32, "big")))
    return out


def _sign(key, alg, digest):
    if isinstance(key, rsa.RSAPrivateKey):
        if alg != "RS256":
            return None
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    if alg != "ES256":
        return None
    r, s_ = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    return r.to_bytes(32, "big") + s_.to_bytes(32, "big")


def _verify(key, alg, digest, signature):
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


def _err(h, status, code, message):
    h.answer(status, {"error": {"code": code, "message": message}})
    return True


def _base(h):
    orig = h.headers.get("X-Original-Host")
    return f"https://{orig}" if orig else h.server.base


def _expected_resource(h):
    host = h.headers.get("X-Original-Host", "")
    for r in RESOURCES:
        if host.endswith("." + r):
            return r
    return "vault.azure.net"


def handle(h, method, url, raw):
    """Answers an Azure request; returns False when the path is not Azure's."""
    path = url.path
    query = urllib.parse.parse_qs(url.query)
    if path == "/test/azure/stats":
        with lock:
            h.answer(200, json.loads(json.dumps(stats)))
        return True
    # --- Entra ID token endpoint
    if path == f"/azure/{TENANT}/oauth2/v2.0/token" and method == "POST":
        form = urllib.parse.parse_qs(raw.decode())
        with lock:
            stats["token_requests"].append({k: v[0] for k, v in form.items()
                                            if k in ("grant_type", "scope", "client_assertion_type")})
        if form.get("client_id") != [CLIENT]:
            h.answer(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: unknown application"})
            return True
        if "client_secret" in form:
            if form["client_secret"] != [SECRET]:
                h.answer(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
                return True
        elif form.get("client_assertion_type") == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]:
            token_url = _base(h) + path if h.headers.get("X-Original-Host") else h.server.base + path
            why = _check_assertion(form.get("client_assertion", [""])[0], token_url)
            if why:
                h.answer(401, {"error": "invalid_client", "error_description": why})
                return True
        else:
            h.answer(401, {"error": "invalid_client", "error_description": "AADSTS7000216: client_assertion or client_secret is required"})
            return True
        resource = _resource_of(form.get("scope", [""])[0])
        if form.get("grant_type") != ["client_credentials"] or resource is None:
            h.answer(400, {"error": "invalid_scope", "error_description": "AADSTS70011: the scope is not valid"})
            return True
        h.answer(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": _issue(h, resource)})
        return True
    # --- managed identity: IMDS and App Service
    if path == "/metadata/identity/oauth2/token" and method == "GET":
        if h.headers.get("Metadata") != "true":
            h.answer(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
            return True
        resource = query.get("resource", [""])[0].removeprefix("https://").rstrip("/")
        if query.get("api-version") != ["2018-02-01"] or resource not in RESOURCES:
            h.answer(400, {"error": "invalid_resource", "error_description": "AADSTS500011: resource not found"})
            return True
        if query.get("client_id", [MI_CLIENT]) != [MI_CLIENT]:
            h.answer(400, {"error": "invalid_request", "error_description": "Identity not found"})
            return True
        with lock:
            stats["token_requests"].append({"grant_type": "imds", "scope": resource})
        h.answer(200, {"access_token": _issue(h, resource), "expires_in": "3599",
                       "expires_on": str(int(time.time()) + 3599), "resource": "https://" + resource,
                       "token_type": "Bearer"})
        return True
    if path == "/appservice/token" and method == "GET":
        if h.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            h.answer(401, {"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER is wrong"})
            return True
        resource = query.get("resource", [""])[0].removeprefix("https://").rstrip("/")
        if query.get("api-version") != ["2019-08-01"] or resource not in RESOURCES:
            h.answer(400, {"statusCode": 400, "message": "bad resource or api-version"})
            return True
        with lock:
            stats["token_requests"].append({"grant_type": "appservice", "scope": resource})
        h.answer(200, {"access_token": _issue(h, resource), "expires_on": str(int(time.time()) + 3599),
                       "resource": "https://" + resource, "token_type": "Bearer", "client_id": MI_CLIENT})
        return True
    if not path.startswith("/keys/"):
        return False
    # --- Key Vault
    parts = path.strip("/").split("/")
    if query.get("api-version") != ["7.4"]:
        return _err(h, 400, "BadParameter", "api-version is required")
    auth = h.headers.get("Authorization", "")
    with lock:
        resource = tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
    if resource is None:
        return _err(h, 401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
    if resource != _expected_resource(h):
        return _err(h, 401, "Unauthorized", "AKV10022: Invalid audience.")
    if parts[1] == "forbidden":
        return _err(h, 403, "Forbidden", "The user, group or application does not have keys wrapKey permission on key vault")
    key = KEYS.get(parts[1])
    if key is None:
        return _err(h, 404, "KeyNotFound", "A key with (name/id) was not found")
    base = _base(h)
    # POST keys/{name}/rotate: a new current version.
    if method == "POST" and len(parts) == 3 and parts[2] == "rotate":
        version = os.urandom(16).hex()
        new = _rsa() if isinstance(key["versions"][-1][1], rsa.RSAPrivateKey) else ec.generate_private_key(ec.SECP256R1())
        with lock:
            key["versions"].append([version, new, True])
        h.answer(200, {"key": _jwk(parts[1], version, new, key["ops"], base), "attributes": {"enabled": True}})
        return True
    # The version: named, or the current one.
    by_version = {v[0]: v for v in key["versions"]}
    is_op = method == "POST"
    named = parts[2] if len(parts) > (3 if is_op else 2) else None
    if len(parts) > (4 if is_op else 3):
        return _err(h, 404, "KeyNotFound", "A key with (name/id) was not found")
    entry = by_version.get(named) if named else key["versions"][-1]
    if entry is None:
        return _err(h, 404, "KeyNotFound", f"A key with (name/id) {parts[1]}/{named} was not found")
    version, private, enabled = entry
    if method == "PATCH":
        req = json.loads(raw)
        entry[2] = bool(req.get("attributes", {}).get("enabled", enabled))
        h.answer(200, {"key": _jwk(parts[1], version, private, key["ops"], base), "attributes": {"enabled": entry[2]}})
        return True
    if method == "GET":
        h.answer(200, {"key": _jwk(parts[1], version, private, key["ops"], base), "attributes": {"enabled": enabled}})
        return True
    op = parts[-1]
    allowed = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey", "sign": "sign", "verify": "verify"}
    if op not in allowed:
        h.answer(404, {"error": "no such endpoint"})
        return True
    if allowed[op] not in key["ops"]:
        return _err(h, 403, "Forbidden", f"Operation {allowed[op]} is not permitted on this key.")
    if not enabled:
        return _err(h, 403, "Forbidden", f"Operation {allowed[op]} is not allowed on a disabled key.")
    req = json.loads(raw)
    kid = f"{base}/keys/{parts[1]}/{version}"
    if op in ("sign", "verify"):
        digest = b64d(req["digest"] if op == "verify" else req["value"])
        if len(digest) != 32:
            return _err(h, 400, "BadParameter", "The digest length is not valid for the algorithm.")
        if op == "sign":
            signature = _sign(private, req.get("alg"), digest)
            if signature is None:
                return _err(h, 400, "BadParameter", "Invalid algorithm for the key type.")
            h.answer(200, {"kid": kid, "value": b64url(signature)})
            return True
        h.answer(200, {"value": _verify(private, req.get("alg"), digest, b64d(req["value"]))})
        return True
    if req.get("alg") != "RSA-OAEP-256":
        return _err(h, 400, "BadParameter", "alg")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    value = b64d(req["value"])
    if op == "wrapkey":
        h.answer(200, {"kid": kid, "value": b64url(private.public_key().encrypt(value, oaep))})
        return True
    try:
        pt = private.decrypt(value, oaep)
    except Exception:
        return _err(h, 400, "BadParameter", "The parameter is incorrect.")
    h.answer(200, {"kid": kid, "value": b64url(pt)})
    return True
