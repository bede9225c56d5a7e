//! MCP token bridging with real child processes (`/bin/sh` scripts): the supervisor passes the
//! token in the configured variable, restarts on a token change and on a crash, kills a child
//! that ignores stdin EOF and SIGTERM after `stop_timeout`, and leaves nothing running.
#![cfg(unix)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use strongroom::mcp::{
    BearerHeaderSource, StaticTokenSource, StdioServerConfig, StdioSupervisor, TokenSource,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{sleep, timeout, Instant};

const CANARY: &str = "tok-CANARY-7f3a";

fn sh(script: &str) -> StdioServerConfig {
    StdioServerConfig {
        args: vec!["-c".into(), script.into()],
        stop_timeout: Duration::from_millis(1500),
        restart_backoff: Duration::from_millis(50),
        max_restart_backoff: Duration::from_millis(200),
        ..StdioServerConfig::new("/bin/sh")
    }
}

fn source(token: &str) -> Arc<StaticTokenSource> {
    Arc::new(StaticTokenSource::new(SecretString::from(token.to_owned())))
}

/// Poll `path` until `check` accepts its contents, for up to 5 s.
async fn wait_for(path: &Path, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {}: {text:?}",
            path.display()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; the supervisor reaps, so it must be gone entirely.
    Path::new(&format!("/proc/{pid}")).exists()
}

fn line_fields(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let (token, pid) = l.split_once(' ')?;
            Some((token.to_owned(), pid.parse().ok()?))
        })
        .collect()
}

/// A child that appends "<$var> <pid>" to `out` and waits on stdin.
fn recorder(out: &Path, var: &str) -> String {
    format!(
        "printf '%s %s\\n' \"${var}\" \"$$\" >> '{}'; cat >/dev/null",
        out.display()
    )
}

#[tokio::test]
async fn the_child_sees_the_token_and_is_restarted_with_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("seen");
    let mut config = sh(&recorder(&out, "GH_TOKEN"));
    config.token_var = "GH_TOKEN".into();
    let src = source("first-token");
    let handle = StdioSupervisor::start(config, src.clone())
        .await
        .expect("start");

    let text = wait_for(&out, |t| t.lines().count() == 1).await;
    let first = line_fields(&text);
    assert_eq!(first[0].0, "first-token");
    assert_eq!(handle.child_id(), Some(first[0].1));
    assert_eq!(handle.restarts(), 0);

    src.set(SecretString::from("second-token"));
    let text = wait_for(&out, |t| t.lines().count() == 2).await;
    let seen = line_fields(&text);
    assert_eq!(seen[1].0, "second-token");
    assert_ne!(seen[0].1, seen[1].1, "a new process");
    assert!(!alive(seen[0].1), "the old child is gone");
    wait_until("the new child id", || handle.child_id() == Some(seen[1].1)).await;
    assert_eq!(handle.restarts(), 1);

    handle.stop().await.expect("stop");
    assert!(!alive(seen[1].1), "stop leaves no child running");
}

#[tokio::test]
async fn the_default_variable_is_mcp_token_and_stdio_reaches_the_child() {
    // An echo server: answers each line with the token and the line.
    let config = sh("while read -r line; do printf '%s %s\\n' \"$MCP_TOKEN\" \"$line\"; done");
    let src = source("echo-token");
    let mut handle = StdioSupervisor::start(config, src.clone())
        .await
        .expect("start");
    let stdio = handle.take_stdio().expect("first child's pipes");
    assert_eq!(stdio.generation, 0);
    assert!(handle.take_stdio().is_none(), "handed out once");
    let (mut stdin, mut lines) = (stdio.stdin, BufReader::new(stdio.stdout).lines());
    stdin.write_all(b"ping\n").await.expect("write");
    let reply = timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(reply.as_deref(), Some("echo-token ping"));

    src.set(SecretString::from("echo-token-2"));
    let stdio = timeout(Duration::from_secs(5), handle.next_stdio())
        .await
        .expect("restart in time")
        .expect("new pipes");
    assert_eq!(stdio.generation, 1);
    // The old child's stdout ends once it is gone.
    let old = timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("old stdout ends");
    assert!(matches!(old, Ok(None) | Err(_)));
    let (mut stdin, mut lines) = (stdio.stdin, BufReader::new(stdio.stdout).lines());
    stdin.write_all(b"pong\n").await.expect("write");
    let reply = timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(reply.as_deref(), Some("echo-token-2 pong"));
    drop(stdin);
    handle.stop().await.expect("stop");
}

#[tokio::test]
async fn a_child_that_ignores_eof_and_sigterm_is_killed_after_stop_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pid");
    let mut config = sh(&format!(
        "trap '' TERM; echo $$ > '{}'; exec 0</dev/null; while :; do sleep 0.1; done",
        out.display()
    ));
    config.stop_timeout = Duration::from_millis(300);
    let handle = StdioSupervisor::start(config, source("stubborn"))
        .await
        .expect("start");
    let pid: u32 = wait_for(&out, |t| t.trim().parse::<u32>().is_ok())
        .await
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    let began = Instant::now();
    handle.stop().await.expect("stop");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(290),
        "waited the grace period first: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "then killed it: {took:?}");
    assert!(!alive(pid), "the stubborn child is gone");
}

