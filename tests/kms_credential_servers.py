#!/usr/bin/env python3
"""Local stand-ins for the credential endpoints cloud workloads get their keys from, for
tests/kms (aws_chain.rs, gcp_credentials.rs). Everything listens on 127.0.0.1 only; one JSON
line with the endpoints is printed, then the servers run until stdin closes.

Each endpoint is written from its public reference:

- EC2 instance metadata, IMDSv2 (Amazon EC2 User Guide, "Use the Instance Metadata Service
  to access instance metadata" and "Retrieve security credentials from instance metadata"):
  `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600) gives a
  session token; `GET /latest/meta-data/iam/security-credentials/` (the role's name) and
  `.../<role>` (JSON: Code, AccessKeyId, SecretAccessKey, Token, Expiration) need it in
  `X-aws-ec2-metadata-token` (401 without); a request with `X-Forwarded-For` is refused.
- The ECS / EKS container credentials endpoint (AWS SDKs and Tools Reference Guide,
  "Container credential provider"; ECS "Task IAM role"; EKS Pod Identity): `GET` of the
  relative or full URI, with `Authorization` = the authorization token where one is set
  (here under `/pod/`), answering AccessKeyId, SecretAccessKey, Token, Expiration.
- AWS STS `AssumeRoleWithWebIdentity` (STS API Reference): moto's STS, patched to check the
  `WebIdentityToken` (moto does not) and to take the call unsigned, as STS does ("Calls to
  AssumeRoleWithWebIdentity do not need to be signed").
- AWS KMS key states (KMS API Reference, Encrypt and Decrypt "Errors"): moto's KMS,
  patched where moto 5 does not model them: a disabled key answers `DisabledException`, a
  key pending deletion `KMSInvalidStateException`, and a `Decrypt` whose `KeyId` names
  another key than the ciphertext's `IncorrectKeyException` (moto says AccessDenied).
- Google metadata server (Compute Engine, "About VM metadata", "Query VM metadata" and
  "Authenticate workloads using service accounts"):
  `GET /computeMetadata/v1/instance/service-accounts/default/token` needs
  `Metadata-Flavor: Google`, refuses `X-Forwarded-For`, and answers with the same header.
- Google STS (Security Token Service API, `v1/token`, RFC 8693 token exchange) and IAM
  Credentials `projects.serviceAccounts.generateAccessToken` (service account
  impersonation: `accessToken`, `expireTime`).
- Google OAuth 2.0 token endpoint, refresh-token grant (RFC 6749 section 6), for
  `authorized_user` credentials.
- Google Cloud KMS itself: tests/kms_servers.py's handler, run in this process so that the
  tokens issued here are accepted there.

Control endpoints for the tests: `GET /_stats` (how many times each endpoint handed out
credentials), `POST /_config` (token lifetimes), `POST /aws-admin/<Op>` (DisableKey,
EnableKey, UpdateAlias, ScheduleKeyDeletion on moto's KMS, and a format-1 Encrypt: the
encryption context `{"strongroom-aad": ...}` strongroom wrote before).
"""

import base64
import json
import os
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kms_servers  # noqa: E402  (the Google Cloud KMS stand-in, sharing its tokens)

ACCOUNT = "123456789012"
REGION = "eu-west-1"
ROLE = "strongroom-kms"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
WEB_IDENTITY_TOKEN = "eyJ-web-identity-CANARY"
CONTAINER_TOKEN = "container-authorization-CANARY"
OIDC_TOKEN = "eyJ-oidc-subject-CANARY"
WIF_AUDIENCE = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/oidc"
SA_EMAIL = "strongroom@p.iam.gserviceaccount.com"
GCP_CLIENT_ID = "client-1.apps.googleusercontent.com"
GCP_CLIENT_SECRET = "gcp-client-secret-CANARY"
GCP_REFRESH_TOKEN = "1//refresh-CANARY"

counts = defaultdict(int)
config = {"aws_expires_in": 3600, "gcp_expires_in": 3599}
imds_sessions = set()
federated_tokens = set()
lock = threading.Lock()


def count(name):
    with lock:
        counts[name] += 1


