//! The operator's next steps through the real `strongroom` binary on a real SQLite file
//! (and PostgreSQL where it applies): updating, renaming and the history of a credential,
//! browsing the audit log, backup and restore, exit codes and JSON errors, messages that
//! name the real cause, migrating symlinked YAML files, and bounded provider files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CANARY: &str = "sk-CANARY-operator-5e1b";
const ALICE: &str = "app_user:crm:alice";
const ADMIN: &str = "system_admin:root";

struct Env {
    home: tempfile::TempDir,
    /// `--store` (default: `sqlite:` and `vault.db` in the home).
    store: Option<String>,
    /// Extra environment variables.
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::tempdir().expect("tempdir"),
            store: None,
            vars: Vec::new(),
        }
    }

    fn db_path(&self) -> PathBuf {
        self.home.path().join("vault.db")
    }

    fn cmd(&self, actor: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strongroom"));
        let store = self
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.db_path().display()));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_HOME", self.home.path())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .arg("--store")
            .arg(store)
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

    /// Creates a credential for alice with `api_key` from stdin; returns its id.
    fn create(&self, name: &str, value: &str) -> String {
        let out = self.run_stdin(
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
                "api_key=-",
            ],
            &format!("{value}\n"),
        );
        json(&out)["id"].as_str().expect("id").to_string()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

/// Asserts the exit code and that stderr holds `needle` and no canary.
fn fails(out: &Output, code: i32, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
    stderr
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = ok(out);
    assert!(!stdout.contains("CANARY"), "{stdout}");
    serde_json::from_str(&stdout).expect("json output")
}

/// Is `value` an RFC 3339 UTC time as the CLI prints them?
fn is_rfc3339(value: &serde_json::Value) -> bool {
    value.as_str().is_some_and(|t| {
        t.len() >= 20
            && t.ends_with('Z')
            && t.as_bytes()[4] == b'-'
            && t.as_bytes()[10] == b'T'
            && t[..4].bytes().all(|b| b.is_ascii_digit())
    })
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.db_path()).expect("open vault.db")
}

/// The wrapped-DEK section of a credential's stored blob (docs/FORMAT.md, "Layout").
fn wrapped_dek(env: &Env, id: &str) -> Vec<u8> {
    let blob: Vec<u8> = db(env)
        .query_row("SELECT sealed FROM credentials WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .expect("row");
    let len = u16::from_be_bytes([blob[3], blob[4]]) as usize;
    blob[5..5 + len].to_vec()
}

fn postgres_url() -> String {
    std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn fresh_schema() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    format!("t_op_{}", hex::encode(bytes))
}

// ---- 10. update, history, rename ----------------------------------------------------------

#[test]
fn update_makes_a_new_version_and_data_key_and_keeps_id_name_and_grants() {
    let env = Env::new();
    let id = env.create("openai_main", "sk-proj-first-value");
    ok(&env.run(ALICE, &["credentials", "grant-add", &id, "crm"]));
    let before = wrapped_dek(&env, &id);

    let updated = env.run_stdin(
        ALICE,
        &[
            "--json",
            "credentials",
            "update",
            &id,
            "-f",
            "api_key=-",
            "-f",
            "organization=org-ops",
        ],
        &format!("{CANARY}\n"),
    );
    let updated = json(&updated);
    assert_eq!(updated["id"], id.as_str(), "the id is kept");
    assert_eq!(updated["name"], "openai_main", "the name is kept");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["state"], "filled");
    assert_eq!(
        updated["field_names"],
        serde_json::json!(["api_key", "organization"])
    );
    assert!(is_rfc3339(&updated["updated_at"]), "{updated}");
    assert_ne!(
        wrapped_dek(&env, &id),
        before,
        "the new version is sealed under a new data key"
    );
    let grants = json(&env.run(ALICE, &["--json", "credentials", "grants", &id]));
    assert_eq!(grants[0]["app"], "crm", "grants are kept: {grants}");
    assert!(grants[0]["revoked_at"].is_null());
    let revealed = ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"]));
    assert!(revealed.contains(CANARY), "{revealed}");
    assert!(!revealed.contains("sk-proj-first-value"), "{revealed}");

    // A stale version, nothing to change, someone else's credential.
    fails(
        &env.run(
            ALICE,
            &[
                "credentials",
                "update",
                &id,
                "--version",
                "1",
                "-f",
                "api_key=sk-late",
            ],
        ),
        5,
        "version conflict",
    );
    fails(
        &env.run(ALICE, &["credentials", "update", &id]),
        2,
        "nothing to change",
    );
    fails(
        &env.run(
            "app_user:crm:bob",
            &["credentials", "update", &id, "-f", "api_key=sk-bob"],
        ),
        3,
        "not found",
    );
    // An expiry alone keeps the fields and their data key.
    let dek = wrapped_dek(&env, &id);
    let expiring = json(&env.run(
        ALICE,
        &[
            "--json",
            "credentials",
            "update",
            &id,
            "--expires-at",
            "2099-01-02T03:04:05Z",
        ],
    ));
    assert_eq!(expiring["expires_at"], "2099-01-02T03:04:05Z");
    assert_eq!(expiring["version"], 3);
    let cleared = json(&env.run(
        ALICE,
        &["--json", "credentials", "update", &id, "--no-expiry"],
    ));
    assert!(cleared["expires_at"].is_null());
    assert_ne!(wrapped_dek(&env, &id), dek, "every version is sealed anew");
    let revealed = ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"]));
    assert!(revealed.contains(CANARY), "fields kept: {revealed}");
}

