//! A local GitHub API on 127.0.0.1 for GitHub App tests: a small hand-written HTTP/1.1
//! server (every answer `Connection: close`) that speaks the documented endpoints:
//!
//! - `GET /app`: 200 `{"id", "slug", "name", ...}` for a valid App JWT.
//! - `POST /app/installations/{id}/access_tokens`: 201 `{"token", "expires_at", ...}`; 401
//!   for a bad JWT, 404 for an unknown installation, 422 when the narrowing names a
//!   repository the installation cannot reach.
//!
//! It verifies the JWT independently of the library that signed it (ring): the RS256
//! signature by hand with the `rsa` crate's `pkcs1v15::VerifyingKey<Sha256>`, and GitHub's
//! rules on the claims (`iss` the App id or client id, `iat` at least 50 s in the past, `exp`
//! at most 600 s ahead and not passed).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::signature::Verifier;
use serde_json::{json, Value};
use strongroom::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The App's key (PKCS#1, as GitHub hands it out): a test key only.
pub const APP_KEY: &str = include_str!("../data/github_app/pkcs1.pem");
/// Another RSA key (PKCS#8): not the App's.
pub const OTHER_KEY: &str = include_str!("../data/github_app/pkcs8.pem");
pub const APP_ID: u64 = 123_456;
pub const CLIENT_ID: &str = "Iv23liTestClient";
pub const INSTALLATION: u64 = 42;
pub const INSTALLATION_REPOS: [&str; 2] = ["docs", "site"];

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

pub struct State {
    pub public: rsa::pkcs1v15::VerifyingKey<rsa::sha2::Sha256>,
    /// Installation id to the repositories it can reach.
    pub installations: HashMap<u64, Vec<String>>,
    /// How long minted tokens live (the knob).
    pub token_ttl: Duration,
    /// Answer every request with this status (and a JSON `message`), when set.
    pub forced: Option<u16>,
    /// Error messages quote the request's `Authorization` header and a live token (a
    /// misbehaving server, for the canary test).
    pub echo_credentials: bool,
    pub mints: usize,
    pub tokens: Vec<String>,
    pub requests: Vec<Recorded>,
}

pub struct GithubServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl GithubServer {
    pub async fn start() -> GithubServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(APP_KEY).expect("test key");
        let mut installations = HashMap::new();
        installations.insert(
            INSTALLATION,
            INSTALLATION_REPOS.iter().map(|s| s.to_string()).collect(),
        );
        let state = Arc::new(Mutex::new(State {
            public: rsa::pkcs1v15::VerifyingKey::new(private.to_public_key()),
            installations,
            token_ttl: Duration::from_secs(3600),
            forced: None,
            echo_credentials: false,
            mints: 0,
            tokens: Vec::new(),
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, Arc::clone(&shared)));
            }
        });
        GithubServer { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mints(&self) -> usize {
        self.state().mints
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn message(status: u16, text: &str) -> (u16, Value) {
    (
        status,
        json!({ "message": text, "documentation_url": "https://docs.github.com/rest" }),
    )
}

/// Checks the JWT as GitHub does; `Err` is the 401 message.
pub fn check_jwt(st: &State, req: &Recorded) -> Result<(), String> {
    let auth = req
        .header("authorization")
        .ok_or("no Authorization header")?;
    let jwt = auth
        .strip_prefix("Bearer ")
        .ok_or("Authorization is not a Bearer JWT")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("A JSON web token could not be decoded".into());
    }
    let decode = |i: usize| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(parts[i])
            .map_err(|_| "A JSON web token could not be decoded".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "A JSON web token could not be decoded".into())
    };
    let header = decode(0)?;
    if header["alg"] != "RS256" {
        return Err(format!("'alg' must be RS256, got {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| "bad signature encoding".to_string())?;
    let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice())
        .map_err(|_| "bad signature".to_string())?;
    let signed = format!("{}.{}", parts[0], parts[1]);
    st.public
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "Signature verification failed (not this App's key)".to_string())?;
    let claims = decode(1)?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    if iss != APP_ID.to_string() && iss != CLIENT_ID {
        return Err(format!("'Issuer' claim ('iss') {iss} is not this App"));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("'iat' and 'exp' must be integers".into());
    };
    let now = now_secs();
    if iat > now - 50 {
        return Err("'Issued at' claim ('iat') must be at least 50 s in the past here".into());
    }
    if exp > now + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    if exp <= now {
        return Err("'Expiration time' claim ('exp') has passed".into());
    }
    Ok(())
}

pub fn handle(st: &mut State, req: &Recorded) -> (u16, Value) {
    if let Some(status) = st.forced {
        return message(status, "Server Error");
    }
    if let Err(why) = check_jwt(st, req) {
        if st.echo_credentials {
            let auth = req.header("authorization").unwrap_or_default().to_string();
            let live = st.tokens.first().cloned().unwrap_or_default();
            return message(401, &format!("{why}; you sent {auth}; live token {live}"));
        }
        return message(401, &why);
    }
    if req.method == "GET" && req.path == "/app" {
        return (
            200,
            json!({
                "id": APP_ID, "slug": "strongroom-test", "name": "Strongroom Test",
                "client_id": CLIENT_ID, "owner": { "login": "octo-org" },
                "permissions": { "contents": "write", "metadata": "read" },
            }),
        );
    }
    let installation = req
        .path
        .strip_prefix("/app/installations/")
        .and_then(|rest| rest.strip_suffix("/access_tokens"))
        .and_then(|id| id.parse::<u64>().ok());
    let Some(installation) = installation.filter(|_| req.method == "POST") else {
        return message(404, "Not Found");
    };
    let Some(repos) = st.installations.get(&installation).cloned() else {
        return message(404, "Integration not found");
    };
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&req.body) {
            Ok(v) => v,
            Err(_) => return message(400, "Problems parsing JSON"),
        }
    };
    if let Some(names) = body.get("repositories").and_then(Value::as_array) {
        if names
            .iter()
            .any(|n| !repos.iter().any(|r| Some(r.as_str()) == n.as_str()))
        {
            let text = "There is at least one repository that does not exist or is not \
                        accessible to the parent installation.";
            if st.echo_credentials {
                let live = st.tokens.first().cloned().unwrap_or_default();
                return message(422, &format!("{text} (token {live})"));
            }
            return message(422, text);
        }
    }
    st.mints += 1;
    // Opaque tokens of varying length and no fixed prefix.
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("random");
    let len = 20 + usize::from(random[0] % 12);
    let token = format!("v{}.{}", st.mints, &hex::encode(random)[..len]);
    st.tokens.push(token.clone());
    let expires_ms = (now_secs() + st.token_ttl.as_secs() as i64) * 1000;
    let expires_at = Timestamp(expires_ms).to_rfc3339().expect("rfc3339");
    (
        201,
        json!({
            "token": token,
            "expires_at": expires_at,
            "permissions": body.get("permissions").cloned().unwrap_or(json!({"contents": "write"})),
            "repository_selection": if body.get("repositories").is_some() { "selected" } else { "all" },
        }),
    )
}

pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = find_header(&headers, "content-length").map_or(Some(0), |v| v.parse().ok())?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

pub async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let Some(req) = read_request(&mut socket).await else {
        return;
    };
    let (status, body) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.requests.push(req.clone());
        handle(&mut st, &req)
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        _ => "Status",
    };
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(out.as_bytes()).await;
    let _ = socket.shutdown().await;
}
