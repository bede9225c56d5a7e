//! Azure Key Vault: `wrapKey` / `unwrapKey` (RSA-OAEP-256) with a client-credentials token
//! from Microsoft Entra ID. Key Vault's RSA key wrap takes no associated data, so the record
//! is bound locally: a fresh 256-bit key `K` is wrapped by Key Vault, and the data key is
//! sealed under `K` with AES-256-GCM whose associated data is the record's. The wrapped
//! form is `1 || len(W) as u16 || W || nonce(12) || AES-GCM(K, DEK)(48)`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use async_trait::async_trait;
use base64::Engine;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::{
    call_raw, fetch_token, no_derive, parse_secret, secret_json_request, Hidden, SecretText, B64URL,
};
use crate::crypto::{fill_random, BackendId, DataKey, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

const API_VERSION: &str = "7.4";
const LOCAL_AAD_LABEL: &[u8] = b"strongroom/azure-kv/v1";

/// A key in Azure Key Vault (`https://NAME.vault.azure.net/keys/KEY/VERSION`).
pub struct AzureKeyVaultKey {
    key_url: String,
    id: String,
    tenant: String,
    client_id: String,
    client_secret: Hidden,
    authority: String,
    token: Mutex<Option<(Hidden, Instant)>>,
    http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AzureKeyVaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultKey")
            .field("key", &self.key_url)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl AzureKeyVaultKey {
    /// The key at `key_url`, used as the app registration `client_id` of `tenant`.
    pub fn new(
        key_url: &str,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AzureKeyVaultKey> {
        let url = url::Url::parse(key_url).ok().filter(|u| {
            matches!(u.scheme(), "https" | "http")
                && u.path_segments()
                    .map(|s| s.collect::<Vec<_>>())
                    .is_some_and(|s| {
                        (s.len() == 2 || s.len() == 3) && s[0] == "keys" && !s[1].is_empty()
                    })
        });
        let Some(url) = url else {
            return Err(Error::invalid(
                "Azure key",
                "must be a key URL such as https://NAME.vault.azure.net/keys/KEY/VERSION",
            ));
        };
        let key_url = url.as_str().trim_end_matches('/').to_string();
        Ok(AzureKeyVaultKey {
            id: format!("azure_kv:{key_url}"),
            key_url,
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: Hidden::new(client_secret),
            authority: "https://login.microsoftonline.com".into(),
            token: Mutex::new(None),
            http,
        })
    }

    /// Gets tokens from this authority instead of `https://login.microsoftonline.com`.
    pub fn with_authority(mut self, authority: impl Into<String>) -> AzureKeyVaultKey {
        self.authority = authority.into().trim_end_matches('/').to_string();
        self
    }

    async fn bearer(&self) -> Result<String> {
        let mut slot = self.token.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(format!("Bearer {}", token.expose()));
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
        let (token, ttl) =
            fetch_token(self.http.as_ref(), &self.id, &url, form.to_string()).await?;
        let bearer = format!("Bearer {}", token.expose());
        *slot = Some((token, Instant::now() + ttl));
        Ok(bearer)
    }

    /// `wrapkey` / `unwrapkey`: both carry the local key `K` (in the request or in the
    /// answer), so both bodies are built and read in wiped buffers.
    async fn call(&self, op: &str, value: &[u8], unwrapping: bool) -> Result<Zeroizing<Vec<u8>>> {
        let bearer = Zeroizing::new(self.bearer().await?);
        let url = format!("{}/{op}?api-version={API_VERSION}", self.key_url);
        let value = Zeroizing::new(B64URL.encode(value));
        let body = KeyOperation {
            alg: "RSA-OAEP-256",
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
        let answer = call_raw(self.http.as_ref(), &self.id, request, unwrapping).await?;
        let parsed: KeyOperationAnswer<'_> = parse_secret(&answer, &self.id, "base64url `value`")?;
        parsed
            .value
            .decode(&B64URL)
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "the answer has no base64url `value`".into(),
            })
    }

    fn local_aad(aad: &[u8]) -> Vec<u8> {
        let mut out = LOCAL_AAD_LABEL.to_vec();
        out.extend_from_slice(aad);
        out
    }
}

/// A `wrapkey` / `unwrapkey` request.
#[derive(serde::Serialize)]
struct KeyOperation<'a> {
    alg: &'a str,
    value: &'a str,
}

/// Their answer: `value` is the wrapped or unwrapped key.
#[derive(serde::Deserialize)]
struct KeyOperationAnswer<'a> {
    #[serde(borrow)]
    value: SecretText<'a>,
}

#[async_trait]
impl KeyWrapper for AzureKeyVaultKey {
    fn backend_id(&self) -> BackendId {
        BackendId::AzureKv
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(k.as_mut())?;
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce)?;
        let wrapped_k = self.call("wrapkey", k.as_ref(), false).await?;
        let mut buf = Zeroizing::new(dek.expose_secret().to_vec());
        let tag = Aes256Gcm::new(k.as_ref().into())
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &Self::local_aad(aad), &mut buf)
            .map_err(|_| Error::config("local AES-GCM failed"))?;
        let len = u16::try_from(wrapped_k.len())
            .map_err(|_| Error::config("Key Vault returned an oversized wrapped key"))?;
        let mut out = Vec::with_capacity(3 + wrapped_k.len() + 12 + 48);
        out.push(1);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&wrapped_k);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let bad = || Error::DecryptFailed {
            what: format!("a data key wrapped by {}", self.id),
        };
        if wrapped.len() < 3 || wrapped[0] != 1 {
            return Err(bad());
        }
        let len = u16::from_be_bytes([wrapped[1], wrapped[2]]) as usize;
        let rest = &wrapped[3..];
        if rest.len() != len + 12 + 32 + 16 {
            return Err(bad());
        }
        let (wrapped_k, rest) = rest.split_at(len);
        let (nonce, rest) = rest.split_at(12);
        let (ct, tag) = rest.split_at(32);
        let unwrapped = self.call("unwrapkey", wrapped_k, true).await?;
        if unwrapped.len() != 32 {
            return Err(bad());
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&unwrapped);
        let mut buf = Zeroizing::new(ct.to_vec());
        Aes256Gcm::new(k.as_ref().into())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &Self::local_aad(aad),
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| bad())?;
        super::to_dek(buf, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }
}