#[test]
fn rename_keeps_the_id_and_fields_and_refuses_a_taken_name() {
    let env = Env::new();
    let id = env.create("openai_main", CANARY);
    env.create("openai_other", "sk-other-value");
    ok(&env.run(ALICE, &["credentials", "grant-add", &id, "crm"]));
    let renamed = json(&env.run(
        ALICE,
        &["--json", "credentials", "rename", &id, "openai_work"],
    ));
    assert_eq!(renamed["id"], id.as_str());
    assert_eq!(renamed["name"], "openai_work");
    assert_eq!(renamed["version"], 2);
    let listed = json(&env.run(ALICE, &["--json", "credentials", "list"]));
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains(&"openai_work") && !names.contains(&"openai_main"));
    let revealed = ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"]));
    assert!(revealed.contains(CANARY), "fields kept: {revealed}");
    let grants = json(&env.run(ALICE, &["--json", "credentials", "grants", &id]));
    assert_eq!(grants[0]["app"], "crm");
    fails(
        &env.run(ALICE, &["credentials", "rename", &id, "openai_other"]),
        5,
        "already exists",
    );
    fails(
        &env.run(ALICE, &["credentials", "rename", &id, "bad/name"]),
        2,
        "credential name",
    );
    fails(
        &env.run(
            ALICE,
            &["credentials", "rename", &id, "x", "--version", "1"],
        ),
        5,
        "version conflict",
    );
}

#[test]
fn history_lists_every_version_with_time_actor_and_state_and_no_values() {
    let env = Env::new();
    let id = env.create("openai_main", "sk-proj-v1-CANARY");
    ok(&env.run(
        ALICE,
        &[
            "credentials",
            "update",
            &id,
            "-f",
            "api_key=sk-proj-v2-CANARY",
        ],
    ));
    ok(&env.run(ALICE, &["credentials", "rename", &id, "openai_work"]));
    // Reads are not versions.
    ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"]));
    // An admin disables it through the library's lifecycle call: a version by another actor.
    disable_as_admin(&env, &id);

    let history = json(&env.run(ALICE, &["--json", "credentials", "history", &id]));
    let versions = history.as_array().expect("array");
    assert_eq!(versions.len(), 4, "{history}");
    let kinds: Vec<&str> = versions
        .iter()
        .map(|v| v["change"]["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["created", "fields_replaced", "renamed", "state_changed"]
    );
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v["version"], i as u64 + 1, "{v}");
        assert!(is_rfc3339(&v["time"]), "{v}");
        assert!(v["seq"].as_u64().is_some(), "{v}");
    }
    assert_eq!(versions[0]["actor"], ALICE);
    assert_eq!(versions[0]["state"], "filled");
    assert_eq!(versions[2]["change"]["from"], "openai_main");
    assert_eq!(versions[2]["change"]["to"], "openai_work");
    assert_eq!(versions[3]["actor"], ADMIN);
    assert_eq!(versions[3]["state"], "invalid");
    assert_eq!(versions[3]["change"]["reason"], "leaked in a log");
    // The table form says the same.
    let table = ok(&env.run(ALICE, &["credentials", "history", &id]));
    assert!(table.contains("VERSION") && table.contains("renamed from openai_main to openai_work"));
    assert!(
        table.contains(ADMIN) && table.contains("invalid"),
        "{table}"
    );
    assert!(!table.contains("CANARY"));
    // Someone who may not see the credential is told it does not exist.
    fails(
        &env.run("app_user:crm:bob", &["credentials", "history", &id]),
        3,
        "not found",
    );
    // A viewer may see metadata, so the history too.
    ok(&env.run("viewer:vera", &["credentials", "history", &id]));
}

/// Moves a credential to `invalid` as an admin, through the library on the same file and
/// master key (the CLI has no lifecycle command).
fn disable_as_admin(env: &Env, id: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = strongroom::SqliteStore::open(env.db_path()).expect("open");
        let key = strongroom::LocalKey::load_or_create_file(&env.home.path().join("master.key"))
            .expect("key");
        let vault = strongroom::Vault::builder()
            .store(std::sync::Arc::new(store.clone()))
            .key_wrapper(std::sync::Arc::new(key))
            .build()
            .await
            .expect("vault");
        let admin = strongroom::Principal::parse(ADMIN).expect("principal");
        let id = strongroom::CredentialId::new(id).expect("id");
        let current = vault.get(&admin, &id).await.expect("get");
        vault
            .set_state(
                &admin,
                &id,
                current.version,
                strongroom::LifecycleState::Invalid,
                "leaked in a log",
            )
            .await
            .expect("disable");
        store.close().await.expect("close");
    });
}

#[test]
fn update_history_and_rename_run_on_postgres_too() {
    let mut env = Env::new();
    let schema = fresh_schema();
    env.store = Some(postgres_url());
    env.vars
        .push(("STRONGROOM_PG_SCHEMA".into(), schema.clone()));
    let created = json(&env.run(
        ADMIN,
        &[
            "--json",
            "credentials",
            "admin-create",
            "--provider",
            "openai",
            "-f",
            "api_key=sk-pg-first",
        ],
    ));
    let id = created["id"].as_str().expect("id").to_string();
    ok(&env.run(
        ADMIN,
        &["credentials", "update", &id, "-f", "api_key=sk-pg-second"],
    ));
    ok(&env.run(ADMIN, &["credentials", "rename", &id, "openai_pg"]));
    let history = json(&env.run(ADMIN, &["--json", "credentials", "history", &id]));
    assert_eq!(history.as_array().expect("array").len(), 3, "{history}");
    // The audit log, filtered and paged by the PostgreSQL store's own query.
    let rows = json(&env.run(
        ADMIN,
        &[
            "--json",
            "audit",
            "list",
            "--credential",
            &id,
            "--action",
            "credential.update",
            "--limit",
            "1",
        ],
    ));
    assert_eq!(rows["rows"].as_array().expect("rows").len(), 1);
    let next = rows["next_after"].as_u64().expect("a second page");
    let rest = json(&env.run(
        ADMIN,
        &[
            "--json",
            "audit",
            "list",
            "--credential",
            &id,
            "--action",
            "credential.update",
            "--after",
            &next.to_string(),
        ],
    ));
    assert_eq!(rest["rows"][0]["details"]["renamed_from"], "openai_main");
    assert!(rest["next_after"].is_null());
    // Backups of a PostgreSQL vault are the server's business.
    fails(
        &env.run(ADMIN, &["backup", "/tmp/never-written.db"]),
        2,
        "pg_dump",
    );
    let _ = Command::new("psql")
        .args([
            &postgres_url(),
            "-c",
            &format!("DROP SCHEMA {schema} CASCADE"),
        ])
        .output();
}

