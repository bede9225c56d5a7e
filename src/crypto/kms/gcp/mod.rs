//! Google Cloud KMS: `cryptoKeys.encrypt` / `cryptoKeys.decrypt` with the record's
//! associated data as `additionalAuthenticatedData`. Authenticated with the sources of
//! Application Default Credentials (`auth.rs`): a service account key file, user
//! credentials, Workload Identity Federation (`external_account`), the metadata server of
//! GCE / GKE / Cloud Run, or an access token the host supplies. Audit checkpoints are
//! authenticated with `cryptoKeyVersions.macSign` / `macVerify` under a MAC key version
//! ([`GcpKmsKey::with_mac_key`]).
//!
//! A data key that does not authenticate (`INVALID_ARGUMENT`: another record's associated
//! data, a changed ciphertext) is [`Error::DecryptFailed`]; a key version that is disabled,
//! scheduled for destruction or destroyed (`FAILED_PRECONDITION`) is
//! [`Error::KeyUnavailable`] with Cloud KMS's reason.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;

use super::{
    answer_error, no_derive, parse_secret, redact_error, request_secrets, secret_json_request,
    secret_to_dek, service_reason, unavailable, Hidden, SecretText, Wiped, B64,
};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

mod auth;
mod mac;

use auth::Auth;

/// How Google Cloud KMS is called: shared by a key and its MAC key.
struct GcpClient {
    endpoint: String,
    auth: Auth,
    http: Arc<dyn HttpTransport>,
}

/// A master key in Google Cloud KMS
/// (`projects/P/locations/L/keyRings/R/cryptoKeys/K`).
pub struct GcpKmsKey {
    name: String,
    id: String,
    client: Arc<GcpClient>,
    mac_key: Option<String>,
}

impl fmt::Debug for GcpKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsKey")
            .field("name", &self.name)
            .field("endpoint", &self.client.endpoint)
            .field("credentials", &self.client.auth.kind())
            .field("mac_key", &self.mac_key)
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = parts.len() == 8
        && parts[0] == "projects"
        && parts[2] == "locations"
        && parts[4] == "keyRings"
        && parts[6] == "cryptoKeys"
        && parts.iter().all(|p| !p.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "GCP KMS key",
            "must be projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY",
        ))
    }
}

impl GcpKmsKey {
    /// The key `name`, called with a bearer access token the host obtained, used as given
    /// (it is not refreshed: a host that passes a short-lived token replaces the key before
    /// it expires; the other constructors refresh their tokens themselves).
    pub fn with_access_token(
        name: impl Into<String>,
        token: impl Into<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<GcpKmsKey> {
        let name = name.into();
        check_name(&name)?;
        Ok(GcpKmsKey::with_client(
            name,
            Auth::Static(Hidden::new(token)),
            http,
        ))
    }

    /// The key `name`, authenticated as the service account of this key file (JSON).
    pub fn with_service_account(
        name: impl Into<String>,
        key_file_json: &str,
        http: Arc<dyn HttpTransport>,
    ) -> Result<GcpKmsKey> {
        let name = name.into();
        check_name(&name)?;
        let source = auth::from_file(key_file_json)?;
        if !matches!(source, auth::Source::ServiceAccount { .. }) {
            return Err(Error::invalid(
                "service account",
                "the key file is not a service account's (\"type\": \"service_account\"); \
                 GcpKmsKey::with_credentials_file reads the other kinds",
            ));
        }
        Ok(GcpKmsKey::with_client(name, Auth::fetched(source), http))
    }

    /// The key `name`, authenticated with a credentials file of any kind Application Default
    /// Credentials read (`GOOGLE_APPLICATION_CREDENTIALS`): `service_account`,
    /// `authorized_user` (refreshed with its refresh token) or `external_account`
    /// (Workload Identity Federation: a subject token from a file or URL exchanged at
    /// Google's STS, then optionally for a service account's token).
    pub fn with_credentials_file(
        name: impl Into<String>,
        json: &str,
        http: Arc<dyn HttpTransport>,
    ) -> Result<GcpKmsKey> {
        let name = name.into();
        check_name(&name)?;
        let source = auth::from_file(json)?;
        Ok(GcpKmsKey::with_client(name, Auth::fetched(source), http))
    }

    /// The key `name`, authenticated as the service account attached to the instance, GKE
    /// workload or Cloud Run service: tokens from the metadata server at `host`
    /// (`GCE_METADATA_HOST`; `None`: `metadata.google.internal`).
    pub fn with_metadata_server(
        name: impl Into<String>,
        host: Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<GcpKmsKey> {
        let name = name.into();
        check_name(&name)?;
        Ok(GcpKmsKey::with_client(
            name,
            Auth::fetched(auth::metadata_source(host)),
            http,
        ))
    }

    fn with_client(name: String, auth: Auth, http: Arc<dyn HttpTransport>) -> GcpKmsKey {
        GcpKmsKey {
            id: format!("gcp_kms:{name}"),
            name,
            client: Arc::new(GcpClient {
                endpoint: "https://cloudkms.googleapis.com".into(),
                auth,
                http,
            }),
            mac_key: None,
        }
    }

    /// Calls this endpoint instead of `https://cloudkms.googleapis.com`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> GcpKmsKey {
        let endpoint = endpoint.into().trim_end_matches('/').to_string();
        match Arc::get_mut(&mut self.client) {
            Some(client) => client.endpoint = endpoint,
            // Not shared before the key is built; should it be, a client of its own.
            None => {
                tracing::warn!("GcpKmsKey::with_endpoint after the key was shared; ignored");
            }
        }
        self
    }

    /// Authenticates audit checkpoints with the MAC key version `version`
    /// (`projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N`, a key of
    /// purpose `MAC`, for instance `HMAC_SHA256`), called with the same credentials:
    /// `macSign` / `macVerify` (`docs/AUDIT.md`). An encryption key makes no MACs, so
    /// without one this key offers no checkpoint key.
    pub fn with_mac_key(mut self, version: impl Into<String>) -> Result<GcpKmsKey> {
        let version = version.into();
        let parts: Vec<&str> = version.split('/').collect();
        let ok = parts.len() == 10
            && check_name(&parts[..8].join("/")).is_ok()
            && parts[8] == "cryptoKeyVersions"
            && !parts[9].is_empty();
        if !ok {
            return Err(Error::invalid(
                "GCP KMS MAC key",
                "must be a key version: projects/PROJECT/locations/LOCATION/keyRings/RING/\
                 cryptoKeys/KEY/cryptoKeyVersions/N",
            ));
        }
        self.mac_key = Some(version);
        Ok(self)
    }
}

impl GcpClient {
    fn url(&self, name: &str, verb: &str) -> String {
        format!("{}/v1/{name}:{verb}", self.endpoint)
    }

