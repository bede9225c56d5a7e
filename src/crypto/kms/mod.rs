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
mod gcp;
mod vault;

pub use aws::AwsKmsKey;
pub use azure::{AzureKeyVaultKey, ENV_AZURE_CONFIDENTIALITY_ONLY};
pub use gcp::GcpKmsKey;
pub use vault::VaultTransitKey;

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

/// Why a KMS call failed, turned into the vault's errors: rejected associated data or a
/// wrapped key that is not this key's is [`Error::DecryptFailed`]; access denied, a missing
/// key or an unreachable service is [`Error::KeyUnavailable`] naming the key and the reason.
pub(crate) fn answer_error(key_id: &str, status: u16, body: &[u8], unwrapping: bool) -> Error {
    // Services put a short reason in JSON; never echo more than a line of it.
    let text = String::from_utf8_lossy(body);
    let reason: String = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .or_else(|| v.pointer("/Message"))
                .or_else(|| v.pointer("/errors/0"))
                .or_else(|| v.pointer("/__type"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| text.chars().take(200).collect());
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    match status {
        400 | 422 if unwrapping => Error::DecryptFailed {
            what: format!("a data key wrapped by {key_id} ({reason})"),
        },
        401 | 403 => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!(
                "access denied ({status}): {reason}; check the credentials and the key's policy"
            ),
        },
        404 => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("the key was not found (404): {reason}"),
        },
        _ => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("the service answered {status}: {reason}"),
        },
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

/// Sends a request and returns the body of a 2xx answer (wiped when dropped); other
/// answers become errors.
pub(crate) async fn call_raw(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
) -> Result<Wiped> {
    let peer = peer_of(request.uri());
    let response = http
        .send(request)
        .await
        .map_err(|e| Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("no answer from {peer}: {e}"),
        })?;
    let status = response.status().as_u16();
    let body = Wiped(response.into_body());
    if !(200..300).contains(&status) {
        return Err(answer_error(key_id, status, &body, unwrapping));
    }
    Ok(body)
}

/// Sends a JSON request and returns the JSON answer of a 2xx; other answers become errors.
/// For answers without key material (an answer that holds some is read from
/// [`call_raw`] with [`parse_secret`]).
pub(crate) async fn call_json(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
) -> Result<serde_json::Value> {
    let peer = peer_of(request.uri());
    let body = call_raw(http, key_id, request, unwrapping).await?;
    serde_json::from_slice(&body).map_err(|_| Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: format!("{peer} answered with a body that is not JSON"),
    })
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
    let peer = peer_of(request.uri());
    let answer = call_json(http, key_id, request, false)
        .await
        .map_err(|e| match e {
            Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
                key_id,
                reason: format!("getting an access token from {peer}: {reason}"),
            },
            other => other,
        })?;
    let token = answer
        .get("access_token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("{peer} gave no access_token"),
        })?;
    // Entra ID has sent `expires_in` as a string at times.
    let ttl = answer
        .get("expires_in")
        .and_then(|t| {
            t.as_u64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(3600)
        .saturating_sub(60);
    Ok((Hidden::new(token), std::time::Duration::from_secs(ttl)))
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
            let mut key = AzureKeyVaultKey::new(
                &need("STRONGROOM_AZURE_KEY_ID")?,
                need("AZURE_TENANT_ID")?,
                need("AZURE_CLIENT_ID")?,
                need("AZURE_CLIENT_SECRET")?,
                http,
            )?;
            if let Some(authority) = var("STRONGROOM_AZURE_AUTHORITY") {
                key = key.with_authority(authority);
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
            let mut key = VaultTransitKey::new(
                need("VAULT_ADDR")?,
                need("STRONGROOM_VAULT_TRANSIT_KEY")?,
                need("VAULT_TOKEN")?,
                http,
            )?;
            if let Some(mount) = var("STRONGROOM_VAULT_TRANSIT_MOUNT") {
                key = key.with_mount(mount);
            }
            if let Some(hmac) = var("STRONGROOM_VAULT_TRANSIT_HMAC_KEY").filter(|v| !v.is_empty()) {
                key = key.with_hmac_key(hmac)?;
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
