//! The `strongroom` CLI end to end against a real SQLite file.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const CANARY: &str = "sk-CANARY-cli-0d9f3a";

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn db(&self) -> String {
        format!("sqlite:{}", self.home.path().join("vault.db").display())
    }

    fn cmd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            .arg("--store")
            .arg(self.db())
            .arg("--as")
            .arg(actor)
            .args(args);
        c
    }

    fn run(&self, actor: &str, args: &[&str]) -> Output {
        self.cmd(actor, args).output().expect("runs")
    }

    fn run_stdin(&self, actor: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(actor, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write");
        child.wait_with_output().expect("wait")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("json output")
}

/// Asserts that `needle` is in none of the files SQLite keeps for the vault in `home`:
/// `vault.db`, which must exist, and `vault.db-wal` and `vault.db-shm` when they exist (a
/// commit sits in the WAL until a checkpoint copies it into `vault.db`). Returns the size of
/// the WAL it read, 0 when there was none, so a caller can check that the scan covered it.
fn assert_not_in_vault_files(home: &Path, needle: &[u8]) -> u64 {
    let db = home.join("vault.db");
    assert!(db.is_file(), "no vault at {}", db.display());
    let mut wal_len = 0;
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let path = home.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "`{}` found in {name}",
            String::from_utf8_lossy(needle)
        );
        if name == "vault.db-wal" {
            wal_len = bytes.len() as u64;
        }
    }
    wal_len
}

const ALICE: &str = "app_user:crm:alice";

/// The size of the vault's WAL in `home`, 0 when there is none.
fn wal_len(home: &Path) -> u64 {
    std::fs::metadata(home.join("vault.db-wal")).map_or(0, |m| m.len())
}

#[test]
fn commands_leave_no_wal_behind() {
    let env = Env::new();
    ok(&env.run(
        ALICE,
        &[
            "credentials",
            "create",
            "--provider",
            "openai",
            "-f",
            "api_key=sk-proj-wal-test-123",
        ],
    ));
    assert_eq!(wal_len(env.home.path()), 0, "after create");
    ok(&env.run(ALICE, &["credentials", "list"]));
    assert_eq!(wal_len(env.home.path()), 0, "after list");
    ok(&env.run("system_admin:root", &["audit", "verify"]));
    assert_eq!(wal_len(env.home.path()), 0, "after audit verify");
}

#[test]
fn a_whole_session_create_list_show_reveal_grants_delete_verify() {
    let env = Env::new();
    // Create from stdin, so the secret never sits in the command line.
    let created = env.run_stdin(
        ALICE,
        &[
            "--json",
            "credentials",
            "create",
            "--provider",
            "openai",
            "-f",
            "api_key=-",
        ],
        &format!("{CANARY}\n"),
    );
    let created = json(&created);
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["name"], "openai_main");
    assert_eq!(created["state"], "filled");
    // Nothing secret in the vault's files. The CLI checkpoints its WAL into `vault.db` as it
    // exits, so the create's commit is in `vault.db`, which the scan reads.
    let wal = assert_not_in_vault_files(env.home.path(), b"CANARY");
    assert_eq!(wal, 0, "the CLI leaves no WAL behind");
    let db = std::fs::read(env.home.path().join("vault.db")).expect("read vault.db");
    assert!(
        db.windows(id.len()).any(|w| w == id.as_bytes()),
        "the create's row is in vault.db, so the scan read it"
    );

    let list = ok(&env.run(ALICE, &["credentials", "list"]));
    assert!(list.contains(&id) && list.contains("openai_main"), "{list}");
    assert!(!list.contains("CANARY"));
    let others = ok(&env.run("app_user:crm:bob", &["credentials", "list"]));
    assert!(!others.contains(&id), "bob does not see alice's credential");

    let shown = ok(&env.run(ALICE, &["credentials", "show", &id]));
    assert!(
        shown.contains("hidden") && !shown.contains("CANARY"),
        "{shown}"
    );
    let revealed = ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"]));
    assert!(
        revealed.contains(CANARY),
        "the owner may reveal: {revealed}"
    );
    fails(
        &env.run("viewer:vera", &["credentials", "show", &id, "--reveal"]),
        4,
        "permission denied",
    );
    // An app admin may not even see a user's credential: to them it does not exist, in
    // the same words as an id that does not.
    let hidden = env.run(
        "app_admin:crm:adam",
        &["credentials", "show", &id, "--reveal"],
    );
    fails(&hidden, 3, "not found");
    let missing_id = "01a20862-0000-7000-8000-000000000000";
    let missing = env.run(
        "app_admin:crm:adam",
        &["credentials", "show", missing_id, "--reveal"],
    );
    fails(&missing, 3, "not found");
    assert_eq!(
        String::from_utf8_lossy(&hidden.stderr).replace(&id, "ID"),
        String::from_utf8_lossy(&missing.stderr).replace(missing_id, "ID")
    );
    ok(&env.run("viewer:vera", &["credentials", "show", &id]));

    ok(&env.run(ALICE, &["credentials", "grant-add", &id, "crm"]));
    ok(&env.run(ALICE, &["credentials", "grant-add", &id, "blog"]));
    ok(&env.run(ALICE, &["credentials", "grant-revoke", &id, "blog"]));
    let grants = json(&env.run(ALICE, &["--json", "credentials", "grants", &id]));
    let grants = grants.as_array().expect("array");
    assert_eq!(grants.len(), 2);
    assert!(grants
        .iter()
        .any(|g| g["app"] == "blog" && !g["revoked_at"].is_null()));
    ok(&env.run(
        ALICE,
        &["credentials", "grant-revoke", &id, "blog", "--hard"],
    ));
    let grants = json(&env.run(ALICE, &["--json", "credentials", "grants", &id]));
    assert_eq!(grants.as_array().expect("array").len(), 1);

    // Admin commands.
    let admin = "system_admin:root";
    let sys = json(&env.run(
        admin,
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "stripe",
            "-f",
            "secret_key=sk_test_x",
        ],
    ));
    assert_eq!(sys["scope"]["kind"], "system_wide");
    let all = ok(&env.run(admin, &["credentials", "admin-list"]));
    assert!(all.contains(&id) && all.contains("stripe_main"), "{all}");
    // The policy decides what admin-list shows: alice sees her own credential, not the
    // system-wide one.
    let alices = ok(&env.run(ALICE, &["credentials", "admin-list"]));
    assert!(
        alices.contains(&id) && !alices.contains("stripe_main"),
        "{alices}"
    );
    fails(
        &env.run(
            ALICE,
            &[
                "credentials",
                "admin-delete",
                sys["id"].as_str().expect("id"),
            ],
        ),
        3,
        "not found",
    );
    ok(&env.run(
        admin,
        &[
            "credentials",
            "admin-delete",
            sys["id"].as_str().expect("id"),
        ],
    ));

    fails(
        &env.run(ALICE, &["credentials", "delete", &id, "--version", "7"]),
        5,
        "version conflict",
    );
    ok(&env.run(ALICE, &["credentials", "delete", &id]));
    fails(
        &env.run(ALICE, &["credentials", "show", &id]),
        3,
        "not found",
    );

    let verified = ok(&env.run(admin, &["audit", "verify"]));
    assert!(verified.contains("audit chain intact"), "{verified}");
    fails(
        &env.run(ALICE, &["audit", "verify"]),
        4,
        "permission denied",
    );

    // Still nothing secret in the vault's files after the whole session.
    assert_not_in_vault_files(env.home.path(), b"CANARY");
}

