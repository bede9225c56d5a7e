//! A local GitLab REST API v4 stand-in on 127.0.0.1 (tests/gitlab_provider.rs,
//! tests/integrations_gitlab.rs): the documented endpoints of group service accounts and
//! their tokens, project access tokens, the personal access token revoke endpoint and
//! `GET /user`, with their documented status codes and bodies; it requires
//! `PRIVATE-TOKEN: admin-token` and records every request (method, path, headers, JSON
//! body). `fault` answers one request with a given status instead.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use strongroom::integrations::gitlab_provider::{GitlabProviderConfig, Mode, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The only admin token the mock accepts.
pub const ADMIN: &str = "admin-token";
/// Put into a GitLab error message to prove errors never echo token-like text.
pub const CANARY: &str = "glpat-CANARYcanary1234567890";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: u64,
    pub username: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: u64,
    pub user_id: u64,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: String,
    pub access_level: Option<u64>,
    pub revoked: bool,
    pub token: String,
    pub project: bool,
}

impl Token {
    pub fn listed(&self) -> Value {
        json!({
            "id": self.id, "user_id": self.user_id, "name": self.name, "scopes": self.scopes,
            "expires_at": self.expires_at, "active": !self.revoked, "revoked": self.revoked,
            "created_at": "2025-01-01T00:00:00.000Z", "access_level": self.access_level,
        })
    }

    pub fn issued(&self) -> Value {
        let mut v = self.listed();
        v["token"] = json!(self.token);
        v
    }
}

#[derive(Default)]
pub struct State {
    pub next_id: u64,
    pub accounts: Vec<Account>,
    pub tokens: Vec<Token>,
    pub seen: Vec<Seen>,
    /// (method, path) answered once with (status, body) instead of the normal route.
    pub faults: Vec<(String, String, u16, String)>,
}

impl State {
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn mint(
        &mut self,
        user_id: u64,
        name: &str,
        scopes: Vec<String>,
        expires_at: String,
    ) -> Token {
        let id = self.id();
        Token {
            id,
            user_id,
            name: name.to_string(),
            scopes,
            expires_at,
            access_level: None,
            revoked: false,
            token: format!(
                "glpat-issued-{id}-{:016x}",
                id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ),
            project: false,
        }
    }
}

