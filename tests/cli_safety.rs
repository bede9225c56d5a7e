//! The `strongroom` CLI does not lose data or leak it (issue 19, items 1–9), through the real
//! binary on a real SQLite file: multi-line secrets kept byte for byte, one master key per
//! vault, rotation that leaves the CLI able to read what it rotated, a drop-in folder that
//! cannot redirect secrets, private files, read-only commands that create nothing, a safe
//! concurrent first use, a closed stdout, and control characters escaped on the terminal.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ADMIN: &str = "system_admin:root";

/// A home (`STRONGROOM_HOME`) in a temporary folder, and the vault in it.
struct Env {
    _dir: tempfile::TempDir,
    home: PathBuf,
}

impl Env {
    /// A home that does not exist yet (the first create makes it).
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        Env { _dir: dir, home }
    }

    fn db(&self) -> PathBuf {
        self.home.join("vault.db")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", &self.home)
            .args(["--as", ADMIN])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("runs")
    }

    fn run_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().expect("runs")
    }

    fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin).expect("write");
        drop(pipe);
        child.wait_with_output().expect("wait")
    }

    /// Creates a system-wide openai credential named `name`; returns its id.
    fn create(&self, name: &str, key: &str) -> String {
        let out = self.run(&[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            name,
            "-f",
            &format!("api_key={key}"),
        ]);
        json(&out)["id"].as_str().expect("id").to_string()
    }

    /// Records per master key (`keys status --json`).
    fn key_counts(&self, vars: &[(&str, &str)]) -> serde_json::Value {
        json(&self.run_with(vars, &["--json", "keys", "status"]))
    }

    fn reveal(&self, vars: &[(&str, &str)], id: &str) -> serde_json::Value {
        json(&self.run_with(vars, &["--json", "credentials", "show", id, "--reveal"]))
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn fails(out: &Output, code: i32, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        stdout(out)
    );
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    err
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("json output")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A fresh 32-byte key, base64url, as `STRONGROOM_MASTER_KEY` takes it.
fn random_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("random");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A PEM private key of at least 4 KiB (64-column base64 lines of varied bytes).
fn pem_4k() -> String {
    use base64::Engine;
    let body: Vec<u8> = (0..3200u32).map(|i| (i * 7919 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    assert!(pem.len() >= 4096, "{} bytes", pem.len());
    pem
}

/// A real service-account key file of at least 20 KiB: the test fixture, pretty-printed
/// over many lines, with a long extra field as real files sometimes carry.
fn service_account_20k() -> String {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys/gcp_service_account.json"),
    )
    .expect("fixture");
    let mut doc: serde_json::Value = serde_json::from_str(&fixture).expect("json");
    let notes: Vec<String> = (0..400)
        .map(|i| format!("rotation note {i:03}: issued for the deploy pipeline"))
        .collect();
    doc["x_notes"] = serde_json::json!(notes);
    let mut text = serde_json::to_string_pretty(&doc).expect("json");
    text.push('\n');
    assert!(text.len() >= 20 * 1024, "{} bytes", text.len());
    text
}

// 1 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn multi_line_secrets_from_stdin_or_a_file_are_stored_and_revealed_byte_for_byte() {
    let env = Env::new();
    let pem = pem_4k();
    let out = env.run_stdin(
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "github_app",
            "-f",
            "app_id=12345",
            "-f",
            "private_key=-",
        ],
        pem.as_bytes(),
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let shown = env.reveal(&[], &id);
    assert_eq!(shown["fields"]["private_key"].as_str(), Some(pem.as_str()));
    assert_eq!(shown["fields"]["app_id"], "12345");

    let sa = service_account_20k();
    let out = env.run_stdin(
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "gcp",
            "-f",
            "service_account_json=-",
        ],
        sa.as_bytes(),
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let shown = env.reveal(&[], &id);
    assert_eq!(
        shown["fields"]["service_account_json"].as_str(),
        Some(sa.as_str())
    );

    // name=@FILE reads a file the same way.
    let file = env.home.join("key.pem");
    std::fs::write(&file, &pem).expect("write");
    let out = env.run(&[
        "--json",
        "credentials",
        "admin-create",
        "--provider",
        "github_app",
        "--name",
        "from_file",
        "-f",
        "app_id=7",
        "-f",
        &format!("private_key=@{}", file.display()),
    ]);
    let id = json(&out)["id"].as_str().expect("id").to_string();
    assert_eq!(
        env.reveal(&[], &id)["fields"]["private_key"].as_str(),
        Some(pem.as_str())
    );

    // One line (`echo KEY |`) loses its line ending, which is no part of the key.
    let out = env.run_stdin(
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "-f",
            "api_key=-",
        ],
        b"sk-one-line\n",
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    assert_eq!(
        env.reveal(&[], &id)["fields"]["api_key"].as_str(),
        Some("sk-one-line")
    );

    // Only one field per command comes from stdin, and the error says what to do instead.
    let out = env.run_stdin(
        &[
            "credentials",
            "admin-create",
            "--provider",
            "github_app",
            "--name",
            "two",
            "-f",
            "app_id=-",
            "-f",
            "private_key=-",
        ],
        pem.as_bytes(),
    );
    fails(&out, 2, "private_key=@FILE");
    // A missing file is named by the field, never by the text after `@` (which could be a
    // password that happens to start with `@`).
    let out = env.run(&[
        "credentials",
        "admin-create",
        "--provider",
        "openai",
        "--name",
        "missing",
        "-f",
        "api_key=@s3cr3t-CANARY",
    ]);
    let err = fails(&out, 2, "cannot read `api_key`");
    assert!(!err.contains("CANARY"), "{err}");
    // The prompt is for one-line values typed at a terminal.
    let out = env.run_stdin(
        &[
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            "prompted",
            "-f",
            "api_key=?",
        ],
        b"",
    );
    fails(&out, 2, "stdin is not a terminal");
}

// 2 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn a_vault_seals_with_its_own_master_key_only() {
    let env = Env::new();
    let first = env.create("first", "sk-first-1");
    let status = env.key_counts(&[]);
    let active = status["active"].as_str().expect("active").to_string();

    // An empty variable is a mistake, not a request for another key.
    let out = env.run_with(
        &[("STRONGROOM_MASTER_KEY", "")],
        &[
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            "x",
            "-f",
            "api_key=sk-x",
        ],
    );
    fails(&out, 2, "STRONGROOM_MASTER_KEY is set but empty");

    // A key this vault has never used: refused, for reading and for writing.
    let stranger = random_key();
    let vars = [("STRONGROOM_MASTER_KEY", stranger.as_str())];
    for args in [
        vec!["credentials", "admin-list"],
        vec!["credentials", "show", first.as_str(), "--reveal"],
        vec![
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            "y",
            "-f",
            "api_key=sk-y",
        ],
    ] {
        let err = fails(
            &env.run_with(&vars, &args),
            2,
            "has never been used by the vault",
        );
        assert!(
            err.contains(&active),
            "names the key the vault wants: {err}"
        );
    }

    // A master.key replaced by another key: the same.
    let key_file = env.home.join("master.key");
    let original = std::fs::read_to_string(&key_file).expect("key");
    std::fs::write(&key_file, format!("{}\n", random_key())).expect("replace");
    let out = env.run(&[
        "credentials",
        "admin-create",
        "--provider",
        "openai",
        "--name",
        "z",
        "-f",
        "api_key=sk-z",
    ]);
    fails(&out, 2, "has never been used by the vault");
    std::fs::write(&key_file, original).expect("restore");

    // Nothing was sealed under another key.
    let status = env.key_counts(&[]);
    assert_eq!(status["records"], serde_json::json!({ active.clone(): 1 }));
    assert_eq!(env.reveal(&[], &first)["fields"]["api_key"], "sk-first-1");
}

