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

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::handlers::formats::secure_endpoint;
use crate::model::Timestamp;
use crate::transport::{peer_of, Bytes, HttpTransport};

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
    key: SecretBox<EncodingKey>,
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
            key: SecretBox::new(Box::new(key)),
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
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            self.key.expose_secret(),
        )
        .map(SecretString::from)
        .map_err(|e| {
            Error::config(format!(
                "cannot sign the JWT for GitHub App {}: {e}; link the App again with its \
                 current private key",
                self.app_id
            ))
        })
    }
}

impl Clone for GithubApp {
    fn clone(&self) -> Self {
        GithubApp {
            app_id: self.app_id.clone(),
            client_id: self.client_id.clone(),
            installation_id: self.installation_id,
            key: SecretBox::new(Box::new(self.key.expose_secret().clone())),
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

/// Parses the App's PEM key, refusing anything but an unencrypted RSA private key of at
/// least 2048 bits. Errors name the kind of block found, never its contents.
fn parse_private_key(pem: &SecretString) -> Result<EncodingKey> {
    const FIELD: &str = "GitHub App private key";
    const WHERE: &str = "use the .pem file GitHub downloads from the App's settings \
                         (\"Generate a private key\"), whole, from -----BEGIN RSA PRIVATE KEY----- \
                         to -----END RSA PRIVATE KEY-----";
    let text = pem.expose_secret().trim();
    let label = der::pem::decode_label(text.as_bytes())
        .map_err(|_| Error::invalid(FIELD, format!("is not a PEM block; {WHERE}")))?;
    match label {
        "RSA PRIVATE KEY" | "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => {
            return Err(Error::invalid(
                FIELD,
                "is encrypted; decrypt it first (`openssl pkcs8 -in key.pem -out plain.pem`), \
                 or use the .pem GitHub downloaded, which is not encrypted",
            ))
        }
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
            return Err(Error::invalid(
                FIELD,
                format!("is a {} (`{label}`), not the private key; {WHERE}", {
                    if label == "CERTIFICATE" {
                        "certificate"
                    } else {
                        "public key"
                    }
                }),
            ))
        }
        "EC PRIVATE KEY" | "OPENSSH PRIVATE KEY" | "DSA PRIVATE KEY" => {
            return Err(Error::invalid(
                FIELD,
                format!("is not an RSA key (`{label}`); GitHub App keys are RSA; {WHERE}"),
            ))
        }
        _ => {
            return Err(Error::invalid(
                FIELD,
                format!("is a PEM block of another kind, not an RSA private key; {WHERE}"),
            ))
        }
    }
    let key = EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|_| {
        Error::invalid(
            FIELD,
            format!(
                "is not an RSA private key (a PKCS#8 block holding another algorithm, or \
                 damaged contents); {WHERE}"
            ),
        )
    })?;
    // One trial signature proves the key usable (and tells its size) before anything is
    // sent anywhere.
    let signature = jsonwebtoken::crypto::sign(b"strongroom key check", &key, Algorithm::RS256)
        .map_err(|_| {
            Error::invalid(
                FIELD,
                format!("is damaged: it does not sign (its numbers are inconsistent); {WHERE}"),
            )
        })?;
    let modulus_bytes = signature.len() * 3 / 4;
    if modulus_bytes < MIN_MODULUS_BYTES {
        return Err(Error::invalid(
            FIELD,
            format!(
                "is an RSA key of about {} bits; GitHub App keys are 2048 bits or more; {WHERE}",
                modulus_bytes * 8
            ),
        ));
    }
    Ok(key)
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
        self.repositories.is_empty() && self.repository_ids.is_empty() && self.permissions.is_empty()
    }

    fn check(&self) -> Result<()> {
        const FIELD: &str = "GitHub token narrowing";
        if self.repositories.len() > MAX_REPOSITORIES || self.repository_ids.len() > MAX_REPOSITORIES
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

/// A caller-given name, cut short and without control characters, for an error message.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// An installation access token and when GitHub says it expires (an hour after minting).
///
/// `Debug` shows the expiry only.
#[non_exhaustive]
pub struct InstallationToken {
    /// The token, for `Authorization: Bearer` (or `token`). Opaque.
    pub token: SecretString,
    /// When it stops working.
    pub expires_at: Timestamp,
}

impl fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The App as GitHub describes it (`GET /app`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppInfo {
    /// The numeric App id.
    pub id: u64,
    /// The App's slug (`github.com/apps/{slug}`).
    pub slug: String,
    /// The App's display name.
    pub name: String,
}

/// Mints an installation access token: `POST {base_url}/app/installations/{id}/access_tokens`
/// with the App's JWT, narrowed by `narrow` (nothing narrowed: no body).
///
/// `base_url` is [`GITHUB_API`] or a GitHub Enterprise Server's `https://HOST/api/v3`
/// (`http://` only to a loopback address). Errors: a refused JWT (401) is
/// [`Error::Config`]; a missing installation (404) is [`Error::NotFound`]; a narrowing GitHub
/// refuses (422) is [`Error::InvalidInput`]; a refusal to act (403) is
/// [`Error::PermissionDenied`]; 5xx, 429 and network failures are [`Error::Transport`]
/// (retry later).
pub async fn installation_token(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
    narrow: &TokenNarrowing,
) -> Result<InstallationToken> {
    installation_token_at(http, base_url, app, narrow, Timestamp::now()).await
}

async fn installation_token_at(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
    narrow: &TokenNarrowing,
    now: Timestamp,
) -> Result<InstallationToken> {
    narrow.check()?;
    let base = api_base(base_url)?;
    let url = format!(
        "{base}/app/installations/{}/access_tokens",
        app.installation_id
    );
    let body = match narrow.body() {
        Some(v) => Bytes::from(serde_json::to_vec(&v).map_err(|_| {
            Error::invalid("GitHub token narrowing", "cannot be written as JSON")
        })?),
        None => Bytes::new(),
    };
    let jwt = app.jwt(now)?;
    let request = github_request(http::Method::POST, &url, &jwt, body)?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(refusal(app, &peer, status, response.body(), &jwt, Call::Mint));
    }
    #[derive(Deserialize)]
    struct Minted {
        token: SecretString,
        expires_at: String,
    }
    let minted: Minted = serde_json::from_slice(response.body()).map_err(|_| {
        Error::transport(
            &peer,
            format!(
                "GitHub answered {status} to the installation token request without a `token` \
                 and an `expires_at`; check that the base URL is the GitHub API \
                 ({GITHUB_API}, or https://HOST/api/v3 for GitHub Enterprise Server)"
            ),
        )
    })?;
    if minted.token.expose_secret().is_empty() {
        return Err(Error::transport(
            &peer,
            "GitHub answered the installation token request with an empty `token`",
        ));
    }
    let expires_at = Timestamp::parse_rfc3339(&minted.expires_at).map_err(|_| {
        Error::transport(
            &peer,
            "GitHub's `expires_at` for the installation token is not an RFC 3339 time",
        )
    })?;
    Ok(InstallationToken {
        token: minted.token,
        expires_at,
    })
}

/// Checks the App's id and key with GitHub (`GET {base_url}/app` with the JWT) and returns
/// what GitHub says the App is; used when linking an App. An App id that is not the one the
/// key (and client id) belong to is [`Error::InvalidInput`]; other errors as for
/// [`installation_token`].
pub async fn check_app(
    http: &dyn HttpTransport,
    base_url: &str,
    app: &GithubApp,
) -> Result<AppInfo> {
    let base = api_base(base_url)?;
    let jwt = app.jwt(Timestamp::now())?;
    let request = github_request(http::Method::GET, &format!("{base}/app"), &jwt, Bytes::new())?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(refusal(app, &peer, status, response.body(), &jwt, Call::App));
    }
    #[derive(Deserialize)]
    struct Described {
        id: u64,
        slug: String,
        name: String,
    }
    let info: Described = serde_json::from_slice(response.body()).map_err(|_| {
        Error::transport(
            &peer,
            format!(
                "GitHub answered {status} to GET /app without the App's `id`, `slug` and \
                 `name`; check that the base URL is the GitHub API ({GITHUB_API}, or \
                 https://HOST/api/v3 for GitHub Enterprise Server)"
            ),
        )
    })?;
    if info.id.to_string() != app.app_id {
        return Err(Error::invalid(
            "GitHub App id",
            format!(
                "is {}, but GitHub says the private key and client id belong to App {} (`{}`); \
                 set the App id to {}",
                app.app_id,
                info.id,
                shown(&info.slug),
                info.id
            ),
        ));
    }
    Ok(AppInfo {
        id: info.id,
        slug: info.slug,
        name: info.name,
    })
}