// ---- 11. audit list / show ------------------------------------------------------------------

/// A vault with rows by alice and bob, a denial, and an admin's create.
fn busy_vault() -> (Env, String, String) {
    let env = Env::new();
    let a = env.create("openai_main", "sk-a-CANARY");
    let b = env.run_stdin(
        "app_user:crm:bob",
        &[
            "--json",
            "credentials",
            "create",
            "--provider",
            "openai",
            "-f",
            "api_key=-",
        ],
        "sk-b-CANARY\n",
    );
    let b = json(&b)["id"].as_str().expect("id").to_string();
    ok(&env.run(ALICE, &["credentials", "show", &a, "--reveal"]));
    ok(&env.run(ALICE, &["credentials", "grant-add", &a, "crm"]));
    fails(
        &env.run("viewer:vera", &["credentials", "show", &a, "--reveal"]),
        4,
        "permission denied",
    );
    ok(&env.run(
        ADMIN,
        &[
            "credentials",
            "admin-create",
            "--provider",
            "stripe",
            "-f",
            "secret_key=sk_test_CANARY",
        ],
    ));
    (env, a, b)
}

fn rows(value: &serde_json::Value) -> Vec<serde_json::Value> {
    value["rows"].as_array().expect("rows").clone()
}

#[test]
fn audit_list_filters_by_credential_actor_action_outcome_and_time() {
    let (env, a, b) = busy_vault();
    let all = json(&env.run(ADMIN, &["--json", "audit", "list"]));
    let all = rows(&all);
    assert_eq!(all.len(), 6, "{all:?}");
    for (i, row) in all.iter().enumerate() {
        assert_eq!(row["seq"], i as u64 + 1);
        assert!(is_rfc3339(&row["time"]), "{row}");
        assert_eq!(row["hash"].as_str().expect("hash").len(), 64);
    }
    let by = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["--json", "audit", "list"];
        all.extend_from_slice(args);
        rows(&json(&env.run(ADMIN, &all)))
            .iter()
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect()
    };
    assert_eq!(by(&["--credential", &a]), [1, 3, 4, 5]);
    assert_eq!(by(&["--credential", &b]), [2]);
    assert_eq!(by(&["--actor", "app_user:crm:bob"]), [2]);
    assert_eq!(by(&["--action", "credential.reveal"]), [3, 5]);
    assert_eq!(by(&["--outcome", "denied"]), [5]);
    assert_eq!(
        by(&["--action", "credential.reveal", "--outcome", "success"]),
        [3]
    );
    let third = all[2]["time"].as_str().expect("time").to_string();
    let fifth = all[4]["time"].as_str().expect("time").to_string();
    let since = by(&["--since", &third]);
    assert_eq!(since.first(), Some(&3), "since is inclusive");
    let until = by(&["--until", &fifth]);
    assert!(
        until.iter().all(|&s| s < 5),
        "until is exclusive: {until:?}"
    );
    assert_eq!(by(&["--since", "2999-01-01T00:00:00Z"]), Vec::<u64>::new());
    // Viewers may read the log; an app user may not (and the refusal is a row).
    ok(&env.run("viewer:vera", &["audit", "list"]));
    fails(&env.run(ALICE, &["audit", "list"]), 4, "permission denied");
    assert_eq!(
        by(&["--action", "audit.verify", "--outcome", "denied"]),
        [7]
    );
    // Bad filters are input errors that name the flag.
    fails(
        &env.run(ADMIN, &["audit", "list", "--since", "yesterday"]),
        2,
        "--since",
    );
    fails(
        &env.run(ADMIN, &["audit", "list", "--action", "credential.peek"]),
        2,
        "unknown action",
    );
    fails(
        &env.run(ADMIN, &["audit", "list", "--outcome", "maybe"]),
        2,
        "outcome",
    );
    fails(
        &env.run(ADMIN, &["audit", "list", "--limit", "0"]),
        2,
        "--limit",
    );
    // The table names the same rows, and never a secret.
    let table = ok(&env.run(ADMIN, &["audit", "list", "--credential", &a]));
    assert!(table.contains("grant.add"), "{table}");
    assert!(!table.contains("CANARY"));
}