// 3 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn after_keys_rotate_the_new_key_seals_and_retired_keys_are_found_where_configured() {
    let env = Env::new();
    let ids: Vec<String> = (0..3)
        .map(|i| env.create(&format!("k{i}"), &format!("sk-rot-{i}")))
        .collect();
    let old = env.key_counts(&[])["active"]
        .as_str()
        .expect("active")
        .to_string();
    let new_file = env.home.join("next.key");
    let to = format!("file:{}", new_file.display());
    // Stopped after one batch of one record: two stay on the old key.
    let out = env.run(&[
        "keys",
        "rotate",
        "--to",
        &to,
        "--batch-size",
        "1",
        "--max-batches",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let status = env.key_counts(&[]);
    let new = status["active"].as_str().expect("active").to_string();
    assert_ne!(new, old, "the rotation's target is the active key at once");
    // keys.toml names both keys, privately.
    let keys_toml = env.home.join("keys.toml");
    assert_eq!(mode(&keys_toml), 0o600);
    let text = std::fs::read_to_string(&keys_toml).expect("keys.toml");
    assert!(text.contains(&format!("active = \"{to}\"")), "{text}");
    assert!(
        text.contains("master.key"),
        "the previous key is retired: {text}"
    );

    // A credential made now lands on the new key, and every credential opens.
    let fresh = env.create("fresh", "sk-fresh");
    let status = env.key_counts(&[]);
    assert_eq!(status["records"][&new], 2, "{status}");
    assert_eq!(status["records"][&old], 2, "{status}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            env.reveal(&[], id)["fields"]["api_key"],
            format!("sk-rot-{i}")
        );
    }
    assert_eq!(env.reveal(&[], &fresh)["fields"]["api_key"], "sk-fresh");

    // Without keys.toml, the old key alone is refused: the vault has moved on.
    let moved = env.home.join("keys.toml.aside");
    std::fs::rename(&keys_toml, &moved).expect("aside");
    fails(
        &env.run(&["credentials", "admin-list"]),
        2,
        "is one of its earlier keys",
    );
    // The new key in the variable, and the old one listed as retired in
    // STRONGROOM_RETIRED_KEYS, open everything.
    let new_value = std::fs::read_to_string(&new_file).expect("new key");
    let old_file = env.home.join("old.key");
    std::fs::rename(env.home.join("master.key"), &old_file).expect("move the old key");
    let retired = format!("file:{}", old_file.display());
    let vars = [
        ("STRONGROOM_MASTER_KEY", new_value.trim()),
        ("STRONGROOM_RETIRED_KEYS", retired.as_str()),
    ];
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            env.reveal(&vars, id)["fields"]["api_key"],
            format!("sk-rot-{i}")
        );
    }
    // Without the retired key, a record still on it does not open (and nothing else
    // breaks), and the error names the key to add.
    let only_new = [("STRONGROOM_MASTER_KEY", new_value.trim())];
    let still_old: Vec<&String> = ids
        .iter()
        .filter(|id| {
            !env.run_with(&only_new, &["credentials", "show", id, "--reveal"])
                .status
                .success()
        })
        .collect();
    assert_eq!(still_old.len(), 2, "two records wait for the old key");
    let out = env.run_with(
        &only_new,
        &["credentials", "show", still_old[0], "--reveal"],
    );
    // A key that cannot be used now is an operator's fix (exit 10), not tampering (6).
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains(&old), "{}", stderr(&out));
    // Finishing the rotation with the retired key in reach moves the rest.
    std::fs::rename(&moved, &keys_toml).expect("back");
    std::fs::rename(&old_file, env.home.join("master.key")).expect("back");
    let done = ok(&env.run(&["keys", "rotate", "--to", &to]));
    assert!(done.contains("complete"), "{done}");
    let status = env.key_counts(&[]);
    assert_eq!(status["records"], serde_json::json!({ new.clone(): 4 }));
    // keys.toml that others may read is refused.
    chmod(&keys_toml, 0o644);
    fails(&env.run(&["credentials", "admin-list"]), 2, "chmod 600");
    chmod(&keys_toml, 0o600);
    ok(&env.run(&["audit", "verify"]));
}

