//! Local stand-ins for the services an integration is checked with, on 127.0.0.1, over a
//! small hand-written HTTP/1.1 server (every answer carries `Connection: close`; each
//! connection runs in its own task):
//!
//! - GitHub, base `{url}/github`: `GET /user` with `Authorization: Bearer <token>`,
//!   `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28` and a
//!   `User-Agent` → 200 `{"login":"octo-agent","id":123}` for [`GITHUB_GOOD`], 401
//!   `{"message":"Bad credentials"}` otherwise (400 when a required header is missing).
//! - GitLab, base `{url}/gitlab/api/v4`: `GET /user` with `PRIVATE-TOKEN: <token>` → 200
//!   `{"id":7,"username":"agent-7"}` for [`GITLAB_GOOD`], 401 `{"message":"401 Unauthorized"}`.
//! - Telegram, base `{url}/telegram`: `GET /bot<token>/getMe` → 200
//!   `{"ok":true,"result":{"id":4242,"is_bot":true,"username":"agent_bot"}}` for
//!   [`TELEGRAM_GOOD`], 401 `{"ok":false,"error_code":401,"description":"Unauthorized"}`.
//!
//! [`ServiceServer::set_down`] makes every answer a 503 (a service that cannot be reached).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every test token carries this, so a test can look for any leak of one.
pub const CANARY: &str = "CANARY";
/// The GitHub token the server accepts.
pub const GITHUB_GOOD: &str = "ghp_goodCANARYgithub0001";
/// A GitHub token of the right shape that the server refuses.
pub const GITHUB_BAD: &str = "ghp_badCANARYgithub0002";
/// The GitLab token the server accepts.
pub const GITLAB_GOOD: &str = "glpat-goodCANARYgitlab1";
/// A GitLab token the server refuses.
pub const GITLAB_BAD: &str = "glpat-badCANARYgitlab2";
/// The bot token the server accepts.
pub const TELEGRAM_GOOD: &str = "4242:goodCANARYtelegram";
/// A bot token the server refuses.
pub const TELEGRAM_BAD: &str = "4242:badCANARYtelegram";

/// One request as received: method, target, headers.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, …
    pub method: String,
    /// The request target.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first header of this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    down: AtomicBool,
    requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// The running server.
pub struct ServiceServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceServer {
    /// Starts a server on an ephemeral port.
    pub async fn start() -> ServiceServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &state).await;
                });
            }
        });
        ServiceServer { url, state, task }
    }

    /// The GitHub base URL.
    pub fn github(&self) -> String {
        format!("{}/github", self.url)
    }

    /// The GitLab base URL.
    pub fn gitlab(&self) -> String {
        format!("{}/gitlab/api/v4", self.url)
    }

    /// The Telegram base URL.
    pub fn telegram(&self) -> String {
        format!("{}/telegram", self.url)
    }

    /// Every answer a 503 (`true`) or the normal ones.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The requests received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
}

async fn serve(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let seen = Seen {
        method,
        path,
        headers,
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().expect("lock").push(seen.clone());
    let (status, body) = if state.down.load(Ordering::SeqCst) {
        (503, r#"{"message":"Service Unavailable"}"#.to_string())
    } else {
        route(&seen)
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(req: &Seen) -> (u16, String) {
    if req.method != "GET" {
        return (404, r#"{"message":"Not Found"}"#.into());
    }
    match req.path.as_str() {
        "/github/user" => {
            if req.header("accept") != Some("application/vnd.github+json")
                || req.header("x-github-api-version") != Some("2022-11-28")
                || req.header("user-agent").is_none_or(str::is_empty)
            {
                return (400, r#"{"message":"missing headers"}"#.into());
            }
            if req.header("authorization") == Some(&format!("Bearer {GITHUB_GOOD}")) {
                (200, r#"{"login":"octo-agent","id":123}"#.into())
            } else {
                (401, r#"{"message":"Bad credentials"}"#.into())
            }
        }
        "/gitlab/api/v4/user" => {
            if req.header("private-token") == Some(GITLAB_GOOD) {
                (200, r#"{"id":7,"username":"agent-7"}"#.into())
            } else {
                (401, r#"{"message":"401 Unauthorized"}"#.into())
            }
        }
        path => match path
            .strip_prefix("/telegram/bot")
            .and_then(|rest| rest.strip_suffix("/getMe"))
        {
            Some(token) if token == TELEGRAM_GOOD => (
                200,
                r#"{"ok":true,"result":{"id":4242,"is_bot":true,"first_name":"Agent","username":"agent_bot"}}"#
                    .into(),
            ),
            Some(_) => (
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#.into(),
            ),
            None => (404, r#"{"message":"Not Found"}"#.into()),
        },
    }
}