/// The base URL without a trailing `/`, refused unless `https` (or `http` to loopback) and
/// free of credentials, query and fragment.
fn api_base(base_url: &str) -> Result<&str> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let ok = url::Url::parse(trimmed).ok().is_some_and(|u| {
        secure_endpoint(&u)
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
            && u.password().is_none()
    });
    if ok {
        Ok(trimmed)
    } else {
        Err(Error::invalid(
            "GitHub API base URL",
            format!(
                "must be an https:// URL without credentials, query or fragment ({GITHUB_API}, \
                 or https://HOST/api/v3 for GitHub Enterprise Server; http:// only to a \
                 loopback address)"
            ),
        ))
    }
}

fn github_request(
    method: http::Method,
    url: &str,
    jwt: &SecretString,
    body: Bytes,
) -> Result<http::Request<Bytes>> {
    let bearer = Zeroizing::new(format!("Bearer {}", jwt.expose_secret()));
    let mut authorization = http::HeaderValue::from_str(&bearer).map_err(|_| {
        Error::config("the GitHub App JWT cannot be sent in a header (this is a bug)")
    })?;
    authorization.set_sensitive(true);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::AUTHORIZATION, authorization)
        .header(http::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", GITHUB_API_VERSION)
        .header(http::header::USER_AGENT, "strongroom");
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    builder.body(body).map_err(|_| {
        Error::invalid(
            "GitHub API base URL",
            "does not make a valid request URL; write it like https://api.github.com",
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Mint,
    App,
}

/// A non-2xx answer as an error, with GitHub's `message` when it quotes no credential.
fn refusal(
    app: &GithubApp,
    peer: &str,
    status: u16,
    body: &[u8],
    jwt: &SecretString,
    call: Call,
) -> Error {
    let said = github_message(body, jwt);
    let app_id = &app.app_id;
    let installation = app.installation_id;
    match status {
        401 => Error::config(format!(
            "GitHub ({peer}) refused GitHub App {app_id}'s JWT (401{said}): check the App id \
             (and client id, if set), that the private key is this App's current one, and \
             this machine's clock"
        )),
        403 => Error::PermissionDenied {
            actor: format!("GitHub App {app_id}"),
            action: if call == Call::Mint {
                "mint a token for".to_string()
            } else {
                "read".to_string()
            },
            target: format!(
                "{} on {peer} (403{said}; a suspended installation, or a blocked App)",
                if call == Call::Mint {
                    format!("installation {installation}")
                } else {
                    "its own description".to_string()
                }
            ),
        },
        404 if call == Call::Mint => Error::NotFound {
            what: format!("GitHub App {app_id}'s installation {installation} on {peer}"),
            hint: Some(format!(
                "404{said}: the App was uninstalled, or the installation id belongs to another \
                 App; link the App again with the id from the installation's settings URL"
            )),
        },
        404 => Error::NotFound {
            what: format!("the GitHub App API (/app) on {peer}"),
            hint: Some(format!(
                "404{said}: check the base URL ({GITHUB_API}, or https://HOST/api/v3 for GitHub \
                 Enterprise Server)"
            )),
        },
        422 => Error::invalid(
            "GitHub token narrowing",
            format!(
                "GitHub ({peer}) refused it for installation {installation} (422{said}): name \
                 only repositories the installation can reach, and permissions at or below \
                 what it was granted"
            ),
        ),
        429 | 500..=599 => Error::transport(
            peer,
            format!("GitHub is unavailable or overloaded (HTTP {status}{said}); retry later"),
        ),
        _ => Error::transport(
            peer,
            format!("GitHub answered HTTP {status}{said}, which this client does not expect"),
        ),
    }
}

/// `": GitHub's message"` from a JSON error body, one line, at most 200 characters, and
/// empty when the body is not GitHub's error shape or quotes the JWT's signature.
fn github_message(body: &[u8], jwt: &SecretString) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string));
    let Some(message) = message else {
        return String::new();
    };
    let jwt = jwt.expose_secret();
    let signature = jwt.rsplit('.').next().unwrap_or(jwt);
    let quotes_credential = !signature.is_empty()
        && (message.contains(signature) || message.contains(jwt) || message.contains("Bearer "));
    if quotes_credential {
        return ": GitHub's message withheld, it quoted the request's credentials".to_string();
    }
    let line: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

/// One cached token.
struct Cached {
    token: SecretString,
    expires_at: Timestamp,
}

impl Cached {
    /// Good until [`REFRESH_MARGIN`] before it expires.
    fn fresh_at(&self, now: Timestamp) -> bool {
        let margin = i64::try_from(REFRESH_MARGIN.as_millis()).unwrap_or(i64::MAX);
        now.as_millis() < self.expires_at.as_millis().saturating_sub(margin)
    }
}

struct Entry {
    installation_id: u64,
    slot: Arc<tokio::sync::Mutex<Option<Cached>>>,
}

/// Installation tokens cached per (base URL, App, installation, narrowing), each until five
/// minutes before its `expires_at` ([`REFRESH_MARGIN`]).
///
/// Minting is single-flight per key: callers that find the same stale entry wait for one
/// request instead of each sending their own. The map's lock is never held across an
/// await. `Debug` shows the number of entries only.
#[derive(Default)]
pub struct InstallationTokenCache {
    entries: std::sync::Mutex<HashMap<String, Entry>>,
}

impl InstallationTokenCache {
    /// An empty cache.
    pub fn new() -> InstallationTokenCache {
        InstallationTokenCache::default()
    }

    /// The token for this installation and narrowing: the cached one while `now` is more
    /// than five minutes before its expiry, else a new one from [`installation_token`]
    /// (minted with a JWT for `now`). A failed mint caches nothing.
    pub async fn get_or_mint(
        &self,
        http: &dyn HttpTransport,
        base_url: &str,
        app: &GithubApp,
        narrow: &TokenNarrowing,
        now: Timestamp,
    ) -> Result<SecretString> {
        let slot = self.slot(base_url, app, narrow);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.token.clone());
        }
        let minted = installation_token_at(http, base_url, app, narrow, now).await?;
        let token = minted.token.clone();
        *cached = Some(Cached {
            token: minted.token,
            expires_at: minted.expires_at,
        });
        Ok(token)
    }

    /// Forgets every token of this installation (for unlinking, or after GitHub refused
    /// one); the next [`get_or_mint`](Self::get_or_mint) mints afresh.
    pub fn invalidate(&self, installation_id: u64) {
        self.map()
            .retain(|_, e| e.installation_id != installation_id);
    }

    /// Forgets every token.
    pub fn clear(&self) {
        self.map().clear();
    }

    /// How many (installation, narrowing) entries the cache holds.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map is consistent after any panic (every update is one call), so a poisoned
        // lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(
        &self,
        base_url: &str,
        app: &GithubApp,
        narrow: &TokenNarrowing,
    ) -> Arc<tokio::sync::Mutex<Option<Cached>>> {
        let base = base_url.trim().trim_end_matches('/');
        let mut key = String::with_capacity(base.len() + 64);
        key.push_str(base);
        key.push('\u{0}');
        key.push_str(&app.app_id);
        key.push('\u{0}');
        key.push_str(&app.installation_id.to_string());
        key.push('\u{0}');
        narrow.canonical(&mut key);
        let mut map = self.map();
        if let Some(e) = map.get(&key) {
            return Arc::clone(&e.slot);
        }
        let slot = Arc::new(tokio::sync::Mutex::new(None));
        map.insert(
            key,
            Entry {
                installation_id: app.installation_id,
                slot: Arc::clone(&slot),
            },
        );
        slot
    }
}

impl fmt::Debug for InstallationTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationTokenCache")
            .field("entries", &self.len())
            .finish()
    }
}
