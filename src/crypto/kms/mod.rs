//! Cloud master keys (feature `kms`): AWS KMS, Google Cloud KMS, Azure Key Vault and
//! HashiCorp Vault transit. Each speaks its service's documented REST API through the host's
//! [`HttpTransport`] and binds the record's associated data to the wrapped key (AWS
//! encryption context, GCP additional authenticated data, Vault transit context; for Azure,
//! whose RSA key wrap takes no associated data, a local AES-256-GCM layer under a key that
//! Key Vault wraps, signed by Key Vault), so a wrapped key moved to another record does not
//! unwrap.
//!
//! Each can also authenticate audit checkpoints with its service's MAC or signature
//! ([`KeyWrapper::checkpoint_signer`]): AWS `GenerateMac` and Google `macSign` under an HMAC
//! key configured on the key, Vault transit `hmac`, Azure Key Vault `sign`.
//!
//! [`from_vars`] builds one from the `STRONGROOM_KMS` selection and the variables the
//! backend documents (see `docs/DEPLOYMENT.md`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::{DataKey, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

mod aws;
mod azure;
mod call;
mod gcp;
mod vault;

// Some are for the backends' own readings of their services' failures.
#[allow(unused_imports)]
pub(crate) use call::{
    answer_error, call_json, call_json_with, call_raw, call_raw_with, redact_error,
    request_secrets, service_reason, unavailable, Classify, Failure,
};
pub use call::{RetryPolicy, ENV_KMS_RETRY_ATTEMPTS, ENV_KMS_RETRY_SECONDS};

pub use aws::AwsKmsKey;
pub use azure::{
    AzureCredential, AzureKeyVaultKey, ENV_AZURE_CONFIDENTIALITY_ONLY, IMDS_HOST, PUBLIC_AUTHORITY,
};
pub use gcp::GcpKmsKey;
pub use vault::{
    SecretSource, VaultAuth, VaultTransitKey, ENV_VAULT_ACCEPT_UNDERIVED, KUBERNETES_TOKEN_FILE,
};

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub(crate) const B64URL: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A secret string that never prints.
#[derive(Clone)]
pub(crate) struct Hidden(pub SecretString);

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Hidden {
    pub(crate) fn new(s: impl Into<String>) -> Hidden {
        Hidden(SecretString::from(s.into()))
    }
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Bytes that may hold key material (a KMS request body, a KMS answer): wiped when dropped,
/// when this is the last handle on them (a transport that kept a copy of a request keeps
/// its own; the crate's own copies are all wiped).
pub(crate) struct Wiped(Bytes);

impl Wiped {
    /// Takes a body built in a buffer of its own (moved, not copied).
    pub(crate) fn from_buffer(mut buffer: Zeroizing<Vec<u8>>) -> Wiped {
        Wiped(Bytes::from(std::mem::take(&mut *buffer)))
    }

    /// Another handle on the same bytes, for a request (cheap: reference counted).
    pub(crate) fn share(&self) -> Bytes {
        self.0.clone()
    }
}

impl std::ops::Deref for Wiped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        if let Ok(mut bytes) = std::mem::take(&mut self.0).try_into_mut() {
            bytes.as_mut().zeroize();
        }
    }
}

/// A base64 text field of a KMS answer that holds key material: borrowed from the answer's
/// body (which is wiped), or, when JSON escapes forced a copy, wiped itself when dropped.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct SecretText<'a>(#[serde(borrow)] Cow<'a, str>);

impl SecretText<'_> {
    /// The text itself, in a copy wiped on drop (a token, say).
    pub(crate) fn text(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.to_string())
    }

    /// The decoded bytes, in a buffer sized up front and wiped on drop. An engine that
    /// writes no padding (base64url here) is given the text without trailing `=`; the
    /// standard engine requires its padding as sent.
    pub(crate) fn decode(
        &self,
        engine: &base64::engine::GeneralPurpose,
    ) -> Option<Zeroizing<Vec<u8>>> {
        use base64::engine::Config;
        let text = if engine.config().encode_padding() {
            &*self.0
        } else {
            self.0.trim_end_matches('=')
        };
        let mut out = Zeroizing::new(Vec::with_capacity(text.len()));
        engine.decode_vec(text, &mut out).ok()?;
        Some(out)
    }
}

impl Drop for SecretText<'_> {
    fn drop(&mut self) {
        if let Cow::Owned(text) = &mut self.0 {
            text.zeroize();
        }
    }
}

/// Reads a KMS answer that holds key material into `T` (whose secret fields are
/// [`SecretText`]), naming `what` when it does not fit.
pub(crate) fn parse_secret<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    key_id: &str,
    what: &str,
) -> Result<T> {
    serde_json::from_slice(body).map_err(|_| Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: format!("the answer has no {what}"),
    })
}