// 4 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn a_drop_in_provider_cannot_redirect_a_secret() {
    let env = Env::new();
    env.create("seed", "sk-seed");
    let dir = env.home.join("providers");
    std::fs::create_dir(&dir).expect("mkdir");
    let file = dir.join("openai.toml");
    let provider = |endpoint: &str, extra: &str| {
        format!(
            "[provider]\nname = \"openai\"\ndisplay_name = \"OpenAI\"\nhandler_type = \
             \"api_key\"\n\n[verify]\nendpoint = \"{endpoint}\"\nauth_template = \
             \"Authorization: Bearer {{api_key}}\"\n{extra}"
        )
    };
    // A folder others may write: refused outright, for every command.
    chmod(&dir, 0o777);
    fails(
        &env.run(&["providers", "list"]),
        2,
        "group or others can write it",
    );
    fails(&env.run(&["credentials", "admin-list"]), 2, "chmod go-w");
    chmod(&dir, 0o755);
    // A file others may write: skipped, and the bundled provider stays.
    std::fs::write(&file, provider("https://collector.example/v1", "")).expect("write");
    chmod(&file, 0o666);
    let out = env.run(&["--json", "providers", "show", "openai"]);
    assert_eq!(json(&out)["source"], "bundled:openai.toml");
    let out = env.run(&["providers", "list"]);
    assert!(
        stderr(&out).contains("group or others can write it"),
        "{}",
        stderr(&out)
    );
    chmod(&file, 0o644);
    // Plain http to another machine, or the key in the query string: refused.
    for (text, needle) in [
        (
            provider("http://collector.example/v1", ""),
            "must be an https URL",
        ),
        (
            "[provider]\nname = \"openai\"\ndisplay_name = \"OpenAI\"\nhandler_type = \
             \"api_key\"\n\n[verify]\nendpoint = \"https://collector.example/v1?key={api_key}\"\n"
                .to_string(),
            "secret_in_url = true",
        ),
    ] {
        std::fs::write(&file, text).expect("write");
        let out = env.run(&["providers", "list"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        let out = env.run(&["--json", "providers", "show", "openai"]);
        assert_eq!(json(&out)["source"], "bundled:openai.toml");
    }
    // A well-formed override is used, and never silently: reported, and audited.
    std::fs::write(&file, provider("https://proxy.example/v1/models", "")).expect("write");
    let out = env.run(&["providers", "list"]);
    ok(&out);
    assert!(
        stderr(&out).contains("overrides the bundled definition"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["--json", "providers", "list"]);
    assert_eq!(json(&out)["overrides"][0]["name"], "openai");
    let out = env.run(&[
        "credentials",
        "admin-create",
        "--provider",
        "openai",
        "--name",
        "via_drop_in",
        "-f",
        "api_key=sk-drop",
    ]);
    ok(&out);
    assert!(stderr(&out).contains("overrides the bundled definition"));
    let db = rusqlite::Connection::open(env.db()).expect("open");
    let details: String = db
        .query_row(
            "SELECT details FROM audit WHERE action = 'credential.create' ORDER BY seq DESC \
             LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert!(
        details.contains("openai.toml") && details.contains("override"),
        "{details}"
    );
}

// 5 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn the_home_and_the_database_files_are_private() {
    let env = Env::new();
    env.create("a", "sk-a");
    assert_eq!(mode(&env.home), 0o700);
    for name in ["vault.db", "master.key", "checkpoints"] {
        assert_eq!(mode(&env.home.join(name)), 0o600, "{name}");
    }
    // While another connection holds the file, the WAL and its index stay: both 0600.
    let holder = rusqlite::Connection::open(env.db()).expect("open");
    let _: i64 = holder
        .query_row("SELECT count(*) FROM credentials", [], |r| r.get(0))
        .expect("read");
    env.create("b", "sk-b");
    for name in ["vault.db-wal", "vault.db-shm"] {
        assert_eq!(mode(&env.home.join(name)), 0o600, "{name}");
    }
    drop(holder);
    // A home others may write is refused.
    for loose in [0o777, 0o775, 0o757] {
        chmod(&env.home, loose);
        let err = fails(
            &env.run(&["credentials", "admin-list"]),
            2,
            "refusing STRONGROOM_HOME",
        );
        assert!(err.contains("chmod 700"), "{err}");
    }
    chmod(&env.home, 0o750);
    ok(&env.run(&["credentials", "admin-list"]));
}

// 6 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn read_only_commands_create_nothing_and_foreign_files_are_left_alone() {
    let env = Env::new();
    // No vault yet: reading says so and creates nothing, not even the home.
    for args in [
        vec!["credentials", "admin-list"],
        vec!["credentials", "list", "--scope", "system_wide"],
        vec!["keys", "status"],
        vec!["audit", "verify"],
    ] {
        fails(&env.run(&args), 3, "create a credential to start one");
    }
    assert!(!env.home.exists(), "a read made the home");

    // An empty file is not made a vault by a read.
    std::fs::create_dir(&env.home).expect("mkdir");
    chmod(&env.home, 0o700);
    std::fs::write(env.db(), b"").expect("touch");
    fails(
        &env.run(&["credentials", "admin-list"]),
        3,
        "the file is empty",
    );
    assert_eq!(std::fs::metadata(env.db()).expect("meta").len(), 0);
    assert!(
        !env.home.join("master.key").exists(),
        "no key was made for it"
    );

    // Another application's database, through --store: refused, byte for byte untouched,
    // not switched to WAL.
    let theirs = env.home.join("app.sqlite");
    let conn = rusqlite::Connection::open(&theirs).expect("open");
    conn.execute_batch("CREATE TABLE orders (id INTEGER); INSERT INTO orders VALUES (1);")
        .expect("their schema");
    drop(conn);
    let before = std::fs::read(&theirs).expect("read");
    let store = format!("sqlite:{}", theirs.display());
    for args in [
        vec!["--store", store.as_str(), "credentials", "admin-list"],
        vec![
            "--store",
            store.as_str(),
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "-f",
            "api_key=sk-no",
        ],
    ] {
        let out = env.run(&args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("is not a strongroom vault"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(&theirs).expect("read"), before);
    assert!(!env.home.join("app.sqlite-wal").exists());

    // A create starts the vault in the empty file; reads then work.
    env.create("first", "sk-first");
    ok(&env.run(&["credentials", "admin-list"]));
}

// 7 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn twenty_parallel_first_creates_in_a_new_home_all_succeed() {
    let env = Env::new();
    let children: Vec<_> = (0..20)
        .map(|i| {
            env.cmd(&[
                "credentials",
                "admin-create",
                "--provider",
                "openai",
                "--name",
                &format!("par{i}"),
                "-f",
                &format!("api_key=sk-par-{i}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for child in children {
        ok(&child.wait_with_output().expect("wait"));
    }
    let status = env.key_counts(&[]);
    let records = status["records"].as_object().expect("map");
    assert_eq!(records.len(), 1, "one master key: {records:?}");
    assert_eq!(records.values().next(), Some(&serde_json::json!(20)));
    let mut names: Vec<String> = std::fs::read_dir(&env.home)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["checkpoints", "master.key", "vault.db"],
        "no temp files left"
    );
    ok(&env.run(&["audit", "verify"]));
}

// 8 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let env = Env::new();
    env.create("a", "sk-a");
    for args in [
        vec!["providers", "list"],
        vec!["credentials", "admin-list"],
        vec!["--json", "providers", "list"],
    ] {
        // The reading end is closed before the command starts, so its first write fails.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = env
            .cmd(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // And through a shell pipe that stops reading early.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' providers list | head -c 100 >/dev/null; echo \"status=$?\"",
            env!("CARGO_BIN_EXE_strongroom")
        ))
        .env("STRONGROOM_HOME", &env.home)
        .output()
        .expect("sh");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

// 9 ─────────────────────────────────────────────────────────────────────────────────────

#[test]
fn control_characters_from_the_database_or_files_are_escaped_on_the_terminal() {
    let env = Env::new();
    let first = env.create("plain", "sk-plain");
    let second = env.create("second", "sk-second");
    let raw = |out: &Output| {
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(
            !all.contains(&0x1b),
            "a raw ESC reached the terminal: {all:?}"
        );
        assert!(
            !all.contains(&0x07),
            "a raw BEL reached the terminal: {all:?}"
        );
    };
    // Tampered rows: a key id and a name holding escape sequences and a line break.
    let db = rusqlite::Connection::open(env.db()).expect("open");
    db.execute(
        "UPDATE credentials SET key_id = ?1 WHERE id = ?2",
        rusqlite::params!["local:\u{1b}]0;pwned\u{7}", first],
    )
    .expect("tamper");
    db.execute(
        "UPDATE credentials SET name = ?1 WHERE id = ?2",
        rusqlite::params!["evil\u{1b}[2J\nFAKE ROW", second],
    )
    .expect("tamper");
    let out = env.run(&["keys", "status"]);
    let table = ok(&out);
    raw(&out);
    assert!(table.contains("local:\\u{1b}]0;pwned\\u{7}"), "{table}");
    let out = env.run(&["credentials", "admin-list"]);
    let table = ok(&out);
    raw(&out);
    assert_eq!(table.lines().count(), 3, "header and two rows: {table}");
    assert!(table.contains("evil\\u{1b}[2J\\nFAKE ROW"), "{table}");
    // The vault's record of its master key, tampered: the error quotes it, escaped, on one
    // line.
    db.execute(
        "UPDATE records SET body = ?1 WHERE kind = 'strongroom.master-key'",
        rusqlite::params![r#"{"key_id":"local:\u001b]0;pwned\u0007\nnext line","previous":[]}"#],
    )
    .expect("tamper");
    drop(db);
    let out = env.run(&["credentials", "admin-list"]);
    let err = fails(
        &out,
        2,
        "master key local:\\u{1b}]0;pwned\\u{7}\\nnext line;",
    );
    raw(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // A drop-in provider file with escapes in its display name.
    let dir = env.home.join("providers");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("odd.toml"),
        "[provider]\nname = \"odd\"\ndisplay_name = \"Odd\\u001b[31m\\u0007\"\nhandler_type = \
         \"api_key\"\n",
    )
    .expect("write");
    let out = env.run(&["providers", "list"]);
    raw(&out);
    assert!(
        stdout(&out).contains("Odd\\u{1b}[31m\\u{7}"),
        "{}",
        stdout(&out)
    );
    let out = env.run(&["providers", "show", "odd"]);
    raw(&out);
}
