//! GitHub App installation tokens: the App signs a short JWT with its private key, trades it
//! for an installation access token (`POST /app/installations/{id}/access_tokens`), and the
//! token is cached until five minutes before it expires.
//!
//! ```no_run
//! # async fn demo(http: &dyn strongroom::HttpTransport, pem: strongroom::SecretString)
//! # -> strongroom::Result<()> {
//! use strongroom::integrations::github_app::{
//!     GithubApp, InstallationTokenCache, TokenNarrowing, GITHUB_API,
//! };
//! use strongroom::Timestamp;
//!
//! let app = GithubApp::new("123456", Some("Iv23liAbCdEf".into()), 7890, pem)?;
//! let cache = InstallationTokenCache::new();
//! let narrow = TokenNarrowing {
//!     repositories: vec!["docs".into()],
//!     ..TokenNarrowing::default()
//! };
//! let token = cache
//!     .get_or_mint(http, GITHUB_API, &app, &narrow, Timestamp::now())
//!     .await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! The JWT is RS256 with `iat` 60 s in the past (GitHub's allowance for clock drift), `exp`
//! nine minutes ahead (GitHub allows ten) and `iss` the App's client id when one is given,
//! else its numeric App id. Installation tokens are opaque: nothing here assumes a length or
//! a prefix. Neither the private key, a JWT nor a token ever appears in an error or a
//! `Debug` output.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::handlers::formats::secure_endpoint;
use crate::model::Timestamp;
use crate::transport::{peer_of, Bytes, HttpTransport};

mod api;
mod cache;
mod key;

use api::*;
pub use api::{check_app, installation_token, AppInfo, InstallationToken};
pub use cache::InstallationTokenCache;
#[cfg(test)]
use cache::*;
use key::*;

/// The public GitHub API. GitHub Enterprise Server's is `https://HOST/api/v3`.
pub const GITHUB_API: &str = "https://api.github.com";

/// The REST API version every request names (`X-GitHub-Api-Version`).
pub const GITHUB_API_VERSION: &str = "2022-11-28";

/// How long before its `expires_at` a cached installation token is replaced.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// `iat` is this far in the past (GitHub's advice, for clock drift).
const IAT_BACKDATE_SECS: i64 = 60;
/// `exp` is this far ahead (GitHub refuses more than ten minutes).
const EXP_AHEAD_SECS: i64 = 9 * 60;
/// GitHub accepts at most this many repositories (names or ids) in one token request.
const MAX_REPOSITORIES: usize = 500;
/// GitHub App keys are RSA-2048; anything shorter is not one.
const MIN_MODULUS_BYTES: usize = 256;

/// A GitHub App acting on one installation: its ids and its private key, parsed once.
///
/// `Debug` shows the ids only.
pub struct GithubApp {
    app_id: String,
    client_id: Option<String>,
    installation_id: u64,
    /// ring's key pair (RSA signing with ring's constant-time, blinded arithmetic, several
    /// times faster than a pure-Rust big-number implementation). Shared by clones.
    key: std::sync::Arc<RsaKeyPair>,
}

impl GithubApp {
    /// An App from its numeric App id, its client id (optional; when given it is the JWT's
    /// issuer, as GitHub now recommends), the installation to act on and the private key
    /// GitHub generated (the downloaded `.pem`: PKCS#1 `-----BEGIN RSA PRIVATE KEY-----`, or
    /// the same key converted to PKCS#8 `-----BEGIN PRIVATE KEY-----`).
    ///
    /// The key is parsed and test-signed once here; anything that is not an unencrypted RSA
    /// private key of at least 2048 bits is refused with an error that never quotes it.
    pub fn new(
        app_id: impl Into<String>,
        client_id: Option<String>,
        installation_id: u64,
        private_key_pem: SecretString,
    ) -> Result<GithubApp> {
        let app_id = app_id.into().trim().to_string();
        if app_id.is_empty()
            || app_id.len() > 20
            || !app_id.bytes().all(|b| b.is_ascii_digit())
            || app_id.parse::<u64>().map_or(true, |n| n == 0)
        {
            return Err(Error::invalid(
                "GitHub App id",
                "must be the App's numeric id (the App's settings page, \"App ID\"), e.g. \
                 123456",
            ));
        }
        let client_id = match client_id.map(|c| c.trim().to_string()) {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => {
                if c.len() > 100
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                {
                    return Err(Error::invalid(
                        "GitHub App client id",
                        "must be the App's client id as its settings page shows it (letters, \
                         digits, `.`, `_` and `-`, e.g. Iv23liAbCdEf), or none to sign as the \
                         App id",
                    ));
                }
                Some(c)
            }
        };
        if installation_id == 0 {
            return Err(Error::invalid(
                "GitHub App installation id",
                "must be the installation's numeric id (the number at the end of the \
                 installation's settings URL), not 0",
            ));
        }
        let key = parse_private_key(&private_key_pem)?;
        Ok(GithubApp {
            app_id,
            client_id,
            installation_id,
            key: std::sync::Arc::new(key),
        })
    }

    /// The numeric App id.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The client id, when one was given.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The installation this App acts on.
    pub fn installation_id(&self) -> u64 {
        self.installation_id
    }

