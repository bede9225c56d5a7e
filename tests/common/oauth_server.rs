//! A real OAuth 2.0 authorization server on 127.0.0.1 for the integration tests.
//!
//! It speaks the documented protocols over a small hand-written HTTP/1.1 server (every
//! answer carries `Connection: close`):
//!
//! - `POST /token`: the authorization code grant with PKCE (RFC 6749 §4.1.3, RFC 7636),
//!   refresh with rotation and reuse detection (RFC 6749 §6, RFC 9700 §4.14), and the device
//!   grant (RFC 8628 §3.4–3.5). Form-encoded bodies, or JSON when the Content-Type says so.
//! - `POST /device/code`: device authorization (RFC 8628 §3.1–3.2).
//! - `POST /revoke`: token revocation (RFC 7009); revoking a refresh token revokes its family.
//! - `GET /authorize`: auto-consent; answers `302 Found` to `{redirect_uri}?code=..&state=..`.
//! - `GET /userinfo` with `Authorization: Bearer <access>`: 200 `{"sub":"user-1"}` for a live
//!   access token, 401 otherwise.
//!
//! Registered clients: the confidential [`CONFIDENTIAL_CLIENT`] with secret
//! [`CONFIDENTIAL_SECRET`] (HTTP Basic per RFC 6749 §2.3.1, or `client_id`/`client_secret` in
//! the body) and the public [`PUBLIC_CLIENT`] (`client_id` only; sending any secret, even an
//! empty one through Basic, is `invalid_client`). More with [`OAuthServer::register_client`].
//!
//! All state sits behind one `std::sync::Mutex`, never held across an await; each connection
//! runs in its own task.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The confidential client's id.
pub const CONFIDENTIAL_CLIENT: &str = "test-client";
/// The confidential client's secret.
pub const CONFIDENTIAL_SECRET: &str = "test-secret";
/// The public client's id (it has no secret and must not send one).
pub const PUBLIC_CLIENT: &str = "public-client";
/// The device grant's `grant_type`.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The subject `/userinfo` reports for every live token.
pub const USER_SUB: &str = "user-1";

/// One request to `/revoke` that passed client authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The token as sent.
    pub token: String,
    /// `token_type_hint`, when sent.
    pub hint: Option<String>,
    /// The authenticated client.
    pub client_id: String,
}

/// One HTTP request the server received (any path, any outcome).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent, query included (`/authorize?response_type=code&...`).
    pub path: String,
    /// Every header in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl RecordedRequest {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The body parsed as `application/x-www-form-urlencoded` (last value wins).
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    /// The query parsed (last value wins).
    pub fn query(&self) -> HashMap<String, String> {
        let query = self.path.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }
}

