//! HashiCorp Vault transit: `POST /v1/{mount}/encrypt/{key}` and `/decrypt/{key}` with a
//! `context` (the SHA-256 of the record's associated data). Vault uses the context only for
//! a key created with `derived=true` (it ignores it for any other key, so that any record's
//! wrapped key would unwrap for any other): the key is read once (`GET
//! /v1/{mount}/keys/{key}`) and one that is not derived is refused. Audit checkpoints are
//! authenticated with the transit `hmac` and `verify` endpoints, under the same key (its
//! own HMAC key, which transit keeps apart from its encryption key) or another
//! ([`VaultTransitKey::with_hmac_key`]). Tokens: [`VaultAuth`] (a token, a token file,
//! AppRole or Kubernetes login, with renewal), in a namespace when one is set.
//!
//! Written from Vault's transit API reference (`encrypt`, `decrypt`, `keys/:name`, `hmac`,
//! `verify`) and its error texts (`encryption key not found`, `... disallowed by policy
//! (too old)`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{
    call_raw_with, json_request, no_derive, parse_secret, secret_json_request, secret_to_dek,
    unavailable, Failure, SecretText, Wiped, B64,
};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::{Bytes, HttpTransport};

mod auth;

use auth::Tokens;
pub use auth::{SecretSource, VaultAuth, KUBERNETES_TOKEN_FILE};

/// The CLI's (and [`super::from_vars`]') switch for
/// [`VaultTransitKey::accept_underived_for_reading`].
pub const ENV_VAULT_ACCEPT_UNDERIVED: &str = "STRONGROOM_VAULT_ACCEPT_UNDERIVED";

/// A transit key in HashiCorp Vault.
pub struct VaultTransitKey {
    addr: String,
    mount: String,
    key: String,
    id: String,
    tokens: Arc<Tokens>,
    hmac_key: Option<String>,
    underived_reads: bool,
    checked: OnceCell<bool>,
}

impl fmt::Debug for VaultTransitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultTransitKey")
            .field("addr", &self.addr)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("hmac_key", &self.hmac_key)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

fn check_key_name(key: &str, what: &str) -> Result<()> {
    if key.is_empty() || key.contains('/') {
        return Err(Error::invalid(what, "must be a key name without `/`"));
    }
    Ok(())
}

/// Vault's answers on decrypt that are not tampering: the key is gone, or the ciphertext's
/// key version is below the key's `min_decryption_version`.
fn transit_failure(key_id: &str, failure: &Failure<'_>) -> Option<Error> {
    let reason = failure.reason;
    if failure.status != 400 {
        return None;
    }
    if reason.contains("encryption key not found") {
        return Some(unavailable(
            key_id,
            format!(
                "Vault: {reason} (the transit key does not exist on this mount, or was \
                 deleted; check STRONGROOM_VAULT_TRANSIT_KEY, the mount and the namespace)"
            ),
        ));
    }
    if reason.contains("too old") || reason.contains("disallowed by policy") {
        return Some(unavailable(
            key_id,
            format!(
                "Vault: {reason} (the data key was wrapped by a key version below the \
                 key's min_decryption_version; lower it, or re-seal the records before \
                 raising it)"
            ),
        ));
    }
    None
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
        let tokens = Tokens::new(
            VaultAuth::Token(SecretSource::value(token)),
            addr.clone(),
            None,
            http,
        );
        Ok(VaultTransitKey {
            id: format!("vault:{addr}/transit/{key}"),
            addr,
            mount: "transit".into(),
            key,
            tokens: Arc::new(tokens),
            hmac_key: None,
            underived_reads: false,
            checked: OnceCell::new(),
        })
    }

    /// Gets tokens this way instead of the fixed token given to [`VaultTransitKey::new`]
    /// (which may then be empty).
    pub fn with_auth(mut self, auth: VaultAuth) -> VaultTransitKey {
        self.tokens = Arc::new(Tokens::new(
            auth,
            self.addr.clone(),
            self.tokens.namespace().map(str::to_string),
            self.tokens.http_arc(),
        ));
        self
    }

    /// Calls Vault in this namespace (Vault Enterprise, HCP Vault: the
    /// `X-Vault-Namespace` header on every request, logins included).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> VaultTransitKey {
        let namespace = namespace.into().trim_matches('/').to_string();
        self.tokens = Arc::new(Tokens::new(
            self.tokens.auth().clone(),
            self.addr.clone(),
            (!namespace.is_empty()).then_some(namespace),
            self.tokens.http_arc(),
        ));
        self
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

    /// Unwraps data keys with a transit key that is **not** derived, for moving records
    /// off it (`strongroom keys rotate --to vault` onto a derived key, then turn this off).
    /// Such a key ignores the record binding: any record's wrapped key unwraps for any
    /// other, so someone who can write the database can swap secrets between records.
    /// Wrapping with it stays refused. The CLI sets it from
    /// `STRONGROOM_VAULT_ACCEPT_UNDERIVED=1`.
    pub fn accept_underived_for_reading(mut self) -> VaultTransitKey {
        self.underived_reads = true;
        self
    }

    fn context(aad: &[u8]) -> String {
        B64.encode(Sha256::digest(aad))
    }

    fn url(&self, op: &str) -> String {
        format!("{}/v1/{}/{op}/{}", self.addr, self.mount, self.key)
    }

    /// Whether the key is derived, read once from `GET /v1/{mount}/keys/{key}`.
    async fn derived(&self) -> Result<bool> {
        self.checked
            .get_or_try_init(|| async {
                let url = format!("{}/v1/{}/keys/{}", self.addr, self.mount, self.key);
                let answer = self
                    .send(http::Method::GET, &url, None, false)
                    .await
                    .map_err(|e| match e {
                        Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
                            key_id,
                            reason: format!(
                                "reading the transit key (to check that it is derived; the \
                                 token needs `read` on {}/keys/{}): {reason}",
                                self.mount, self.key
                            ),
                        },
                        other => other,
                    })?;
                let answer: serde_json::Value = serde_json::from_slice(&answer)
                    .map_err(|_| unavailable(&self.id, "the key's description is not JSON"))?;
                answer
                    .pointer("/data/derived")
                    .and_then(|d| d.as_bool())
                    .ok_or_else(|| unavailable(&self.id, "the key's description has no `derived`"))
            })
            .await
            .copied()
    }

    /// Refuses a key that is not derived (for reading, unless accepted).
    async fn check_derived(&self, wrapping: bool) -> Result<()> {
        if self.derived().await? {
            return Ok(());
        }
        if !wrapping && self.underived_reads {
            tracing::warn!(key = %self.id, "unwrapping with a transit key that is not derived (accepted for reading)");
            return Ok(());
        }
        Err(Error::config(format!(
            "the Vault transit key {} was not created with derived=true: Vault ignores the \
             context for such a key, so a wrapped data key would unwrap for any record. \
             Create a derived key (`vault write -f {}/keys/NAME derived=true`) and use it; \
             to move records made with this key onto it, set \
             {ENV_VAULT_ACCEPT_UNDERIVED}=1 for one `strongroom keys rotate --to vault`, then \
             unset it (docs/DEPLOYMENT.md)",
            self.id, self.mount
        )))
    }

    /// A request to `url` with the current token (and namespace): JSON `body`, or none.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        unwrapping: bool,
    ) -> Result<Wiped> {
        let build = |headers: &[(&str, &str)]| -> Result<(http::Request<Bytes>, Option<Wiped>)> {
            let mut request = json_request(
                method.clone(),
                url,
                body.unwrap_or(&serde_json::Value::Null),
                headers,
            )?;
            if body.is_none() {
                *request.body_mut() = Bytes::new();
                request.headers_mut().remove("content-type");
            }
            Ok((request, None))
        };
        send(&self.tokens, &self.id, &build, unwrapping).await
    }
}

