//! `strongroom oauth …` through the real binary against the local OAuth server
//! (tests/common/oauth_server.rs): a browser login completed by hand and through the
//! loopback listener, the device flow, refresh, status and revoke, their exit codes and
//! JSON forms, and that no token ever reaches stdout or stderr.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::oauth_server::OAuthServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const ALICE: &str = "app_user:crm:alice";
const ADMIN: &str = "system_admin:root";

struct Env {
    home: tempfile::TempDir,
    server: OAuthServer,
    /// The port of the registered redirect URI (free when the test started).
    port: u16,
    /// Every stdout and stderr a command printed, but for `credentials show --reveal`.
    printed: std::sync::Mutex<Vec<String>>,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Env {
    async fn new() -> Env {
        use std::os::unix::fs::PermissionsExt;
        let server = OAuthServer::start().await;
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let providers = home.path().join("providers");
        std::fs::create_dir(&providers).expect("mkdir");
        std::fs::set_permissions(&providers, std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        write_private(
            &providers.join("local.toml"),
            &server.provider_toml("local", "oauth2"),
        );
        let port = free_port();
        write_private(
            &home.path().join("oauth_providers.toml"),
            &format!(
                "[local]\nclient_id = \"test-client\"\nclient_secret = \"test-secret\"\n\
                 redirect_uri = \"http://127.0.0.1:{port}/callback\"\n"
            ),
        );
        Env {
            home,
            server,
            port,
            printed: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn cmd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            .arg("--as")
            .arg(actor)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn keep(&self, out: &Output) {
        let mut printed = self.printed.lock().expect("lock");
        printed.push(text(&out.stdout));
        printed.push(text(&out.stderr));
    }

    async fn run(&self, actor: &str, args: &[&str]) -> Output {
        let out = self.cmd(actor, args).output().await.expect("runs");
        self.keep(&out);
        out
    }

    async fn run_stdin(&self, actor: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(actor, args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).await.expect("write");
        drop(input);
        let out = child.wait_with_output().await.expect("wait");
        self.keep(&out);
        out
    }

    /// The credential's secret fields (never added to what the commands printed).
    async fn reveal(&self, id: &str) -> serde_json::Value {
        let out = self
            .cmd(ALICE, &["--json", "credentials", "show", id, "--reveal"])
            .output()
            .await
            .expect("runs");
        json(&out)["fields"].clone()
    }

    /// Follows an authorize URL at the server (auto-consent): the redirect's `Location`.
    async fn authorize(&self, authorize_url: &str) -> url::Url {
        let url = url::Url::parse(authorize_url).expect("authorize url");
        assert_eq!(url.port(), Some(self.server.addr().port()));
        let target = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let reply = self.server.call("GET", &target, &[], "").await;
        assert_eq!(reply.status, 302, "{}", reply.body);
        url::Url::parse(reply.header("Location").expect("Location")).expect("location")
    }

    /// Asserts that no command printed any of `secrets`.
    fn never_printed(&self, secrets: &[String]) {
        let printed = self.printed.lock().expect("lock");
        for secret in secrets {
            assert!(
                secret.len() >= 20,
                "a token this short proves nothing: {secret}"
            );
            for text in printed.iter() {
                assert!(
                    !text.contains(secret.as_str()),
                    "a token was printed: {text}"
                );
            }
        }
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn fails(out: &Output, code: i32, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    stderr
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("json output")
}

fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Reads lines of the child's stdout until one satisfies `pick`; returns it and the reader.
async fn line_where(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pick: impl Fn(&str) -> bool,
) -> String {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if pick(&line) {
                return line;
            }
        }
        panic!("stdout ended before the expected line");
    })
    .await;
    found.expect("the expected line in time")
}

/// Waits for the child (after its first lines were read through `lines`) and returns its
/// exit code, the rest of its stdout, and its stderr.
async fn finish(
    env: &Env,
    mut child: Child,
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    first: &str,
) -> (Option<i32>, String, String) {
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        rest.push_str(&line);
        rest.push('\n');
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("stderr");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    let mut printed = env.printed.lock().expect("lock");
    printed.push(format!("{first}\n{rest}"));
    printed.push(stderr.clone());
    (status.code(), rest, stderr)
}

/// Sends one GET to the CLI's loopback listener; the status and body of its answer.
async fn get(url: &url::Url) -> (u16, String) {
    let addr = format!("127.0.0.1:{}", url.port().expect("port"));
    let mut socket = None;
    for _ in 0..50 {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut socket = socket.expect("the listener is up");
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.expect("read");
    let answer = text(&raw);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_by_hand_then_refresh_status_and_revoke() {
    let env = Env::new().await;

    // An unknown provider is refused before a vault is made for it.
    let out = env
        .run(ALICE, &["oauth", "start", "--provider", "nosuch"])
        .await;
    fails(&out, 2, "not in the provider catalog");
    assert!(!env.home.path().join("vault.db").exists());

    // Only a user logs in.
    let out = env
        .run(ADMIN, &["oauth", "start", "--provider", "local"])
        .await;
    fails(&out, 4, "permission denied");

    // Start: the URL on one line, then the state, labelled.
    let out = env
        .run(ALICE, &["oauth", "start", "--provider", "local"])
        .await;
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let state = lines[1].strip_prefix("state: ").expect("state line");
    assert!(
        text(&out.stderr).contains("single-use"),
        "{}",
        text(&out.stderr)
    );
    let location = env.authorize(lines[0]).await;
    assert_eq!(query(&location, "state").as_deref(), Some(state));
    assert_eq!(location.port(), Some(env.port));
    let code = query(&location, "code").expect("code");

    // Complete, with the code from stdin.
    let out = env
        .run_stdin(
            ALICE,
            &["oauth", "complete", "--state", state, "--code", "-"],
            &format!("{code}\n"),
        )
        .await;
    let shown = ok(&out);
    assert!(shown.contains("state:       valid"), "{shown}");
    assert!(shown.contains("name:        local"), "{shown}");
    assert!(!shown.contains(&code), "{shown}");
    let id = shown
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id")
        .trim()
        .to_string();
    // A state is single-use.
    let out = env
        .run_stdin(
            ALICE,
            &["oauth", "complete", "--state", state, "--code", "-"],
            &code,
        )
        .await;
    fails(&out, 2, "already completed");
    let mut tokens = Vec::new();
    let fields = env.reveal(&id).await;
    tokens.push(fields["access_token"].as_str().expect("access").to_string());
    tokens.push(
        fields["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    );

    // The JSON form of start.
    let out = env
        .run(
            ALICE,
            &[
                "--json",
                "oauth",
                "start",
                "--provider",
                "local",
                "--name",
                "second",
            ],
        )
        .await;
    let started = json(&out);
    assert!(started["authorize_url"].as_str().is_some());
    assert!(started["state"].as_str().is_some_and(|s| s.len() >= 20));
    assert!(started["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Status.
    let out = env.run(ALICE, &["oauth", "status", &id]).await;
    let status = ok(&out);
    assert!(status.contains("refresh_token: yes"), "{status}");
    assert!(status.contains("seconds_left:"), "{status}");
    assert!(status.contains("provider:      local (oauth2)"), "{status}");
    let out = env.run(ALICE, &["--json", "oauth", "status", &id]).await;
    let status = json(&out);
    assert_eq!(status["state"], "valid");
    assert_eq!(status["has_refresh_token"], true);
    assert!(status["seconds_left"]
        .as_i64()
        .is_some_and(|s| (3500..=3600).contains(&s)));
    assert!(status["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Refresh, in text and JSON.
    let out = env.run(ALICE, &["oauth", "refresh", &id]).await;
    let refreshed = ok(&out);
    assert!(
        refreshed.starts_with("refreshed: version 2, expires_at "),
        "{refreshed}"
    );
    assert_eq!(env.server.refresh_count(), 1);
    let fields = env.reveal(&id).await;
    tokens.push(fields["access_token"].as_str().expect("access").to_string());
    tokens.push(
        fields["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    );
    let out = env.run(ALICE, &["--json", "oauth", "refresh", &id]).await;
    let refreshed = json(&out);
    assert_eq!(refreshed["outcome"], "refreshed");
    assert_eq!(refreshed["version"], 3);
    assert_eq!(refreshed["id"], id.as_str());
    let fields = env.reveal(&id).await;
    tokens.push(fields["access_token"].as_str().expect("access").to_string());
    let refresh_token = fields["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    tokens.push(refresh_token.clone());

    // A provider that is down: retried later, no verdict (8).
    env.server.fail_next(1, 503);
    let out = env.run(ALICE, &["oauth", "refresh", &id]).await;
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("retrying: "),
        "{}",
        text(&out.stdout)
    );

    // Revoke: invalid at once, the refresh token revoked at the provider first.
    let out = env.run(ALICE, &["oauth", "revoke", &id]).await;
    let revoked = ok(&out);
    assert!(revoked.contains("state invalid"), "{revoked}");
    let revocations = env.server.revocations();
    assert_eq!(revocations[0].token, refresh_token);
    assert_eq!(revocations[0].hint.as_deref(), Some("refresh_token"));
    let out = env.run(ALICE, &["--json", "oauth", "status", &id]).await;
    assert_eq!(json(&out)["state"], "invalid");

    env.never_printed(&tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_expires_the_credential() {
    let env = Env::new().await;
    let out = env
        .run(ALICE, &["--json", "oauth", "start", "--provider", "local"])
        .await;
    let started = json(&out);
    let state = started["state"].as_str().expect("state").to_string();
    let location = env
        .authorize(started["authorize_url"].as_str().expect("url"))
        .await;
    let code = query(&location, "code").expect("code");
    let out = env
        .run(
            ALICE,
            &[
                "--json", "oauth", "complete", "--state", &state, "--code", &code,
            ],
        )
        .await;
    let info = json(&out);
    assert_eq!(info["state"], "valid");
    let id = info["id"].as_str().expect("id").to_string();

    env.server.invalidate_refresh_tokens();
    let out = env.run(ALICE, &["--json", "oauth", "refresh", &id]).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["outcome"], "expired");
    assert_eq!(doc["reason"], "invalid_grant");
    let out = env.run(ALICE, &["--json", "oauth", "status", &id]).await;
    assert_eq!(json(&out)["state"], "expired");

    let fields = env.reveal(&id).await;
    env.never_printed(&[
        fields["access_token"].as_str().expect("access").to_string(),
        fields["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    ]);
}

/// Starts `oauth start --listen`; returns the child, its stdout lines and the first line.
async fn start_listening(
    env: &Env,
    extra: &[&str],
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    String,
) {
    let mut args = vec![
        "oauth",
        "start",
        "--provider",
        "local",
        "--listen",
        "--listen-timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    let mut child = env.cmd(ALICE, &args).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = line_where(&mut lines, |_| true).await;
    (child, lines, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_through_the_loopback_listener() {
    let env = Env::new().await;

    // Only a loopback http redirect URI is listened on.
    let out = env
        .run(
            ALICE,
            &[
                "oauth",
                "start",
                "--provider",
                "local",
                "--listen",
                "--redirect-uri",
                "https://example.com/callback",
            ],
        )
        .await;
    fails(&out, 2, "loopback");

    // The whole login: the URL printed (no state), the provider's redirect answered, the
    // credential printed.
    let (child, lines, url) = start_listening(&env, &[]).await;
    assert!(url.starts_with(&env.server.base_url()), "{url}");
    let location = env.authorize(&url).await;
    assert_eq!(location.port(), Some(env.port));
    // Another path (a browser's favicon) is not the redirect.
    let mut favicon = location.clone();
    favicon.set_path("/favicon.ico");
    favicon.set_query(None);
    assert_eq!(get(&favicon).await.0, 404);
    let (status, body) = get(&location).await;
    assert_eq!(status, 200);
    assert!(body.contains("You can close this window"), "{body}");
    let (code, rest, stderr) = finish(&env, child, lines, &url).await;
    assert_eq!(code, Some(0), "{rest}\n{stderr}");
    assert!(rest.contains("state:       valid"), "{rest}");
    // The state is not printed with --listen (beyond the URL that carries it).
    let state = query(&location, "state").expect("state");
    assert!(
        !rest.contains(&state) && !stderr.contains(&state),
        "{rest}\n{stderr}"
    );
    let id = rest
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id")
        .trim()
        .to_string();
    let out = env.run(ALICE, &["--json", "credentials", "list"]).await;
    let listed = json(&out);
    assert!(listed
        .as_array()
        .expect("list")
        .iter()
        .any(|c| c["id"] == id.as_str() && c["state"] == "valid"));

    // The user refused at the provider: exit 4, the provider's error code named.
    let (child, lines, url) = start_listening(&env, &[]).await;
    let location = env.authorize(&url).await;
    let mut denied = location.clone();
    denied
        .query_pairs_mut()
        .clear()
        .append_pair("error", "access_denied")
        .append_pair("state", &query(&location, "state").expect("state"));
    let (status, _) = get(&denied).await;
    assert_eq!(status, 400);
    let (code, _, stderr) = finish(&env, child, lines, &url).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("access_denied"), "{stderr}");

    // A state other than the one started is refused (any page can make a browser send
    // one) and the listener keeps waiting for the real answer.
    let (child, lines, url) = start_listening(&env, &["--json", "--name", "forged"]).await;
    let started: serde_json::Value = serde_json::from_str(&url).expect("one JSON line");
    assert!(started.get("state").is_none(), "{started}");
    let location = env
        .authorize(started["authorize_url"].as_str().expect("url"))
        .await;
    let mut forged = location.clone();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("error", "access_denied")
        .append_pair("state", "not-the-state-this-login-started-with");
    assert_eq!(get(&forged).await.0, 400);
    let mut no_state = location.clone();
    no_state
        .query_pairs_mut()
        .clear()
        .append_pair("code", &query(&location, "code").expect("code"));
    assert_eq!(get(&no_state).await.0, 400);
    assert_eq!(
        get(&location).await.0,
        200,
        "the real answer still completes"
    );
    let (code, _, stderr) = finish(&env, child, lines, &url).await;
    assert_eq!(code, Some(0), "{stderr}");
    let out = env.run(ALICE, &["--json", "credentials", "list"]).await;
    assert!(json(&out)
        .as_array()
        .expect("list")
        .iter()
        .any(|c| c["name"] == "forged" && c["state"] == "valid"));

    // Nobody comes back: the listener gives up.
    let mut child = env
        .cmd(
            ALICE,
            &[
                "oauth",
                "start",
                "--provider",
                "local",
                "--listen",
                "--listen-timeout",
                "1",
            ],
        )
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = line_where(&mut lines, |_| true).await;
    let (code, _, stderr) = finish(&env, child, lines, &first).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no redirect reached"), "{stderr}");

    let fields = env.reveal(&id).await;
    env.never_printed(&[
        fields["access_token"].as_str().expect("access").to_string(),
        fields["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_approved_and_denied() {
    let env = Env::new().await;
    env.server.set_device_interval(1);

    // Approved while the command waits.
    let mut child = env
        .cmd(ALICE, &["oauth", "device", "--provider", "local"])
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = line_where(&mut lines, |l| l.starts_with("user code:")).await;
    let user_code = first["user code:".len()..].trim().to_string();
    assert_eq!(
        env.server.last_user_code().as_deref(),
        Some(user_code.as_str())
    );
    let uri = line_where(&mut lines, |l| l.starts_with("verification uri:")).await;
    assert!(uri.contains(&env.server.base_url()), "{uri}");
    assert!(env.server.approve_device(&user_code));
    let (code, rest, stderr) = finish(&env, child, lines, &first).await;
    assert_eq!(code, Some(0), "{rest}\n{stderr}");
    assert!(rest.contains("complete uri:"), "{rest}");
    assert!(rest.contains("state:       valid"), "{rest}");
    let id = rest
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id")
        .trim()
        .to_string();

    // JSON: one line to act on, then the credential.
    let mut child = env
        .cmd(
            ALICE,
            &[
                "--json",
                "oauth",
                "device",
                "--provider",
                "local",
                "--name",
                "second",
            ],
        )
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = line_where(&mut lines, |_| true).await;
    let flow: serde_json::Value = serde_json::from_str(&first).expect("one JSON line");
    let user_code = flow["user_code"].as_str().expect("user code").to_string();
    assert_eq!(flow["interval"], 1);
    assert!(flow["verification_uri_complete"]
        .as_str()
        .is_some_and(|u| u.contains(&user_code)));
    assert!(env.server.approve_device(&user_code));
    let (code, rest, stderr) = finish(&env, child, lines, &first).await;
    assert_eq!(code, Some(0), "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&rest).expect("json credential");
    assert_eq!(info["state"], "valid");
    assert_eq!(info["name"], "second");
    assert_eq!(info["id"], flow["credential"]);

    // Denied: the credential is invalid, exit 7.
    let mut child = env
        .cmd(
            ALICE,
            &["oauth", "device", "--provider", "local", "--name", "third"],
        )
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = line_where(&mut lines, |l| l.starts_with("user code:")).await;
    let user_code = first["user code:".len()..].trim().to_string();
    assert!(env.server.deny_device(&user_code));
    let (code, _, stderr) = finish(&env, child, lines, &first).await;
    assert_eq!(code, Some(7), "{stderr}");
    assert!(stderr.contains("access_denied"), "{stderr}");

    let fields = env.reveal(&id).await;
    env.never_printed(&[
        fields["access_token"].as_str().expect("access").to_string(),
        fields["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string(),
    ]);
}