/// Milliseconds since the epoch of an RFC 3339 time the CLI printed (its own format:
/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z`).
fn millis_of(text: &str) -> i64 {
    strongroom::Timestamp::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}` is RFC 3339: {e}"))
        .as_millis()
}

#[test]
fn expiry_goes_in_as_rfc3339_or_a_duration_and_comes_out_as_rfc3339() {
    let env = Env::new();
    let create = |name: &str, expires_at: &str| {
        env.run(
            ALICE,
            &[
                "--json",
                "credentials",
                "create",
                "--provider",
                "openai",
                "--name",
                name,
                "-f",
                "api_key=sk-x",
                "--expires-at",
                expires_at,
            ],
        )
    };
    // An RFC 3339 time round-trips exactly, whatever offset it was written with.
    let fixed = json(&create("fixed", "2099-06-30T14:00:00.250+02:00"));
    assert_eq!(fixed["expires_at"], "2099-06-30T12:00:00.250Z");
    let id = fixed["id"].as_str().expect("id").to_string();
    let shown = json(&env.run(ALICE, &["--json", "credentials", "show", &id]));
    assert_eq!(shown["expires_at"], "2099-06-30T12:00:00.250Z");
    for field in ["created_at", "updated_at"] {
        let text = shown[field].as_str().expect("a time is printed as text");
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64
            - millis_of(text);
        assert!((0..600_000).contains(&age), "{field} {text} is about now");
    }
    let text = ok(&env.run(ALICE, &["credentials", "show", &id]));
    assert!(
        text.contains("expires_at:  2099-06-30T12:00:00.250Z"),
        "{text}"
    );
    let listed = json(&env.run(ALICE, &["--json", "credentials", "list"]));
    assert_eq!(listed[0]["expires_at"], "2099-06-30T12:00:00.250Z");
    assert_eq!(listed[0]["state"], "filled");

    // A duration counts from now.
    let before = strongroom::Timestamp::now().as_millis();
    let in_30_days = json(&create("soon", "+30d"));
    let at = millis_of(in_30_days["expires_at"].as_str().expect("text"));
    let month = 30 * 24 * 3_600_000;
    assert!(
        (before + month..before + month + 600_000).contains(&at),
        "+30d is 30 days from now: {at} vs {before}"
    );
    for (name, duration, ms) in [("h", "+12h", 12 * 3_600_000), ("m", "+90m", 90 * 60_000)] {
        let out = json(&create(name, duration));
        let at = millis_of(out["expires_at"].as_str().expect("text"));
        assert!(
            (before + ms..before + ms + 600_000).contains(&at),
            "{duration}"
        );
    }

    // A bare number, a time in the past and nonsense are refused, saying what to write;
    // nothing is created.
    for (arg, needle) in [
        ("1700000000", "bare number"),
        ("1700000000000", "bare number"),
        ("2001-01-01T00:00:00Z", "not in the future"),
        ("+0d", "not in the future"),
        ("+30x", "not a duration"),
        ("+d", "not a duration"),
        ("next tuesday", "not a time"),
    ] {
        let out = create("refused", arg);
        fails(&out, 2, needle);
        fails(&out, 2, "2030-01-02T03:04:05Z");
        fails(&out, 2, "+30d");
    }
    let listed = json(&env.run(ALICE, &["--json", "credentials", "list"]));
    assert_eq!(listed.as_array().expect("list").len(), 4, "{listed}");
}