#[tokio::test]
async fn a_child_that_exits_on_sigterm_stops_before_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pid");
    // Holds stdin open elsewhere (so EOF does not end it) but honours SIGTERM.
    let mut config = sh(&format!(
        "echo $$ > '{}'; exec 0</dev/null; while :; do sleep 0.05; done",
        out.display()
    ));
    config.stop_timeout = Duration::from_secs(2);
    let handle = StdioSupervisor::start(config, source("polite"))
        .await
        .expect("start");
    let pid: u32 = wait_for(&out, |t| t.trim().parse::<u32>().is_ok())
        .await
        .trim()
        .parse()
        .expect("pid");
    let began = Instant::now();
    handle.stop().await.expect("stop");
    let took = began.elapsed();
    // Half the grace waiting on EOF, then SIGTERM ends it well before the full 2 s.
    assert!(took < Duration::from_millis(1800), "{took:?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_crashing_child_is_restarted_with_backoff_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("runs");
    let config = sh(&format!(
        "printf '%s %s\\n' \"$MCP_TOKEN\" \"$$\" >> '{}'; exit 3",
        out.display()
    ));
    let src = source("crash-token");
    let began = Instant::now();
    let handle = StdioSupervisor::start(config, src.clone())
        .await
        .expect("start");
    // Backoff 50, 100, 200, 200 ms: four restarts take at least 550 ms.
    let text = wait_for(&out, |t| t.lines().count() >= 5).await;
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(500), "backed off: {took:?}");
    wait_until("the restart count", || handle.restarts() >= 4).await;
    assert!(line_fields(&text).iter().all(|(t, _)| t == "crash-token"));
    let pids: Vec<u32> = line_fields(&text).into_iter().map(|(_, p)| p).collect();
    handle.stop().await.expect("stop");
    assert!(pids.iter().all(|p| !alive(*p)));
}

#[tokio::test]
async fn dropping_the_handle_stops_the_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("seen");
    let handle = StdioSupervisor::start(sh(&recorder(&out, "MCP_TOKEN")), source("dropped"))
        .await
        .expect("start");
    let text = wait_for(&out, |t| t.lines().count() == 1).await;
    let pid = line_fields(&text)[0].1;
    drop(handle);
    // The supervisor closes the untaken stdin; `cat` exits on EOF.
    wait_until("the child to be gone", || !alive(pid)).await;
}

#[tokio::test]
async fn a_missing_program_or_bad_token_var_fails_start() {
    let config = StdioServerConfig::new("/nonexistent/mcp-server-canary");
    let err = StdioSupervisor::start(config, source(CANARY))
        .await
        .expect_err("no such program");
    assert!(!format!("{err} {err:?}").contains(CANARY));

    let mut config = sh("cat");
    config.token_var = "NOT-A-NAME".into();
    let err = StdioSupervisor::start(config, source(CANARY))
        .await
        .expect_err("bad token_var");
    assert!(err.to_string().contains("token_var"), "{err}");
}

#[tokio::test]
async fn the_host_environment_is_not_inherited_beyond_the_allow_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env");
    // Set in this test process only; PATH is inherited, this is not.
    std::env::set_var("STRONGROOM_MCP_TEST_SECRET", "host-secret");
    let mut config = sh(&format!(
        "printf '%s|%s|%s\\n' \"${{STRONGROOM_MCP_TEST_SECRET:-unset}}\" \"$EXTRA\" \"${{PATH:+path}}\" > '{}'; cat >/dev/null",
        out.display()
    ));
    config.env.insert("EXTRA".into(), "extra-value".into());
    let handle = StdioSupervisor::start(config, source("t"))
        .await
        .expect("start");
    let text = wait_for(&out, |t| t.ends_with('\n')).await;
    assert_eq!(text.trim(), "unset|extra-value|path");
    handle.stop().await.expect("stop");
}

#[tokio::test]
async fn the_header_source_follows_the_current_token() {
    let src = source("header-one");
    let header = BearerHeaderSource::new(src.clone());
    let (name, value) = header.header().await.expect("header");
    assert_eq!(name, http::header::AUTHORIZATION);
    assert_eq!(value.to_str().expect("ascii"), "Bearer header-one");
    assert!(value.is_sensitive());

    src.set(SecretString::from("header-two"));
    let mut req = http::Request::builder()
        .uri("https://mcp.example.com/mcp")
        .header("authorization", "Bearer stale")
        .body(())
        .expect("request");
    header.apply(&mut req).await.expect("apply");
    let values: Vec<_> = req.headers().get_all("authorization").iter().collect();
    assert_eq!(values.len(), 1, "replaced, not appended");
    assert_eq!(values[0].to_str().expect("ascii"), "Bearer header-two");

    src.set(SecretString::from("bad\r\nX-Injected: canary"));
    let err = header.header().await.expect_err("newline refused");
    assert!(!format!("{err} {err:?}").contains("canary"));
}

#[tokio::test]
async fn no_token_in_debug_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("seen");
    let src = source(CANARY);
    let mut config = sh(&recorder(&out, "MCP_TOKEN"));
    config.env.insert("API_KEY".into(), format!("env-{CANARY}"));
    let config_text = format!("{config:?}");
    let handle = StdioSupervisor::start(config, src.clone())
        .await
        .expect("start");
    wait_for(&out, |t| t.contains(CANARY)).await;
    let header = BearerHeaderSource::new(src.clone());
    let (_, value) = header.header().await.expect("header");
    let stdio = handle.take_stdio();
    for text in [
        config_text,
        format!("{handle:?}"),
        format!("{header:?}"),
        format!("{src:?}"),
        format!("{:?}", src.token().await.expect("token")),
        format!("{value:?}"),
        format!("{stdio:?}"),
    ] {
        assert!(!text.contains(CANARY), "{text}");
    }
    drop(stdio);
    handle.stop().await.expect("stop");
}