#[test]
fn audit_list_pages_forwards_and_backwards_by_sequence_number() {
    let (env, _, _) = busy_vault();
    let first = json(&env.run(ADMIN, &["--json", "audit", "list", "--limit", "4"]));
    assert_eq!(
        rows(&first)
            .iter()
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(first["next_after"], 4);
    let second = json(&env.run(
        ADMIN,
        &["--json", "audit", "list", "--limit", "4", "--after", "4"],
    ));
    assert_eq!(rows(&second).len(), 2);
    assert!(second["next_after"].is_null(), "the last page: {second}");
    let newest = json(&env.run(
        ADMIN,
        &["--json", "audit", "list", "--newest", "--limit", "2"],
    ));
    let seqs: Vec<u64> = rows(&newest)
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [6, 5]);
    assert_eq!(newest["next_before"], 5);
    let older = json(&env.run(
        ADMIN,
        &["--json", "audit", "list", "--before", "5", "--limit", "10"],
    ));
    let seqs: Vec<u64> = rows(&older)
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [4, 3, 2, 1]);
    // In the table form the next page's flag goes to stderr.
    let out = env.run(ADMIN, &["audit", "list", "--limit", "2"]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("--after 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn audit_show_prints_one_row_and_checks_its_hash_and_link() {
    let (env, a, _) = busy_vault();
    let row = json(&env.run(ADMIN, &["--json", "audit", "show", "4"]));
    assert_eq!(row["seq"], 4);
    assert_eq!(row["action"], "grant.add");
    assert_eq!(row["credential_id"], a.as_str());
    assert_eq!(row["details"]["app"], "crm");
    assert_eq!(row["hash_ok"], true);
    assert_eq!(row["linked"], true);
    assert!(is_rfc3339(&row["time"]));
    let shown = ok(&env.run(ADMIN, &["audit", "show", "1"]));
    assert!(shown.contains("matches the row's contents"), "{shown}");
    fails(&env.run(ADMIN, &["audit", "show", "99"]), 3, "audit row 99");
    // The last row edited in the database (the one the newest checkpoint vouches for):
    // `show` says so and exits 6; `list` still reads the log (with a note) so the damage
    // can be looked at without opening the database.
    db(&env)
        .execute(
            "UPDATE audit SET details = '{\"name\":\"evil\",\"provider\":\"stripe\"}' \
             WHERE seq = 6",
            [],
        )
        .expect("tamper");
    let out = env.run(ADMIN, &["audit", "show", "6"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("does NOT match"),
        "{}",
        text(&out.stdout)
    );
    let out = env.run(ADMIN, &["audit", "list"]);
    assert!(ok(&out).contains("name=evil"));
    assert!(
        text(&out.stderr).contains("BROKEN"),
        "{}",
        text(&out.stderr)
    );
    // Anything that would write is still refused over the broken chain.
    fails(
        &env.run(ALICE, &["credentials", "show", &a, "--reveal"]),
        6,
        "audit chain BROKEN",
    );
}

// ---- 12. backup and restore -----------------------------------------------------------------

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn backup_copies_a_serving_vault_and_restore_puts_it_back() {
    let env = Env::new();
    let first = env.create("openai_main", CANARY);
    // A second writer holds the file open, with commits still in its WAL, while the backup
    // runs: the copy is one consistent snapshot that includes them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (store, held) = runtime.block_on(async {
        let store = strongroom::SqliteStore::open(env.db_path()).expect("open");
        let key = strongroom::LocalKey::load_or_create_file(&env.home.path().join("master.key"))
            .expect("key");
        let vault = strongroom::Vault::builder()
            .store(std::sync::Arc::new(store.clone()))
            .key_wrapper(std::sync::Arc::new(key))
            .build()
            .await
            .expect("vault");
        let admin = strongroom::Principal::parse(ADMIN).expect("principal");
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "secret_key".to_string(),
            strongroom::SecretString::from("sk_test_held".to_string()),
        );
        let held = vault
            .create(
                &admin,
                strongroom::NewCredential::new(
                    "stripe_main",
                    strongroom::Scope::SystemWide,
                    "stripe",
                    "",
                    fields,
                ),
            )
            .await
            .expect("create");
        (store, held.id.to_string())
    });
    let backup = env.home.path().join("backups").join("one.db");
    std::fs::create_dir(backup.parent().expect("dir")).expect("mkdir");
    let out = ok(&env.run(ADMIN, &["backup", backup.to_str().expect("utf8")]));
    assert!(out.contains("2 credentials"), "{out}");
    runtime.block_on(store.close()).expect("close");
    assert_eq!(mode_of(&backup), 0o600, "the backup is private");
    assert!(
        !Path::new(&format!("{}-wal", backup.display())).exists(),
        "the backup is one self-contained file"
    );
    // Never over an existing file; not by a non-admin.
    fails(
        &env.run(ADMIN, &["backup", backup.to_str().expect("utf8")]),
        5,
        "never overwrites",
    );
    fails(
        &env.run(ALICE, &["backup", "/tmp/strongroom-alice-backup.db"]),
        4,
        "permission denied",
    );

    // Changes after the backup…
    ok(&env.run(ALICE, &["credentials", "delete", &first]));
    let later = env.create("openai_later", "sk-later-value");
    // …are undone by the restore, which keeps the vault as it was beside it.
    let restored = json(&env.run(
        ADMIN,
        &["--json", "restore", backup.to_str().expect("utf8")],
    ));
    assert_eq!(restored["credentials"], 2);
    let previous = PathBuf::from(restored["previous_kept_at"].as_str().expect("kept"));
    assert_eq!(mode_of(&previous), 0o600);
    let listed = ok(&env.run(ADMIN, &["credentials", "admin-list"]));
    assert!(
        listed.contains(&first) && listed.contains(&held),
        "{listed}"
    );
    assert!(!listed.contains(&later), "{listed}");
    let revealed = ok(&env.run(ALICE, &["credentials", "show", &first, "--reveal"]));
    assert!(revealed.contains(CANARY));
    // The restored chain verifies against a fresh checkpoint; the old ones were set aside.
    let verified = ok(&env.run(ADMIN, &["audit", "verify"]));
    assert!(verified.contains("audit chain intact"), "{verified}");
    assert!(restored["checkpoints_set_aside"].is_string(), "{restored}");
    // New work goes on from the restored chain.
    env.create("openai_after", "sk-after-value");
    assert!(ok(&env.run(ADMIN, &["audit", "verify"])).contains("intact"));
    // The copy kept beside it is itself a vault that can be restored.
    let back = ok(&env.run(ADMIN, &["restore", previous.to_str().expect("utf8")]));
    assert!(back.contains("restored"), "{back}");
    let listed = ok(&env.run(ADMIN, &["credentials", "admin-list"]));
    assert!(
        listed.contains(&later) && !listed.contains(&first),
        "{listed}"
    );
}