/// The mock GitLab: group `acme` (top-level) and project `acme/api`.
pub struct MockGitlab {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

impl MockGitlab {
    pub async fn start() -> MockGitlab {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            next_id: 100,
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        MockGitlab {
            base: format!("http://{addr}/api/v4"),
            state,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().expect("state").seen.clear();
    }

    pub fn fault(&self, method: &str, path: &str, status: u16, body: &str) {
        self.state.lock().expect("state").faults.push((
            method.into(),
            path.into(),
            status,
            body.into(),
        ));
    }

    pub fn accounts(&self) -> Vec<Account> {
        self.state.lock().expect("state").accounts.clone()
    }

    pub fn tokens(&self) -> Vec<Token> {
        self.state.lock().expect("state").tokens.clone()
    }

    pub fn token(&self, id: u64) -> Option<Token> {
        let state = self.state.lock().expect("state");
        state.tokens.iter().find(|t| t.id == id).cloned()
    }

    /// Other service accounts in the group, so lists span several pages.
    pub fn add_accounts(&self, n: usize) {
        let mut state = self.state.lock().expect("state");
        for i in 0..n {
            let id = state.id();
            state.accounts.push(Account {
                id,
                username: format!("service_account_group_1_{i:04}"),
                name: "Service account user".into(),
            });
        }
    }

    pub fn service_account_cfg(&self) -> GitlabProviderConfig {
        GitlabProviderConfig {
            base_url: self.base.clone(),
            target: Target::Group("acme".into()),
            mode: Mode::ServiceAccount {
                scopes: vec!["read_api".into(), "read_repository".into()],
                expires_in_days: 30,
            },
        }
    }

    pub fn project_cfg(&self) -> GitlabProviderConfig {
        GitlabProviderConfig {
            base_url: self.base.clone(),
            target: Target::Project("acme/api".into()),
            mode: Mode::ProjectAccessToken {
                scopes: vec!["api".into()],
                access_level: 30,
                expires_in_days: 90,
            },
        }
    }
}

pub async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let body_bytes = &data[head_end..head_end + length];
    let body: Option<Value> = if length == 0 {
        None
    } else {
        serde_json::from_slice(body_bytes).ok()
    };
    let (status, extra, answer) = {
        let mut st = state.lock().expect("state");
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
        route(&mut st, &method, &path, &headers, body.as_ref())
    };
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    let body = if status == 204 { String::new() } else { answer };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

pub fn message(text: &str) -> String {
    json!({ "message": text }).to_string()
}

/// The documented endpoints. Returns (status, extra header lines, body).
pub fn route(
    st: &mut State,
    method: &str,
    full_path: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&Value>,
) -> (u16, String, String) {
    if headers.get("private-token").map(String::as_str) != Some(ADMIN) {
        return (401, String::new(), message("401 Unauthorized"));
    }
    let (path, query) = full_path.split_once('?').unwrap_or((full_path, ""));
    if let Some(i) = st
        .faults
        .iter()
        .position(|(m, p, _, _)| m == method && p == path)
    {
        let (_, _, status, body) = st.faults.remove(i);
        return (status, String::new(), body);
    }
    let query: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let segs: Vec<&str> = path
        .strip_prefix("/api/v4/")
        .unwrap_or("")
        .split('/')
        .collect();
    let str_field = |k: &str| body.and_then(|b| b.get(k)).and_then(Value::as_str);
    let scopes = || -> Vec<String> {
        body.and_then(|b| b.get("scopes"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let expires = |default: &str| str_field("expires_at").unwrap_or(default).to_string();
    let not_found = |what: &str| {
        (
            404,
            String::new(),
            message(&format!("404 {what} Not Found")),
        )
    };
    match (method, segs.as_slice()) {
        // The admin token's own user.
        ("GET", ["user"]) => (
            200,
            String::new(),
            json!({"id": 1, "username": "root", "name": "Administrator"}).to_string(),
        ),
        // Group service accounts.
        ("GET", ["groups", "acme", "service_accounts"]) => {
            let per_page: usize = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20);
            let page: usize = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let all: Vec<Value> = st
                .accounts
                .iter()
                .map(|a| json!({"id": a.id, "username": a.username, "name": a.name}))
                .collect();
            let chunk: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            let next = if page * per_page < all.len() {
                (page + 1).to_string()
            } else {
                String::new()
            };
            (
                200,
                format!("X-Next-Page: {next}\r\n"),
                Value::Array(chunk).to_string(),
            )
        }
        ("POST", ["groups", "acme", "service_accounts"]) => {
            let username = str_field("username")
                .unwrap_or("service_account_group_1_x")
                .to_string();
            if st
                .accounts
                .iter()
                .any(|a| a.username.eq_ignore_ascii_case(&username))
            {
                return (
                    400,
                    String::new(),
                    message("Username has already been taken"),
                );
            }
            let id = st.id();
            let name = str_field("name")
                .unwrap_or("Service account user")
                .to_string();
            st.accounts.push(Account {
                id,
                username: username.clone(),
                name: name.clone(),
            });
            (
                201,
                String::new(),
                json!({"id": id, "username": username, "name": name}).to_string(),
            )
        }
        ("DELETE", ["groups", "acme", "service_accounts", uid]) => {
            let uid: u64 = uid.parse().unwrap_or(0);
            let before = st.accounts.len();
            st.accounts.retain(|a| a.id != uid);
            if st.accounts.len() == before {
                return not_found("User");
            }
            for t in st.tokens.iter_mut().filter(|t| t.user_id == uid) {
                t.revoked = true;
            }
            (204, String::new(), String::new())
        }
        ("POST", ["groups", "acme", "service_accounts", uid, "personal_access_tokens"]) => {
            let uid: u64 = uid.parse().unwrap_or(0);
            if !st.accounts.iter().any(|a| a.id == uid) {
                return not_found("User");
            }
            let Some(name) = str_field("name").map(str::to_string) else {
                return (
                    400,
                    String::new(),
                    json!({"error": "name is missing"}).to_string(),
                );
            };
            let token = st.mint(uid, &name, scopes(), expires("2099-01-01"));
            st.tokens.push(token.clone());
            (201, String::new(), token.issued().to_string())
        }
        ("DELETE", ["groups", "acme", "service_accounts", uid, "personal_access_tokens", tid]) => {
            let (uid, tid): (u64, u64) = (uid.parse().unwrap_or(0), tid.parse().unwrap_or(0));
            match st
                .tokens
                .iter_mut()
                .find(|t| t.id == tid && t.user_id == uid && !t.project && !t.revoked)
            {
                Some(t) => {
                    t.revoked = true;
                    (204, String::new(), String::new())
                }
                None => not_found("Token"),
            }
        }
        (
            "POST",
            ["groups", "acme", "service_accounts", uid, "personal_access_tokens", tid, "rotate"],
        ) => {
            let (uid, tid): (u64, u64) = (uid.parse().unwrap_or(0), tid.parse().unwrap_or(0));
            let Some(old) = st
                .tokens
                .iter()
                .find(|t| t.id == tid && t.user_id == uid && !t.project)
                .cloned()
            else {
                return not_found("Token");
            };
            if old.revoked {
                return (400, String::new(), message("Token already revoked"));
            }
            for t in st.tokens.iter_mut().filter(|t| t.id == tid) {
                t.revoked = true;
            }
            let new = st.mint(uid, &old.name, old.scopes.clone(), expires("2099-01-08"));
            st.tokens.push(new.clone());
            (200, String::new(), new.issued().to_string())
        }
        // The instance-wide personal access token revoke endpoint.
        ("DELETE", ["personal_access_tokens", tid]) => {
            let tid: u64 = tid.parse().unwrap_or(0);
            match st
                .tokens
                .iter_mut()
                .find(|t| t.id == tid && !t.project && !t.revoked)
            {
                Some(t) => {
                    t.revoked = true;
                    (204, String::new(), String::new())
                }
                None => not_found(""),
            }
        }
        // Project access tokens (the project path arrives URL-encoded).
        ("GET", ["projects", "acme%2Fapi", "access_tokens"]) => {
            let list: Vec<Value> = st
                .tokens
                .iter()
                .filter(|t| t.project)
                .map(Token::listed)
                .collect();
            (
                200,
                "X-Next-Page: \r\n".into(),
                Value::Array(list).to_string(),
            )
        }
        ("POST", ["projects", "acme%2Fapi", "access_tokens"]) => {
            let Some(name) = str_field("name").map(str::to_string) else {
                return (
                    400,
                    String::new(),
                    json!({"error": "name is missing"}).to_string(),
                );
            };
            let bot = st.id();
            let mut token = st.mint(bot, &name, scopes(), expires("2099-01-01"));
            token.project = true;
            token.access_level = body
                .and_then(|b| b.get("access_level"))
                .and_then(Value::as_u64);
            st.tokens.push(token.clone());
            (201, String::new(), token.issued().to_string())
        }
        ("DELETE", ["projects", "acme%2Fapi", "access_tokens", tid]) => {
            let tid: u64 = tid.parse().unwrap_or(0);
            match st
                .tokens
                .iter_mut()
                .find(|t| t.id == tid && t.project && !t.revoked)
            {
                Some(t) => {
                    t.revoked = true;
                    (204, String::new(), String::new())
                }
                None => not_found(""),
            }
        }
        ("POST", ["projects", "acme%2Fapi", "access_tokens", tid, "rotate"]) => {
            let tid: u64 = tid.parse().unwrap_or(0);
            let Some(old) = st.tokens.iter().find(|t| t.id == tid && t.project).cloned() else {
                return not_found("");
            };
            for t in st.tokens.iter_mut().filter(|t| t.id == tid) {
                t.revoked = true;
            }
            let mut new = st.mint(
                old.user_id,
                &old.name,
                old.scopes.clone(),
                expires("2099-01-08"),
            );
            new.project = true;
            new.access_level = old.access_level;
            st.tokens.push(new.clone());
            (200, String::new(), new.issued().to_string())
        }
        _ => (
            404,
            String::new(),
            json!({"error": "404 Not Found"}).to_string(),
        ),
    }
}