def iso(at):
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_gcp_token():
    token = "ya29." + os.urandom(16).hex()
    with kms_servers.lock:
        kms_servers.issued_tokens.add(token)
    return token


def kms_backend():
    from moto.kms.models import kms_backends
    return kms_backends[ACCOUNT][REGION]


def aws_session():
    """Temporary credentials of the role (moto's STS), with the lifetime the test set."""
    from moto.sts.models import sts_backends
    role = sts_backends[ACCOUNT]["aws"].assume_role(
        region_name=REGION, role_session_name="standin", role_arn=ROLE_ARN,
        policy=None, duration=3600, external_id=None)
    expires = datetime.now(timezone.utc) + timedelta(seconds=config["aws_expires_in"])
    return {"AccessKeyId": role.access_key_id, "SecretAccessKey": role.secret_access_key,
            "Token": role.session_token, "Expiration": iso(expires)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def do_PUT(self):
        self.body()
        if self.path == "/latest/api/token":
            if self.headers.get("X-Forwarded-For"):
                return self.send(403, "", "text/plain")
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.send(400, "", "text/plain")
            token = "AQAEA" + os.urandom(16).hex()
            with lock:
                imds_sessions.add(token)
            return self.send(200, token, "text/plain")
        return self.send(404, {"message": "no such endpoint"})

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        if path == "/_stats":
            with lock:
                return self.send(200, dict(counts))
        if path.startswith("/latest/meta-data/"):
            with lock:
                ok = self.headers.get("X-aws-ec2-metadata-token") in imds_sessions
            if not ok:
                return self.send(401, "", "text/plain")
            base = "/latest/meta-data/iam/security-credentials/"
            if path == base:
                return self.send(200, "strongroom-instance", "text/plain")
            if path == base + "strongroom-instance":
                count("imds")
                creds = aws_session()
                creds.update(Code="Success", Type="AWS-HMAC", LastUpdated=iso(datetime.now(timezone.utc)))
                return self.send(200, creds)
            return self.send(404, "", "text/plain")
        if path.startswith("/ecs/") or path.startswith("/pod/"):
            if path.startswith("/pod/") and self.headers.get("Authorization") != CONTAINER_TOKEN:
                return self.send(401, {"message": "invalid authorization token"})
            count("container")
            return self.send(200, dict(aws_session(), RoleArn=ROLE_ARN))
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if self.headers.get("X-Forwarded-For"):
                return self.send(403, "Forbidden", "text/plain")
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.send(403, "Missing Metadata-Flavor:Google header.", "text/plain")
            count("gcp_metadata")
            return self.send(200, {"access_token": issue_gcp_token(), "expires_in": config["gcp_expires_in"],
                                   "token_type": "Bearer"}, headers=[("Metadata-Flavor", "Google")])
        if path == "/not-metadata/computeMetadata/v1/instance/service-accounts/default/token":
            return self.send(200, {"access_token": issue_gcp_token(), "expires_in": 3599})
        if path == "/oidc/token":
            # A URL-sourced subject token (as an identity provider's local endpoint serves it).
            if self.headers.get("Metadata") != "True":
                return self.send(400, {"error": "Required metadata header not specified"})
            return self.send(200, {"access_token": OIDC_TOKEN, "token_type": "Bearer"})
        return self.send(404, {"message": "no such endpoint"})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        raw = self.body()
        if path == "/_config":
            config.update(json.loads(raw))
            return self.send(200, config)
        if path.startswith("/aws-admin/"):
            return self.aws_admin(path[len("/aws-admin/"):], json.loads(raw))
        if path == "/sts/v1/token":
            form = urllib.parse.parse_qs(raw.decode())
            one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
            if one("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
                return self.send(400, {"error": "invalid_request", "error_description": "Invalid grant_type"})
            if one("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token":
                return self.send(400, {"error": "invalid_request", "error_description": "Invalid requested_token_type"})
            if one("audience") != WIF_AUDIENCE:
                return self.send(400, {"error": "invalid_target", "error_description": "The target service indicated by the \"audience\" parameters is invalid."})
            if one("subject_token_type") not in ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"):
                return self.send(400, {"error": "invalid_request", "error_description": "Invalid subject_token_type"})
            if one("subject_token") != OIDC_TOKEN:
                return self.send(400, {"error": "invalid_grant", "error_description": "The given subject token is invalid."})
            if not one("scope"):
                return self.send(400, {"error": "invalid_scope", "error_description": "scope is required"})
            count("gcp_sts")
            token = issue_gcp_token()
            with lock:
                federated_tokens.add(token)
            return self.send(200, {"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                   "token_type": "Bearer", "expires_in": config["gcp_expires_in"]})
        if path == f"/iamcredentials/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken":
            auth = self.headers.get("Authorization", "")
            with lock:
                ok = auth.startswith("Bearer ") and auth[7:] in federated_tokens
            if not ok:
                return self.send(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
            req = json.loads(raw)
            if not req.get("scope"):
                return self.send(400, {"error": {"code": 400, "message": "Scope required.", "status": "INVALID_ARGUMENT"}})
            count("gcp_impersonate")
            expires = datetime.now(timezone.utc) + timedelta(seconds=config["gcp_expires_in"])
            return self.send(200, {"accessToken": issue_gcp_token(), "expireTime": iso(expires)})
        if path == "/oauth2/token":
            form = urllib.parse.parse_qs(raw.decode())
            one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
            if one("grant_type") != "refresh_token":
                return self.send(400, {"error": "unsupported_grant_type"})
            if one("client_id") != GCP_CLIENT_ID or one("client_secret") != GCP_CLIENT_SECRET:
                return self.send(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."})
            if one("refresh_token") != GCP_REFRESH_TOKEN:
                return self.send(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            count("gcp_refresh")
            return self.send(200, {"access_token": issue_gcp_token(), "expires_in": config["gcp_expires_in"],
                                   "token_type": "Bearer", "scope": "https://www.googleapis.com/auth/cloudkms"})
        return self.send(404, {"message": "no such endpoint"})

    def aws_admin(self, op, req):
        kms = kms_backend()
        if op == "DisableKey":
            kms.disable_key(kms.any_id_to_key_id(req["KeyId"]))
        elif op == "EnableKey":
            kms.enable_key(kms.any_id_to_key_id(req["KeyId"]))
        elif op == "UpdateAlias":
            kms.update_alias(req["TargetKeyId"], req["AliasName"])
        elif op == "ScheduleKeyDeletion":
            kms.schedule_key_deletion(kms.any_id_to_key_id(req["KeyId"]), 7)
        elif op == "EncryptFormat1":
            # What strongroom sent before: the record's associated data itself in the context.
            blob, _ = kms.encrypt(req["KeyId"], base64.b64decode(req["Plaintext"]),
                                  {"strongroom-aad": req["Aad"]})
            return self.send(200, {"CiphertextBlob": base64.b64encode(blob).decode()})
        else:
            return self.send(400, {"message": "unknown operation"})
        return self.send(200, {})


def patch_moto():
    """Adds to moto what the KMS and STS API references document and moto 5 leaves out."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import JsonRESTError
    from moto.kms import models as kms_models
    from moto.sts.exceptions import STSClientError
    from moto.sts.responses import TokenResponse

    class KmsError(JsonRESTError):
        code = 400

    def check_state(backend, key_id):
        key = backend.keys[key_id]
        if key.key_state == "Disabled":
            raise KmsError("DisabledException", f"{key.arn} is disabled.")
        if key.key_state != "Enabled":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

    encrypt, decrypt = kms_models.KmsBackend.encrypt, kms_models.KmsBackend.decrypt

    def patched_encrypt(self, key_id, plaintext, encryption_context):
        check_state(self, self.any_id_to_key_id(key_id))
        return encrypt(self, key_id=key_id, plaintext=plaintext, encryption_context=encryption_context)

    def patched_decrypt(self, ciphertext_blob, encryption_context, key_id=None):
        # moto's ciphertext blobs begin with the 36-character id of their key.
        actual = ciphertext_blob[:36].decode("ascii", "replace")
        if actual in self.keys:
            if key_id is not None and self.any_id_to_key_id(key_id) != actual:
                raise KmsError("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
            check_state(self, actual)
        return decrypt(self, ciphertext_blob=ciphertext_blob, encryption_context=encryption_context, key_id=key_id)

    kms_models.KmsBackend.encrypt = patched_encrypt
    kms_models.KmsBackend.decrypt = patched_decrypt

    authorize = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def patched_authorize(self, resource="*"):
        if self._get_action() == "AssumeRoleWithWebIdentity":
            return None
        return authorize(self, resource)

    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = patched_authorize

    assume = TokenResponse.assume_role_with_web_identity

    def patched_assume(self):
        if self._get_param("WebIdentityToken") != WEB_IDENTITY_TOKEN:
            raise STSClientError("InvalidIdentityToken", "Couldn't verify the web identity token.")
        if self._get_param("RoleArn") != ROLE_ARN or not self._get_param("RoleSessionName"):
            raise STSClientError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        count("sts_web_identity")
        return assume(self)

    TokenResponse.assume_role_with_web_identity = patched_assume


def start_moto():
    # Eight setup calls go unauthenticated; every call after them is signed and checked.
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "8"
    from moto.server import ThreadedMotoServer
    import boto3

    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = dict(endpoint_url=endpoint, region_name=REGION,
                 aws_access_key_id="AKIASETUP0000000000", aws_secret_access_key="setup")
    kms = boto3.client("kms", **setup)
    first = kms.create_key(Description="strongroom first")["KeyMetadata"]["KeyId"]
    second = kms.create_key(Description="strongroom second")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/strongroom", TargetKeyId=first)
    iam = boto3.client("iam", **setup)
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]})
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "oidc"},
                                                "Action": "sts:AssumeRoleWithWebIdentity"}]}))
    iam.put_role_policy(RoleName=ROLE, PolicyName="kms", PolicyDocument=policy)
    iam.create_user(UserName="strongroom")
    user = iam.create_access_key(UserName="strongroom")["AccessKey"]
    iam.put_user_policy(UserName="strongroom", PolicyName="kms", PolicyDocument=policy)
    return server, {"endpoint": endpoint, "region": REGION, "key": first, "second_key": second,
                    "alias": "alias/strongroom", "role_arn": ROLE_ARN,
                    "web_identity_token": WEB_IDENTITY_TOKEN, "container_token": CONTAINER_TOKEN,
                    "access_key_id": user["AccessKeyId"], "secret_access_key": user["SecretAccessKey"]}


def main():
    gcp = ThreadingHTTPServer(("127.0.0.1", 0), kms_servers.Handler)
    gcp.base = f"http://127.0.0.1:{gcp.server_address[1]}"
    threading.Thread(target=gcp.serve_forever, daemon=True).start()
    creds = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{creds.server_address[1]}"
    threading.Thread(target=creds.serve_forever, daemon=True).start()
    info = {
        "base": base,
        "metadata_host": f"127.0.0.1:{creds.server_address[1]}",
        "gcp": {"endpoint": gcp.base + "/gcp", "key": kms_servers.GCP_KEY, "audience": WIF_AUDIENCE,
                "sts": base + "/sts/v1/token", "subject_url": base + "/oidc/token",
                "subject_token": OIDC_TOKEN, "service_account": SA_EMAIL,
                "impersonation_url": f"{base}/iamcredentials/v1/projects/-/serviceAccounts/{SA_EMAIL}:generateAccessToken",
                "token_uri": base + "/oauth2/token", "client_id": GCP_CLIENT_ID,
                "client_secret": GCP_CLIENT_SECRET, "refresh_token": GCP_REFRESH_TOKEN},
    }
    moto = None
    try:
        moto, info["aws"] = start_moto()
    except ImportError as e:
        info["aws_error"] = f"moto is not installed ({e}); pip install 'moto[server]'"
    print(json.dumps(info), flush=True)
    sys.stdin.read()
    creds.shutdown()
    gcp.shutdown()
    if moto:
        moto.stop()


if __name__ == "__main__":
    main()