/// Builds a request with the given headers (token, namespace); the second part, when
/// there is one, is the request's secret body, wiped once it has been sent.
type Build<'a> =
    dyn Fn(&[(&str, &str)]) -> Result<(http::Request<Bytes>, Option<Wiped>)> + Send + Sync + 'a;

/// Sends what `build` makes with the current token: a login's token that Vault refuses
/// (403) is replaced once by logging in again. Vault's operational answers on decrypt
/// become [`Error::KeyUnavailable`] ([`transit_failure`]).
async fn send(tokens: &Tokens, key_id: &str, build: &Build<'_>, unwrapping: bool) -> Result<Wiped> {
    let mut relogged = false;
    loop {
        let token = tokens.token(key_id).await?;
        let (request, _sent) = build(&tokens.headers(&token))?;
        let classify = |f: &Failure<'_>| transit_failure(key_id, f);
        match call_raw_with(tokens.http(), key_id, request, unwrapping, &classify).await {
            Err(Error::KeyUnavailable { reason, .. })
                if !relogged && tokens.can_login() && reason.starts_with("access denied (403)") =>
            {
                tracing::info!(key = %key_id, "Vault refused the token; logging in again");
                tokens.forget().await;
                relogged = true;
            }
            other => return other,
        }
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
        self.check_derived(true).await?;
        let plaintext = Zeroizing::new(B64.encode(dek.expose_secret()));
        let body = EncryptRequest {
            plaintext: plaintext.as_str(),
            context: Self::context(aad),
        };
        let url = self.url("encrypt");
        let room = plaintext.len() + body.context.len();
        let build = |headers: &[(&str, &str)]| {
            let (request, sent) =
                secret_json_request(http::Method::POST, &url, &body, room, headers)?;
            Ok((request, Some(sent)))
        };
        let answer = send(&self.tokens, &self.id, &build, false).await?;
        let answer: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| unavailable(&self.id, "the answer is not JSON"))?;
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
        self.check_derived(false).await?;
        let body = serde_json::json!({ "ciphertext": ciphertext, "context": Self::context(aad) });
        let body = self
            .send(http::Method::POST, &self.url("decrypt"), Some(&body), true)
            .await?;
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
            tokens: self.tokens.clone(),
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
    tokens: Arc<Tokens>,
}

impl VaultTransitHmac {
    async fn call(&self, url: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let build = |headers: &[(&str, &str)]| {
            Ok((json_request(http::Method::POST, url, &body, headers)?, None))
        };
        let answer = send(&self.tokens, &self.id, &build, false).await?;
        serde_json::from_slice(&answer).map_err(|_| unavailable(&self.id, "the answer is not JSON"))
    }
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
        let answer = self
            .call(
                &self.hmac_url,
                serde_json::json!({ "input": B64.encode(message) }),
            )
            .await?;
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
        let answer = self
            .call(
                &self.verify_url,
                serde_json::json!({ "input": B64.encode(message), "hmac": hmac }),
            )
            .await?;
        Ok(answer.pointer("/data/valid").and_then(|v| v.as_bool()) == Some(true))
    }
}