#[test]
fn bad_input_gives_clear_errors_and_exit_codes() {
    let env = Env::new();
    let create = |args: &[&str]| {
        let mut all = vec!["credentials", "create"];
        all.extend_from_slice(args);
        env.run(ALICE, &all)
    };
    fails(
        &create(&["--provider", "nosuch", "-f", "k=v"]),
        2,
        "`nosuch` is not in the provider catalog",
    );
    fails(
        &create(&["--provider", "openai", "-f", "api_key"]),
        2,
        "must be written name=value",
    );
    fails(
        &create(&["--provider", "openai", "-f", "=v"]),
        2,
        "needs a name",
    );
    fails(
        &create(&["--provider", "openai", "-f", "bad name=v"]),
        2,
        "`bad name`",
    );
    fails(
        &create(&["--provider", "openai", "-f", "a=1", "--scope", "galaxy"]),
        2,
        "unknown scope `galaxy`",
    );
    fails(
        &create(&["--provider", "openai", "-f", "a=1", "-f", "a=2"]),
        2,
        "given twice",
    );
    ok(&create(&["--provider", "openai", "-f", "api_key=sk-x1"]));
    fails(
        &create(&["--provider", "openai", "-f", "api_key=sk-y1"]),
        5,
        "already exists",
    );
    // The provider's prefix check and the handler's schema.
    fails(
        &create(&[
            "--provider",
            "openai",
            "--name",
            "o2",
            "-f",
            "api_key=pk-CANARY-1",
        ]),
        2,
        "start with `sk-`",
    );
    fails(
        &create(&[
            "--provider",
            "openai",
            "--name",
            "o3",
            "-f",
            "api_key=sk-1",
            "-f",
            "colour=blue",
        ]),
        2,
        "invalid colour",
    );
    fails(
        &create(&[
            "--provider",
            "postgres",
            "-f",
            "host=db",
            "-f",
            "port=99999",
        ]),
        2,
        "invalid port",
    );
    // The refused value was written nowhere, not even to the WAL.
    assert_not_in_vault_files(env.home.path(), b"CANARY");

    // A missing store, a bad store spec, a missing principal.
    let missing = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .env_clear()
        .env("STRONGROOM_HOME", env.home.path())
        .args([
            "--store",
            "sqlite:/nonexistent/nowhere.db",
            "--as",
            ALICE,
            "credentials",
            "list",
        ])
        .output()
        .expect("runs");
    fails(&missing, 3, "vault at /nonexistent/nowhere.db not found");
    let pg = env
        .cmd(ALICE, &["credentials", "list"])
        .arg("--store")
        .arg("postgres://postgres:hunter2@127.0.0.1:1/test")
        .output()
        .expect("runs");
    // An unreachable server: a clear error that names it (never the password), exit 1.
    fails(&pg, 1, "cannot connect to PostgreSQL at 127.0.0.1:1/test");
    assert!(!String::from_utf8_lossy(&pg.stderr).contains("hunter2"));
    let bad_spec = env
        .cmd(ALICE, &["credentials", "list"])
        .arg("--store")
        .arg("mysql:x")
        .output()
        .expect("runs");
    fails(&bad_spec, 2, "is not a store");
    let no_actor = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .env_clear()
        .env("STRONGROOM_HOME", env.home.path())
        .args(["credentials", "list"])
        .output()
        .expect("runs");
    fails(&no_actor, 2, "--as");
    fails(
        &env.run("wizard:merlin", &["credentials", "list"]),
        2,
        "not a principal",
    );
    // A malformed id and an unknown command.
    fails(
        &env.run(ALICE, &["credentials", "show", "a/b"]),
        2,
        "credential id",
    );
    let unknown = env.run(ALICE, &["credentials", "frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_tampered_audit_chain_fails_verification_with_exit_6() {
    let env = Env::new();
    ok(&env.run(
        ALICE,
        &[
            "credentials",
            "create",
            "--provider",
            "openai",
            "-f",
            "api_key=sk-x1",
        ],
    ));
    ok(&env.run(ALICE, &["credentials", "list"]));
    let db: &Path = &env.home.path().join("vault.db");
    rusqlite::Connection::open(db)
        .expect("open")
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 1", [])
        .expect("tamper");
    let out = env.run("system_admin:root", &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stdout).contains("first bad sequence number 1"));
}

/// A vault with nine audit rows, one `admin-create` each, so nine checkpoints kept.
fn nine_rows() -> Env {
    let env = Env::new();
    for i in 0..9 {
        let name = format!("k{i}");
        ok(&env.run(
            "system_admin:root",
            &[
                "credentials",
                "admin-create",
                "--provider",
                "openai",
                "--name",
                &name,
                "-f",
                "api_key=sk-cp",
            ],
        ));
    }
    env
}

fn audit_db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.home.path().join("vault.db")).expect("open")
}

