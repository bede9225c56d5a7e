//! The CLI's checkpoints with keys other than a local master key: a HashiCorp Vault transit
//! master key (its HMAC, through the stand-in of `tests/kms_servers.py` on 127.0.0.1), and
//! a separate `STRONGROOM_AUDIT_KEY`. Each command keeps a checkpoint, `audit verify` checks
//! against it, and a cut tail is caught.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

struct StandIns {
    child: Child,
    info: serde_json::Value,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-in servers, without moto (this file needs no AWS).
fn stand_ins() -> StandIns {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_servers.py"))
        .arg("--no-aws")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs tests/kms_servers.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the servers' first line");
    let info = serde_json::from_str(&line).expect("the servers' endpoints");
    StandIns { child, info }
}

struct Env {
    home: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(vars: &[(&str, &str)]) -> Env {
        Env {
            home: tempfile::tempdir().expect("tempdir"),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn run(&self, actor: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--as")
            .arg(actor)
            .args(args)
            .output()
            .expect("runs")
    }

    fn create(&self, name: &str) {
        let out = self.run(
            "system_admin:root",
            &[
                "credentials",
                "admin-create",
                "--provider",
                "openai",
                "--name",
                name,
                "-f",
                "api_key=sk-cp",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn kept(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.home.path().join("checkpoints"))
            .expect("a checkpoints file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON checkpoint per line"))
            .collect()
    }

    fn verify(&self) -> (Option<i32>, String) {
        let out = self.run("viewer:v", &["audit", "verify"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn cut_from(&self, seq: i64) {
        rusqlite::Connection::open(self.home.path().join("vault.db"))
            .expect("open")
            .execute("DELETE FROM audit WHERE seq >= ?1", [seq])
            .expect("cut");
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Five commands, five checkpoints named `prefix…`, an intact chain; then the tail is cut,
/// and `audit verify` and every other command say so.
fn keeps_and_checks(env: &Env, prefix: &str) {
    for i in 0..5 {
        env.create(&format!("k{i}"));
    }
    let kept = env.kept();
    assert_eq!(kept.len(), 5);
    for line in &kept {
        let key_id = line["key_id"].as_str().expect("key_id");
        assert!(key_id.starts_with(prefix), "{key_id}");
        assert!(!line["mac"].as_str().expect("mac").is_empty());
    }
    let (code, out) = env.verify();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("audit chain intact: 5 rows (checked against the checkpoint at seq 5)"),
        "{out}"
    );
    env.cut_from(3);
    let (code, out) = env.verify();
    assert_eq!(code, Some(6), "{out}");
    assert!(
        out.contains("rows 3–5 missing (checkpoint at seq 5)"),
        "{out}"
    );
    let out = env.run("system_admin:root", &["credentials", "admin-list"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

#[test]
fn a_vault_transit_master_key_keeps_checkpoints_with_its_hmac() {
    let srv = stand_ins();
    let v = &srv.info["vault"];
    let text = |p: &str| v[p].as_str().expect("field").to_string();
    let (addr, key, token) = (text("addr"), text("key"), text("token"));
    let env = Env::new(&[
        ("STRONGROOM_KMS", "vault"),
        ("VAULT_ADDR", &addr),
        ("VAULT_TOKEN", &token),
        ("STRONGROOM_VAULT_TRANSIT_KEY", &key),
    ]);
    keeps_and_checks(&env, &format!("vault_hmac:{addr}/transit/{key}"));
}

#[test]
fn an_audit_key_keeps_the_checkpoints_apart_from_the_master_key() {
    let env = Env::new(&[
        (
            "STRONGROOM_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        ),
        (
            "STRONGROOM_AUDIT_KEY",
            "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM",
        ),
    ]);
    keeps_and_checks(&env, "audit:");

    // A malformed audit key is refused before anything is done, naming the variable only.
    let bad = Env::new(&[
        (
            "STRONGROOM_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        ),
        ("STRONGROOM_AUDIT_KEY", "c2hvcnQ-CANARY"),
    ]);
    let out = bad.run(
        "system_admin:root",
        &[
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            "k",
            "-f",
            "api_key=sk-cp",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("STRONGROOM_AUDIT_KEY"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("CANARY"), "{}", stderr(&out));
}