/// A data key from the decoded bytes of a KMS answer.
pub(crate) fn secret_to_dek(
    text: &SecretText<'_>,
    engine: &base64::engine::GeneralPurpose,
    key_id: &str,
) -> Result<DataKey> {
    let bytes = text.decode(engine).ok_or_else(|| Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: "the answer's key is not base64".into(),
    })?;
    to_dek(bytes, key_id)
}

/// Posts an OAuth 2.0 token request (a form body) and returns the access token with the
/// time it may be kept (its `expires_in` less a minute).
pub(crate) async fn fetch_token(
    http: &dyn HttpTransport,
    key_id: &str,
    url: &str,
    form: String,
) -> Result<(Hidden, std::time::Duration)> {
    let form = zeroize::Zeroizing::new(form);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Bytes::from(form.as_bytes().to_vec()))
        .map_err(|_| Error::config(format!("the token endpoint `{url}` is not a URL")))?;
    request
        .headers_mut()
        .values_mut()
        .for_each(|v| v.set_sensitive(true));
    token_request(http, key_id, request).await
}

/// Sends a token request (a form POST, or a managed-identity GET) and reads its answer:
/// `access_token` with `expires_in` (a number or a string) or `expires_on` (epoch seconds),
/// kept until a minute before it ends.
pub(crate) async fn token_request(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
) -> Result<(Hidden, std::time::Duration)> {
    let peer = peer_of(request.uri());
    let answer = call_raw(http, key_id, request, false)
        .await
        .map_err(|e| match e {
            Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
                key_id,
                reason: format!("getting an access token from {peer}: {reason}"),
            },
            other => other,
        })?;
    #[derive(Deserialize)]
    struct TokenAnswer<'a> {
        #[serde(borrow)]
        access_token: Option<SecretText<'a>>,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        expires_on: Option<serde_json::Value>,
    }
    let parsed: TokenAnswer<'_> = parse_secret(&answer, key_id, "token")?;
    let token = parsed
        .access_token
        .as_ref()
        .map(|t| t.text())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("{peer} gave no access_token"),
        })?;
    let number = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    // Entra ID has sent `expires_in` as a string at times; App Service sends `expires_on`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ttl = parsed
        .expires_in
        .as_ref()
        .and_then(number)
        .or_else(|| {
            parsed
                .expires_on
                .as_ref()
                .and_then(number)
                .map(|on| on.saturating_sub(now))
        })
        .unwrap_or(3600)
        .saturating_sub(60);
    Ok((
        Hidden::new(token.as_str()),
        std::time::Duration::from_secs(ttl),
    ))
}

pub(crate) fn json_request(
    method: http::Method,
    url: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Result<http::Request<Bytes>> {
    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    request_with_body(method, url, body, headers)
}

/// A JSON request whose body holds key material: serialised from `body` (whose secret
/// fields borrow from wiped buffers) into a buffer sized up front, so that no copy is left
/// behind by growth. Keep the returned [`Wiped`] until the request has been sent; dropping
/// it then wipes the body.
pub(crate) fn secret_json_request(
    method: http::Method,
    url: &str,
    body: &impl serde::Serialize,
    room: usize,
    headers: &[(&str, &str)],
) -> Result<(http::Request<Bytes>, Wiped)> {
    let body = secret_json(body, room)?;
    let request = request_with_body(method, url, body.share(), headers)?;
    Ok((request, body))
}

/// `body` as JSON in a buffer sized for `room` bytes of fields plus the JSON around them
/// (so it never grows and leaves a copy behind), wiped when dropped.
pub(crate) fn secret_json(body: &impl serde::Serialize, room: usize) -> Result<Wiped> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(room + 512));
    serde_json::to_writer(&mut *buffer, body)
        .map_err(|e| Error::config(format!("cannot encode the request: {e}")))?;
    Ok(Wiped::from_buffer(buffer))
}

fn request_with_body(
    method: http::Method,
    url: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> Result<http::Request<Bytes>> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut request = builder
        .body(body)
        .map_err(|_| Error::config(format!("`{url}` is not a usable URL")))?;
    for v in request.headers_mut().values_mut() {
        v.set_sensitive(true);
    }
    Ok(request)
}

pub(crate) fn b64_field(v: &serde_json::Value, pointer: &str, key_id: &str) -> Result<Vec<u8>> {
    v.pointer(pointer)
        .and_then(|s| s.as_str())
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("the answer has no base64 `{pointer}`"),
        })
}

pub(crate) fn to_dek(bytes: Zeroizing<Vec<u8>>, key_id: &str) -> Result<DataKey> {
    let mut arr = Zeroizing::new([0u8; 32]);
    if bytes.len() != arr.len() {
        return Err(Error::DecryptFailed {
            what: format!("a data key wrapped by {key_id} (it did not unwrap to 32 bytes)"),
        });
    }
    arr.copy_from_slice(&bytes);
    Ok(DataKey::from_bytes(*arr))
}

