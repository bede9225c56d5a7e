//! Google Cloud KMS: `cryptoKeys.encrypt` / `cryptoKeys.decrypt` with the record's
//! associated data as `additionalAuthenticatedData`. Authenticated with a service
//! account (a signed JWT exchanged for an access token at the account's `token_uri`, RFC
//! 7523) or with an access token the host supplies.

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
use crate::crypto::{BackendId, DataKey, KeyWrapper};
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

/// A master key in Google Cloud KMS
/// (`projects/P/locations/L/keyRings/R/cryptoKeys/K`).
pub struct GcpKmsKey {
    name: String,
    id: String,
    endpoint: String,
    auth: Auth,
    http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for GcpKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsKey")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
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
        Ok(GcpKmsKey {
            id: format!("gcp_kms:{name}"),
            name,
            endpoint: "https://cloudkms.googleapis.com".into(),
            auth: Auth::Static(Hidden::new(token)),
            http,
        })
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
        Ok(GcpKmsKey {
            id: format!("gcp_kms:{name}"),
            name,
            endpoint: "https://cloudkms.googleapis.com".into(),
            auth: Auth::ServiceAccount {
                email: field("client_email")?,
                key_id: field("private_key_id")?,
                key: Box::new(key),
                token_uri,
                cached: Mutex::new(None),
            },
            http,
        })
    }

    /// Calls this endpoint instead of `https://cloudkms.googleapis.com`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> GcpKmsKey {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    async fn token(&self) -> Result<Hidden> {
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
                let (token, ttl) =
                    fetch_token(self.http.as_ref(), &self.id, token_uri, form).await?;
                *slot = Some((token.clone(), Instant::now() + ttl));
                Ok(token)
            }
        }
    }

    fn url(&self, verb: &str) -> String {
        format!("{}/v1/{}:{verb}", self.endpoint, self.name)
    }

    async fn bearer(&self) -> Result<zeroize::Zeroizing<String>> {
        let token = self.token().await?;
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
        let bearer = self.bearer().await?;
        let body = EncryptRequest {
            plaintext: plaintext.as_str(),
            aad: B64.encode(aad),
        };
        // `_sent` wipes the request body once the answer is in.
        let (request, _sent) = secret_json_request(
            http::Method::POST,
            &self.url("encrypt"),
            &body,
            plaintext.len() + body.aad.len(),
            &[("authorization", &bearer)],
        )?;
        let answer = call_json(self.http.as_ref(), &self.id, request, false).await?;
        super::b64_field(&answer, "/ciphertext", &self.id)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let bearer = self.bearer().await?;
        let request = json_request(
            http::Method::POST,
            &self.url("decrypt"),
            &serde_json::json!({
                "ciphertext": B64.encode(wrapped),
                "additionalAuthenticatedData": B64.encode(aad),
            }),
            &[("authorization", &bearer)],
        )?;
        let body = call_raw(self.http.as_ref(), &self.id, request, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&body, &self.id, "base64 `plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }
}