#[test]
fn restore_checks_the_chain_and_the_master_key_before_it_replaces_anything() {
    let env = Env::new();
    env.create("openai_main", CANARY);
    let backup = env.home.path().join("good.db");
    ok(&env.run(ADMIN, &["backup", backup.to_str().expect("utf8")]));
    let current = std::fs::read(env.db_path()).expect("read");
    let unchanged = |what: &str| {
        assert_eq!(
            std::fs::read(env.db_path()).expect("read"),
            current,
            "{what}: the vault was not touched"
        );
    };

    // A backup whose audit chain was edited.
    let tampered = env.home.path().join("tampered.db");
    std::fs::copy(&backup, &tampered).expect("copy");
    rusqlite::Connection::open(&tampered)
        .expect("open")
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 1", [])
        .expect("tamper");
    fails(
        &env.run(ADMIN, &["restore", tampered.to_str().expect("utf8")]),
        6,
        "first bad sequence number 1",
    );
    unchanged("a tampered chain");

    // A master key that does not open the backup's credentials.
    let mut stranger = Env::new();
    stranger.vars.push((
        "STRONGROOM_MASTER_KEY".into(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into(),
    ));
    let other_db = stranger.db_path();
    std::fs::copy(&backup, &other_db).expect("copy");
    let other_backup = stranger.home.path().join("copy.db");
    std::fs::copy(&backup, &other_backup).expect("copy");
    let before = std::fs::read(&other_db).expect("read");
    // The backup records the key it was sealed under: another key is a configuration
    // problem named before anything is opened (exit 2).
    let stderr = fails(
        &stranger.run(ADMIN, &["restore", other_backup.to_str().expect("utf8")]),
        2,
        "has never been used by the vault",
    );
    assert!(stderr.contains("Nothing was done"), "{stderr}");
    assert_eq!(std::fs::read(&other_db).expect("read"), before);

    // Files that are not vaults, the vault itself, a missing file, a non-admin.
    let foreign = env.home.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .expect("open")
        .execute_batch("CREATE TABLE notes (body TEXT)")
        .expect("create");
    fails(
        &env.run(ADMIN, &["restore", foreign.to_str().expect("utf8")]),
        2,
        "not a strongroom vault backup",
    );
    let junk = env.home.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all, not even close........").expect("write");
    fails(
        &env.run(ADMIN, &["restore", junk.to_str().expect("utf8")]),
        2,
        "not a strongroom vault backup",
    );
    fails(
        &env.run(ADMIN, &["restore", env.db_path().to_str().expect("utf8")]),
        2,
        "is the vault itself",
    );
    fails(
        &env.run(ADMIN, &["restore", "/nonexistent/backup.db"]),
        3,
        "not found",
    );
    fails(
        &env.run(ALICE, &["restore", backup.to_str().expect("utf8")]),
        4,
        "permission denied",
    );
    unchanged("every refused restore");
    // A backup that does not match what this home's checkpoints recorded for the vault
    // (its chain was rewritten with every hash recomputed) is refused as well.
    let forged = env.home.path().join("forged.db");
    std::fs::copy(&backup, &forged).expect("copy");
    rewrite_first_row_recomputing_hashes(&forged);
    fails(
        &env.run(ADMIN, &["restore", forged.to_str().expect("utf8")]),
        6,
        "checkpoint",
    );
    unchanged("a forged chain");
}

/// Rewrites row 1's actor and recomputes every hash after it, as an attacker with write
/// access would: the chain alone still verifies; only a checkpoint catches it.
fn rewrite_first_row_recomputing_hashes(path: &Path) {
    /// One stored audit row's columns.
    struct Row {
        seq: i64,
        time: i64,
        actor: String,
        action: String,
        credential_id: String,
        scope_kind: String,
        owner: String,
        outcome: String,
        details: String,
    }
    let conn = rusqlite::Connection::open(path).expect("open");
    let rows: Vec<Row> = conn
        .prepare(
            "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, details \
             FROM audit ORDER BY seq",
        )
        .expect("prepare")
        .query_map([], |r| {
            Ok(Row {
                seq: r.get(0)?,
                time: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                credential_id: r.get(4)?,
                scope_kind: r.get(5)?,
                owner: r.get(6)?,
                outcome: r.get(7)?,
                details: r.get(8)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = strongroom::audit::GENESIS_HASH;
    for row in rows {
        let actor = if row.seq == 1 {
            "mallory".to_string()
        } else {
            row.actor
        };
        let target =
            strongroom::AuditTarget::from_columns(&row.credential_id, &row.scope_kind, &row.owner)
                .expect("target");
        let mut event = strongroom::AuditEvent::new(
            actor.clone(),
            strongroom::Action::parse(&row.action).expect("action"),
            target,
        )
        .at(strongroom::Timestamp(row.time))
        .outcome(strongroom::Outcome::parse(&row.outcome).expect("outcome"));
        event.details = serde_json::from_str(&row.details).expect("details");
        let hash = strongroom::audit::chain_hash(&prev, row.seq as u64, &event);
        conn.execute(
            "UPDATE audit SET actor = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![actor, &prev[..], &hash[..], row.seq],
        )
        .expect("rewrite");
        prev = hash;
    }
}

#[test]
fn restore_recreates_a_vault_that_is_gone() {
    let env = Env::new();
    let id = env.create("openai_main", CANARY);
    let backup = env.home.path().join("safe.db");
    ok(&env.run(ADMIN, &["backup", backup.to_str().expect("utf8")]));
    std::fs::remove_file(env.db_path()).expect("remove");
    let out = ok(&env.run(ADMIN, &["restore", backup.to_str().expect("utf8")]));
    assert!(out.contains("1 credentials"), "{out}");
    assert!(ok(&env.run(ALICE, &["credentials", "show", &id, "--reveal"])).contains(CANARY));
    assert!(ok(&env.run(ADMIN, &["audit", "verify"])).contains("intact"));
}

// ---- 13. exit codes and JSON errors ----------------------------------------------------------

#[test]
fn exit_codes_follow_the_readme_table() {
    let env = Env::new();
    let id = env.create("openai_main", CANARY);
    // 2: configuration — a master key file others can read, an unknown key backend.
    let key = env.home.path().join("master.key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        fails(&env.run(ALICE, &["credentials", "list"]), 2, "chmod 600");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut odd = Env::new();
    odd.vars.push(("STRONGROOM_KMS".into(), "nosuch".into()));
    odd.create_home_from(&env);
    fails(
        &odd.run(ALICE, &["credentials", "list"]),
        2,
        "not a known backend",
    );
    // 3: a provider that does not exist, asked for by name.
    let out = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .env_clear()
        .env("STRONGROOM_HOME", env.home.path())
        .args(["providers", "show", "nosuch"])
        .output()
        .expect("runs");
    fails(&out, 3, "`nosuch`");
    // 10: a blob that names a master key the vault does not hold (the same as one whose key
    // was never given: an operator adds the key; a tampered blob that names a held key is 6).
    let conn = db(&env);
    let (key_id, mut sealed): (String, Vec<u8>) = conn
        .query_row(
            "SELECT key_id, sealed FROM credentials WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    let at = sealed
        .windows(key_id.len())
        .position(|w| w == key_id.as_bytes())
        .expect("the blob names its key");
    let last = at + key_id.len() - 1;
    sealed[last] = if sealed[last] == b'0' { b'1' } else { b'0' };
    let unknown = String::from_utf8(sealed[at..=last].to_vec()).expect("utf8");
    conn.execute(
        "UPDATE credentials SET key_id = ?1, sealed = ?2 WHERE id = ?3",
        rusqlite::params![unknown, sealed, id],
    )
    .expect("tamper");
    drop(conn);
    fails(
        &env.run(ALICE, &["credentials", "show", &id, "--reveal"]),
        10,
        "does not hold",
    );
    // 6: a blob under a held key whose bytes were changed (its tag): tampering.
    let tampered = env.create("tampered", "sk-tampered-value");
    let conn = db(&env);
    let mut sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed FROM credentials WHERE id = ?1",
            [&tampered],
            |r| r.get(0),
        )
        .expect("row");
    let last = sealed.len() - 1;
    sealed[last] ^= 0x01;
    conn.execute(
        "UPDATE credentials SET sealed = ?1 WHERE id = ?2",
        rusqlite::params![sealed, tampered],
    )
    .expect("tamper");
    drop(conn);
    fails(
        &env.run(ALICE, &["credentials", "show", &tampered, "--reveal"]),
        6,
        "decryption failed",
    );
    // 9: a rotation stopped before it is complete.
    let env = Env::new();
    env.create("one", "sk-one-value");
    env.create("two", "sk-two-value");
    env.create("three", "sk-three-value");
    let new_key = env.home.path().join("next.key");
    let out = env.run(
        ADMIN,
        &[
            "keys",
            "rotate",
            "--to",
            &format!("file:{}", new_key.display()),
            "--batch-size",
            "1",
            "--max-batches",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("not complete"));
}

impl Env {
    /// Shares `other`'s home (its master key and vault) with different variables.
    fn create_home_from(&mut self, other: &Env) {
        for name in ["master.key", "vault.db"] {
            let to = self.home.path().join(name);
            std::fs::copy(other.home.path().join(name), &to).expect("copy");
        }
    }
}

#[test]
fn under_json_errors_are_json_on_stderr() {
    let env = Env::new();
    let id = env.create("openai_main", CANARY);
    let error = |out: &Output, code: i32| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("CANARY"), "{stderr}");
        let line = stderr.lines().last().expect("a line");
        let doc: serde_json::Value = serde_json::from_str(line).expect("json error");
        assert!(doc["error"]["message"].is_string(), "{doc}");
        doc
    };
    let missing = error(
        &env.run(
            ALICE,
            &[
                "--json",
                "credentials",
                "show",
                "01a20862-0000-7000-8000-000000000000",
            ],
        ),
        3,
    );
    assert_eq!(missing["error"]["kind"], "not_found");
    let denied = error(
        &env.run(
            "viewer:vera",
            &["--json", "credentials", "show", &id, "--reveal"],
        ),
        4,
    );
    assert_eq!(denied["error"]["kind"], "permission_denied");
    let bad = error(
        &env.run(
            ALICE,
            &[
                "--json",
                "credentials",
                "create",
                "--provider",
                "openai",
                "-f",
                CANARY,
            ],
        ),
        2,
    );
    assert_eq!(bad["error"]["kind"], "invalid_input");
    let usage = error(&env.run(ALICE, &["--json", "credentials", "frobnicate"]), 2);
    assert_eq!(usage["error"]["kind"], "usage");
    let conflict = error(
        &env.run(
            ALICE,
            &[
                "--json",
                "credentials",
                "rename",
                &id,
                "x",
                "--version",
                "9",
            ],
        ),
        5,
    );
    assert_eq!(conflict["error"]["kind"], "version_conflict");
    // Without --json, the plain line.
    let plain = env.run(
        ALICE,
        &[
            "credentials",
            "show",
            "01a20862-0000-7000-8000-000000000000",
        ],
    );
    assert!(text(&plain.stderr).starts_with("error: "));
}

#[test]
fn json_show_and_list_carry_rfc3339_times_and_field_names_never_values() {
    let env = Env::new();
    let out = env.run_stdin(
        ALICE,
        &[
            "--json",
            "credentials",
            "create",
            "--provider",
            "openai",
            "-f",
            "api_key=-",
            "-f",
            "project=proj_CANARY_x",
            "--expires-at",
            "+30d",
        ],
        &format!("{CANARY}\n"),
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let shown = json(&env.run(ALICE, &["--json", "credentials", "show", &id]));
    let listed = json(&env.run(ALICE, &["--json", "credentials", "list"]));
    for doc in [&shown, &listed[0]] {
        assert_eq!(
            doc["field_names"],
            serde_json::json!(["api_key", "project"])
        );
        for field in ["created_at", "updated_at", "expires_at"] {
            assert!(is_rfc3339(&doc[field]), "{field}: {doc}");
        }
        assert!(doc.get("fields").is_none(), "no values: {doc}");
        assert_eq!(
            doc["metadata"],
            serde_json::json!({}),
            "kept names are not metadata"
        );
    }
    let table = ok(&env.run(ALICE, &["credentials", "show", &id]));
    assert!(!table.contains("CANARY"));
}

// ---- 14. messages that point to the real cause ------------------------------------------------

#[test]
fn messages_name_the_real_cause() {
    let env = Env::new();
    env.create("openai_main", "sk-first-value");

    // A large YAML file without a single alias is reported by its size.
    let big = env.home.path().join("big.yaml");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).expect("create"));
        writeln!(f, "brain:\n  list:").expect("write");
        for i in 0..1_000_100 {
            writeln!(f, "    - item{i}").expect("write");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .env_clear()
        .env("STRONGROOM_HOME", env.home.path())
        .args(["yaml", "check", big.to_str().expect("utf8")])
        .output()
        .expect("runs");
    let stderr = fails(&out, 2, "more than a million YAML nodes");
    assert!(!stderr.contains("alias expand"), "{stderr}");

    // A database that refuses writes says so, not which internal counter failed.
    let read_only = ReadOnlyFile::new(&env.db_path());
    let stderr = fails(
        &env.run_stdin(
            ALICE,
            &[
                "credentials",
                "create",
                "--provider",
                "openai",
                "--name",
                "second",
                "-f",
                "api_key=-",
            ],
            "sk-second-value\n",
        ),
        1,
        "read-only",
    );
    assert!(!stderr.contains("data generation"), "{stderr}");
    drop(read_only);

    // A broken drop-in file is named when its provider is missing.
    let dir = env.home.path().join("providers");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("acme.toml"),
        "[provider]\nname = \"acme\"\ndisplay_name = \"Acme\"\nhandler_type = \"api_key\"\n\
         [[fields]]\nname = \"api_key\"\nprefix_check = \n",
    )
    .expect("write");
    let stderr = fails(
        &env.run(
            ALICE,
            &[
                "credentials",
                "create",
                "--provider",
                "acme",
                "-f",
                "api_key=k",
            ],
        ),
        2,
        "acme.toml:",
    );
    assert!(stderr.contains("could not be loaded"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("rm");

    // An unknown field is named, and its value is not.
    let stderr = fails(
        &env.run(
            ALICE,
            &[
                "credentials",
                "create",
                "--provider",
                "github_pat",
                "-f",
                "token=ghp_abc",
                "-f",
                "colour=CANARY-blue",
            ],
        ),
        2,
        "`colour` is not a field",
    );
    assert!(!stderr.contains("blue"), "{stderr}");

    // `-f VALUE` without `name=` never echoes VALUE.
    fails(
        &env.run(
            ALICE,
            &[
                "credentials",
                "create",
                "--provider",
                "openai",
                "-f",
                "sk-proj-CANARY-naked",
            ],
        ),
        2,
        "name=value",
    );
}

/// Makes a file refuse writes for the test's lifetime: `chattr +i` as root (who ignores
/// permission bits), mode 0444 otherwise.
struct ReadOnlyFile(PathBuf, bool);

impl ReadOnlyFile {
    fn new(path: &Path) -> ReadOnlyFile {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| text(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            let done = Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .expect("chattr");
            assert!(done.success(), "chattr +i {}", path.display());
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        }
        ReadOnlyFile(path.to_path_buf(), root)
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o600));
        }
    }
}

// ---- 15. symlinked YAML files -------------------------------------------------------------------

const TEMPLATED: &str =
    "brain:\n  provider: openai\n  config:\n    api_key: \"{{secret.OPENAI_KEY}}\"\n";

#[test]
fn migrate_writes_through_a_symlink_and_lists_the_links_a_folder_run_skips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&real).expect("mkdir");
    std::fs::create_dir_all(&configs).expect("mkdir");
    std::fs::write(real.join("app.yaml"), TEMPLATED).expect("write");
    std::fs::write(configs.join("plain.yaml"), TEMPLATED).expect("write");
    let link = configs.join("linked.yaml");
    std::os::unix::fs::symlink("../real/app.yaml", &link).expect("symlink");
    std::os::unix::fs::symlink("../real", configs.join("more")).expect("symlink");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .env_clear()
            .env("STRONGROOM_HOME", dir.path().join("home"))
            .args(["yaml", "migrate-credentials"])
            .args(args)
            .output()
            .expect("runs")
    };

    // A folder run migrates the plain file and names every link it did not follow.
    let out = run(&[configs.to_str().expect("utf8"), "--write", "--recursive"]);
    ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("linked.yaml") && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert!(stderr.contains("more"), "{stderr}");
    assert!(stderr.contains("2 symbolic link(s) skipped"), "{stderr}");
    assert!(std::fs::read_to_string(configs.join("plain.yaml"))
        .expect("read")
        .contains("credential:"));
    assert_eq!(
        std::fs::read_to_string(real.join("app.yaml")).expect("read"),
        TEMPLATED,
        "links are not followed by a folder run"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&run(&["--json", configs.to_str().expect("utf8")]).stdout)
            .expect("json");
    assert!(
        report
            .as_array()
            .expect("array")
            .iter()
            .any(|r| r["status"] == "skipped"
                && r["file"].as_str().unwrap_or("").ends_with("linked.yaml")),
        "{report}"
    );

    // Named directly, a link is written through: the target is migrated, the link stays.
    ok(&run(&[link.to_str().expect("utf8"), "--write"]));
    let meta = std::fs::symlink_metadata(&link).expect("link");
    assert!(meta.file_type().is_symlink(), "the link is still a link");
    assert!(std::fs::read_to_string(real.join("app.yaml"))
        .expect("read")
        .contains("credential:"));
}

