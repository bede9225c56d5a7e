//! HashiCorp Vault transit: `POST /v1/{mount}/encrypt/{key}` and `/decrypt/{key}` with a
//! `context` (the SHA-256 of the record's associated data). The transit key must be
//! created with `derived=true`, so the context selects the key and a wrapped key does not
//! decrypt under another record's context. Audit checkpoints are authenticated with the
//! transit `hmac` and `verify` endpoints, under the same key (its own HMAC key, which
//! transit keeps apart from its encryption key) or another ([`VaultTransitKey::with_hmac_key`]).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{
    call_json, call_raw, json_request, no_derive, parse_secret, secret_json_request, secret_to_dek,
    Hidden, SecretText, B64,
};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

/// A transit key in HashiCorp Vault.
pub struct VaultTransitKey {
    addr: String,
    mount: String,
    key: String,
    id: String,
    token: Hidden,
    http: Arc<dyn HttpTransport>,
    hmac_key: Option<String>,
}

impl fmt::Debug for VaultTransitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransitKey")
            .field("addr", &self.addr)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("hmac_key", &self.hmac_key)
            .finish_non_exhaustive()
    }
}

fn check_key_name(key: &str, what: &str) -> Result<()> {
    if key.is_empty() || key.contains('/') {
        return Err(Error::invalid(what, "must be a key name without `/`"));
    }
    Ok(())
}

impl VaultTransitKey {
    /// The transit key `key` at Vault `addr` (`https://vault.example.com:8200`), called
    /// with `token`.
    pub fn new(
        addr: impl Into<String>,
        key: impl Into<String>,
        token: impl Into<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<VaultTransitKey> {
        let addr = addr.into().trim_end_matches('/').to_string();
        let key = key.into();
        if url::Url::parse(&addr).is_err() {
            return Err(Error::invalid(
                "VAULT_ADDR",
                "must be a URL such as https://vault:8200",
            ));
        }
        check_key_name(&key, "transit key")?;
        Ok(VaultTransitKey {
            id: format!("vault:{addr}/transit/{key}"),
            addr,
            mount: "transit".into(),
            key,
            token: Hidden::new(token),
            http,
            hmac_key: None,
        })
    }

    /// Authenticates audit checkpoints with the HMAC of the transit key `key` (on the same
    /// mount) instead of this key's own HMAC. Any transit key type makes HMACs.
    pub fn with_hmac_key(mut self, key: impl Into<String>) -> Result<VaultTransitKey> {
        let key = key.into();
        check_key_name(&key, "transit HMAC key")?;
        self.hmac_key = Some(key);
        Ok(self)
    }

    /// Uses the transit engine mounted at `mount` (default `transit`).
    pub fn with_mount(mut self, mount: impl Into<String>) -> VaultTransitKey {
        self.mount = mount.into().trim_matches('/').to_string();
        self.id = format!("vault:{}/{}/{}", self.addr, self.mount, self.key);
        self
    }

    fn context(aad: &[u8]) -> String {
        B64.encode(Sha256::digest(aad))
    }

    fn url(&self, op: &str) -> String {
        format!("{}/v1/{}/{op}/{}", self.addr, self.mount, self.key)
    }
}

/// `transit/encrypt`: the plaintext is the data key.
#[derive(serde::Serialize)]
struct EncryptRequest<'a> {
    plaintext: &'a str,
    context: String,
}

/// `transit/decrypt`'s answer: `data.plaintext` is the data key.
#[derive(serde::Deserialize)]
struct DecryptAnswer<'a> {
    #[serde(borrow)]
    data: DecryptData<'a>,
}

#[derive(serde::Deserialize)]
struct DecryptData<'a> {
    #[serde(borrow)]
    plaintext: SecretText<'a>,
}

#[async_trait]
impl KeyWrapper for VaultTransitKey {
    fn backend_id(&self) -> BackendId {
        BackendId::Vault
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(B64.encode(dek.expose_secret()));
        let body = EncryptRequest {
            plaintext: plaintext.as_str(),
            context: Self::context(aad),
        };
        // `_sent` wipes the request body once the answer is in.
        let (request, _sent) = secret_json_request(
            http::Method::POST,
            &self.url("encrypt"),
            &body,
            plaintext.len() + body.context.len(),
            &[("x-vault-token", self.token.expose())],
        )?;
        let answer = call_json(self.http.as_ref(), &self.id, request, false).await?;
        answer
            .pointer("/data/ciphertext")
            .and_then(|c| c.as_str())
            .filter(|c| c.starts_with("vault:"))
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "the answer has no data.ciphertext".into(),
            })
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let ciphertext = std::str::from_utf8(wrapped).map_err(|_| Error::DecryptFailed {
            what: format!("a data key wrapped by {}", self.id),
        })?;
        let request = json_request(
            http::Method::POST,
            &self.url("decrypt"),
            &serde_json::json!({ "ciphertext": ciphertext, "context": Self::context(aad) }),
            &[("x-vault-token", self.token.expose())],
        )?;
        let body = call_raw(self.http.as_ref(), &self.id, request, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&body, &self.id, "base64 `data.plaintext`")?;
        secret_to_dek(&answer.data.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        let key = self.hmac_key.as_ref().unwrap_or(&self.key);
        let url = |op: &str| format!("{}/v1/{}/{op}/{key}/sha2-256", self.addr, self.mount);
        Ok(Arc::new(VaultTransitHmac {
            id: format!("vault_hmac:{}/{}/{key}", self.addr, self.mount),
            hmac_url: url("hmac"),
            verify_url: url("verify"),
            token: self.token.clone(),
            http: self.http.clone(),
        }))
    }
}

/// A transit key's HMAC, which authenticates audit checkpoints: `hmac` makes the tag (the
/// `vault:vN:…` text, whose version picks the key version that checks it), `verify` with
/// `hmac` checks it (`docs/AUDIT.md`). HMACs are made with SHA-256.
struct VaultTransitHmac {
    id: String,
    hmac_url: String,
    verify_url: String,
    token: Hidden,
    http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for VaultTransitHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransitHmac")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CheckpointSigner for VaultTransitHmac {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let request = json_request(
            http::Method::POST,
            &self.hmac_url,
            &serde_json::json!({ "input": B64.encode(message) }),
            &[("x-vault-token", self.token.expose())],
        )?;
        let answer = call_json(self.http.as_ref(), &self.id, request, false).await?;
        answer
            .pointer("/data/hmac")
            .and_then(|c| c.as_str())
            .filter(|c| c.starts_with("vault:v"))
            .map(|c| c.as_bytes().to_vec())
            .ok_or_else(|| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "the answer has no data.hmac".into(),
            })
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        // A tag is the `vault:vN:base64` text; anything else was not made here.
        let Some(hmac) = std::str::from_utf8(tag)
            .ok()
            .filter(|t| t.starts_with("vault:v") && t.len() < 1024)
        else {
            return Ok(false);
        };
        let request = json_request(
            http::Method::POST,
            &self.verify_url,
            &serde_json::json!({ "input": B64.encode(message), "hmac": hmac }),
            &[("x-vault-token", self.token.expose())],
        )?;
        let answer = call_json(self.http.as_ref(), &self.id, request, false).await?;
        Ok(answer.pointer("/data/valid").and_then(|v| v.as_bool()) == Some(true))
    }
}
