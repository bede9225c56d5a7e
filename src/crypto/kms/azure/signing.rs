//! The Key Vault key that signs: it signs each data key's wrapped section (so that a record
//! needs the private key to be made, not only the public one) and the audit checkpoints.
//! Signatures are Key Vault `sign` over a SHA-256 digest (RS256 for an RSA key, ES256 for an
//! EC P-256 key) and are checked here with the key's public part, fetched once per key
//! version (`docs/FORMAT.md`, "Azure Key Vault").

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use super::super::B64URL;
use super::client::AzureClient;
use crate::crypto::CheckpointSigner;
use crate::error::{Error, Result};

/// The public part of one version of the signing key.
struct PublicKey {
    alg: Algorithm,
    /// Key Vault's name of the algorithm (`RS256`, `ES256`).
    alg_name: &'static str,
    key: DecodingKey,
}

/// A key in Azure Key Vault that signs (`https://NAME.vault.azure.net/keys/KEY[/VERSION]`).
/// Without a version in its URL, the version current when it is first used signs for the
/// rest of the process's life; every signature names the version that made it.
pub(super) struct AzureSigningKey {
    /// `…/keys/KEY`, without a version.
    base_url: String,
    /// The version named in the configured URL.
    pinned: Option<String>,
    id: String,
    client: Arc<AzureClient>,
    public: Mutex<HashMap<String, Arc<PublicKey>>>,
    current: tokio::sync::Mutex<Option<String>>,
}

impl fmt::Debug for AzureSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureSigningKey")
            .field("key", &self.base_url)
            .field("version", &self.pinned)
            .finish_non_exhaustive()
    }
}

/// A Key Vault key version: 1 to 64 ASCII letters and digits (Key Vault makes 32 hex
/// digits). Anything else read from a record or a checkpoint is refused before it reaches a
/// URL.
pub(super) fn is_version(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `(…/keys/KEY, Some(VERSION))` of a key URL, or why it is not one.
pub(super) fn split_key_url(url: &str, what: &str) -> Result<(String, Option<String>)> {
    let parsed = url::Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "https" | "http") && u.query().is_none() && u.fragment().is_none()
    });
    let segments: Option<Vec<&str>> = parsed
        .as_ref()
        .and_then(|u| u.path_segments())
        .map(|s| s.filter(|p| !p.is_empty()).collect());
    match (parsed.as_ref(), segments.as_deref()) {
        (Some(u), Some(["keys", name, rest @ ..])) if rest.len() <= 1 => {
            let version = rest.first().map(|v| v.to_string());
            if version.as_deref().is_some_and(|v| !is_version(v)) {
                return Err(Error::invalid(
                    what,
                    "its version must be letters and digits",
                ));
            }
            let mut base = u.clone();
            base.set_path(&format!("keys/{name}"));
            Ok((base.as_str().trim_end_matches('/').to_string(), version))
        }
        _ => Err(Error::invalid(
            what,
            "must be a key URL such as https://NAME.vault.azure.net/keys/KEY/VERSION",
        )),
    }
}

impl AzureSigningKey {
    pub(super) fn new(url: &str, client: Arc<AzureClient>) -> Result<AzureSigningKey> {
        let (base_url, pinned) = split_key_url(url, "Azure signing key")?;
        let id = match &pinned {
            Some(v) => format!("azure_kv_sign:{base_url}/{v}"),
            None => format!("azure_kv_sign:{base_url}"),
        };
        Ok(AzureSigningKey {
            base_url,
            pinned,
            id,
            client,
            public: Mutex::new(HashMap::new()),
            current: tokio::sync::Mutex::new(None),
        })
    }

    fn unavailable(&self, reason: impl Into<String>) -> Error {
        Error::KeyUnavailable {
            key_id: self.id.clone(),
            reason: reason.into(),
        }
    }

    /// The public part of `version`, fetched once (`GET …/keys/KEY/VERSION`).
    async fn public_key(&self, version: &str) -> Result<Arc<PublicKey>> {
        if let Some(key) = self.cached(version) {
            return Ok(key);
        }
        let url = format!("{}/{version}", self.base_url);
        let jwk = self.client.get_key(&self.id, &url).await?;
        let (found, key) = self.read_jwk(&jwk)?;
        if found != version {
            return Err(self.unavailable(format!(
                "Key Vault answered for {url} with version `{found}`"
            )));
        }
        Ok(self.remember(version, key))
    }

    fn cached(&self, version: &str) -> Option<Arc<PublicKey>> {
        self.public
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(version)
            .cloned()
    }

