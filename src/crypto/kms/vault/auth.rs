//! How the transit key gets a Vault token: a fixed token, a token file (as Vault Agent's
//! file sink writes it, read again on every call so a renewed or replaced token is picked
//! up), or a login — AppRole (`auth/approle/login`) or Kubernetes (`auth/kubernetes/login`
//! with the pod's service-account token). A login's token is renewed (`auth/token/renew-self`)
//! once two thirds of its TTL have passed, and logged in again when it is not renewable,
//! when a renewal fails, or when Vault refuses it.
//!
//! Written from Vault's API reference: `/v1/auth/approle/login`, `/v1/auth/kubernetes/login`,
//! `/v1/auth/token/renew-self` (each answers `auth.client_token`, `auth.lease_duration`,
//! `auth.renewable`), and the `X-Vault-Namespace` header.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::super::{call_raw, parse_secret, secret_json_request, Hidden, SecretText};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

/// The default path of a Kubernetes pod's service-account token.
pub const KUBERNETES_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A secret given as a value or as a file to read it from (read at each login).
#[derive(Clone)]
pub enum SecretSource {
    /// The secret itself.
    Value(SecretString),
    /// A file holding it (surrounding white space is ignored).
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("Value([REDACTED])"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl SecretSource {
    /// A secret given as its value.
    pub fn value(secret: impl Into<String>) -> SecretSource {
        SecretSource::Value(SecretString::from(secret.into()))
    }

    /// A secret read from `path` when needed.
    pub fn file(path: impl Into<PathBuf>) -> SecretSource {
        SecretSource::File(path.into())
    }

    fn read(&self, what: &str) -> Result<Zeroizing<String>> {
        let text = match self {
            SecretSource::Value(v) => Zeroizing::new(v.expose_secret().to_string()),
            SecretSource::File(path) => {
                let raw = Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?,
                );
                Zeroizing::new(raw.trim().to_string())
            }
        };
        if text.is_empty() {
            return Err(Error::invalid(what, "is empty"));
        }
        Ok(text)
    }
}

/// How to get a Vault token.
#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// A token, used as it is (`VAULT_TOKEN`), or read from a file at every call (a Vault
    /// Agent file sink: `STRONGROOM_VAULT_TOKEN_FILE`).
    Token(SecretSource),
    /// AppRole login at `auth/{mount}/login`.
    AppRole {
        /// Where the AppRole method is mounted (default `approle`).
        mount: String,
        /// The role id.
        role_id: SecretSource,
        /// The secret id.
        secret_id: SecretSource,
    },
    /// Kubernetes login at `auth/{mount}/login` with the pod's service-account token.
    Kubernetes {
        /// Where the Kubernetes method is mounted (default `kubernetes`).
        mount: String,
        /// The Vault role bound to the service account.
        role: String,
        /// The service-account token file ([`KUBERNETES_TOKEN_FILE`] by default).
        jwt: SecretSource,
    },
}

impl VaultAuth {
    fn is_login(&self) -> bool {
        !matches!(self, VaultAuth::Token(_))
    }
}

/// A token from a login, with when to renew it and when it ends.
struct Held {
    token: Hidden,
    renew_at: Option<Instant>,
    expires: Option<Instant>,
    renewable: bool,
}

/// The token source of one transit key (shared with its HMAC signer).
pub(super) struct Tokens {
    auth: VaultAuth,
    addr: String,
    namespace: Option<String>,
    http: Arc<dyn HttpTransport>,
    held: Mutex<Option<Held>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("auth", &self.auth)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A login request's body (its secrets borrowed from wiped buffers).
#[derive(serde::Serialize, Default)]
struct LoginBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<&'a str>,
}

/// `auth` of a login or renewal answer.
#[derive(serde::Deserialize)]
struct AuthAnswer<'a> {
    #[serde(borrow)]
    auth: AuthData<'a>,
}