pub(crate) fn no_derive(key_id: &str) -> Error {
    Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: "a cloud master key cannot derive local keys (audit checkpoints use the \
                 service's MAC or signature instead: see docs/DEPLOYMENT.md)"
            .into(),
    }
}

/// Whether a switch variable is on (`1`, `true`, `yes`, `on`).
fn switched_on(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Builds the master key `STRONGROOM_KMS` names, for the cloud backends, from the variables
/// `var` returns (the process environment in [`crate::key_wrapper_from_env`]), talking
/// through `http`.
pub fn from_vars(
    backend: &str,
    var: &dyn Fn(&str) -> Option<String>,
    http: Arc<dyn HttpTransport>,
) -> Result<Arc<dyn KeyWrapper>> {
    let need = |name: &str| -> Result<String> {
        var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::config(format!(
                "STRONGROOM_KMS={backend} needs {name} (see docs/DEPLOYMENT.md)"
            ))
        })
    };
    Ok(match backend {
        "aws_kms" => Arc::new(aws::from_vars(var, http)?),
        "gcp_kms" => Arc::new(gcp::from_vars(var, http)?),
        "azure_kv" => {
            let credential = azure_credential(var)?;
            let mut key = AzureKeyVaultKey::with_credential(
                &need("STRONGROOM_AZURE_KEY_ID")?,
                credential,
                http,
            )?;
            if let Some(authority) = var("AZURE_AUTHORITY_HOST")
                .or_else(|| var("STRONGROOM_AZURE_AUTHORITY"))
                .filter(|v| !v.is_empty())
            {
                key = key.with_authority(authority);
            }
            if let Some(scope) = var("STRONGROOM_AZURE_SCOPE").filter(|v| !v.is_empty()) {
                key = key.with_scope(scope);
            }
            if let Some(url) = var("STRONGROOM_AZURE_SIGNING_KEY_ID").filter(|v| !v.is_empty()) {
                key = key.with_signing_key(&url)?;
            }
            if switched_on(var(ENV_AZURE_CONFIDENTIALITY_ONLY)) {
                key = key.accept_confidentiality_only();
            }
            Arc::new(key)
        }
        "vault" => {
            let auth = vault_auth(var)?;
            let mut key = VaultTransitKey::new(
                need("VAULT_ADDR")?,
                need("STRONGROOM_VAULT_TRANSIT_KEY")?,
                "",
                http,
            )?
            .with_auth(auth);
            if let Some(ns) = var("VAULT_NAMESPACE").filter(|v| !v.is_empty()) {
                key = key.with_namespace(ns);
            }
            if let Some(mount) = var("STRONGROOM_VAULT_TRANSIT_MOUNT") {
                key = key.with_mount(mount);
            }
            if let Some(hmac) = var("STRONGROOM_VAULT_TRANSIT_HMAC_KEY").filter(|v| !v.is_empty()) {
                key = key.with_hmac_key(hmac)?;
            }
            if switched_on(var(ENV_VAULT_ACCEPT_UNDERIVED)) {
                key = key.accept_underived_for_reading();
            }
            Arc::new(key)
        }
        other => {
            return Err(Error::config(format!(
                "`{other}` is not a cloud master-key backend (aws_kms, gcp_kms, azure_kv, vault)"
            )))
        }
    })
}