/// An answer read by [`OAuthServer::call`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Every header in order.
    pub headers: Vec<(String, String)>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl HttpReply {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `error` member of a JSON body.
    pub fn error(&self) -> Option<String> {
        self.json()
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// A string member of a JSON body.
    pub fn field(&self, name: &str) -> Option<String> {
        self.json()
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

struct Client {
    secret: Option<String>,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    scope: String,
    challenge: Option<String>,
    expires_at: Instant,
    used: bool,
    /// The family its redemption started.
    family: Option<usize>,
}

struct Family {
    revoked: bool,
    access: Vec<String>,
    refresh: Vec<String>,
}

struct Access {
    family: usize,
    client_id: String,
    expires_at: Option<Instant>,
    revoked: bool,
}

struct Refresh {
    family: usize,
    client_id: String,
    scope: String,
    used: bool,
    revoked: bool,
}

#[derive(PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Issued,
}

struct Device {
    client_id: String,
    scope: String,
    interval: u64,
    expires_at: Instant,
    last_poll: Option<Instant>,
    status: DeviceStatus,
    polls: u64,
    slow_downs: u64,
}

struct State {
    base: String,
    clients: HashMap<String, Client>,
    codes: HashMap<String, Code>,
    families: Vec<Family>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    /// By user code.
    devices: HashMap<String, Device>,
    /// Device code → user code.
    device_codes: HashMap<String, String>,
    last_user_code: Option<String>,
    // Knobs.
    expires_in: Option<u64>,
    omit_refresh: bool,
    fail_next: (u32, u16),
    refresh_delay: Duration,
    device_interval: u64,
    device_expires_in: u64,
    slow_down_step: u64,
    code_lifetime: Duration,
    // Counters.
    refresh_count: u64,
    token_requests: u64,
    family_revocations: u64,
    refresh_reuses: u64,
    code_reuses: u64,
    revocations: Vec<Revocation>,
    requests: Vec<RecordedRequest>,
}

impl State {
    fn new_family(&mut self) -> usize {
        self.families.push(Family {
            revoked: false,
            access: Vec::new(),
            refresh: Vec::new(),
        });
        self.families.len() - 1
    }

    /// Revokes every access and refresh token of `family`; true if it was live.
    fn revoke_family(&mut self, family: usize) -> bool {
        let f = &mut self.families[family];
        let was_live = !f.revoked;
        f.revoked = true;
        for t in &f.access {
            if let Some(a) = self.access.get_mut(t) {
                a.revoked = true;
            }
        }
        for t in &f.refresh {
            if let Some(r) = self.refresh.get_mut(t) {
                r.revoked = true;
            }
        }
        was_live
    }

    /// A token response for `family`, with a new refresh token when `with_refresh`.
    fn issue(&mut self, family: usize, client_id: &str, scope: &str, with_refresh: bool) -> Value {
        let access = token("at");
        self.access.insert(
            access.clone(),
            Access {
                family,
                client_id: client_id.to_string(),
                expires_at: self
                    .expires_in
                    .map(|s| Instant::now() + Duration::from_secs(s)),
                revoked: false,
            },
        );
        self.families[family].access.push(access.clone());
        let mut body = json!({ "access_token": access, "token_type": "Bearer" });
        if let Some(s) = self.expires_in {
            body["expires_in"] = json!(s);
        }
        if with_refresh {
            let refresh = token("rt");
            self.refresh.insert(
                refresh.clone(),
                Refresh {
                    family,
                    client_id: client_id.to_string(),
                    scope: scope.to_string(),
                    used: false,
                    revoked: false,
                },
            );
            self.families[family].refresh.push(refresh.clone());
            body["refresh_token"] = json!(refresh);
        }
        if !scope.is_empty() {
            body["scope"] = json!(scope);
        }
        body
    }

    fn access_live(&self, t: &str) -> bool {
        self.access.get(t).is_some_and(|a| {
            !a.revoked
                && !self.families[a.family].revoked
                && a.expires_at.is_none_or(|e| Instant::now() < e)
        })
    }

    fn new_code(
        &mut self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        challenge: Option<&str>,
    ) -> String {
        let code = token("code");
        self.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_string(),
                redirect_uri: redirect_uri.to_string(),
                scope: scope.to_string(),
                challenge: challenge.map(str::to_string),
                expires_at: Instant::now() + self.code_lifetime,
                used: false,
                family: None,
            },
        );
        code
    }
}

/// A random token with a readable prefix (`at_…`, `rt_…`, `code_…`, `dc_…`).
fn token(prefix: &str) -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    format!("{prefix}_{}", hex::encode(b))
}

/// A user code such as `BCDF-GHJK`.
fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    let c: String = b
        .iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &c[..4], &c[4..])
}