#[derive(serde::Deserialize)]
struct AuthData<'a> {
    #[serde(borrow)]
    client_token: SecretText<'a>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl Tokens {
    pub(super) fn new(
        auth: VaultAuth,
        addr: String,
        namespace: Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Tokens {
        Tokens {
            auth,
            addr,
            namespace,
            http,
            held: Mutex::new(None),
        }
    }

    pub(super) fn http(&self) -> &dyn HttpTransport {
        self.http.as_ref()
    }

    pub(super) fn http_arc(&self) -> Arc<dyn HttpTransport> {
        self.http.clone()
    }

    pub(super) fn auth(&self) -> &VaultAuth {
        &self.auth
    }

    pub(super) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Whether a refused token may be replaced by logging in again.
    pub(super) fn can_login(&self) -> bool {
        self.auth.is_login()
    }

    /// Forgets a token Vault refused, so the next call logs in again.
    pub(super) async fn forget(&self) {
        *self.held.lock().await = None;
    }

    /// The headers every request carries: the token and, when set, the namespace.
    pub(super) fn headers<'a>(&'a self, token: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut headers = vec![("x-vault-token", token)];
        if let Some(ns) = &self.namespace {
            headers.push(("x-vault-namespace", ns.as_str()));
        }
        headers
    }

    /// The token to call with now: the fixed one, the file's current one, or a login's
    /// (renewed or replaced as its TTL runs out).
    pub(super) async fn token(&self, key_id: &str) -> Result<Zeroizing<String>> {
        if let VaultAuth::Token(source) = &self.auth {
            return source.read("the Vault token");
        }
        let mut held = self.held.lock().await;
        let now = Instant::now();
        if let Some(h) = held.as_ref() {
            if h.renew_at.is_none_or(|at| now < at) {
                return Ok(Zeroizing::new(h.token.expose().to_string()));
            }
            if h.renewable && h.expires.is_none_or(|end| now < end) {
                let token = Zeroizing::new(h.token.expose().to_string());
                match self.renew(key_id, &token).await {
                    Ok(renewed) => {
                        let out = Zeroizing::new(renewed.token.expose().to_string());
                        *held = Some(renewed);
                        return Ok(out);
                    }
                    Err(e) => {
                        tracing::info!(key = %key_id, error = %e, "Vault token renewal failed; logging in again");
                    }
                }
            }
        }
        let fresh = self.login(key_id).await?;
        let out = Zeroizing::new(fresh.token.expose().to_string());
        *held = Some(fresh);
        Ok(out)
    }

    /// Logs in with the configured method (its secrets read now, so a rotated file is
    /// picked up).
    async fn login(&self, key_id: &str) -> Result<Held> {
        let url = |mount: &str| format!("{}/v1/auth/{mount}/login", self.addr);
        match &self.auth {
            VaultAuth::Token(_) => Err(Error::config("a fixed Vault token does not log in")),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let role_id = role_id.read("the AppRole role id")?;
                let secret_id = secret_id.read("the AppRole secret id")?;
                let body = LoginBody {
                    role_id: Some(&role_id),
                    secret_id: Some(&secret_id),
                    ..LoginBody::default()
                };
                self.auth_call(key_id, &url(mount), &body, None).await
            }
            VaultAuth::Kubernetes { mount, role, jwt } => {
                let jwt = jwt.read("the Kubernetes service-account token")?;
                let body = LoginBody {
                    role: Some(role),
                    jwt: Some(&jwt),
                    ..LoginBody::default()
                };
                self.auth_call(key_id, &url(mount), &body, None).await
            }
        }
    }

    async fn renew(&self, key_id: &str, token: &str) -> Result<Held> {
        let url = format!("{}/v1/auth/token/renew-self", self.addr);
        self.auth_call(key_id, &url, &serde_json::json!({}), Some(token))
            .await
    }

    /// A login or renewal: `POST url` with `body`, the answer's `auth` read in a wiped
    /// buffer.
    async fn auth_call(
        &self,
        key_id: &str,
        url: &str,
        body: &impl serde::Serialize,
        token: Option<&str>,
    ) -> Result<Held> {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("x-vault-token", t));
        }
        if let Some(ns) = &self.namespace {
            headers.push(("x-vault-namespace", ns.as_str()));
        }
        let (request, _sent) = secret_json_request(http::Method::POST, url, body, 8192, &headers)?;
        let what = if token.is_some() {
            "renewing the Vault token"
        } else {
            "logging in to Vault"
        };
        let answer = call_raw(self.http.as_ref(), key_id, request, false)
            .await
            .map_err(|e| match e {
                Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
                    key_id,
                    reason: format!("{what}: {reason}"),
                },
                other => other,
            })?;
        let parsed: AuthAnswer<'_> = parse_secret(&answer, key_id, "`auth.client_token`")?;
        let token = parsed.auth.client_token.text();
        if token.is_empty() {
            return Err(Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: format!("{what}: the answer has no `auth.client_token`"),
            });
        }
        let now = Instant::now();
        let ttl = parsed.auth.lease_duration;
        Ok(Held {
            token: Hidden::new(token.as_str()),
            // A token with no TTL (a root token) is kept until Vault refuses it.
            renew_at: (ttl > 0).then(|| now + Duration::from_secs(ttl) * 2 / 3),
            expires: (ttl > 0).then(|| now + Duration::from_secs(ttl)),
            renewable: parsed.auth.renewable,
        })
    }
}