/// `audit verify` exits 6 and prints what was lost.
fn broken(env: &Env, needle: &str) {
    let out = env.run("system_admin:root", &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    assert!(stdout.contains("audit chain BROKEN"), "{stdout}");
    assert!(stdout.contains(needle), "expected `{needle}` in: {stdout}");
}

#[test]
fn every_command_keeps_a_checkpoint_in_a_private_append_only_file() {
    use std::os::unix::fs::PermissionsExt;
    let env = nine_rows();
    let file = env.home.path().join("checkpoints");
    let mode = std::fs::metadata(&file).expect("kept").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON checkpoint per line"))
        .collect();
    assert_eq!(lines.len(), 9, "one per command: {text}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64 + 1);
        for field in ["head_hash", "time", "key_id", "mac", "store"] {
            assert!(!line[field].is_null(), "{field} in {line}");
        }
        assert!(
            line["store"].as_str().expect("store").ends_with("vault.db"),
            "{line}"
        );
    }
    let verified = ok(&env.run("viewer:v", &["audit", "verify"]));
    assert!(
        verified.contains("audit chain intact: 9 rows (checked against the checkpoint at seq 9)"),
        "{verified}"
    );
    // Verifying commits nothing, so it adds no line; a denial is a commit, so it does.
    let denied = env.run("app_user:crm:alice", &["audit", "verify"]);
    fails(&denied, 4, "permission denied");
    let text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(text.lines().count(), 10, "{text}");

    // A file that others may write is refused, before anything is done.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    let out = env.run("system_admin:root", &["credentials", "admin-list"]);
    fails(&out, 2, "refusing the checkpoints file");
    let out = env.run("system_admin:root", &["audit", "verify"]);
    fails(&out, 2, "chmod 600");
}

#[test]
fn audit_verify_names_the_rows_cut_from_the_tail_and_nothing_more_is_written() {
    let env = nine_rows();
    audit_db(&env)
        .execute("DELETE FROM audit WHERE seq >= 5", [])
        .expect("cut the tail");
    broken(&env, "rows 5–9 missing (checkpoint at seq 9)");
    broken(&env, "first bad sequence number 5");
    // No command extends the cut chain (nor signs a checkpoint over it).
    let lines = std::fs::read_to_string(env.home.path().join("checkpoints"))
        .expect("read")
        .lines()
        .count();
    let out = env.run(
        "system_admin:root",
        &[
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "--name",
            "after",
            "-f",
            "api_key=sk-after",
        ],
    );
    fails(&out, 6, "rows 5–9 missing (checkpoint at seq 9)");
    let rows: i64 = audit_db(&env)
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 4, "nothing was written");
    let after = std::fs::read_to_string(env.home.path().join("checkpoints"))
        .expect("read")
        .lines()
        .count();
    assert_eq!(after, lines, "no checkpoint was added");
    broken(&env, "rows 5–9 missing (checkpoint at seq 9)");
}

#[test]
fn audit_verify_catches_an_emptied_chain_and_a_vanished_vault() {
    let env = nine_rows();
    audit_db(&env)
        .execute("DELETE FROM audit", [])
        .expect("empty it");
    broken(
        &env,
        "rows 1–9 missing (checkpoint at seq 9); the chain is now empty",
    );
    for name in ["vault.db", "vault.db-wal", "vault.db-shm"] {
        let _ = std::fs::remove_file(env.home.path().join(name));
    }
    broken(
        &env,
        "rows 1–9 missing (checkpoint at seq 9); the vault file",
    );
}

/// An audit row's columns as SQLite holds them, up to `details`.
type AuditColumns = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

