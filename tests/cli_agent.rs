//! `strongroom agent …` through the real binary against local stand-ins of GitHub, GitLab
//! and Telegram (tests/common/service_servers.rs): link, list, credentials (masked and
//! revealed), unlink; a rejected token (exit 7, nothing stored); named secrets; `--json`
//! forms; and that no token is printed without `--reveal`.

mod common;

use std::process::{Output, Stdio};

use common::service_servers::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const ADMIN: &str = "system_admin:root";

struct Env {
    home: tempfile::TempDir,
    server: ServiceServer,
    /// Every stdout and stderr printed by a command run without `--reveal`.
    printed: std::sync::Mutex<Vec<String>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Env {
    async fn new() -> Env {
        use std::os::unix::fs::PermissionsExt;
        let server = ServiceServer::start().await;
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        Env {
            home,
            server,
            printed: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn cmd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            // The GitHub and GitLab URLs from the environment, Telegram's by flag (below).
            .env("STRONGROOM_GITHUB_URL", self.server.github())
            .env("STRONGROOM_GITLAB_URL", self.server.gitlab())
            .arg("--as")
            .arg(actor)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if args.first() == Some(&"agent") || args.get(1) == Some(&"agent") {
            c.arg("--telegram-url").arg(self.server.telegram());
        }
        c
    }

    fn keep(&self, args: &[&str], out: &Output) {
        if args.contains(&"--reveal") {
            return;
        }
        let mut printed = self.printed.lock().expect("lock");
        printed.push(text(&out.stdout));
        printed.push(text(&out.stderr));
    }

    async fn run(&self, actor: &str, args: &[&str]) -> Output {
        let out = self.cmd(actor, args).output().await.expect("runs");
        self.keep(args, &out);
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
        self.keep(args, &out);
        out
    }

    /// Asserts that no command run without `--reveal` printed a token.
    fn never_printed(&self) {
        let printed = self.printed.lock().expect("lock");
        assert!(!printed.is_empty());
        for t in printed.iter() {
            assert!(!t.contains(CANARY), "a token was printed: {t}");
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

#[tokio::test]
async fn github_link_list_credentials_unlink() {
    let env = Env::new().await;
    let linked = json(
        &env.run_stdin(
            ADMIN,
            &[
                "--json",
                "agent",
                "integration",
                "github",
                "link",
                "a1",
                "--pat",
                "-",
            ],
            &format!("{GITHUB_GOOD}\n"),
        )
        .await,
    );
    assert_eq!(linked["provider"], "github");
    assert_eq!(linked["username"], "octo-agent");
    assert_eq!(linked["auth_type"], "token");

    let list = json(
        &env.run(ADMIN, &["--json", "agent", "integration", "list", "a1"])
            .await,
    );
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["provider"], "github");
    assert!(list[0]["linked_at"].is_string(), "{list}");
    let table = ok(&env
        .run(ADMIN, &["agent", "integration", "list", "a1"])
        .await);
    assert!(
        table.contains("github") && table.contains("octo-agent"),
        "{table}"
    );

    // Masked, as the admin and as the agent itself.
    for actor in [ADMIN, "agent:a1"] {
        let c = json(
            &env.run(actor, &["--json", "agent", "credentials", "a1", "github"])
                .await,
        );
        assert_eq!(c["token"], "ghp_…", "{c}");
        assert_eq!(c["revealed"], false);
        assert_eq!(c["username"], "octo-agent");
    }
    let shown = ok(&env
        .run(ADMIN, &["agent", "credentials", "a1", "github"])
        .await);
    assert!(shown.contains("ghp_…"), "{shown}");
    // Revealed.
    let c = json(
        &env.run(
            ADMIN,
            &["--json", "agent", "credentials", "a1", "github", "--reveal"],
        )
        .await,
    );
    assert_eq!(c["token"], GITHUB_GOOD);
    // Another agent is refused (exit 4).
    let out = env
        .run("agent:a2", &["agent", "credentials", "a1", "github"])
        .await;
    fails(&out, 4, "");

    // Linked twice: a conflict (exit 5).
    let out = env
        .run_stdin(
            ADMIN,
            &["agent", "integration", "github", "link", "a1", "--pat", "-"],
            GITHUB_GOOD,
        )
        .await;
    fails(&out, 5, "unlink it first");

    let gone = json(
        &env.run(
            ADMIN,
            &["--json", "agent", "integration", "github", "unlink", "a1"],
        )
        .await,
    );
    assert_eq!(gone["provider"], "github");
    let list = json(
        &env.run(ADMIN, &["--json", "agent", "integration", "list", "a1"])
            .await,
    );
    assert_eq!(list, serde_json::json!([]));
    let out = env
        .run(ADMIN, &["--json", "agent", "credentials", "a1", "github"])
        .await;
    let err = fails(&out, 3, "not_found");
    let _: serde_json::Value = serde_json::from_str(&err).expect("json error");
    env.never_printed();
}

#[tokio::test]
async fn telegram_link_credentials_unlink() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bot");
    std::fs::write(&file, TELEGRAM_GOOD).expect("write");
    let at = format!("@{}", file.display());
    let out = env
        .run(
            ADMIN,
            &[
                "agent",
                "integration",
                "telegram",
                "link",
                "bot1",
                "--bot-token",
                &at,
                "--allowed-users",
                "123,456",
            ],
        )
        .await;
    let said = ok(&out);
    assert!(said.contains("linked telegram"), "{said}");
    let c = json(
        &env.run(
            "agent:bot1",
            &["--json", "agent", "credentials", "bot1", "telegram"],
        )
        .await,
    );
    assert_eq!(c["token"], "4242…");
    assert_eq!(c["allowed_users"], serde_json::json!([123, 456]));
    let c = json(
        &env.run(
            ADMIN,
            &[
                "--json",
                "agent",
                "credentials",
                "bot1",
                "telegram",
                "--reveal",
            ],
        )
        .await,
    );
    assert_eq!(c["token"], TELEGRAM_GOOD);
    let said = ok(&env
        .run(
            ADMIN,
            &["agent", "integration", "telegram", "unlink", "bot1"],
        )
        .await);
    assert!(said.contains("unlinked telegram"), "{said}");
    let out = env
        .run(ADMIN, &["agent", "credentials", "bot1", "telegram"])
        .await;
    fails(&out, 3, "not");
    env.never_printed();
}

#[tokio::test]
async fn a_rejected_token_exits_7_and_stores_nothing() {
    let env = Env::new().await;
    let out = env
        .run(
            ADMIN,
            &[
                "--json",
                "agent",
                "integration",
                "github",
                "link",
                "a1",
                "--pat",
                GITHUB_BAD,
            ],
        )
        .await;
    let err = fails(&out, 7, "rejected");
    let doc: serde_json::Value = serde_json::from_str(&err).expect("json error");
    assert_eq!(doc["error"]["kind"], "rejected");
    let out = env
        .run_stdin(
            ADMIN,
            &["agent", "integration", "gitlab", "link", "a1", "--pat", "-"],
            GITLAB_BAD,
        )
        .await;
    fails(&out, 7, "rejected the credential");
    let list = json(
        &env.run(ADMIN, &["--json", "agent", "integration", "list", "a1"])
            .await,
    );
    assert_eq!(list, serde_json::json!([]));
    let all = json(
        &env.run(ADMIN, &["--json", "credentials", "admin-list"])
            .await,
    );
    assert_eq!(all, serde_json::json!([]), "nothing stored");
    // No token given and no terminal: told how to give it (exit 2).
    let out = env
        .run(ADMIN, &["agent", "integration", "gitlab", "link", "a1"])
        .await;
    fails(&out, 2, "--pat -");
    // A good GitLab token links.
    let out = env
        .run_stdin(
            ADMIN,
            &["agent", "integration", "gitlab", "link", "a1", "--pat", "-"],
            GITLAB_GOOD,
        )
        .await;
    ok(&out);
    let c = json(
        &env.run(ADMIN, &["--json", "agent", "credentials", "a1", "gitlab"])
            .await,
    );
    assert_eq!(c["token"], "glpa…");
    env.never_printed();
}

#[tokio::test]
async fn named_secret_org_then_override() {
    let env = Env::new().await;
    let org = "sk-orgCANARYllmkey0001";
    let own = "sk-ownCANARYllmkey0002";
    ok(&env
        .run_stdin(
            ADMIN,
            &[
                "credentials",
                "admin-create",
                "--provider",
                "openai",
                "--name",
                "llmproxy:llm.api_key",
                "-f",
                "api_key=-",
            ],
            org,
        )
        .await);
    let s = json(
        &env.run(
            ADMIN,
            &["--json", "agent", "secret", "a1", "llmproxy:llm.api_key"],
        )
        .await,
    );
    assert_eq!(s["source"], "org", "{s}");
    assert_eq!(s["fields"]["api_key"], "sk-o…");
    ok(&env
        .run_stdin(
            ADMIN,
            &[
                "credentials",
                "admin-create",
                "--provider",
                "openai",
                "--name",
                "agent:llmproxy.llm.api_key",
                "--agent",
                "a1",
                "--agent-accessible",
                "-f",
                "api_key=-",
            ],
            own,
        )
        .await);
    let s = json(
        &env.run(
            "agent:a1",
            &[
                "--json",
                "agent",
                "secret",
                "a1",
                "llmproxy:llm.api_key",
                "--reveal",
            ],
        )
        .await,
    );
    assert_eq!(s["source"], "agent", "{s}");
    assert_eq!(s["fields"]["api_key"], own);
    let shown = ok(&env
        .run(ADMIN, &["agent", "secret", "a1", "llmproxy:llm.api_key"])
        .await);
    assert!(shown.contains("source:     agent"), "{shown}");
    // Not a named secret: bad input, no fallback.
    let out = env
        .run(ADMIN, &["agent", "secret", "a1", "openai_main"])
        .await;
    fails(&out, 2, "not a named secret");
    env.never_printed();
}