/// The Vault token source the variables name, first found wins: `VAULT_TOKEN`;
/// `STRONGROOM_VAULT_TOKEN_FILE` (a Vault Agent sink, read at every call); AppRole
/// (`VAULT_ROLE_ID` or `STRONGROOM_VAULT_ROLE_ID_FILE`, with `VAULT_SECRET_ID` or
/// `STRONGROOM_VAULT_SECRET_ID_FILE`; mount `STRONGROOM_VAULT_APPROLE_MOUNT`, default
/// `approle`); Kubernetes (`STRONGROOM_VAULT_KUBERNETES_ROLE`, the token at
/// `STRONGROOM_VAULT_KUBERNETES_TOKEN_FILE` or the pod's default; mount
/// `STRONGROOM_VAULT_KUBERNETES_MOUNT`, default `kubernetes`).
fn vault_auth(var: &dyn Fn(&str) -> Option<String>) -> Result<VaultAuth> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let secret = |value: &str, file: &str| {
        get(value)
            .map(SecretSource::value)
            .or_else(|| get(file).map(SecretSource::file))
    };
    if let Some(token) = get("VAULT_TOKEN") {
        return Ok(VaultAuth::Token(SecretSource::value(token)));
    }
    if let Some(path) = get("STRONGROOM_VAULT_TOKEN_FILE") {
        return Ok(VaultAuth::Token(SecretSource::file(path)));
    }
    if let Some(role_id) = secret("VAULT_ROLE_ID", "STRONGROOM_VAULT_ROLE_ID_FILE") {
        let secret_id =
            secret("VAULT_SECRET_ID", "STRONGROOM_VAULT_SECRET_ID_FILE").ok_or_else(|| {
                Error::config(
                    "Vault AppRole login needs VAULT_SECRET_ID or STRONGROOM_VAULT_SECRET_ID_FILE \
                     beside the role id (see docs/DEPLOYMENT.md)",
                )
            })?;
        return Ok(VaultAuth::AppRole {
            mount: get("STRONGROOM_VAULT_APPROLE_MOUNT").unwrap_or_else(|| "approle".into()),
            role_id,
            secret_id,
        });
    }
    if let Some(role) = get("STRONGROOM_VAULT_KUBERNETES_ROLE") {
        return Ok(VaultAuth::Kubernetes {
            mount: get("STRONGROOM_VAULT_KUBERNETES_MOUNT").unwrap_or_else(|| "kubernetes".into()),
            role,
            jwt: SecretSource::file(
                get("STRONGROOM_VAULT_KUBERNETES_TOKEN_FILE")
                    .unwrap_or_else(|| KUBERNETES_TOKEN_FILE.into()),
            ),
        });
    }
    Err(Error::config(
        "STRONGROOM_KMS=vault needs a token source: VAULT_TOKEN, STRONGROOM_VAULT_TOKEN_FILE, \
         AppRole (VAULT_ROLE_ID and VAULT_SECRET_ID, or their _FILE forms) or Kubernetes \
         (STRONGROOM_VAULT_KUBERNETES_ROLE) (see docs/DEPLOYMENT.md)",
    ))
}

/// The Azure credential the variables name, in the order of the Azure SDKs'
/// `DefaultAzureCredential`: a client secret (`AZURE_CLIENT_SECRET`), a certificate
/// (`AZURE_CLIENT_CERTIFICATE_PATH`), workload identity (`AZURE_FEDERATED_TOKEN_FILE`),
/// App Service's managed identity (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`), then the
/// instance metadata service's (`AZURE_POD_IDENTITY_AUTHORITY_HOST` or
/// `http://169.254.169.254`); the first three need `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`,
/// the managed identities take `AZURE_CLIENT_ID` as a user-assigned identity's.
fn azure_credential(var: &dyn Fn(&str) -> Option<String>) -> Result<AzureCredential> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let app = |how: &str| -> Result<(String, String)> {
        let need = |name: &str| {
            get(name).ok_or_else(|| {
                Error::config(format!(
                    "STRONGROOM_KMS=azure_kv with {how} needs {name} (see docs/DEPLOYMENT.md)"
                ))
            })
        };
        Ok((need("AZURE_TENANT_ID")?, need("AZURE_CLIENT_ID")?))
    };
    if let Some(secret) = get("AZURE_CLIENT_SECRET") {
        let (tenant, client_id) = app("AZURE_CLIENT_SECRET")?;
        return Ok(AzureCredential::ClientSecret {
            tenant,
            client_id,
            secret: SecretString::from(secret),
        });
    }
    if let Some(path) = get("AZURE_CLIENT_CERTIFICATE_PATH") {
        let (tenant, client_id) = app("AZURE_CLIENT_CERTIFICATE_PATH")?;
        if get("AZURE_CLIENT_CERTIFICATE_PASSWORD").is_some() {
            return Err(Error::config(
                "AZURE_CLIENT_CERTIFICATE_PASSWORD is set: strongroom reads a PEM file with the \
                 certificate and an unencrypted key (`openssl pkcs12 -in cert.pfx -out cert.pem \
                 -nodes`), not a password-protected PFX",
            ));
        }
        let pem = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?);
        return AzureCredential::from_certificate_pem(tenant, client_id, &pem);
    }
    if let Some(path) = get("AZURE_FEDERATED_TOKEN_FILE") {
        let (tenant, client_id) = app("AZURE_FEDERATED_TOKEN_FILE")?;
        return Ok(AzureCredential::WorkloadIdentity {
            tenant,
            client_id,
            token_file: path.into(),
        });
    }
    if let (Some(endpoint), Some(header)) = (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
        return Ok(AzureCredential::AppServiceIdentity {
            endpoint,
            header: SecretString::from(header),
            client_id: get("AZURE_CLIENT_ID"),
        });
    }
    Ok(AzureCredential::ManagedIdentity {
        host: get("AZURE_POD_IDENTITY_AUTHORITY_HOST").unwrap_or_else(|| IMDS_HOST.to_string()),
        client_id: get("AZURE_CLIENT_ID"),
    })
}