    /// The JWT's `iss`: the client id when given, else the App id.
    pub fn issuer(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.app_id)
    }

    /// The App's JWT at `now`: RS256, `iat` = now − 60 s, `exp` = now + 9 min, `iss` =
    /// [`issuer`](Self::issuer). Good for GitHub's `/app` endpoints for nine minutes.
    pub fn jwt(&self, now: Timestamp) -> Result<SecretString> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iat: i64,
            exp: i64,
            iss: &'a str,
        }
        let secs = now.as_millis().div_euclid(1000);
        let claims = Claims {
            iat: secs.saturating_sub(IAT_BACKDATE_SECS),
            exp: secs.saturating_add(EXP_AHEAD_SECS),
            iss: self.issuer(),
        };
        let failed = |why: &str| {
            Error::config(format!(
                "cannot sign the JWT for GitHub App {}: {why}; link the App again with its \
                 current private key",
                self.app_id
            ))
        };
        let claims = serde_json::to_vec(&claims).map_err(|e| failed(&e.to_string()))?;
        let mut jwt =
            String::with_capacity(64 + claims.len() * 2 + 2 * self.key.public().modulus_len());
        jwt.push_str(JWT_HEADER);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                jwt.as_bytes(),
                &mut signature,
            )
            .map_err(|_| failed("the key did not sign"))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(SecretString::from(jwt))
    }
}

/// `{"alg":"RS256","typ":"JWT"}`, base64url without padding: the header of every App JWT.
const JWT_HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

impl Clone for GithubApp {
    fn clone(&self) -> Self {
        GithubApp {
            app_id: self.app_id.clone(),
            client_id: self.client_id.clone(),
            installation_id: self.installation_id,
            key: std::sync::Arc::clone(&self.key),
        }
    }
}

impl fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("client_id", &self.client_id)
            .field("installation_id", &self.installation_id)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

/// What an installation token may reach, narrower than the installation itself. Empty
/// fields are not sent: the token then gets everything the installation has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TokenNarrowing {
    /// Repository names without their owner (`docs`, not `octo-org/docs`): the installation
    /// belongs to one account. At most 500.
    pub repositories: Vec<String>,
    /// Repository ids. At most 500.
    pub repository_ids: Vec<u64>,
    /// Permission name to level, e.g. `contents` → `read`, `issues` → `write`; each must be
    /// one the installation was granted.
    pub permissions: BTreeMap<String, String>,
}

impl TokenNarrowing {
    /// No narrowing: the token gets what the installation has.
    pub fn none() -> TokenNarrowing {
        TokenNarrowing::default()
    }

    /// Whether nothing is narrowed.
    pub fn is_empty(&self) -> bool {
        self.repositories.is_empty()
            && self.repository_ids.is_empty()
            && self.permissions.is_empty()
    }

    fn check(&self) -> Result<()> {
        const FIELD: &str = "GitHub token narrowing";
        if self.repositories.len() > MAX_REPOSITORIES
            || self.repository_ids.len() > MAX_REPOSITORIES
        {
            return Err(Error::invalid(
                FIELD,
                "names more than 500 repositories; GitHub takes at most 500 per token: leave \
                 the list empty for all of the installation's repositories, or split the work",
            ));
        }
        for name in &self.repositories {
            if name.contains('/') {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "repository `{}` has an owner; name it without (`docs`, not \
                         `octo-org/docs`): an installation belongs to one account",
                        shown(name)
                    ),
                ));
            }
            if name.is_empty()
                || name.len() > 100
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
            {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "repository `{}` is not a repository name (letters, digits, `.`, `_`, \
                         `-`; at most 100)",
                        shown(name)
                    ),
                ));
            }
        }
        if self.repository_ids.contains(&0) {
            return Err(Error::invalid(FIELD, "repository id 0 is not a repository"));
        }
        let word = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        };
        for (name, level) in &self.permissions {
            if !word(name) || !word(level) {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "permission `{}` = `{}` is not a GitHub permission; write them like \
                         `contents` = `read` or `issues` = `write`",
                        shown(name),
                        shown(level)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The request body: `None` when nothing is narrowed.
    fn body(&self) -> Option<serde_json::Value> {
        if self.is_empty() {
            return None;
        }
        let mut body = serde_json::Map::new();
        if !self.repositories.is_empty() {
            body.insert("repositories".into(), self.repositories.clone().into());
        }
        if !self.repository_ids.is_empty() {
            body.insert("repository_ids".into(), self.repository_ids.clone().into());
        }
        if !self.permissions.is_empty() {
            let perms: serde_json::Map<String, serde_json::Value> = self
                .permissions
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect();
            body.insert("permissions".into(), perms.into());
        }
        Some(serde_json::Value::Object(body))
    }

    /// A canonical form for cache keys: order does not change what a token reaches.
    fn canonical(&self, out: &mut String) {
        let mut names: Vec<&str> = self.repositories.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let mut ids = self.repository_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        for n in names {
            out.push_str(n);
            out.push(',');
        }
        out.push('\u{0}');
        for id in ids {
            out.push_str(&id.to_string());
            out.push(',');
        }
        out.push('\u{0}');
        for (k, v) in &self.permissions {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push(',');
        }
    }
}

#[cfg(test)]
mod tests;
