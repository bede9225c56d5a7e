//! Calls to Azure Key Vault: a client-credentials token from Microsoft Entra ID, the key
//! operations (`wrapkey`, `unwrapkey`, `sign`) and `GET` of a key's public part.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use secrecy::ExposeSecret;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::super::{
    call_json_with, call_raw_with, fetch_token, json_request, parse_secret, secret_json_request,
    token_request, unavailable, Failure, Hidden, SecretText, B64URL,
};
use super::credential::AzureCredential;
use crate::error::{Error, Result};
use crate::transport::{Bytes, HttpTransport};

pub(super) const API_VERSION: &str = "7.4";

/// Who calls Key Vault and through what: shared by a key and the key that signs for it.
pub(super) struct AzureClient {
    credential: AzureCredential,
    authority: String,
    scope: String,
    token: Mutex<Option<(Hidden, Instant)>>,
    pub(super) http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AzureClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureClient")
            .field("credential", &self.credential)
            .field("authority", &self.authority)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A `wrapkey` / `unwrapkey` / `sign` request.
#[derive(serde::Serialize)]
struct KeyOperation<'a> {
    alg: &'a str,
    value: &'a str,
}

/// Their answer: `value` is the wrapped or unwrapped key, or the signature; `kid` the key
/// version that did it.
#[derive(serde::Deserialize)]
struct KeyOperationAnswer<'a> {
    #[serde(borrow)]
    value: SecretText<'a>,
    #[serde(default)]
    kid: Option<String>,
}

/// Key Vault's answers that are not tampering though they come on an unwrap: a disabled
/// key (version), or one not yet valid or expired (Key Vault answers 403 or 400 with such
/// a message).
fn key_vault_failure(key_id: &str, failure: &Failure<'_>) -> Option<Error> {
    let reason = failure.reason;
    let lower = reason.to_ascii_lowercase();
    if lower.contains("disabled") || lower.contains("expired") || lower.contains("not yet valid") {
        return Some(unavailable(
            key_id,
            format!(
                "Key Vault ({}): {reason} (enable the key version, or re-seal its records \
                 onto another)",
                failure.status
            ),
        ));
    }
    None
}

impl AzureClient {
    pub(super) fn new(
        credential: AzureCredential,
        authority: String,
        scope: String,
        http: Arc<dyn HttpTransport>,
    ) -> AzureClient {
        AzureClient {
            credential,
            authority: authority.trim_end_matches('/').to_string(),
            scope,
            token: Mutex::new(None),
            http,
        }
    }

    /// The same credential, with tokens from `authority` for `scope`.
    pub(super) fn with(&self, authority: Option<String>, scope: Option<String>) -> AzureClient {
        AzureClient::new(
            self.credential.clone(),
            authority.unwrap_or_else(|| self.authority.clone()),
            scope.unwrap_or_else(|| self.scope.clone()),
            self.http.clone(),
        )
    }

    pub(super) fn credential(&self) -> &AzureCredential {
        &self.credential
    }

    /// `Bearer <token>`, fetched once and kept until shortly before it expires.
    pub(super) async fn bearer(&self, key_id: &str) -> Result<Zeroizing<String>> {
        let mut slot = self.token.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(Zeroizing::new(format!("Bearer {}", token.expose())));
            }
        }
        let (token, ttl) = self.fetch(key_id).await?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.expose()));
        *slot = Some((token, Instant::now() + ttl));
        Ok(bearer)
    }

    /// A new token: the client-credentials grant of the app registration, or a managed
    /// identity's endpoint (which takes the resource, the scope without `/.default`).
    async fn fetch(&self, key_id: &str) -> Result<(Hidden, std::time::Duration)> {
        let resource = self.scope.trim_end_matches("/.default");
        let get = |url: String, header: (&str, &str)| {
            let mut request = http::Request::builder()
                .method("GET")
                .uri(&url)
                .header(header.0, header.1)
                .body(Bytes::new())
                .map_err(|_| Error::config(format!("`{url}` is not a usable token endpoint")))?;
            request
                .headers_mut()
                .values_mut()
                .for_each(|v| v.set_sensitive(true));
            Ok::<_, Error>(request)
        };
        let query = |api: &str, client_id: &Option<String>| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("api-version", api)
                .append_pair("resource", resource);
            if let Some(id) = client_id {
                q.append_pair("client_id", id);
            }
            q.finish()
        };
        match &self.credential {
            AzureCredential::ManagedIdentity { host, client_id } => {
                let url = format!(
                    "{}/metadata/identity/oauth2/token?{}",
                    host.trim_end_matches('/'),
                    query("2018-02-01", client_id)
                );
                token_request(self.http.as_ref(), key_id, get(url, ("metadata", "true"))?).await
            }
            AzureCredential::AppServiceIdentity {
                endpoint,
                header,
                client_id,
            } => {
                let sep = if endpoint.contains('?') { '&' } else { '?' };
                let url = format!("{endpoint}{sep}{}", query("2019-08-01", client_id));
                let request = get(url, ("x-identity-header", header.expose_secret()))?;
                token_request(self.http.as_ref(), key_id, request).await
            }
            credential => {
                let (tenant, _) = credential
                    .app()
                    .ok_or_else(|| Error::config("this Azure credential has no tenant"))?;
                let url = format!("{}/{tenant}/oauth2/v2.0/token", self.authority);
                let form = credential.token_form(&url, &self.scope)?;
                fetch_token(self.http.as_ref(), key_id, &url, form.to_string()).await
            }
        }
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
        Ok(self
            .key_operation_kid(key_id, key_url, op, alg, value, unwrapping)
            .await?
            .0)
    }

    /// [`AzureClient::key_operation`], with the answer's `kid` (the key version that did
    /// it), when it has one.
    pub(super) async fn key_operation_kid(
        &self,
        key_id: &str,
        key_url: &str,
        op: &str,
        alg: &str,
        value: &[u8],
        unwrapping: bool,
    ) -> Result<(Zeroizing<Vec<u8>>, Option<String>)> {
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
        let classify = |f: &Failure<'_>| key_vault_failure(key_id, f);
        let answer =
            call_raw_with(self.http.as_ref(), key_id, request, unwrapping, &classify).await?;
        let parsed: KeyOperationAnswer<'_> = parse_secret(&answer, key_id, "base64url `value`")?;
        let decoded = parsed
            .value
            .decode(&B64URL)
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: "the answer has no base64url `value`".into(),
            })?;
        Ok((decoded, parsed.kid.clone()))
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
        let classify = |f: &Failure<'_>| key_vault_failure(key_id, f);
        let answer = call_json_with(self.http.as_ref(), key_id, request, false, &classify).await?;
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
