//! Calls to Azure Key Vault: a client-credentials token from Microsoft Entra ID, the key
//! operations (`wrapkey`, `unwrapkey`, `sign`) and `GET` of a key's public part.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::super::{
    call_json, call_raw, fetch_token, json_request, parse_secret, secret_json_request, Hidden,
    SecretText, B64URL,
};
use crate::error::{Error, Result};
use crate::transport::{Bytes, HttpTransport};

pub(super) const API_VERSION: &str = "7.4";

/// Who calls Key Vault (an app registration of a tenant) and through what: shared by a key
/// and the key that signs for it.
pub(super) struct AzureClient {
    tenant: String,
    client_id: String,
    client_secret: Hidden,
    authority: String,
    token: Mutex<Option<(Hidden, Instant)>>,
    pub(super) http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AzureClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureClient")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// A `wrapkey` / `unwrapkey` / `sign` request.
#[derive(serde::Serialize)]
struct KeyOperation<'a> {
    alg: &'a str,
    value: &'a str,
}

/// Their answer: `value` is the wrapped or unwrapped key, or the signature.
#[derive(serde::Deserialize)]
struct KeyOperationAnswer<'a> {
    #[serde(borrow)]
    value: SecretText<'a>,
}

impl AzureClient {
    pub(super) fn new(
        tenant: String,
        client_id: String,
        client_secret: Hidden,
        http: Arc<dyn HttpTransport>,
    ) -> AzureClient {
        AzureClient {
            tenant,
            client_id,
            client_secret,
            authority: "https://login.microsoftonline.com".into(),
            token: Mutex::new(None),
            http,
        }
    }

    /// The same app registration, with tokens from `authority`.
    pub(super) fn with_authority(&self, authority: String) -> AzureClient {
        AzureClient {
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            authority: authority.trim_end_matches('/').to_string(),
            token: Mutex::new(None),
            http: self.http.clone(),
        }
    }

    pub(super) fn tenant(&self) -> &str {
        &self.tenant
    }

    pub(super) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `Bearer <token>`, fetched once and kept until shortly before it expires.
    pub(super) async fn bearer(&self, key_id: &str) -> Result<Zeroizing<String>> {
        let mut slot = self.token.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(Zeroizing::new(format!("Bearer {}", token.expose())));
            }
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant);
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &self.client_id)
                .append_pair("client_secret", self.client_secret.expose())
                .append_pair("scope", "https://vault.azure.net/.default")
                .finish(),
        );
        let (token, ttl) = fetch_token(self.http.as_ref(), key_id, &url, form.to_string()).await?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.expose()));
        *slot = Some((token, Instant::now() + ttl));
        Ok(bearer)
    }

    /// `POST {key_url}/{op}` with `{alg, value}`: `wrapkey` / `unwrapkey` carry the local key
    /// `K` (in the request or in the answer), so both bodies are built and read in wiped
    /// buffers. Returns the answer's `value`, decoded.
    pub(super) async fn key_operation(
        &self,
        key_id: &str,
        key_url: &str,
        op: &str,
        alg: &str,
        value: &[u8],
        unwrapping: bool,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let bearer = self.bearer(key_id).await?;
        let url = format!("{key_url}/{op}?api-version={API_VERSION}");
        let value = Zeroizing::new(B64URL.encode(value));
        let body = KeyOperation {
            alg,
            value: value.as_str(),
        };
        // `_sent` wipes the request body once the answer is in.
        let (request, _sent) = secret_json_request(
            http::Method::POST,
            &url,
            &body,
            value.len(),
            &[("authorization", &bearer)],
        )?;
        let answer = call_raw(self.http.as_ref(), key_id, request, unwrapping).await?;
        let parsed: KeyOperationAnswer<'_> = parse_secret(&answer, key_id, "base64url `value`")?;
        parsed
            .value
            .decode(&B64URL)
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: "the answer has no base64url `value`".into(),
            })
    }

    /// `GET {key_url}`: the key bundle's public JSON web key (`key`).
    pub(super) async fn get_key(&self, key_id: &str, key_url: &str) -> Result<serde_json::Value> {
        let bearer = self.bearer(key_id).await?;
        let url = format!("{key_url}?api-version={API_VERSION}");
        let mut request = json_request(
            http::Method::GET,
            &url,
            &serde_json::Value::Null,
            &[("authorization", &bearer)],
        )?;
        *request.body_mut() = Bytes::new();
        request.headers_mut().remove("content-type");
        let answer = call_json(self.http.as_ref(), key_id, request, false).await?;
        answer
            .get("key")
            .cloned()
            .filter(|k| k.is_object())
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: format!("the key bundle of {key_url} has no `key`"),
            })
    }
}
