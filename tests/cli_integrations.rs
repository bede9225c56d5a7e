//! `strongroom agent integration github link --app-id …` and `strongroom credential-provider
//! …` through the real binary against the local GitHub App stand-in
//! (tests/common/github_app_server.rs, which checks the JWTs) and the local GitLab stand-in
//! (tests/common/gitlab_server.rs): an App linked with a PEM file and the installation
//! tokens the agent is handed; a key file others can read refused; a credential provider
//! added, listed, a provisioned link, an unlink with its deprovision report, removal;
//! `--json` forms; and that no key or token is printed without `--reveal`.

mod common;

use std::process::{Output, Stdio};

use common::github_app_server::{GithubServer, APP_ID, APP_KEY, INSTALLATION};
use common::gitlab_server::{MockGitlab, ADMIN as GITLAB_ADMIN};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const ADMIN: &str = "system_admin:root";

struct Env {
    home: tempfile::TempDir,
    github: GithubServer,
    gitlab: MockGitlab,
    /// Every stdout and stderr printed by a command run without `--reveal`.
    printed: std::sync::Mutex<Vec<(String, String)>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Env {
    async fn new() -> Env {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        Env {
            home,
            github: GithubServer::start().await,
            gitlab: MockGitlab::start().await,
            printed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A file in the home folder holding `content`, with `mode`.
    fn file(&self, name: &str, content: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.home.path().join(name);
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path.display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            .env("STRONGROOM_GITHUB_URL", self.github.base())
            .arg("--as")
            .arg(ADMIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn keep(&self, args: &[&str], out: &Output) {
        if !args.contains(&"--reveal") {
            let mut printed = self.printed.lock().expect("lock");
            printed.push((text(&out.stdout), text(&out.stderr)));
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().await.expect("runs");
        self.keep(args, &out);
        out
    }

    async fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self.cmd(args).stdin(Stdio::piped()).spawn().expect("spawn");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).await.expect("write");
        drop(input);
        let out = child.wait_with_output().await.expect("wait");
        self.keep(args, &out);
        out
    }

    /// Asserts that no command run without `--reveal` printed a key or a token.
    fn never_printed(&self) {
        let printed = self.printed.lock().expect("lock");
        assert!(!printed.is_empty());
        let key_line = APP_KEY.lines().nth(1).expect("a key line");
        let mut secrets: Vec<String> = self.github.state().tokens.clone();
        secrets.extend(self.gitlab.tokens().into_iter().map(|t| t.token));
        secrets.push("glpat-issued".into());
        secrets.push(key_line.to_string());
        secrets.push("PRIVATE KEY".into());
        for (stdout, stderr) in printed.iter() {
            for s in &secrets {
                assert!(!stdout.contains(s.as_str()), "printed {s}: {stdout}");
                assert!(!stderr.contains(s.as_str()), "printed {s}: {stderr}");
            }
            // The admin token: never in the output (an error may name the flag).
            assert!(!stdout.contains(GITLAB_ADMIN), "{stdout}");
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
async fn github_app_link_credentials_unlink() {
    let env = Env::new().await;
    let app_id = APP_ID.to_string();
    let installation = INSTALLATION.to_string();

    // A key file group or others can read is refused (exit 2), before anything is stored.
    let loose = env.file("loose.pem", APP_KEY, 0o644);
    let out = env
        .run(&[
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--app-id",
            &app_id,
            "--installation-id",
            &installation,
            "--private-key-file",
            &loose,
        ])
        .await;
    fails(&out, 2, "chmod 600");
    // --pat and --app-id are exclusive; --app-id needs the installation and the key.
    let out = env
        .run(&[
            "--json",
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--pat",
            "x",
            "--app-id",
            &app_id,
            "--installation-id",
            &installation,
            "--private-key-file",
            &loose,
        ])
        .await;
    let err = fails(&out, 2, "usage");
    let _: serde_json::Value = serde_json::from_str(&err).expect("json error");
    let out = env
        .run(&[
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--app-id",
            &app_id,
        ])
        .await;
    fails(&out, 2, "--installation-id");
    // A malformed --permission.
    let key = env.file("app.pem", APP_KEY, 0o600);
    let out = env
        .run(&[
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--app-id",
            &app_id,
            "--installation-id",
            &installation,
            "--private-key-file",
            &key,
            "--permission",
            "contents",
        ])
        .await;
    fails(&out, 2, "name=level");
    assert_eq!(env.github.mints(), 0);

    let linked = json(
        &env.run(&[
            "--json",
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--app-id",
            &app_id,
            "--installation-id",
            &installation,
            "--private-key-file",
            &key,
            "--client-id",
            common::github_app_server::CLIENT_ID,
            "--repository",
            "docs",
            "--permission",
            "contents=read",
        ])
        .await,
    );
    assert_eq!(linked["provider"], "github", "{linked}");
    assert_eq!(linked["agent"], "a1", "{linked}");
    // The narrowing reached GitHub.
    let asked = env
        .github
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/access_tokens"))
        .expect("a mint");
    assert!(asked.body.contains("docs"), "{}", asked.body);
    assert!(asked.body.contains("contents"), "{}", asked.body);

    let list = ok(&env.run(&["agent", "integration", "list", "a1"]).await);
    assert!(list.contains("github"), "{list}");

    // Masked: the agent's token is an installation token, not the key.
    let c = json(
        &env.run(&["--json", "agent", "credentials", "a1", "github"])
            .await,
    );
    assert_eq!(c["revealed"], false, "{c}");
    assert!(c["token"].as_str().expect("token").ends_with('…'), "{c}");
    assert!(c["expires_at"].is_string(), "{c}");
    let shown = ok(&env.run(&["agent", "credentials", "a1", "github"]).await);
    assert!(shown.contains("token:"), "{shown}");
    // Revealed: one of the tokens the server minted.
    let c = json(
        &env.run(&["--json", "agent", "credentials", "a1", "github", "--reveal"])
            .await,
    );
    let token = c["token"].as_str().expect("token").to_string();
    assert!(
        env.github.state().tokens.contains(&token),
        "{token} was not minted"
    );

    let gone = json(
        &env.run(&["--json", "agent", "integration", "github", "unlink", "a1"])
            .await,
    );
    assert_eq!(gone["provider"], "github");
    let out = env.run(&["agent", "credentials", "a1", "github"]).await;
    fails(&out, 3, "");
    env.never_printed();
}

#[tokio::test]
async fn credential_provider_add_link_unlink_remove() {
    let env = Env::new().await;
    let base = env.gitlab.base.clone();

    // Bad configuration: exit 2, nothing stored.
    let out = env
        .run_stdin(
            &[
                "credential-provider",
                "gitlab",
                "add",
                "gl",
                "--base-url",
                &base,
                "--project",
                "acme/api",
                "--mode",
                "service_account",
                "--admin-token",
                "-",
            ],
            GITLAB_ADMIN,
        )
        .await;
    fails(&out, 2, "");
    // A token GitLab refuses: exit 7.
    let out = env
        .run_stdin(
            &[
                "credential-provider",
                "gitlab",
                "add",
                "gl",
                "--base-url",
                &base,
                "--group",
                "acme",
                "--mode",
                "service_account",
                "--admin-token",
                "-",
            ],
            "not-the-admin-token",
        )
        .await;
    fails(&out, 7, "");

    let token_file = env.file("admin", GITLAB_ADMIN, 0o600);
    let at = format!("@{token_file}");
    let added = json(
        &env.run(&[
            "--json",
            "credential-provider",
            "gitlab",
            "add",
            "gl",
            "--base-url",
            &base,
            "--group",
            "acme",
            "--mode",
            "service_account",
            "--scope",
            "read_api",
            "--scope",
            "read_repository",
            "--expires-in-days",
            "30",
            "--admin-token",
            &at,
        ])
        .await,
    );
    assert_eq!(added["name"], "gl", "{added}");
    assert_eq!(added["config"]["target"]["group"], "acme", "{added}");
    assert!(added["created_at"].is_string(), "{added}");
    // A second with that name: a conflict (exit 5).
    let out = env
        .run_stdin(
            &[
                "credential-provider",
                "gitlab",
                "add",
                "gl",
                "--base-url",
                &base,
                "--project",
                "acme/api",
                "--mode",
                "project_access_token",
                "--access-level",
                "30",
                "--admin-token",
                "-",
            ],
            GITLAB_ADMIN,
        )
        .await;
    fails(&out, 5, "");

    let list = json(&env.run(&["--json", "credential-provider", "list"]).await);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "gl");
    let table = ok(&env.run(&["credential-provider", "list"]).await);
    assert!(
        table.contains("gl") && table.contains("group acme"),
        "{table}"
    );

    // --pat and --provider are exclusive.
    let out = env
        .run(&[
            "agent",
            "integration",
            "gitlab",
            "link",
            "a1",
            "--pat",
            "x",
            "--provider",
            "gl",
        ])
        .await;
    fails(&out, 2, "");
    // An unknown provider: not found.
    let out = env
        .run(&[
            "agent",
            "integration",
            "gitlab",
            "link",
            "a1",
            "--provider",
            "nosuch",
        ])
        .await;
    fails(&out, 3, "");

    let linked = json(
        &env.run(&[
            "--json",
            "agent",
            "integration",
            "gitlab",
            "link",
            "a1",
            "--provider",
            "gl",
        ])
        .await,
    );
    assert_eq!(linked["provider"], "gitlab", "{linked}");
    assert_eq!(env.gitlab.accounts().len(), 1);
    let minted = env.gitlab.tokens();
    assert_eq!(minted.len(), 1);
    let c = json(
        &env.run(&["--json", "agent", "credentials", "a1", "gitlab", "--reveal"])
            .await,
    );
    assert_eq!(c["token"], minted[0].token.as_str());
    let c = json(
        &env.run(&["--json", "agent", "credentials", "a1", "gitlab"])
            .await,
    );
    assert_eq!(c["token"], "glpa…", "{c}");

    // Removing the provider while it provisioned an integration is refused.
    let out = env.run(&["credential-provider", "remove", "gl"]).await;
    fails(&out, 2, "unlink");
    // Nothing to finish, nothing due.
    let f = json(&env.run(&["--json", "credential-provider", "finish"]).await);
    assert_eq!(f["recovered"], serde_json::json!([]), "{f}");
    let said = ok(&env.run(&["credential-provider", "finish"]).await);
    assert!(said.contains("no leftover"), "{said}");
    let r = json(&env.run(&["--json", "credential-provider", "rotate"]).await);
    assert_eq!(r, serde_json::json!([]), "{r}");

    // Unlink: the identity is deprovisioned and the steps are printed.
    let said = ok(&env
        .run(&["agent", "integration", "gitlab", "unlink", "a1"])
        .await);
    assert!(said.contains("unlinked gitlab"), "{said}");
    assert!(said.contains("deprovisioned"), "{said}");
    assert!(said.contains("complete"), "{said}");
    assert!(
        env.gitlab.accounts().is_empty(),
        "the service account is gone"
    );

    // Linked again, unlinked with --json: the report as JSON.
    ok(&env
        .run(&[
            "agent",
            "integration",
            "gitlab",
            "link",
            "a1",
            "--provider",
            "gl",
        ])
        .await);
    let gone = json(
        &env.run(&["--json", "agent", "integration", "gitlab", "unlink", "a1"])
            .await,
    );
    assert_eq!(gone["provider"], "gitlab", "{gone}");
    assert_eq!(gone["deprovision"]["provider"], "gl", "{gone}");
    assert_eq!(gone["deprovision"]["complete"], true, "{gone}");
    assert!(
        !gone["deprovision"]["steps"]
            .as_array()
            .expect("steps")
            .is_empty(),
        "{gone}"
    );

    let removed = json(
        &env.run(&["--json", "credential-provider", "remove", "gl"])
            .await,
    );
    assert_eq!(removed["name"], "gl");
    let list = json(&env.run(&["--json", "credential-provider", "list"]).await);
    assert_eq!(list, serde_json::json!([]));
    let out = env
        .run(&["--json", "credential-provider", "remove", "gl"])
        .await;
    fails(&out, 3, "not_found");
    env.never_printed();
}

#[tokio::test]
async fn credential_provider_commands_are_for_system_admins() {
    let env = Env::new().await;
    // Start a vault first.
    let key = env.file("app.pem", APP_KEY, 0o600);
    ok(&env
        .run(&[
            "agent",
            "integration",
            "github",
            "link",
            "a1",
            "--app-id",
            &APP_ID.to_string(),
            "--installation-id",
            &INSTALLATION.to_string(),
            "--private-key-file",
            &key,
        ])
        .await);
    for args in [
        &["credential-provider", "list"][..],
        &["credential-provider", "rotate"][..],
        &["credential-provider", "finish"][..],
        &["credential-provider", "remove", "gl"][..],
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        let out = c
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", env.home.path())
            .args(["--as", "agent:a1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("runs");
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    env.never_printed();
}