/// The S256 code challenge of `verifier` (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running authorization server. Cheap to clone; the listener stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct OAuthServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _guard: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for OAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl OAuthServer {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start() -> OAuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = HashMap::new();
        clients.insert(
            CONFIDENTIAL_CLIENT.to_string(),
            Client {
                secret: Some(CONFIDENTIAL_SECRET.to_string()),
            },
        );
        clients.insert(PUBLIC_CLIENT.to_string(), Client { secret: None });
        let state = Arc::new(Mutex::new(State {
            base: format!("http://{addr}"),
            clients,
            codes: HashMap::new(),
            families: Vec::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            devices: HashMap::new(),
            device_codes: HashMap::new(),
            last_user_code: None,
            expires_in: Some(3600),
            omit_refresh: false,
            fail_next: (0, 503),
            refresh_delay: Duration::ZERO,
            device_interval: 5,
            device_expires_in: 600,
            slow_down_step: 5,
            code_lifetime: Duration::from_secs(60),
            refresh_count: 0,
            token_requests: 0,
            family_revocations: 0,
            refresh_reuses: 0,
            code_reuses: 0,
            revocations: Vec::new(),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        OAuthServer {
            addr,
            state,
            _guard: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A drop-in provider TOML with an `[oauth]` table pointing at this server.
    pub fn provider_toml(&self, name: &str, handler_type: &str) -> String {
        let b = self.base_url();
        format!(
            "[provider]\n\
             name = \"{name}\"\n\
             display_name = \"Local OAuth\"\n\
             handler_type = \"{handler_type}\"\n\
             [oauth]\n\
             authorize_url = \"{b}/authorize\"\n\
             token_url = \"{b}/token\"\n\
             device_authorization_url = \"{b}/device/code\"\n\
             revocation_url = \"{b}/revoke\"\n\
             scopes = [\"read\"]\n\
             client_auth = \"basic\"\n\
             pkce = true\n\
             [verify]\n\
             endpoint = \"{b}/userinfo\"\n\
             method = \"GET\"\n\
             auth_template = \"Authorization: Bearer {{access_token}}\"\n\
             success_codes = [200]\n"
        )
    }

    // ---- Playing the user ----

    /// Plays the user's consent: a new authorization code for `client_id`, bound to
    /// `redirect_uri`, `scope` and (when given) the S256 `code_challenge`. Valid 60 s.
    pub fn authorize(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        code_challenge: Option<&str>,
    ) -> String {
        self.st()
            .new_code(client_id, redirect_uri, scope, code_challenge)
    }

    /// Approves a device authorization; false if the user code is unknown.
    pub fn approve_device(&self, user_code: &str) -> bool {
        self.set_device_status(user_code, DeviceStatus::Approved)
    }

    /// Denies a device authorization; false if the user code is unknown.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.set_device_status(user_code, DeviceStatus::Denied)
    }

    fn set_device_status(&self, user_code: &str, status: DeviceStatus) -> bool {
        match self.st().devices.get_mut(user_code) {
            Some(d) if d.status == DeviceStatus::Pending => {
                d.status = status;
                true
            }
            _ => false,
        }
    }

    /// The user code of the latest `/device/code` answer.
    pub fn last_user_code(&self) -> Option<String> {
        self.st().last_user_code.clone()
    }

    /// Issues a token pair for `client_id` as a finished login would (a new family), without
    /// any HTTP: for benchmarks that need many live refresh tokens.
    pub fn mint(&self, client_id: &str, scope: &str) -> (String, String) {
        let mut st = self.st();
        let family = st.new_family();
        let body = st.issue(family, client_id, scope, true);
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        (text("access_token"), text("refresh_token"))
    }

    // ---- Knobs ----

    /// `expires_in` of new access tokens (default 3600). `None`: omitted from responses and
    /// the tokens never expire.
    pub fn set_expires_in(&self, secs: Option<u64>) {
        self.st().expires_in = secs;
    }

    /// Refresh responses carry no `refresh_token`; the presented one then stays valid.
    pub fn set_omit_refresh_token(&self, omit: bool) {
        self.st().omit_refresh = omit;
    }

    /// The next `n` `/token` requests answer `status` with a JSON error body
    /// (`temporarily_unavailable` for 503, `server_error` otherwise), before anything else.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.st().fail_next = (n, status);
    }

    /// Every refresh grant request is processed at once, then its answer waits this long.
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.st().refresh_delay = delay;
    }

    /// Every refresh token issued so far becomes invalid (`invalid_grant`); no family is
    /// revoked and access tokens stay live.
    pub fn invalidate_refresh_tokens(&self) {
        for r in self.st().refresh.values_mut() {
            r.revoked = true;
        }
    }

    /// Every access token issued so far expires now.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for a in self.st().access.values_mut() {
            a.expires_at = Some(now);
        }
    }

    /// `interval` of new device authorizations (default 5 s).
    pub fn set_device_interval(&self, secs: u64) {
        self.st().device_interval = secs;
    }

    /// `expires_in` of new device authorizations (default 600 s).
    pub fn set_device_expires_in(&self, secs: u64) {
        self.st().device_expires_in = secs;
    }

    /// How much a `slow_down` adds to a device code's interval (default 5 s, RFC 8628 §3.5).
    pub fn set_slow_down_step(&self, secs: u64) {
        self.st().slow_down_step = secs;
    }

    /// The lifetime of new authorization codes (default 60 s).
    pub fn set_code_lifetime(&self, lifetime: Duration) {
        self.st().code_lifetime = lifetime;
    }

    /// Registers another client (`None`: public).
    pub fn register_client(&self, client_id: &str, secret: Option<&str>) {
        self.st().clients.insert(
            client_id.to_string(),
            Client {
                secret: secret.map(str::to_string),
            },
        );
    }

    // ---- Counters and inspection ----

    /// Successful refresh grants.
    pub fn refresh_count(&self) -> u64 {
        self.st().refresh_count
    }

    /// Every `/token` request, failed ones included.
    pub fn token_requests(&self) -> u64 {
        self.st().token_requests
    }

    /// Families revoked because a used refresh token came back (each family counted once).
    pub fn family_revocations(&self) -> u64 {
        self.st().family_revocations
    }

    /// Every presentation of an already used refresh token.
    pub fn refresh_reuses(&self) -> u64 {
        self.st().refresh_reuses
    }

    /// Every presentation of an already redeemed authorization code.
    pub fn code_reuses(&self) -> u64 {
        self.st().code_reuses
    }

    /// Every authenticated `/revoke` request, in order.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.st().revocations.clone()
    }

    /// Polls of the device code behind `user_code` (slow_downs included; 0 if unknown).
    pub fn device_polls(&self, user_code: &str) -> u64 {
        self.st().devices.get(user_code).map_or(0, |d| d.polls)
    }

    /// `slow_down` answers for the device code behind `user_code`.
    pub fn slow_downs(&self, user_code: &str) -> u64 {
        self.st().devices.get(user_code).map_or(0, |d| d.slow_downs)
    }

    /// The current polling interval of the device code behind `user_code`.
    pub fn device_interval(&self, user_code: &str) -> Option<u64> {
        self.st().devices.get(user_code).map(|d| d.interval)
    }

    /// Whether `/userinfo` would accept this access token now.
    pub fn is_access_token_live(&self, access_token: &str) -> bool {
        self.st().access_live(access_token)
    }

    /// Whether a refresh grant with this token would succeed now.
    pub fn is_refresh_token_live(&self, refresh_token: &str) -> bool {
        let st = self.st();
        st.refresh
            .get(refresh_token)
            .is_some_and(|r| !r.used && !r.revoked && !st.families[r.family].revoked)
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.st().requests.clone()
    }

    /// The requests to `path` (query ignored).
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.st()
            .requests
            .iter()
            .filter(|r| r.path_only() == path)
            .cloned()
            .collect()
    }

    // ---- A tiny client ----

    /// Sends one HTTP/1.1 request to this server (`Connection: close`; `Content-Length` is
    /// added for a non-empty body) and reads the whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        let mut socket = TcpStream::connect(self.addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("Connection: close\r\n\r\n");
        req.push_str(body);
        socket.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        socket.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        HttpReply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// POSTs a form to `path` with `Accept: application/json`, plus `extra` headers.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> HttpReply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut headers = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ];
        headers.extend_from_slice(extra);
        self.call("POST", path, &headers, &body).await
    }
}