// ---- 16. provider files are bounded and load in linear time ----------------------------------------

#[test]
fn an_oversized_provider_file_is_refused_at_once_and_a_large_one_loads_quickly() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("providers");
    std::fs::create_dir(&dir).expect("mkdir");
    let header =
        "[provider]\nname = \"many\"\ndisplay_name = \"Many\"\nhandler_type = \"custom\"\n";
    let field = |i: usize| format!("[[fields]]\nname = \"f{i}\"\n");
    // 200,000 fields: far past the cap; refused without being parsed.
    let mut huge = String::from(header);
    for i in 0..200_000 {
        huge.push_str(&field(i));
    }
    std::fs::write(dir.join("many.toml"), &huge).expect("write");
    let providers = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .env_clear()
            .env("STRONGROOM_HOME", home.path())
            .arg("providers")
            .args(args)
            .output()
            .expect("runs")
    };
    let started = Instant::now();
    let out = providers(&["list"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("256 KiB"),
        "{}",
        text(&out.stderr)
    );
    // Just under the cap (about 10,000 fields): loads, in linear time.
    let mut large = String::from(header);
    let mut n = 0;
    while large.len() + field(n).len() <= 256 * 1024 {
        large.push_str(&field(n));
        n += 1;
    }
    std::fs::write(dir.join("many.toml"), &large).expect("write");
    let started = Instant::now();
    let shown = ok(&providers(&["show", "many"]));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(shown.contains(&format!("f{}", n - 1)), "every field loaded");
}