#[test]
fn audit_verify_catches_a_row_rewritten_with_every_later_hash_recomputed() {
    use strongroom::audit::{CanonicalRow, GENESIS_HASH};
    let env = nine_rows();
    let db = audit_db(&env);
    // An outside tool with write access: change row 5's details, then rehash 5 to 9.
    let rows: Vec<AuditColumns> = db
        .prepare(
            "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, details \
             FROM audit ORDER BY seq",
        )
        .expect("prepare")
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = GENESIS_HASH;
    for (seq, time, actor, action, credential_id, scope_kind, owner, outcome, details) in rows {
        let mut details: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&details).expect("details");
        if seq == 5 {
            details.insert("name".into(), "nothing_to_see".into());
        }
        let hash = CanonicalRow {
            seq: seq as u64,
            time,
            actor: &actor,
            action: &action,
            credential_id: &credential_id,
            scope_kind: &scope_kind,
            owner: &owner,
            outcome: &outcome,
            details: details.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        }
        .hash(&prev);
        if seq >= 5 {
            db.execute(
                "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                rusqlite::params![
                    serde_json::to_string(&details).expect("json"),
                    &prev[..],
                    &hash[..],
                    seq
                ],
            )
            .expect("rewrite");
        }
        prev = hash;
    }
    // The chain alone holds together; the checkpoint does not.
    broken(&env, "rows 1–9 rewritten (checkpoint at seq 9");
}

#[test]
fn providers_list_and_show_the_catalog_and_a_drop_in_folder_adds_and_reports() {
    let env = Env::new();
    let out = ok(&env.run(ALICE, &["providers", "list"]));
    for name in [
        "anthropic",
        "openai",
        "stripe",
        "telegram",
        "github_app",
        "gitlab",
        "mockprovider",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let shown = json(&env.run(ALICE, &["--json", "providers", "show", "stripe"]));
    assert_eq!(shown["handler_type"], "multi_field");
    assert_eq!(
        shown["verify"]["endpoint"],
        "https://api.stripe.com/v1/balance"
    );
    let missing = env.run(ALICE, &["providers", "show", "nosuch"]);
    // Asked for by name, a provider that does not exist is not found (exit 3).
    fails(&missing, 3, "`nosuch` is not in the provider catalog");
    // A drop-in folder: one good file, one broken one (reported with file and line).
    let dir = env.home.path().join("providers");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("acme.toml"),
        "[provider]\nname = \"acme\"\ndisplay_name = \"Acme\"\nhandler_type = \"api_key\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("broken.toml"),
        "[provider]\nname = \"broken\"\ndisplay_name = \"Broken\"\nhandler_type = \"api_kye\"\n",
    )
    .expect("write");
    let out = env.run(ALICE, &["providers", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("acme") && stdout.contains("openai"),
        "{stdout}"
    );
    assert!(
        stderr.contains("broken.toml:4:16: unknown handler type `api_kye`"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(2));
    ok(&env.run(
        ALICE,
        &[
            "credentials",
            "create",
            "--provider",
            "acme",
            "-f",
            "api_key=acme-1",
        ],
    ));
}

/// A one-thread HTTP server on 127.0.0.1 for the mock provider's verify API: a bearer key
/// `mock-good` gets 200, any other 401; paths under `/down` get 503.
fn mock_api() -> String {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                lines.push(line.trim_end().to_string());
            }
            let path = lines
                .first()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("")
                .to_string();
            let good = lines
                .iter()
                .any(|l| l.eq_ignore_ascii_case("authorization: Bearer mock-good"));
            let status = if path.starts_with("/down") {
                "503 Service Unavailable"
            } else if good {
                "200 OK"
            } else {
                "401 Unauthorized"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    base
}

#[test]
fn verify_sets_the_state_and_the_exit_code_from_the_providers_answer() {
    let env = Env::new();
    let base = mock_api();
    let admin = "system_admin:root";
    let create = |name: &str, key: &str, url: &str| -> String {
        let out = env.run(
            admin,
            &[
                "--json",
                "credentials",
                "admin-create",
                "--provider",
                "mockprovider",
                "--name",
                name,
                "-f",
                &format!("api_key={key}"),
                "-f",
                &format!("base_url={url}"),
            ],
        );
        json(&out)["id"].as_str().expect("id").to_string()
    };
    let good = create("good", "mock-good", &base);
    let bad = create("bad", "mock-CANARY-rejected", &base);
    let down = create("down", "mock-good", &format!("{base}/down"));

    let out = env.run(admin, &["credentials", "verify", &good]);
    let text = ok(&out);
    assert!(text.contains("Valid: HTTP 200"), "{text}");
    assert!(text.contains("now valid"), "{text}");

    let out = env.run(admin, &["--json", "credentials", "verify", &bad]);
    assert_eq!(out.status.code(), Some(7));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["result"], "invalid");
    assert_eq!(v["state"], "invalid");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("CANARY"));
    // The rejected key is stored sealed, and the verdict's audit row does not quote it.
    assert_not_in_vault_files(env.home.path(), b"CANARY");

    let out = env.run(admin, &["credentials", "verify", &down]);
    assert_eq!(out.status.code(), Some(8));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HTTP 503"), "{text}");
    assert!(text.contains("now filled"), "unchanged: {text}");

    // The states stick, and the audit chain holds the three checks.
    let out = env.run(admin, &["--json", "credentials", "show", &bad]);
    assert_eq!(json(&out)["state"], "invalid");
    let out = env.run(admin, &["audit", "verify"]);
    ok(&out);

    // A viewer may not verify.
    let out = env.run("viewer:v", &["credentials", "verify", &good]);
    fails(&out, 4, "permission denied");
}