    fn remember(&self, version: &str, key: PublicKey) -> Arc<PublicKey> {
        let key = Arc::new(key);
        self.public
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version.to_string(), key.clone());
        key
    }

    /// The version a JSON web key names (the last part of its `kid`) and its public key.
    fn read_jwk(&self, jwk: &serde_json::Value) -> Result<(String, PublicKey)> {
        let text = |k: &str| jwk.get(k).and_then(|v| v.as_str());
        let version = text("kid")
            .and_then(|kid| kid.trim_end_matches('/').rsplit('/').next())
            .filter(|v| is_version(v))
            .ok_or_else(|| self.unavailable("the key has no `kid` with a version"))?
            .to_string();
        if let Some(ops) = jwk.get("key_ops").and_then(|o| o.as_array()) {
            if !ops.iter().any(|o| o.as_str() == Some("sign")) {
                return Err(self.unavailable(
                    "the key does not permit `sign` (its key_ops); allow sign and verify on it, \
                     or name another signing key (STRONGROOM_AZURE_SIGNING_KEY_ID)",
                ));
            }
        }
        let bad = |_| self.unavailable("the key's public part does not read");
        let key = match (text("kty"), text("crv")) {
            (Some("RSA" | "RSA-HSM"), _) => {
                let (n, e) = text("n").zip(text("e")).ok_or_else(|| bad(()))?;
                PublicKey {
                    alg: Algorithm::RS256,
                    alg_name: "RS256",
                    key: DecodingKey::from_rsa_components(n, e).map_err(|_| bad(()))?,
                }
            }
            (Some("EC" | "EC-HSM"), Some("P-256")) => {
                let (x, y) = text("x").zip(text("y")).ok_or_else(|| bad(()))?;
                PublicKey {
                    alg: Algorithm::ES256,
                    alg_name: "ES256",
                    key: DecodingKey::from_ec_components(x, y).map_err(|_| bad(()))?,
                }
            }
            (kty, crv) => {
                return Err(self.unavailable(format!(
                    "a {} key cannot sign here; use an RSA key (RS256) or an EC P-256 key \
                     (ES256)",
                    [kty, crv]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
        };
        Ok((version, key))
    }

    /// The version that signs: the pinned one, or the current one when first asked.
    async fn current_version(&self) -> Result<String> {
        let mut slot = self.current.lock().await;
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let version = match &self.pinned {
            Some(v) => {
                self.public_key(v).await?;
                v.clone()
            }
            None => {
                let jwk = self.client.get_key(&self.id, &self.base_url).await?;
                let (version, key) = self.read_jwk(&jwk)?;
                self.remember(&version, key);
                version
            }
        };
        *slot = Some(version.clone());
        Ok(version)
    }

    /// The key version new signatures are made with (the pinned one, or the one current
    /// when first asked), so that a caller can put it in what it signs.
    pub(super) async fn signing_version(&self) -> Result<String> {
        self.current_version().await
    }

    /// Key Vault's signature with key version `version` over SHA-256(`message`).
    pub(super) async fn sign_as(&self, version: &str, message: &[u8]) -> Result<Vec<u8>> {
        let public = self.public_key(version).await?;
        let digest = Sha256::digest(message);
        let url = format!("{}/{version}", self.base_url);
        let signature = self
            .client
            .key_operation(&self.id, &url, "sign", public.alg_name, &digest, false)
            .await?;
        Ok(signature.to_vec())
    }

    /// Whether `signature` is the signature of key version `version` over `message`,
    /// checked with that version's public part. A version that is not one is `false`.
    pub(super) async fn verify_message(
        &self,
        version: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool> {
        if !is_version(version) || signature.is_empty() || signature.len() > 1024 {
            return Ok(false);
        }
        let public = self.public_key(version).await?;
        let encoded = B64URL.encode(signature);
        Ok(
            jsonwebtoken::crypto::verify(&encoded, message, &public.key, public.alg)
                .unwrap_or(false),
        )
    }
}

/// A checkpoint's tag: `u8(len(version)) || version || signature` (`docs/AUDIT.md`).
#[async_trait]
impl CheckpointSigner for AzureSigningKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let version = self.signing_version().await?;
        let signature = self.sign_as(&version, message).await?;
        let mut tag = Vec::with_capacity(1 + version.len() + signature.len());
        // `is_version` bounds it to 64 bytes.
        tag.push(version.len() as u8);
        tag.extend_from_slice(version.as_bytes());
        tag.extend_from_slice(&signature);
        Ok(tag)
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        let Some((&len, rest)) = tag.split_first() else {
            return Ok(false);
        };
        let len = usize::from(len);
        if rest.len() <= len {
            return Ok(false);
        }
        let (version, signature) = rest.split_at(len);
        let Ok(version) = std::str::from_utf8(version) else {
            return Ok(false);
        };
        self.verify_message(version, message, signature).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_split_into_key_and_version() {
        let (base, v) = split_key_url("https://kv.vault.azure.net/keys/k/abc123", "t").expect("ok");
        assert_eq!(base, "https://kv.vault.azure.net/keys/k");
        assert_eq!(v.as_deref(), Some("abc123"));
        let (base, v) = split_key_url("https://kv.vault.azure.net/keys/k/", "t").expect("ok");
        assert_eq!(
            (base.as_str(), v),
            ("https://kv.vault.azure.net/keys/k", None)
        );
        for bad in [
            "https://kv.vault.azure.net/secrets/k",
            "https://kv.vault.azure.net/keys/k/v/x",
            "https://kv.vault.azure.net/keys/k/v%2F..",
            "ftp://kv/keys/k",
            "https://kv.vault.azure.net/keys/k?x=1",
        ] {
            assert!(split_key_url(bad, "t").is_err(), "{bad}");
        }
        assert!(is_version("0123abcdef") && !is_version("") && !is_version("a/b"));
    }
}