/// `keys reseal --all` gives every credential a new blob (new data key and nonce) at the
/// same version, in batches that can be interrupted (`--max-batches`, exit 9) and resumed
/// (`--after`), one `keys.reseal` audit row per batch; values read back unchanged; a
/// default run (older formats only) finds nothing left to do; a non-admin is refused.
#[test]
fn keys_reseal_is_batched_resumable_audited_and_keeps_values() {
    let env = Env::new();
    let ids: Vec<String> = (0..3)
        .map(|i| env.create(&format!("key_{i}"), &format!("sk-proj-reseal-value-{i}")))
        .collect();
    let blobs = |env: &Env| -> Vec<(String, Vec<u8>, i64)> {
        let conn = db(env);
        let mut stmt = conn
            .prepare("SELECT id, sealed, version FROM credentials ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let before = blobs(&env);
    assert_eq!(before.len(), 3);

    // A non-admin may not.
    fails(
        &env.run(ALICE, &["keys", "reseal", "--all"]),
        4,
        "keys.reseal",
    );

    // Interrupted after one batch of one record: exit 9, and where to go on.
    let out = env.run(
        ADMIN,
        &[
            "--json",
            "keys",
            "reseal",
            "--all",
            "--batch-size",
            "1",
            "--max-batches",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(first["resealed"], 1);
    assert_eq!(first["complete"], false);
    let next = first["next_after"]
        .as_str()
        .expect("next_after")
        .to_string();
    assert!(
        text(&out.stderr).contains("\"resealed\":1"),
        "a progress line per batch: {}",
        text(&out.stderr)
    );

    // Resumed where it stopped: the other two, and no record twice.
    let out = env.run(
        ADMIN,
        &["--json", "keys", "reseal", "--all", "--after", &next],
    );
    let rest = json(&out);
    assert_eq!(rest["resealed"], 2);
    assert_eq!(rest["complete"], true);

    let after = blobs(&env);
    for ((id, old_blob, old_version), (_, new_blob, new_version)) in before.iter().zip(&after) {
        assert_ne!(old_blob, new_blob, "{id} has a new blob");
        // The same version (a reseal changes no content, so a caller's expected version
        // still holds); the blob is bound to it afresh.
        assert_eq!(new_version, old_version, "{id} keeps its version");
        // A new data key and nonce: the wrapped key and nonce both differ.
        assert_ne!(
            old_blob[..old_blob.len() - 48],
            new_blob[..new_blob.len() - 48]
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let shown = json(&env.run(ALICE, &["--json", "credentials", "show", id, "--reveal"]));
        assert_eq!(
            shown["fields"]["api_key"],
            format!("sk-proj-reseal-value-{i}"),
            "{shown}"
        );
    }
    let rows: i64 = db(&env)
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'keys.reseal' AND outcome = 'success'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 2, "one audit row per committed batch");

    // Everything is in the current format already: a default run has nothing to do.
    let out = json(&env.run(ADMIN, &["--json", "keys", "reseal"]));
    assert_eq!(out["resealed"], 0);
    assert_eq!(out["complete"], true);
}