    async fn bearer(&self, id: &str) -> Result<zeroize::Zeroizing<String>> {
        let token = self.auth.token(self.http.as_ref(), id).await?;
        Ok(zeroize::Zeroizing::new(format!(
            "Bearer {}",
            token.expose()
        )))
    }

    /// Sends a Cloud KMS call; returns the body of a 2xx answer (wiped when dropped). An
    /// error answer becomes the vault's error by its `error.status`: `INVALID_ARGUMENT` on
    /// an unwrap is [`Error::DecryptFailed`] (the data key does not authenticate);
    /// `FAILED_PRECONDITION` (a disabled or destroyed key version, a key of the wrong
    /// purpose) and everything else is [`Error::KeyUnavailable`] with the service's reason.
    async fn call(
        &self,
        id: &str,
        request: http::Request<Bytes>,
        unwrapping: bool,
    ) -> Result<Wiped> {
        let peer = peer_of(request.uri());
        let secrets = request_secrets(&request);
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| unavailable(id, format!("no answer from {peer}: {e}")))?;
        let status = response.status().as_u16();
        let body = Wiped(response.into_body());
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = answer
            .pointer("/error/status")
            .and_then(|s| s.as_str())
            .unwrap_or("");
        let message: String = answer
            .pointer("/error/message")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        let error = match code {
            "INVALID_ARGUMENT" if unwrapping => Error::DecryptFailed {
                what: format!(
                    "a data key wrapped by {id} ({})",
                    service_reason(message.as_bytes())
                ),
            },
            "FAILED_PRECONDITION" => unavailable(
                id,
                format!(
                    "Cloud KMS answered {status} FAILED_PRECONDITION: {message} (a disabled key \
                     version can be enabled again, and one scheduled for destruction restored; \
                     a destroyed one is gone)"
                ),
            ),
            _ => answer_error(id, status, &body, false),
        };
        // A service or proxy that echoes the request must not carry the data key or the
        // access token into the error.
        Err(redact_error(error, &secrets))
    }

    /// [`GcpClient::call`] for answers without key material, as JSON.
    async fn call_json(
        &self,
        id: &str,
        request: http::Request<Bytes>,
    ) -> Result<serde_json::Value> {
        let body = self.call(id, request, false).await?;
        serde_json::from_slice(&body)
            .map_err(|_| unavailable(id, "Cloud KMS answered with a body that is not JSON"))
    }
}

