//! Google Cloud KMS: `cryptoKeys.encrypt` / `cryptoKeys.decrypt` with the record's
//! associated data as `additionalAuthenticatedData`. Authenticated with a service
//! account (a signed JWT exchanged for an access token at the account's `token_uri`, RFC
//! 7523) or with an access token the host supplies. Audit checkpoints are authenticated with
//! `cryptoKeyVersions.macSign` / `macVerify` under a MAC key version
//! ([`GcpKmsKey::with_mac_key`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use tokio::sync::Mutex;

use super::{
    call_json, call_raw, fetch_token, json_request, no_derive, parse_secret, secret_json_request,
    secret_to_dek, Hidden, SecretText, B64,
};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

enum Auth {
    Static(Hidden),
    ServiceAccount {
        email: String,
        key_id: String,
        key: Box<jsonwebtoken::EncodingKey>,
        token_uri: String,
        cached: Mutex<Option<(Hidden, Instant)>>,
    },
}

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
    /// The key `name`, called with a bearer access token the host obtained.
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
        let sa: serde_json::Value = serde_json::from_str(key_file_json)
            .map_err(|_| Error::invalid("service account", "the key file is not JSON"))?;
        let field = |k: &str| -> Result<String> {
            sa.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::invalid("service account", format!("the key file has no `{k}`"))
                })
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(field("private_key")?.as_bytes())
            .map_err(|_| {
                Error::invalid("service account", "`private_key` is not an RSA PEM key")
            })?;
        let token_uri = sa
            .get("token_uri")
            .and_then(|v| v.as_str())
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_string();
        let auth = Auth::ServiceAccount {
            email: field("client_email")?,
            key_id: field("private_key_id")?,
            key: Box::new(key),
            token_uri,
            cached: Mutex::new(None),
        };
        Ok(GcpKmsKey::with_client(name, auth, http))
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
    async fn token(&self, id: &str) -> Result<Hidden> {
        match &self.auth {
            Auth::Static(t) => Ok(t.clone()),
            Auth::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
                cached,
            } => {
                let mut slot = cached.lock().await;
                if let Some((token, until)) = slot.as_ref() {
                    if Instant::now() < *until {
                        return Ok(token.clone());
                    }
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = Some(key_id.clone());
                let claims = serde_json::json!({
                    "iss": email, "scope": SCOPE, "aud": token_uri,
                    "iat": now, "exp": now + 3600,
                });
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| Error::config(format!("cannot sign the token request: {e}")))?;
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
                );
                let (token, ttl) = fetch_token(self.http.as_ref(), id, token_uri, form).await?;
                *slot = Some((token.clone(), Instant::now() + ttl));
                Ok(token)
            }
        }
    }

    fn url(&self, name: &str, verb: &str) -> String {
        format!("{}/v1/{name}:{verb}", self.endpoint)
    }

    async fn bearer(&self, id: &str) -> Result<zeroize::Zeroizing<String>> {
        let token = self.token(id).await?;
        Ok(zeroize::Zeroizing::new(format!(
            "Bearer {}",
            token.expose()
        )))
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
        let answer = call_json(self.client.http.as_ref(), &self.id, request, false).await?;
        super::b64_field(&answer, "/ciphertext", &self.id)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let bearer = self.client.bearer(&self.id).await?;
        let request = json_request(
            http::Method::POST,
            &self.client.url(&self.name, "decrypt"),
            &serde_json::json!({
                "ciphertext": B64.encode(wrapped),
                "additionalAuthenticatedData": B64.encode(aad),
            }),
            &[("authorization", &bearer)],
        )?;
        let body = call_raw(self.client.http.as_ref(), &self.id, request, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&body, &self.id, "base64 `plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        match &self.mac_key {
            Some(version) => Ok(Arc::new(GcpKmsMacKey {
                id: format!("gcp_kms_mac:{version}"),
                version: version.clone(),
                client: self.client.clone(),
            })),
            None => Err(Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "a Google Cloud KMS encryption key makes no MACs, so it offers no \
                         audit checkpoint key: give it a MAC key version \
                         (STRONGROOM_GCP_KMS_MAC_KEY, GcpKmsKey::with_mac_key) or give the \
                         vault an audit key of its own (STRONGROOM_AUDIT_KEY, \
                         VaultBuilder::checkpoint_key)"
                    .into(),
            }),
        }
    }
}

/// A MAC key version in Google Cloud KMS that authenticates audit checkpoints: `macSign`
/// makes the tag, `macVerify` checks it (`docs/AUDIT.md`). Made by
/// [`GcpKmsKey::with_mac_key`].
struct GcpKmsMacKey {
    version: String,
    id: String,
    client: Arc<GcpClient>,
}

impl fmt::Debug for GcpKmsMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsMacKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CheckpointSigner for GcpKmsMacKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let bearer = self.client.bearer(&self.id).await?;
        let request = json_request(
            http::Method::POST,
            &self.client.url(&self.version, "macSign"),
            &serde_json::json!({ "data": B64.encode(message) }),
            &[("authorization", &bearer)],
        )?;
        let answer = call_json(self.client.http.as_ref(), &self.id, request, false).await?;
        super::b64_field(&answer, "/mac", &self.id)
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        // The sizes of the MAC algorithms Cloud KMS offers (HMAC with SHA-1, SHA-224,
        // SHA-256, SHA-384, SHA-512): any other tag was not made by it.
        if ![20, 28, 32, 48, 64].contains(&tag.len()) {
            return Ok(false);
        }
        let bearer = self.client.bearer(&self.id).await?;
        let request = json_request(
            http::Method::POST,
            &self.client.url(&self.version, "macVerify"),
            &serde_json::json!({ "data": B64.encode(message), "mac": B64.encode(tag) }),
            &[("authorization", &bearer)],
        )?;
        let answer = call_json(self.client.http.as_ref(), &self.id, request, false).await?;
        Ok(answer.get("success").and_then(|v| v.as_bool()) == Some(true))
    }
}