#[test]
fn yaml_migrate_credentials_prints_a_diff_writes_with_write_and_reports_bad_files() {
    let env = Env::new();
    let root = env.home.path().join("apps");
    std::fs::create_dir_all(root.join("team")).expect("mkdir");
    let legacy =
        "# legacy\nbrain:\n  provider: openai\n  config:\n    api_key: '{{env.OPENAI_API_KEY}}'\n";
    std::fs::write(root.join("a.yaml"), legacy).expect("write");
    std::fs::write(root.join("team").join("b.yml"), legacy).expect("write");
    std::fs::write(root.join("broken.yaml"), "brain: [\n").expect("write");
    let dir = root.display().to_string();

    // Without --write: a diff for the top folder only, files untouched, exit 2 (a bad file).
    let out = env.run("viewer:v", &["yaml", "migrate-credentials", &dir]);
    assert_eq!(out.status.code(), Some(2));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("+  credential:\n+    ref: openai_main\n"),
        "{diff}"
    );
    assert!(!diff.contains("b.yml"), "not recursive: {diff}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:2:1"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("a.yaml")).expect("read"),
        legacy
    );

    // --write --recursive: both migrated, the bad file left as it was.
    let out = env.run(
        "viewer:v",
        &[
            "yaml",
            "migrate-credentials",
            &dir,
            "--recursive",
            "--write",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    for f in [root.join("a.yaml"), root.join("team").join("b.yml")] {
        let text = std::fs::read_to_string(&f).expect("read");
        assert!(
            text.contains("  credential:\n    ref: openai_main\n    scope: per_user\n"),
            "{text}"
        );
        assert!(text.starts_with("# legacy\n"), "{text}");
    }
    assert_eq!(
        std::fs::read_to_string(root.join("broken.yaml")).expect("read"),
        "brain: [\n"
    );

    // A second run changes nothing; check compiles the migrated file.
    std::fs::remove_file(root.join("broken.yaml")).expect("rm");
    let out = env.run(
        "viewer:v",
        &["yaml", "migrate-credentials", &dir, "--recursive"],
    );
    assert!(ok(&out).is_empty(), "no diff the second time");
    let a = root.join("a.yaml").display().to_string();
    let out = env.run("viewer:v", &["yaml", "check", &a]);
    assert!(ok(&out).contains("block brain, slot default, ref openai_main (per_user)"));
    // A file that does not compile exits 2 with file:line:column.
    std::fs::write(
        root.join("c.yaml"),
        "brain:\n  credential: {ref: k, scope: global}\n",
    )
    .expect("write");
    let c = root.join("c.yaml").display().to_string();
    let out = env.run("viewer:v", &["yaml", "check", &c]);
    fails(&out, 2, "c.yaml:2:");
}

#[test]
fn yaml_commands_report_a_deeply_nested_file_and_carry_on() {
    let env = Env::new();
    let root = env.home.path().join("deep");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    // 15 KB that used to overflow the stack (exit 134) and end the whole run.
    std::fs::write(
        root.join("a_deep.yaml"),
        format!("{}x\n", "- ".repeat(7_400)),
    )
    .expect("write");
    let maps: String = (0..2_000)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect();
    std::fs::write(root.join("sub").join("b_deep.yaml"), maps).expect("write");
    let good = "brain:\n  provider: openai\n  config:\n    api_key: '{{env.OPENAI_API_KEY}}'\n";
    std::fs::write(root.join("sub").join("z_good.yaml"), good).expect("write");
    let dir = root.display().to_string();
    let out = env.run(
        "viewer:v",
        &[
            "yaml",
            "migrate-credentials",
            &dir,
            "--recursive",
            "--write",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a_deep.yaml:1:257: collections nest deeper than 128 levels"),
        "{stderr}"
    );
    assert!(stderr.contains("b_deep.yaml:128:"), "{stderr}");
    assert!(
        stderr.contains("3 file(s): 1 migrated, 2 could not be migrated"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(root.join("sub").join("z_good.yaml"))
            .expect("read")
            .contains("credential:")
    );

    let deep = root.join("a_deep.yaml").display().to_string();
    let out = env.run("viewer:v", &["yaml", "check", &deep]);
    fails(
        &out,
        2,
        "a_deep.yaml:1:257: collections nest deeper than 128 levels",
    );

    // A sequence item's credential is compiled: a bad scope fails the check.
    let item = root.join("item.yaml");
    std::fs::write(
        &item,
        "tools:\n  - id: t\n    credential: {ref: k, scope: global}\n",
    )
    .expect("write");
    let out = env.run("viewer:v", &["yaml", "check", &item.display().to_string()]);
    fails(&out, 2, "item.yaml:3:");
}

#[test]
fn yaml_migrate_recursive_skips_workflows_hidden_folders_and_ignored_paths() {
    let env = Env::new();
    let repo = env.home.path().join("repo");
    let template = "provider: openai\nconfig:\n  api_key: '{{env.OPENAI_API_KEY}}'\n";
    let files = [
        (".github/workflows/ci.yml", template),
        (".gitlab-ci.yml", template),
        ("charts/values.yaml", template),
        ("vendor/lib/x.yaml", template),
        ("apps/web/app.yaml", template),
        ("apps/web/keep.yaml", template),
        (
            "apps/web/workflow.yml",
            "steps:\n  - name: deploy\n    env:\n      TOKEN: ${{ secrets.TOKEN }}\n      HOME: ${{ env.HOME }}\n",
        ),
    ];
    for (path, text) in files {
        let p = repo.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    std::fs::write(
        repo.join(".strongroomignore"),
        "# not app configs\ncharts/\napps/**/*.yaml\n!keep.yaml\n",
    )
    .expect("write");
    let dir = repo.display().to_string();
    let out = env.run(
        "viewer:v",
        &[
            "yaml",
            "migrate-credentials",
            &dir,
            "--recursive",
            "--write",
            "--exclude",
            "vendor/",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("2 file(s): 1 migrated, 0 could not be migrated"),
        "{stderr}"
    );
    for (path, text) in files {
        let now = std::fs::read_to_string(repo.join(path)).expect("read");
        if path == "apps/web/keep.yaml" {
            assert!(now.contains("credential:"), "{path}: {now}");
        } else {
            assert_eq!(now, text, "{path} was left as it was");
        }
    }
    // The diff of a file named by a `./` path reads `a/apps/...`.
    let out = env
        .cmd(
            "viewer:v",
            &["yaml", "migrate-credentials", "./apps/web/app.yaml"],
        )
        .current_dir(&repo)
        .output()
        .expect("runs");
    assert!(
        ok(&out).starts_with("--- a/apps/web/app.yaml\n+++ b/apps/web/app.yaml\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_cli_runs_on_postgres_too() {
    let env = Env::new();
    let url = std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let schema = format!("t_cli_{}", hex::encode(bytes));
    let run = |actor: &str, args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", env.home.path())
            .env("STRONGROOM_PG_SCHEMA", &schema)
            .args(["--store", &url, "--as", actor])
            .args(args)
            .output()
            .expect("runs")
    };
    let admin = "system_admin:root";
    ok(&run(
        admin,
        &[
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "-f",
            "api_key=sk-pg-cli",
        ],
    ));
    let listed = ok(&run(admin, &["credentials", "admin-list"]));
    assert!(listed.contains("openai_main"), "{listed}");
    // expires_at round-trips through PostgreSQL too.
    let expiring = json(&run(
        admin,
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "stripe",
            "-f",
            "secret_key=sk_test_pg",
            "--expires-at",
            "2099-01-02T03:04:05Z",
        ],
    ));
    let shown = json(&run(
        admin,
        &[
            "--json",
            "credentials",
            "show",
            expiring["id"].as_str().expect("id"),
        ],
    ));
    assert_eq!(shown["expires_at"], "2099-01-02T03:04:05Z");
    assert!(ok(&run(admin, &["audit", "verify"])).contains("audit chain intact"));
    let out = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .env_clear()
        .env("STRONGROOM_HOME", env.home.path())
        .args(["--store", "mysql://x", "--as", admin, "audit", "verify"])
        .output()
        .expect("runs");
    fails(&out, 2, "postgres://");
    let drop = Command::new("psql")
        .args([&url, "-c", &format!("DROP SCHEMA {schema} CASCADE")])
        .output();
    let _ = drop; // best effort: the test database is scratch space
}

#[test]
fn keys_rotate_survives_a_kill_and_resumes_with_every_record_still_opening() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;

    const RECORDS: u64 = 60;
    let env = Env::new();
    let admin = "system_admin:root";
    // The credentials, under the first key (the file key in STRONGROOM_HOME).
    for i in 0..RECORDS {
        let args: Vec<String> = vec![
            "credentials".into(),
            "admin-create".into(),
            "--provider".into(),
            "openai".into(),
            "--name".into(),
            format!("k{i}"),
            "-f".into(),
            format!("api_key=sk-rot-{i}"),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&env.run(admin, &refs));
    }
    let status = ok(&env.run(admin, &["--json", "keys", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let old_key = status["active"].as_str().expect("active").to_string();
    assert_eq!(status["records"][&old_key], RECORDS);

    let new_path = env.home.path().join("new.key");
    let to = format!("file:{}", new_path.display());
    // A first run stopped after one batch of 7 (as if it had crashed). Its stderr is not a
    // terminal, so it reports the batch as a JSON line.
    let out = env.run(
        admin,
        &[
            "keys",
            "rotate",
            "--to",
            &to,
            "--batch-size",
            "7",
            "--max-batches",
            "1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(9),
        "incomplete: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{{\"batch\":1,\"rewrapped\":7,\"remaining\":{}}}\n",
            RECORDS - 7
        )
    );

    // A second run, killed without warning as soon as it reports its first committed
    // batch. In batches of one record it has 52 more commits to go, far more than the
    // moment between its report and the kill (a commit takes about a millisecond even on
    // tmpfs), so the kill lands mid-way; the exit status below checks that it did.
    let batch_size = 1;
    let mut child = env
        .cmd(
            admin,
            &[
                "keys",
                "rotate",
                "--to",
                &to,
                "--batch-size",
                &batch_size.to_string(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut progress = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let n = progress.read_line(&mut line).expect("read progress");
    child.kill().expect("kill");
    let killed = child.wait().expect("wait");
    assert!(n > 0, "the rotation ended without reporting a batch");
    let first: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(first["batch"], 1, "{line}");
    assert_eq!(first["rewrapped"], batch_size, "{line}");
    assert_eq!(first["remaining"], RECORDS - 7 - batch_size, "{line}");
    assert_eq!(
        killed.signal(),
        Some(9),
        "the kill must land mid-rotation, not after it ended ({killed:?})"
    );

    // What the killed run left: no plaintext in its uncheckpointed WAL, ...
    let wal = assert_not_in_vault_files(env.home.path(), b"sk-rot-");
    assert!(wal > 0, "the killed run's batches are still in the WAL");
    // ... some records on the new key (at least the 7 and the reported batch), the rest
    // still on the old one, none lost, ...
    let status: serde_json::Value =
        serde_json::from_str(&ok(&env.run(admin, &["--json", "keys", "status"]))).expect("json");
    let records = status["records"].as_object().expect("map");
    assert_eq!(records.len(), 2, "two keys in use: {records:?}");
    let on_old = records[&old_key].as_u64().expect("count");
    let (_, on_new) = records
        .iter()
        .find(|(key, _)| **key != old_key)
        .expect("the new key");
    let on_new = on_new.as_u64().expect("count");
    assert_eq!(on_old + on_new, RECORDS, "{records:?}");
    assert!(on_new >= 7 + batch_size, "{records:?}");
    assert!(on_new < RECORDS && on_old > 0, "partial: {records:?}");
    // ... and an audit chain that is intact.
    let verified = ok(&env.run(admin, &["audit", "verify"]));
    assert!(verified.contains("audit chain intact"), "{verified}");

    // Resumed to the end.
    let done = ok(&env.run(admin, &["keys", "rotate", "--to", &to]));
    assert!(done.contains("complete"), "{done}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&env.run(admin, &["--json", "keys", "status"]))).expect("json");
    let records = status["records"].as_object().expect("map");
    assert_eq!(records.len(), 1, "everything on one key: {records:?}");
    let (new_key, n) = records.iter().next().expect("one");
    assert_ne!(new_key, &old_key);
    assert_eq!(n, RECORDS);

    // Every record opens with the new key alone: make it the active key, drop the old one.
    let new_value = std::fs::read_to_string(&new_path).expect("new key");
    std::fs::remove_file(env.home.path().join("master.key")).expect("retire the old key");
    let list = |extra: &[&str]| -> Output {
        let mut args = vec!["--json", "credentials", "admin-list"];
        args.extend_from_slice(extra);
        env.cmd(admin, &args)
            .env("STRONGROOM_MASTER_KEY", new_value.trim())
            .output()
            .expect("runs")
    };
    let listed: serde_json::Value = serde_json::from_slice(&list(&[]).stdout).expect("json");
    let ids: Vec<String> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len() as u64, RECORDS);
    for id in ids {
        let out = env
            .cmd(admin, &["--json", "credentials", "show", &id, "--reveal"])
            .env("STRONGROOM_MASTER_KEY", new_value.trim())
            .output()
            .expect("runs");
        let shown = ok(&out);
        assert!(shown.contains("sk-rot-"), "{shown}");
    }
    // The audit chain records the re-wrap batches and still verifies.
    let out = env
        .cmd(admin, &["audit", "verify"])
        .env("STRONGROOM_MASTER_KEY", new_value.trim())
        .output()
        .expect("runs");
    assert!(ok(&out).contains("intact"));
    // Only a system admin manages keys: the policy decides, and a refused rotation is
    // audited before its new key is opened or created.
    let out = env.run("viewer:v", &["keys", "status"]);
    fails(&out, 4, "permission denied");
    let never = env.home.path().join("never.key");
    let out = env
        .cmd(
            "viewer:v",
            &[
                "keys",
                "rotate",
                "--to",
                &format!("file:{}", never.display()),
            ],
        )
        .env("STRONGROOM_MASTER_KEY", new_value.trim())
        .output()
        .expect("runs");
    fails(&out, 4, "may not keys.rewrap");
    assert!(!never.exists(), "a refused rotation created its key");
    let db = rusqlite::Connection::open(env.home.path().join("vault.db")).expect("open");
    let (actor, action, outcome): (String, String, String) = db
        .query_row(
            "SELECT actor, action, outcome FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("last row");
    assert_eq!(
        (actor.as_str(), action.as_str(), outcome.as_str()),
        ("viewer:v", "keys.rewrap", "denied")
    );
}