/// `Authorization: Basic` for `id:secret`, both form-urlencoded first (RFC 6749 §2.3.1).
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)))
    )
}

// ---- The HTTP side ----

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type", "application/json".to_string()),
                ("Cache-Control", "no-store".to_string()),
                ("Pragma", "no-cache".to_string()),
            ],
            body: body.to_string(),
        }
    }

    fn error(status: u16, error: &str, description: &str) -> Reply {
        let mut r = Reply::json(
            status,
            json!({ "error": error, "error_description": description }),
        );
        if status == 401 {
            r.headers
                .push(("WWW-Authenticate", "Basic realm=\"oauth\"".to_string()));
        }
        r
    }

    fn bad(error: &str, description: &str) -> Reply {
        Reply::error(400, error, description)
    }

    fn grant(description: &str) -> Reply {
        Reply::bad("invalid_grant", description)
    }

    fn client(description: &str) -> Reply {
        Reply::error(401, "invalid_client", description)
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

async fn read_request(socket: &mut TcpStream) -> Result<Request, &'static str> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("head too large");
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("closed"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    if method.is_empty() || !target.starts_with('/') {
        return Err("bad request line");
    }
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or("bad header")?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    if find_header(&headers, "transfer-encoding").is_some() {
        return Err("transfer-encoding is not supported");
    }
    let len: usize = match find_header(&headers, "content-length") {
        Some(v) => v.parse().map_err(|_| "bad content-length")?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err("body too large");
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("closed"),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Ok(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let reply = match read_request(&mut socket).await {
        Err("closed") => return,
        Err(e) => Reply::bad("invalid_request", e),
        Ok(req) => {
            let (reply, delay) = {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                handle(&mut st, &req)
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            reply
        }
    };
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.body.len(),
        reply.body
    ));
    let _ = socket.write_all(out.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Handles one request under the lock; the duration is how long to wait before answering.
fn handle(st: &mut State, req: &Request) -> (Reply, Duration) {
    st.requests.push(RecordedRequest {
        method: req.method.clone(),
        path: req.target.clone(),
        headers: req.headers.clone(),
        body: String::from_utf8_lossy(&req.body).to_string(),
    });
    let mut delay = Duration::ZERO;
    let reply = match (req.method.as_str(), req.path()) {
        (_, "/token") => {
            st.token_requests += 1;
            token_endpoint(st, req, &mut delay)
        }
        ("POST", "/device/code") => device_endpoint(st, req),
        ("POST", "/revoke") => revoke_endpoint(st, req),
        ("GET", "/authorize") => authorize_endpoint(st, req),
        ("GET" | "POST", "/userinfo") => userinfo_endpoint(st, req),
        (_, "/device/code" | "/revoke" | "/authorize" | "/userinfo") => Reply::empty(405),
        _ => Reply::json(404, json!({ "error": "not_found" })),
    };
    (reply, delay)
}

type Params = HashMap<String, String>;

/// The body's parameters: JSON object when the Content-Type says so, else a form. A
/// parameter sent twice is `invalid_request` (RFC 6749 §3.2); empty values count as absent.
fn params(req: &Request) -> Result<Params, Reply> {
    let mut out = Params::new();
    let mut put = |k: String, v: String| -> Result<(), Reply> {
        if v.is_empty() {
            return Ok(());
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(Reply::bad("invalid_request", &format!("{k} sent twice")));
        }
        Ok(())
    };
    let is_json = req
        .header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    if is_json {
        let v: Value = serde_json::from_slice(&req.body)
            .map_err(|_| Reply::bad("invalid_request", "body is not JSON"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Reply::bad("invalid_request", "body is not a JSON object"))?;
        for (k, v) in obj {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(Reply::bad("invalid_request", "unsupported JSON value")),
            };
            put(k.clone(), v)?;
        }
    } else {
        for (k, v) in url::form_urlencoded::parse(&req.body) {
            put(k.into_owned(), v.into_owned())?;
        }
    }
    Ok(out)
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Client authentication (RFC 6749 §2.3): Basic or body; the authenticated client id.
fn authenticate(st: &State, req: &Request, p: &Params) -> Result<String, Reply> {
    let basic = req.header("authorization").and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
    });
    let (id, secret) = match basic {
        Some(b) => {
            let decoded = STANDARD
                .decode(b)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| Reply::client("malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| Reply::client("malformed Basic credentials"))?;
            let id = form_decode(id).ok_or_else(|| Reply::client("malformed client id"))?;
            let secret = form_decode(secret).ok_or_else(|| Reply::client("malformed secret"))?;
            if p.contains_key("client_secret") {
                return Err(Reply::bad(
                    "invalid_request",
                    "more than one client authentication method",
                ));
            }
            if p.get("client_id").is_some_and(|b| *b != id) {
                return Err(Reply::client(
                    "client_id differs from the Basic credentials",
                ));
            }
            (id, Some(secret))
        }
        None => {
            let id = p
                .get("client_id")
                .cloned()
                .ok_or_else(|| Reply::client("no client authentication"))?;
            (id, p.get("client_secret").cloned())
        }
    };
    let client = st
        .clients
        .get(&id)
        .ok_or_else(|| Reply::client("unknown client"))?;
    match (&client.secret, secret) {
        (Some(s), Some(given)) if *s == given => Ok(id),
        (Some(_), Some(_)) => Err(Reply::client("wrong client secret")),
        (Some(_), None) => Err(Reply::client("client secret required")),
        (None, None) => Ok(id),
        (None, Some(_)) => Err(Reply::client("a public client must not send a secret")),
    }
}

fn token_endpoint(st: &mut State, req: &Request, delay: &mut Duration) -> Reply {
    if st.fail_next.0 > 0 {
        st.fail_next.0 -= 1;
        let status = st.fail_next.1;
        let error = if status == 503 {
            "temporarily_unavailable"
        } else {
            "server_error"
        };
        return Reply::error(status, error, "injected failure");
    }
    if req.method != "POST" {
        return Reply::empty(405);
    }
    let p = match params(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let client = match authenticate(st, req, &p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match p.get("grant_type").map(String::as_str) {
        Some("authorization_code") => code_grant(st, &p, &client),
        Some("refresh_token") => {
            *delay = st.refresh_delay;
            refresh_grant(st, &p, &client)
        }
        Some(DEVICE_GRANT) => device_grant(st, &p, &client),
        Some(_) => Reply::bad("unsupported_grant_type", "unsupported grant_type"),
        None => Reply::bad("invalid_request", "grant_type missing"),
    }
}

fn code_grant(st: &mut State, p: &Params, client: &str) -> Reply {
    let Some(code) = p.get("code") else {
        return Reply::bad("invalid_request", "code missing");
    };
    let Some(c) = st.codes.get(code) else {
        return Reply::grant("unknown authorization code");
    };
    if c.used {
        let family = c.family;
        st.code_reuses += 1;
        if let Some(f) = family {
            st.revoke_family(f);
        }
        return Reply::grant("authorization code already used; its tokens are revoked");
    }
    if Instant::now() >= c.expires_at {
        return Reply::grant("authorization code expired");
    }
    if c.client_id != client {
        return Reply::grant("authorization code issued to another client");
    }
    if p.get("redirect_uri") != Some(&c.redirect_uri) {
        return Reply::grant("redirect_uri does not match");
    }
    match (&c.challenge, p.get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            let well_formed = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !well_formed || s256(verifier) != *challenge {
                return Reply::grant("code_verifier does not match the code_challenge");
            }
        }
        (Some(_), None) => return Reply::grant("code_verifier missing"),
        (None, Some(_)) => return Reply::grant("code_verifier sent but no code_challenge"),
        (None, None) => {}
    }
    let scope = c.scope.clone();
    let family = st.new_family();
    if let Some(c) = st.codes.get_mut(code) {
        c.used = true;
        c.family = Some(family);
    }
    Reply::json(200, st.issue(family, client, &scope, true))
}

fn refresh_grant(st: &mut State, p: &Params, client: &str) -> Reply {
    let Some(rt) = p.get("refresh_token") else {
        return Reply::bad("invalid_request", "refresh_token missing");
    };
    let Some(r) = st.refresh.get(rt) else {
        return Reply::grant("unknown refresh token");
    };
    if r.client_id != client {
        return Reply::grant("refresh token issued to another client");
    }
    let family = r.family;
    if r.used {
        st.refresh_reuses += 1;
        if st.revoke_family(family) {
            st.family_revocations += 1;
        }
        return Reply::grant("refresh token already used; its family is revoked");
    }
    if r.revoked || st.families[family].revoked {
        return Reply::grant("refresh token revoked");
    }
    let granted = r.scope.clone();
    let scope = match p.get("scope") {
        Some(asked) => {
            let ok = asked.split(' ').all(|s| granted.split(' ').any(|g| g == s));
            if !ok {
                return Reply::bad("invalid_scope", "scope exceeds the original grant");
            }
            asked.clone()
        }
        None => granted,
    };
    let rotate = !st.omit_refresh;
    if rotate {
        if let Some(r) = st.refresh.get_mut(rt) {
            r.used = true;
        }
    }
    st.refresh_count += 1;
    Reply::json(200, st.issue(family, client, &scope, rotate))
}

fn device_grant(st: &mut State, p: &Params, client: &str) -> Reply {
    let Some(dc) = p.get("device_code") else {
        return Reply::bad("invalid_request", "device_code missing");
    };
    let Some(uc) = st.device_codes.get(dc).cloned() else {
        return Reply::grant("unknown device code");
    };
    let step = st.slow_down_step;
    let Some(d) = st.devices.get_mut(&uc) else {
        return Reply::grant("unknown device code");
    };
    if d.client_id != client {
        return Reply::grant("device code issued to another client");
    }
    d.polls += 1;
    let now = Instant::now();
    if now >= d.expires_at {
        return Reply::bad("expired_token", "device code expired");
    }
    if d.status == DeviceStatus::Issued {
        return Reply::grant("device code already used");
    }
    let too_soon = d
        .last_poll
        .is_some_and(|last| now.duration_since(last) < Duration::from_secs(d.interval));
    d.last_poll = Some(now);
    if too_soon {
        d.interval += step;
        d.slow_downs += 1;
        return Reply::json(
            400,
            json!({ "error": "slow_down", "error_description": "polling too fast", "interval": d.interval }),
        );
    }
    match d.status {
        DeviceStatus::Pending => Reply::bad("authorization_pending", "the user has not answered"),
        DeviceStatus::Denied => Reply::bad("access_denied", "the user denied the request"),
        DeviceStatus::Approved | DeviceStatus::Issued => {
            d.status = DeviceStatus::Issued;
            let scope = d.scope.clone();
            let family = st.new_family();
            Reply::json(200, st.issue(family, client, &scope, true))
        }
    }
}

fn device_endpoint(st: &mut State, req: &Request) -> Reply {
    let p = match params(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let client = match authenticate(st, req, &p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let device_code = token("dc");
    let uc = user_code();
    let scope = p.get("scope").cloned().unwrap_or_default();
    st.devices.insert(
        uc.clone(),
        Device {
            client_id: client,
            scope,
            interval: st.device_interval,
            expires_at: Instant::now() + Duration::from_secs(st.device_expires_in),
            last_poll: None,
            status: DeviceStatus::Pending,
            polls: 0,
            slow_downs: 0,
        },
    );
    st.device_codes.insert(device_code.clone(), uc.clone());
    st.last_user_code = Some(uc.clone());
    let verification_uri = format!("{}/device", st.base);
    let complete = format!("{verification_uri}?user_code={uc}");
    Reply::json(
        200,
        json!({
            "device_code": device_code,
            "user_code": uc,
            "verification_uri": verification_uri,
            "verification_uri_complete": complete,
            "expires_in": st.device_expires_in,
            "interval": st.device_interval,
        }),
    )
}

fn revoke_endpoint(st: &mut State, req: &Request) -> Reply {
    let p = match params(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let client = match authenticate(st, req, &p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(t) = p.get("token").cloned() else {
        return Reply::bad("invalid_request", "token missing");
    };
    st.revocations.push(Revocation {
        token: t.clone(),
        hint: p.get("token_type_hint").cloned(),
        client_id: client.clone(),
    });
    if let Some(r) = st.refresh.get(&t) {
        if r.client_id == client {
            let family = r.family;
            st.revoke_family(family);
        }
    } else if let Some(a) = st.access.get_mut(&t) {
        if a.client_id == client {
            a.revoked = true;
        }
    }
    Reply::empty(200)
}

fn authorize_endpoint(st: &mut State, req: &Request) -> Reply {
    let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let q: Params = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let Some(client_id) = q.get("client_id") else {
        return Reply::bad("invalid_request", "client_id missing");
    };
    if !st.clients.contains_key(client_id) {
        return Reply::bad("invalid_client", "unknown client");
    }
    let Some(redirect) = q.get("redirect_uri") else {
        return Reply::bad("invalid_request", "redirect_uri missing");
    };
    let Ok(mut location) = url::Url::parse(redirect) else {
        return Reply::bad("invalid_request", "redirect_uri is not a URL");
    };
    let state = q.get("state");
    let challenge = q.get("code_challenge").filter(|c| !c.is_empty());
    let error = if q.get("response_type").map(String::as_str) != Some("code") {
        Some("unsupported_response_type")
    } else if challenge.is_some()
        && q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || challenge.is_none() && q.contains_key("code_challenge_method")
    {
        Some("invalid_request")
    } else {
        None
    };
    {
        let mut pairs = location.query_pairs_mut();
        match error {
            Some(e) => {
                pairs.append_pair("error", e);
            }
            None => {
                let scope = q.get("scope").cloned().unwrap_or_default();
                let code = st.new_code(client_id, redirect, &scope, challenge.map(String::as_str));
                pairs.append_pair("code", &code);
            }
        }
        if let Some(s) = state {
            pairs.append_pair("state", s);
        }
    }
    Reply {
        status: 302,
        headers: vec![("Location", location.to_string())],
        body: String::new(),
    }
}

fn userinfo_endpoint(st: &mut State, req: &Request) -> Reply {
    let bearer = req.header("authorization").and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match bearer {
        Some(t) if st.access_live(t) => Reply::json(200, json!({ "sub": USER_SUB })),
        _ => {
            let mut r = Reply::json(401, json!({ "error": "invalid_token" }));
            r.headers.push((
                "WWW-Authenticate",
                "Bearer error=\"invalid_token\"".to_string(),
            ));
            r
        }
    }
}

/// A vault on `store` (master key `key`) whose provider `local` is `server`, through a
/// drop-in providers folder under `dir`, with the confidential client registered for
/// `redirect_uri` and a real HTTP client.
#[cfg(feature = "reqwest")]
pub async fn local_vault(
    server: &OAuthServer,
    store: std::sync::Arc<dyn strongroom::Store>,
    key: std::sync::Arc<strongroom::LocalKey>,
    dir: &std::path::Path,
    redirect_uri: Option<String>,
) -> strongroom::Vault {
    use strongroom::oauth::{ClientSecret, OAuthClient};
    let providers = dir.join("providers");
    std::fs::create_dir_all(&providers).expect("dir");
    std::fs::write(
        providers.join("local.toml"),
        server.provider_toml("local", "oauth2"),
    )
    .expect("provider");
    strongroom::Vault::builder()
        .store(store)
        .key_wrapper(key)
        .providers_dir(&providers)
        .http(std::sync::Arc::new(
            strongroom::transport::ReqwestTransport::new().expect("http"),
        ))
        .oauth_client(
            "local",
            OAuthClient {
                client_id: CONFIDENTIAL_CLIENT.into(),
                client_secret: Some(ClientSecret::Inline(strongroom::SecretString::from(
                    CONFIDENTIAL_SECRET,
                ))),
                redirect_uri,
            },
        )
        .build()
        .await
        .expect("vault")
}