/// `cryptoKeys.encrypt`: the plaintext is the data key.
#[derive(serde::Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    #[serde(rename = "additionalAuthenticatedData")]
    aad: String,
}

/// `cryptoKeys.decrypt`'s answer: the data key.
#[derive(serde::Deserialize)]
struct DecryptAnswer<'a> {
    #[serde(borrow)]
    plaintext: SecretText<'a>,
}

#[async_trait]
impl KeyWrapper for GcpKmsKey {
    fn backend_id(&self) -> BackendId {
        BackendId::GcpKms
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(B64.encode(dek.expose_secret()));
        let bearer = self.client.bearer(&self.id).await?;
        let body = EncryptRequest {
            plaintext: plaintext.as_str(),
            aad: B64.encode(aad),
        };
        // `_sent` wipes the request body once the answer is in.
        let (request, _sent) = secret_json_request(
            http::Method::POST,
            &self.client.url(&self.name, "encrypt"),
            &body,
            plaintext.len() + body.aad.len(),
            &[("authorization", &bearer)],
        )?;
        let answer = self.client.call_json(&self.id, request).await?;
        super::b64_field(&answer, "/ciphertext", &self.id)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let bearer = self.client.bearer(&self.id).await?;
        let request = super::json_request(
            http::Method::POST,
            &self.client.url(&self.name, "decrypt"),
            &serde_json::json!({
                "ciphertext": B64.encode(wrapped),
                "additionalAuthenticatedData": B64.encode(aad),
            }),
            &[("authorization", &bearer)],
        )?;
        let body = self.client.call(&self.id, request, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&body, &self.id, "base64 `plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        match &self.mac_key {
            Some(version) => Ok(Arc::new(mac::GcpKmsMacKey {
                id: format!("gcp_kms_mac:{version}"),
                version: version.clone(),
                client: self.client.clone(),
            })),
            None => Err(unavailable(
                &self.id,
                "a Google Cloud KMS encryption key makes no MACs, so it offers no \
                 audit checkpoint key: give it a MAC key version \
                 (STRONGROOM_GCP_KMS_MAC_KEY, GcpKmsKey::with_mac_key) or give the \
                 vault an audit key of its own (STRONGROOM_AUDIT_KEY, \
                 VaultBuilder::checkpoint_key)",
            )),
        }
    }
}

/// The `gcp_kms` backend of [`super::from_vars`]: `STRONGROOM_GCP_KMS_KEY`, credentials as
/// Application Default Credentials find them — `STRONGROOM_GCP_ACCESS_TOKEN` (used as
/// given), else the file `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's
/// `application_default_credentials.json` (in `CLOUDSDK_CONFIG`, else
/// `~/.config/gcloud`), else the metadata server (`GCE_METADATA_HOST`) — then
/// `STRONGROOM_GCP_KMS_ENDPOINT` and `STRONGROOM_GCP_KMS_MAC_KEY`.
pub(crate) fn from_vars(
    var: &dyn Fn(&str) -> Option<String>,
    http: Arc<dyn HttpTransport>,
) -> Result<GcpKmsKey> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let name = get("STRONGROOM_GCP_KMS_KEY").ok_or_else(|| {
        Error::config(
            "STRONGROOM_KMS=gcp_kms needs STRONGROOM_GCP_KMS_KEY (see docs/DEPLOYMENT.md)",
        )
    })?;
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
    let well_known = get("CLOUDSDK_CONFIG")
        .or_else(|| get("HOME").map(|h| format!("{h}/.config/gcloud")))
        .map(|dir| format!("{dir}/application_default_credentials.json"))
        .filter(|p| std::path::Path::new(p).is_file());
    let mut key = if let Some(token) = get("STRONGROOM_GCP_ACCESS_TOKEN") {
        GcpKmsKey::with_access_token(name, token, http)?
    } else if let Some(path) = get("GOOGLE_APPLICATION_CREDENTIALS") {
        GcpKmsKey::with_credentials_file(name, &read(&path)?, http)?
    } else if let Some(path) = well_known {
        GcpKmsKey::with_credentials_file(name, &read(&path)?, http)?
    } else {
        GcpKmsKey::with_metadata_server(name, get("GCE_METADATA_HOST"), http)?
    };
    if let Some(endpoint) = get("STRONGROOM_GCP_KMS_ENDPOINT") {
        key = key.with_endpoint(endpoint);
    }
    if let Some(mac) = get("STRONGROOM_GCP_KMS_MAC_KEY") {
        key = key.with_mac_key(mac)?;
    }
    Ok(key)
}
