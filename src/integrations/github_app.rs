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

/// Parses the App's PEM key, refusing anything but an unencrypted RSA private key of at
/// least 2048 bits. Errors name the kind of block found, never its contents.
fn parse_private_key(pem: &SecretString) -> Result<RsaKeyPair> {
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
    let (_, der) = der::pem::decode_vec(text.as_bytes())
        .map_err(|_| Error::invalid(FIELD, format!("is a damaged PEM block; {WHERE}")))?;
    let der = zeroize::Zeroizing::new(der);
    let parsed = if label == "RSA PRIVATE KEY" {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    // ring checks the key's numbers (and refuses moduli under 2048 bits) as it parses it;
    // a refusal is told apart by reading the block's structure.
    let key = parsed
        .map_err(|_| Error::invalid(FIELD, format!("{}; {WHERE}", why_refused(label, &der))))?;
    if key.public().modulus_len() < MIN_MODULUS_BYTES {
        return Err(Error::invalid(
            FIELD,
            format!(
                "is an RSA key of {} bits; GitHub App keys are 2048 bits or more; {WHERE}",
                key.public().modulus_len() * 8
            ),
        ));
    }
    Ok(key)
}

/// Why ring refused a key block: another algorithm, a short key, or damaged numbers (never
/// anything of the key itself).
fn why_refused(label: &str, der: &[u8]) -> String {
    use pkcs8::der::Decode;
    /// `rsaEncryption` (RFC 8017, appendix C).
    const RSA_ENCRYPTION: pkcs8::ObjectIdentifier =
        pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    let rsa = if label == "RSA PRIVATE KEY" {
        Some(der)
    } else {
        match pkcs8::PrivateKeyInfo::from_der(der) {
            Ok(info) if info.algorithm.oid == RSA_ENCRYPTION => Some(info.private_key),
            Ok(_) => {
                return "is not an RSA private key (a PKCS#8 block holding another algorithm); \
                        GitHub App keys are RSA"
                    .into()
            }
            Err(_) => None,
        }
    };
    let bits = rsa
        .and_then(|d| pkcs1::RsaPrivateKey::from_der(d).ok())
        .map(|k| {
            let m = k.modulus.as_bytes();
            let lead = m.iter().take_while(|b| **b == 0).count();
            (m.len() - lead) * 8
        });
    match bits {
        Some(bits) if bits < MIN_MODULUS_BYTES * 8 => {
            format!("is an RSA key of {bits} bits; GitHub App keys are 2048 bits or more")
        }
        _ => "is damaged: not a usable RSA private key (its numbers are inconsistent)".into(),
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
    let body =
        match narrow.body() {
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
        return Err(refusal(
            app,
            &peer,
            status,
            response.body(),
            &jwt,
            Call::Mint,
        ));
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
    let request = github_request(
        http::Method::GET,
        &format!("{base}/app"),
        &jwt,
        Bytes::new(),
    )?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(refusal(
            app,
            &peer,
            status,
            response.body(),
            &jwt,
            Call::App,
        ));
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
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
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
    let line: String = redact_token_shaped(&message)
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

/// `text` with every token-shaped word (16 characters or more of letters, digits and
/// `_-.+/=`, with at least one letter and one digit) replaced by `[redacted]`: a server that
/// quotes a credential back does not get it into an error. GitHub's own messages keep
/// their words.
fn redact_token_shaped(text: &str) -> String {
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let shaped = word.len() >= 16
            && word.chars().any(|c| c.is_ascii_digit())
            && word.chars().any(|c| c.is_ascii_alphabetic());
        out.push_str(if shaped { "[redacted]" } else { word.as_str() });
        word.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A PKCS#1 RSA-2048 key (`openssl genrsa -traditional 2048`); a test key only.
    const PKCS1_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAn6dfekzA1tKDEipKCaPLNEfgEAshV9eBKI5ce7QAB4O2jlAF\n\
DBo1W5k9CYZGpkkrOEmaxbTYgEf7DYXYV0esJNOTAFdOQASJMVyP7qLFPh6JVfrf\n\
VYp+3e3KBzCaoURM9atxJkP+TGOkKDwkeMXPsnlqHSZREPNuEea5PK/WtFeqj+zI\n\
NbF+7+cMCjJaoxN4QTk6mbR4MjZNd+guUZhpVFlW5FRRAyAqdJxAwFcjY14QbTIj\n\
3QaPX96KvtKC9Fhd30tOr4nrjHSWQ1Lc/yQuu8Kx6UIMS3upItxk/KwmlbLGB37u\n\
XW3whOs+GZr3+z0oGmC7d4rc1z2d5ykSEAc5hwIDAQABAoIBAENetnx+PPWpuWOF\n\
8t4kfxAdsGA0wio2Jyt8/2u35jdFjlh5Tdfwi0mO3WHShqeOwq0q6iO5j456UWdA\n\
bq1N8kdL/IEtVjjPcTEiNR5nE0KGUj+08F9BZQ2zVQg5q1aX4r3cTY/vKzUC6veL\n\
gXxxRJa0g2GvlI/JmU32hX4lWT2aAgcSBLMr8koe8rOrL1Q3h/amIqhZQLTmW4qU\n\
LzpHGSNzr+DX8UxGFdOG86/e9H/nTXPHWnXxMJzaJBhCHECc71FJ7B+ebvJcKWQD\n\
5NkfdnHCbmLNnyDd0fNkGtiQ1ULgdpX+avN1pjuY4IK7UzhCDkeRi8/BN5g9lBh8\n\
PW1Cd5kCgYEA0UwJWHaN3lmLZVuc26rVkkTJkC5fHIKKpsdLeubu6STzsDt3wffZ\n\
uu2ETFmZ7/wUMaIWl2EQPIqQxJO3IrC+cD4dL76YF1I5HT39kiBzmBVyv748mIor\n\
ypAcT2/y9C0MbJ2U49wb3Tt6HU5IQqPpNrPFP1JdlvUB+PXSvBQurHsCgYEAw0d/\n\
ibqiYyFK+MadsDjWfNqG9mehqZKOkjIXVDk3yPB9GuASSznTGlJGkg635wRHRmof\n\
7NF2WdAC2V9vM7HP+IOAEYqaspu3RI0OMPzFmw3L52spksLi2jh1NkkDFlN0OmFc\n\
XUzWbJ+C/jIMcIdxW0HSbjOW7/wMhgPIfjNQd2UCgYB93+QS/yItot8SM3nwJxtR\n\
X+t1ul3bcKtgyKWdofv33hBtYiaRUrXxFV4m6RCK46llfF1n56lzL8cHYuuWgoPW\n\
T5UQHOmtxPaynpC9bKT4x5V+ujQJbbgOmINeRy7wKZO6Uz+zlrJvaJD1xRnyclAV\n\
ZSLxBWFiI7Ju/7EhCmZTtwKBgC+C0MPotaOasQvv/uOmIIFGBbojopCISMnHCCgE\n\
t87avAVy6OCGlBb+V48np5S8VL8MCPJsT/gwBNFwR7TzGR9klx8tcs/r1N4H16ER\n\
jt5Xr/mA+B9t7RWc0N/BSc//w/KER52nmS/aa1t/P8mNGoZScGlBggKnd0CP4RLb\n\
V0OFAoGAORoB71KVMHFFoL8t7P93h/vpBYu2qMvqvY60HG+72YJTH6JfANNgKZds\n\
i2wzZk4d50TJuSfjP4+TeJmcNwYK+Xu0iI+3UqqWATg0ad7Aa/smlNhbe21Zxafl\n\
9PQDuj+qjVk03+YS2d/FWauFaaX3tRFn1CimqBdwy57Z1PA6G/w=\n\
-----END RSA PRIVATE KEY-----\n";
    /// A PKCS#8 RSA-2048 key (`openssl genrsa 2048 | openssl pkcs8 -topk8 -nocrypt`); a test key only.
    const PKCS8_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCunvh/3DJT/TgY\n\
uNNzg3c3DWOeC9/kcnjEw2xzvQFQ70+KxDdl6Uc0PTKoOYLl2Qd7kpEUncfYz4ka\n\
G+s8STMaFUBRcoMHzAepO5s09WaJQSSBSaq+cIAKtLfmyzXyEB3GN0KTrSNaKNC8\n\
nxPnjYC9lHoam/rquQ7zfWbmegZGnPKkVoFENjsX50pBIZRvMmEgvWpTOU/B7SRN\n\
DM23qBS8ztYxFy20mdf5gwm4Ol8EJBHg21ry840xF2V1nSOMdClQJmusR6CIXdvW\n\
CBYdxbFm7yX8Z0z8DoKa6Ijxxekl1fJKcqOamNG79AC+pNTuL6UYniSirHhi33K2\n\
RW8jNixPAgMBAAECggEAVgofUETLiYW9s7Sx/3s57ObMfE3GijX7Gpxd3iM1OE9K\n\
BopK74yDWJKE2M3JmP4YSUN898cMduA/Yh16iVBZ/RKWh+sf8+IMrk6f2XbHCH8Q\n\
ASIunroo5N2JtY7QLE7TlNyakdAgGKb+vsm1EYUv93lmtqC/gBMh8kiKQKrEV9rh\n\
PJ4YfTa7Gcj09gh7uZAqyr03lS4xTPTGJvlWlRNqI5/aKivNJggYakK/eQG3jebH\n\
Ls509m/l6sAN0GkJYFN1is/c404yVRHVJRUrfv0zbsy8NjeQD6vuJi3N635JqqR1\n\
8NyacHGpDUaQVdzb/LsIVo59uP7dW23vWXhjS6zhrQKBgQDmCZ3RW7wizw1Nq2eO\n\
MqMPn8wokHKbOsR2UIufXEyqbge8dvqwZfeoGJ5EtdiGIgAHo9DFiez3S+7xlLdG\n\
cScfvipt+9gs3SasLb0R09eLlNEwq0KXo2HiYtyjSl4MGpH7p+kfAp+QW3rDliAF\n\
uw8cbaERAj6qljEbh4VG2V3KEwKBgQDCVDmWjHQVRp6P4A7YeyJ6nzLfYb/1c4yH\n\
eaUNyUegNVp4wtgQ85jNC0EjZkFCcuM3wlR+Ah7IQ101I2jC0bdv7HgGBRyAmdMd\n\
s56NGesFVjBHfyp8S9PRejNB+4SRlX5IkuxNvKqmxQ1tl/lUQ0uvKh6vLYTb66kV\n\
DMAcligcVQKBgQDJrESf9zzJh5yyK0NudxZd7EqghYL0dGEpGRRPciwEftJpeCXv\n\
4HVu+aZHtuVNMyGzkPrHNFR7uiaRxT+okisquR2ZruGm83ukF7Vam86soJuFf5+y\n\
MZrvTp0Ay4IIOoMhjePjO/mIJatLLaKFY6mr0rESqFUoWORUrks6Afcn4QKBgH9z\n\
zB1gWxZFLePBGRuEjxWLaks2CjdKpKWJ8+X52F9L/t1rNVjQ26vHsN4tx6l0PnAo\n\
pU/LxjKkc/JRGfmEoGHo3sNcANibiupVDy0ODaV/ZMTPs6a3+OHP2uRwuP7e5Gdm\n\
7VMC5Y3hebAiV6WbSX1GC7/rA9NVWZzzsuBM31vNAoGBAIRObShuF9tUpcPBO/jO\n\
avg9I4WUqhPczQZ032UTG38MZ7Bj1q+YRu1DO7LaTXE5CczHbJwyAV9jqJKznXd5\n\
IPdAPBx2uW+o/gFoi+hmH0V5ovQhlom0OA4G7QuVwgVyc3egW0k1/Wp4r6oZ1pPK\n\
Ja80e0xAGq5pWQFpPTGD4n42\n\
-----END PRIVATE KEY-----\n";
    /// A PKCS#8 P-256 key: not RSA.
    const EC_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLgLtNh538MpIdXxS\n\
HZ+VOKW3xxAw6HcykZUn0aZReo2hRANCAARf/N7IqLNL75tZg5MGHFUqslJiYuLP\n\
+HV2uk6UZQCSvK08DyB8KDpThNOhQwLBmCs6yuIyWlbjuWxCunslTjvJ\n\
-----END PRIVATE KEY-----\n";
    /// A PKCS#1 RSA-1024 key: too short to be a GitHub App's.
    const RSA_1024_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIICXAIBAAKBgQCsh94Sh+oHVKLtPMrHy/2/D7nFC+E6V54gPA/3BwRow+iweVlq\n\
4K7aEdsYB8Xmnv0sv5EIbStqo3Z2GEBzNIQHw8YMLpm8uWcrxEewlhE61vtgYT7e\n\
hO8Cv2n95z2m3Ycr0dTFx9+/OJ6VNKrDo7AqlX9LJw8BPPJhMh/2jp29pQIDAQAB\n\
AoGABObfUlt2NLsc3eyqPj73eKQzvPt3bLbskTHjqjsSzv8x70GjXrv/e8aiGO6v\n\
mrvNqaXPsxOW9jKqvPQ3cI5/acUSq3pKvYUrWnakVFNrtcWLIp5ymWjLaS333Lag\n\
kneJLHX0kDFiv392vsAAsmO/gE8m5Pv6adSWZhAqKiYviAkCQQDl49DmVpcVsNha\n\
6rLbFAZn1MFgLv3EeyoVFXfLqtF+V8kpU41a4rxDR1MCsNmnrYEzTbO+/fyuVpFg\n\
+TwDGMXTAkEAwCBMv5IXFA5eItxyFBNQTyEZbK8bZ4X/hZ2SsG6pXHwadcTX6svx\n\
4YJmY4wlUURfU3RkJDsdcSevBIo5zzTrpwJBAMLkiE0+S4fQDRvGrSqdp3CPJgFs\n\
1SalY9/L+2tmvYPm2Ft4wfWzEvfWl8FIPL2ykj30OdZJbNY//a/Am+fkMJECQH5O\n\
fcZPt8Zir7aBcKoMDHcJDprp/70uVc80yXQePE9l80tLTpu42lrkDIYTY5EqvvSx\n\
hwheqLt0WFZGvTyg0O8CQAbiXmDm1EG0zjH8K8xPmszPxL/36afODYlQdDQ1z8Nw\n\
y0SMhmktSLvuMw+iApPqe6t3xz9Nj8UtmihBzDalnLw=\n\
-----END RSA PRIVATE KEY-----\n";
    /// The public half of `PKCS1_KEY`.
    const PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAn6dfekzA1tKDEipKCaPL\n\
NEfgEAshV9eBKI5ce7QAB4O2jlAFDBo1W5k9CYZGpkkrOEmaxbTYgEf7DYXYV0es\n\
JNOTAFdOQASJMVyP7qLFPh6JVfrfVYp+3e3KBzCaoURM9atxJkP+TGOkKDwkeMXP\n\
snlqHSZREPNuEea5PK/WtFeqj+zINbF+7+cMCjJaoxN4QTk6mbR4MjZNd+guUZhp\n\
VFlW5FRRAyAqdJxAwFcjY14QbTIj3QaPX96KvtKC9Fhd30tOr4nrjHSWQ1Lc/yQu\n\
u8Kx6UIMS3upItxk/KwmlbLGB37uXW3whOs+GZr3+z0oGmC7d4rc1z2d5ykSEAc5\n\
hwIDAQAB\n\
-----END PUBLIC KEY-----\n";
    /// `PKCS1_KEY` as encrypted PKCS#8.
    const ENCRYPTED_KEY: &str = "\
-----BEGIN ENCRYPTED PRIVATE KEY-----\n\
MIIFLTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIkHNpVH0J8Y0CAggA\n\
MAwGCCqGSIb3DQIJBQAwHQYJYIZIAWUDBAEqBBCOs+tRMVNm6FdE9ZK9PnwyBIIE\n\
0PSRCEpCy8giorN+t1Q6pyc6B6bD/AT1v5/jdv13k7p2WSYYUewrAs/f7YPzIkhq\n\
qToSgC/tAif4rFRiCJmupelBoDlIDzvd1l8gR45xIkbPaY2Jy98Q+thyBFZA2knu\n\
iTIz/F0mcbRSCZs75lssPCFPN3qYhRW97l0ZtwkisHwZpi7SpF58+DiGx6HPZytX\n\
LT0SHNQeKP1W5fRu1R0Y3lJbPfT+rg2JVZ8fwFQSglWWrxO/O+lV5IyvI0DUUX04\n\
qXfTEeC7YpZbJ5nnfT/rku9nz7Swhq8Ba0IvXPdja0qjUUlTsEx4vJbeDdJOdxYJ\n\
1Y0Gf3xY1hkjsgjjzSnlYIhMaVP/GRbidvWWobNOHnmqEiTdMXYV4YCwYFKhsVpG\n\
iI5/WyS5rGq6jb3v2zKh5N8xdjlOJhoU/O8XTihvhYLxunUfYFFex9NbWygcyNQM\n\
yJ3LbqWmRtmftd+2qf58sYx3pPFFj1+ENmsiFbrpzUzY35uL8t0XtAqw4oo4tSgz\n\
XoBB77Bmnd4N6+ZHpmtccgjPzEWlAKJ+L3qRWU42+1kCaEuUMbPAJ+dS2CqZwmWw\n\
F9yx5jOg8IDYSbDCqWKs4yTuWh4iB/1FocR0ihCifJKZjHi1EM9fw0yzUOvpPdWg\n\
0AAK/9UDZV4acmOujz0z3zs3kVyJDbNgFEUzxgqIZ22fnfjEepDWg4URkEp2wrop\n\
ItgUTIrHltd8ohW9KAF9i9P3/AUXRijcY2oT7AhpAsXE0lc/jzqrUtRnXw0LjY1c\n\
3IUikJ3YKdwhGddr3vNN8GgCm+wv1p3rCkLPGzi/lQNsxgRBhLOdxGGx1717v+Nt\n\
+QbPQy2zoDDj4mMIfAXw8NzRkfMus//xt6RAl4cI6RRn2wGGdxdRouwloGQtUJ5I\n\
GvtR9+A/he+Xc6ZihxX0eCegTtgD1C+m7Ly/VfkZiCGg0IzB6PbmhRzNHtQV4kAl\n\
jwjPzbkr5gdkXlvoURx+Lfz0mKvbjxqlq240wt9f/GnipJ5PYTsb0E6KHRI70qwm\n\
l2xjfKPfIRefaV2iwIXkuMInKjUziFy529TLAmxvXUSam0HG8ZieNU9eIo5X+ITc\n\
cyDfMZ57LNOVpxEyiQWzk3lcfIyp1B2Wuv7zn+asYqrdQEegQie+eT62+7K4fTJk\n\
pwO28PnSnYJCJNtpwOcDPtsZ3T7QhHVS3f2bozwekmcpkq+6+nsEJosaaBIWKiM5\n\
tuKKnaxxIlkM6Ay9r22sGXBqzf/BG/PtwJO7QGLzCLFOIf7P5/NzkmcheTAm0+2k\n\
zVV1Wv0lVMoEjys6XsMF9GkEQ8Iezp+f4aCr7JWFbLqoPnpQJx1BqUR/xAOwTkQx\n\
n3KgHlHLKE+kSC8Uu9W0tS+pHira5LmUG8cacjGIZQR7KWrraC8DFEKRbY34QzW1\n\
eMeN5Y1lLTEKxoYzHMQx0shLs9z8w1w21ZBUmi9CwENReD9Eslu8My35Y3z57oA5\n\
4JqGEwaNzMjRx9aAINz2Auy68Xlq2X5pN00zDc8titE0kWgjOgIapCmti30XNShp\n\
4BoUo8elYl7MjAMRhqjBbexebWWHHp2uAB6P/bXSfo72QgZUoSFqE/34ZSfItGTb\n\
HiU5A2dYem/5mtkt6wycVSHVpN9ueSZZUqx2ILPvnyfy\n\
-----END ENCRYPTED PRIVATE KEY-----\n";

    /// A moment with whole seconds: 2030-01-02T03:04:05Z.
    const NOW_SECS: i64 = 1_893_553_445;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn app(key: &str, client_id: Option<&str>) -> GithubApp {
        GithubApp::new("123456", client_id.map(str::to_string), 42, secret(key)).expect("app")
    }

    /// The JWT's header and claims, decoded by hand.
    fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(
            parts.len(),
            3,
            "a JWS compact serialisation has three parts"
        );
        let part = |i: usize| URL_SAFE_NO_PAD.decode(parts[i]).expect("base64url");
        let json = |i: usize| serde_json::from_slice(&part(i)).expect("json");
        (json(0), json(1), part(2))
    }

    /// Verifies `jwt` against the public half of `pem` with the `rsa` crate.
    fn verify(jwt: &str, pem: &str) {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::Verifier;
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
            .expect("test key");
        let key = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(private.to_public_key());
        let (signed, sig) = jwt.rsplit_once('.').expect("dot");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("sig");
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).expect("sig shape");
        key.verify(signed.as_bytes(), &sig)
            .expect("RS256 signature");
    }

    #[test]
    fn both_key_forms_sign_rs256_jwts_with_githubs_claims() {
        let now = Timestamp(NOW_SECS * 1000 + 999);
        for (pem, client_id, iss) in [
            (PKCS1_KEY, None, "123456"),
            (PKCS8_KEY, None, "123456"),
            (PKCS1_KEY, Some("Iv23liAbCdEf"), "Iv23liAbCdEf"),
            (
                PKCS8_KEY,
                Some("Iv1.8a61f9b3a7aba766"),
                "Iv1.8a61f9b3a7aba766",
            ),
        ] {
            let app = app(pem, client_id);
            assert_eq!(app.issuer(), iss);
            let jwt = app.jwt(now).expect("jwt");
            let (header, claims, sig) = decode(jwt.expose_secret());
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["typ"], "JWT");
            assert_eq!(claims["iat"], NOW_SECS - 60);
            assert_eq!(claims["exp"], NOW_SECS + 540);
            assert_eq!(claims["iss"], iss);
            assert_eq!(claims.as_object().map(|o| o.len()), Some(3), "{claims}");
            assert_eq!(sig.len(), 256, "RSA-2048 signature");
            verify(jwt.expose_secret(), pem);
        }
    }

    #[test]
    fn a_pkcs1_key_and_its_pkcs8_form_are_one_key() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        // RSA PKCS#1 v1.5 signatures are deterministic: both forms of one key sign alike.
        let converted = rsa::RsaPrivateKey::from_pkcs1_pem(PKCS1_KEY)
            .expect("test key")
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pkcs8");
        assert!(converted.starts_with("-----BEGIN PRIVATE KEY-----"));
        let from_pkcs1 = app(PKCS1_KEY, None).jwt(Timestamp(0)).expect("jwt");
        let from_pkcs8 = app(&converted, None).jwt(Timestamp(0)).expect("jwt");
        assert_eq!(from_pkcs1.expose_secret(), from_pkcs8.expose_secret());
        let other = app(PKCS8_KEY, None).jwt(Timestamp(0)).expect("jwt");
        assert_ne!(from_pkcs1.expose_secret(), other.expose_secret());
    }

    #[test]
    fn anything_but_an_rsa_private_key_is_refused_without_being_quoted() {
        let mut damaged = PKCS1_KEY.to_string();
        // Flip characters in the middle of the body: still base64, no longer the key.
        let mid = damaged.len() / 2;
        damaged.replace_range(mid..mid + 8, "AAAAAAAA");
        let cases: Vec<(&str, String, &str)> = vec![
            ("garbage", "not a key at all, secret-canary-1234567890".into(), "not a PEM block"),
            ("empty", String::new(), "not a PEM block"),
            ("EC", EC_KEY.into(), "not an RSA private key"),
            ("public", PUBLIC_KEY.into(), "public key"),
            ("encrypted", ENCRYPTED_KEY.into(), "encrypted"),
            ("1024-bit", RSA_1024_KEY.into(), "1024 bits"),
            ("damaged", damaged, "RSA"),
            (
                "openssh",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n".into(),
                "not an RSA key",
            ),
        ];
        for (what, pem, expect) in cases {
            let e = GithubApp::new("123456", None, 42, secret(&pem)).expect_err(what);
            let text = e.to_string();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{what}: {text}");
            assert!(text.contains("GitHub App private key"), "{what}: {text}");
            assert!(text.contains(expect), "{what}: {text}");
            assert!(!text.contains("canary"), "{what}: {text}");
            // No run of the key's body reaches the message.
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                for chunk in line.as_bytes().chunks(12).filter(|c| c.len() == 12) {
                    let chunk = std::str::from_utf8(chunk).expect("ascii");
                    assert!(!text.contains(chunk), "{what} quoted its key: {text}");
                }
            }
            assert!(!format!("{e:?}").contains("MII"), "{what}");
        }
    }

    #[test]
    fn ids_are_checked() {
        let new = |app: &str, client: Option<&str>, inst: u64| {
            GithubApp::new(app, client.map(str::to_string), inst, secret(PKCS1_KEY))
        };
        for bad in ["", "abc", "12a", "0", "-1", "123456789012345678901"] {
            let e = new(bad, None, 1).expect_err(bad);
            assert!(e.to_string().contains("GitHub App id"), "{e}");
        }
        let e = new("1", Some("has space"), 1).expect_err("client id");
        assert!(e.to_string().contains("client id"), "{e}");
        let e = new("1", None, 0).expect_err("installation 0");
        assert!(e.to_string().contains("installation id"), "{e}");
        // An empty client id is none; ids are trimmed.
        let app = new(" 77 ", Some(" "), 9).expect("ok");
        assert_eq!(
            (app.app_id(), app.client_id(), app.installation_id()),
            ("77", None, 9)
        );
        assert_eq!(app.issuer(), "77");
    }

    #[test]
    fn debug_shows_ids_only() {
        let app = app(PKCS1_KEY, Some("Iv23liAbCdEf"));
        let jwt = app.jwt(Timestamp(0)).expect("jwt");
        let text = format!("{app:?} {:?}", app.clone());
        assert!(text.contains("123456") && text.contains("Iv23liAbCdEf") && text.contains("42"));
        assert!(
            !text.contains("MII") && !text.contains(jwt.expose_secret()),
            "{text}"
        );
        let token = InstallationToken {
            token: secret("ghs_canary_token"),
            expires_at: Timestamp(0),
        };
        assert!(!format!("{token:?}").contains("canary"));
        assert_eq!(
            format!("{:?}", InstallationTokenCache::new()),
            "InstallationTokenCache { entries: 0 }"
        );
        // A clone signs alike (PKCS#1 v1.5 is deterministic).
        let again = app.clone().jwt(Timestamp(0)).expect("jwt");
        assert_eq!(jwt.expose_secret(), again.expose_secret());
    }

    #[test]
    fn narrowing_sends_only_what_it_sets() {
        assert_eq!(TokenNarrowing::none().body(), None);
        let mut n = TokenNarrowing {
            repositories: vec!["docs".into(), "site".into()],
            ..TokenNarrowing::default()
        };
        assert_eq!(
            n.body(),
            Some(serde_json::json!({"repositories": ["docs", "site"]}))
        );
        n.repository_ids = vec![7];
        n.permissions.insert("contents".into(), "read".into());
        assert_eq!(
            n.body(),
            Some(serde_json::json!({
                "repositories": ["docs", "site"],
                "repository_ids": [7],
                "permissions": {"contents": "read"},
            }))
        );
        n.check().expect("valid");
        for (bad, expect) in [
            (vec!["octo-org/docs".to_string()], "without"),
            (vec![String::new()], "not a repository name"),
            (vec!["a b".to_string()], "not a repository name"),
            (vec!["r".to_string(); 501], "500"),
        ] {
            let n = TokenNarrowing {
                repositories: bad,
                ..TokenNarrowing::default()
            };
            let e = n.check().expect_err(expect);
            assert!(e.to_string().contains(expect), "{e}");
        }
        let mut n = TokenNarrowing::default();
        n.permissions.insert("contents".into(), "Read!".into());
        assert!(n.check().is_err());
        let n = TokenNarrowing {
            repository_ids: vec![0],
            ..TokenNarrowing::default()
        };
        assert!(n.check().is_err());
    }

    #[test]
    fn the_cache_key_ignores_order() {
        let key = |n: &TokenNarrowing| {
            let mut s = String::new();
            n.canonical(&mut s);
            s
        };
        let a = TokenNarrowing {
            repositories: vec!["b".into(), "a".into()],
            repository_ids: vec![2, 1, 2],
            ..TokenNarrowing::default()
        };
        let b = TokenNarrowing {
            repositories: vec!["a".into(), "b".into()],
            repository_ids: vec![1, 2],
            ..TokenNarrowing::default()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&TokenNarrowing::none()));
        // A repository name cannot pose as an id list.
        let names = TokenNarrowing {
            repositories: vec!["1".into()],
            ..TokenNarrowing::default()
        };
        let ids = TokenNarrowing {
            repository_ids: vec![1],
            ..TokenNarrowing::default()
        };
        assert_ne!(key(&names), key(&ids));
    }

    #[test]
    fn a_cached_token_is_fresh_until_five_minutes_before_expiry() {
        let expires_at = Timestamp(10_000_000);
        let c = Cached {
            token: secret("t"),
            expires_at,
        };
        let margin = 5 * 60 * 1000;
        assert!(c.fresh_at(Timestamp(0)));
        assert!(c.fresh_at(Timestamp(10_000_000 - margin - 1)));
        assert!(!c.fresh_at(Timestamp(10_000_000 - margin)));
        assert!(!c.fresh_at(Timestamp(10_000_000 + 1)));
    }

    #[test]
    fn base_urls_must_be_secure() {
        assert_eq!(
            api_base("https://api.github.com/").expect("ok"),
            "https://api.github.com"
        );
        assert_eq!(
            api_base("https://ghe.example/api/v3").expect("ok"),
            "https://ghe.example/api/v3"
        );
        assert!(api_base("http://127.0.0.1:8080").is_ok());
        for bad in [
            "http://api.github.com",
            "ftp://x",
            "not a url",
            "https://user:pass@api.github.com",
            "https://api.github.com?x=1",
        ] {
            let e = api_base(bad).expect_err(bad);
            assert!(!e.to_string().contains("pass@"), "{e}");
        }
    }

    #[test]
    fn githubs_message_is_kept_unless_it_quotes_the_jwt() {
        let app = app(PKCS1_KEY, None);
        let jwt = app.jwt(Timestamp(0)).expect("jwt");
        let body = |m: &str| serde_json::to_vec(&serde_json::json!({ "message": m })).expect("j");
        assert_eq!(
            github_message(&body("Integration not found"), &jwt),
            ": Integration not found"
        );
        assert_eq!(github_message(b"<html>", &jwt), "");
        assert_eq!(
            github_message(
                &body("'exp' is too far in the future (ghs_16C7e42F292c6912E7710c838347Ae178B4a)"),
                &jwt
            ),
            ": 'exp' is too far in the future ([redacted])"
        );
        assert_eq!(
            redact_token_shaped("repository 'octo-org/docs' at 2016-07-11T22:14:10Z"),
            "repository 'octo-org/docs' at 2016-07-11T22:14:10Z"
        );
        let echoed = github_message(&body(&format!("bad {}", jwt.expose_secret())), &jwt);
        assert!(echoed.contains("withheld"), "{echoed}");
        let sig = jwt
            .expose_secret()
            .rsplit('.')
            .next()
            .expect("sig")
            .to_string();
        assert!(github_message(&body(&sig), &jwt).contains("withheld"));
        let e = refusal(
            &app,
            "h",
            401,
            &body(&format!("x {}", jwt.expose_secret())),
            &jwt,
            Call::Mint,
        );
        assert!(!e.to_string().contains(&sig), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        let kinds = [
            (403, crate::ErrorKind::PermissionDenied),
            (404, crate::ErrorKind::NotFound),
            (422, crate::ErrorKind::InvalidInput),
            (429, crate::ErrorKind::Transport),
            (502, crate::ErrorKind::Transport),
            (418, crate::ErrorKind::Transport),
        ];
        for (status, kind) in kinds {
            assert_eq!(
                refusal(&app, "h", status, b"", &jwt, Call::Mint).kind(),
                kind,
                "{status}"
            );
        }
    }
}
