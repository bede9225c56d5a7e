//! Crash safety of `SqliteStore` (issue 15, item 6): a child process (this test binary,
//! re-run on its ignored `child` test) does audited writes, updates and resolves on one
//! database file and reports each on stdout, flushed, only after the call returned; the
//! parent kills it with SIGKILL after a seeded random delay, again and again on the same
//! file. After every kill: the file opens, `PRAGMA integrity_check` is `ok`, the audit chain
//! verifies, alone and against the newest checkpoint the child's sink wrote (appended and
//! synced as JSON lines), and every write the child reported is there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::random_faults::SplitMix;
use strongroom::audit::{CheckpointSink, Outcome};
use strongroom::{
    Action, Checkpoint, CredentialId, CredentialRef, CredentialUpdate, ExposeSecret, ListFilter,
    LocalKey, NewCredential, Principal, ResolveContext, Scope, SecretString, SqliteStore, Vault,
};

const CHILD_ENV: &str = "STRONGROOM_CRASH_CHILD_DB";
const KEY: [u8; 32] = [0x5a; 32];
/// Kills per test (two tests, on two files, run side by side).
const KILLS: usize = 110;

fn p(text: &str) -> Principal {
    Principal::parse(text).expect("principal")
}

fn checkpoints_path(db: &Path) -> PathBuf {
    db.with_extension("checkpoints")
}

/// Appends each checkpoint as one JSON line and syncs it: a sink the database's writers
/// cannot rewrite.
struct FileSink(PathBuf);

impl CheckpointSink for FileSink {
    fn publish(&self, checkpoint: &Checkpoint) {
        let mut line = serde_json::to_string(checkpoint).expect("json");
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .expect("checkpoint file");
        file.write_all(line.as_bytes()).expect("write checkpoint");
        file.sync_all().expect("sync checkpoint");
    }
}

async fn open_vault(db: &Path, sink: bool) -> Vault {
    let store = SqliteStore::open(db).expect("the database opens");
    let mut builder = Vault::builder()
        .store(Arc::new(store))
        .key_wrapper(Arc::new(LocalKey::from_bytes(&KEY, "crash test key")));
    if sink {
        builder = builder.checkpoints(Arc::new(FileSink(checkpoints_path(db))), 4);
    }
    builder.build().await.expect("vault")
}

fn fields(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

/// Lines the child reports start with this (the test harness prints lines of its own).
const MARK: &str = "@@ ";

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").expect("stdout");
    out.flush().expect("flush");
}

/// The child: writes until it is killed. Each line is printed only once its call returned.
#[tokio::test]
#[ignore = "the child process of the crash tests, run by them"]
async fn child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = PathBuf::from(db);
    let vault = open_vault(&db, true).await;
    let owner = p("app_user:crm:alice");
    let runtime = p("runtime:crm:alice");
    let ctx = ResolveContext::of(&runtime).expect("ctx");
    let tag = std::process::id();
    report("ready");
    for i in 0u64.. {
        let name = format!("c{tag}_{i}");
        let value = format!("sk-{tag}-{i}");
        let info = vault
            .create(
                &owner,
                NewCredential::new(
                    &name,
                    Scope::per_user("alice").expect("scope"),
                    "openai",
                    "",
                    fields(&value),
                ),
            )
            .await
            .expect("create");
        report(&format!("created {} {name} {value}", info.id));
        vault
            .grant_add(&owner, &info.id, "crm")
            .await
            .expect("grant");
        report(&format!("granted {}", info.id));
        let resolved = vault
            .resolve(&runtime, &CredentialRef::compact(&name), &ctx)
            .await
            .expect("resolve");
        assert_eq!(resolved.fields["api_key"].expose_secret(), value);
        report(&format!("resolved {}", info.id));
        let new_value = format!("{value}-v2");
        let update = CredentialUpdate {
            fields: Some(fields(&new_value)),
            ..CredentialUpdate::default()
        };
        let updated = vault
            .update(&owner, &info.id, info.version, update)
            .await
            .expect("update");
        report(&format!(
            "updated {} {} {new_value}",
            info.id, updated.version
        ));
    }
}

/// What the child said it had done.
#[derive(Default)]
struct Reported {
    /// id -> (version, secret value) of the newest acknowledged write.
    written: BTreeMap<String, (u64, String)>,
    granted: Vec<String>,
    resolved: usize,
}

impl Reported {
    /// Takes one reported line; the id of a write it reports.
    fn take(&mut self, line: &str) -> Option<String> {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ready"] => None,
            ["created", id, _name, value] => {
                self.written.insert(id.to_string(), (1, value.to_string()));
                Some(id.to_string())
            }
            ["granted", id] => {
                self.granted.push(id.to_string());
                Some(id.to_string())
            }
            ["resolved", _] => {
                self.resolved += 1;
                None
            }
            ["updated", id, version, value] => {
                let version = version.parse().expect("version");
                self.written
                    .insert(id.to_string(), (version, value.to_string()));
                Some(id.to_string())
            }
            _ => panic!("the child printed `{line}`"),
        }
    }
}

/// Kills the child however the parent leaves (a failed assertion included).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(db: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child")
}

/// Runs one child until `delay` after it is ready, kills it with SIGKILL and returns the
/// complete lines it printed.
fn run_and_kill(db: &Path, delay: Duration) -> Vec<String> {
    let mut guard = KillOnDrop(spawn_child(db));
    let child = &mut guard.0;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                // A line cut off by the kill has no newline: it was never reported.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    // The harness may print `test child ... ` before the first one.
                    let Some(at) = line.find(MARK) else {
                        continue;
                    };
                    let report = &line[at + MARK.len()..];
                    if tx.send(report.trim_end().to_string()).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for "ready" (the vault opened the file the last kill left behind).
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line == "ready";
                lines.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                if let Some(status) = child.try_wait().expect("wait") {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("the child exited ({status}) before it was ready: {err}");
                }
                assert!(Instant::now() < deadline, "the child never got ready");
            }
        }
    }
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    // Killed by the signal, not finished or panicked on its own.
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(9) {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the child ended by itself ({status}): {err}");
        }
    }
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    lines
}

fn newest_checkpoint(db: &Path) -> Option<Checkpoint> {
    let text = std::fs::read_to_string(checkpoints_path(db)).ok()?;
    // A line cut off by the kill is not a published checkpoint.
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str::<Checkpoint>(l.trim_end()).ok())
        .max_by_key(|c| c.seq)
}

/// Everything that must hold after a kill.
async fn check_after_kill(
    db: &Path,
    reported: &Reported,
    fresh: &BTreeSet<String>,
    round: usize,
) -> u64 {
    {
        let conn = rusqlite::Connection::open(db).expect("the file opens");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "round {round}: integrity_check");
    }
    let vault = open_vault(db, false).await;
    let report = vault.audit().verify().await.expect("verify");
    assert!(report.is_ok(), "round {round}: {report:?}");
    let rows = report.rows;
    if let Some(cp) = newest_checkpoint(db) {
        assert!(cp.seq <= rows, "round {round}: a checkpoint past the end");
        let report = vault
            .audit()
            .verify_against(std::slice::from_ref(&cp))
            .await
            .expect("verify against the checkpoint");
        assert!(report.is_ok(), "round {round}: {report:?} against {cp:?}");
    }
    // Every reported write, at its reported version; the ones reported in this round are
    // opened too (the earlier ones were opened in their round).
    let owner = p("app_user:crm:alice");
    let stored: BTreeMap<String, u64> = vault
        .store()
        .list(&ListFilter::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.id.to_string(), r.version))
        .collect();
    for (id, (version, value)) in &reported.written {
        // A later write may have landed unreported (killed before it printed).
        let at = stored.get(id).copied();
        assert!(
            at.is_some_and(|v| v >= *version),
            "round {round}: reported write {id} (version {version}) is not there: {at:?}"
        );
        if !fresh.contains(id) || at != Some(*version) {
            continue;
        }
        let id = CredentialId::new(id.as_str()).expect("id");
        let revealed = vault
            .reveal(&owner, &id)
            .await
            .unwrap_or_else(|e| panic!("round {round}: reported write {id} does not open: {e}"));
        assert_eq!(revealed.info.version, *version, "round {round}: {id}");
        assert_eq!(revealed.fields["api_key"].expose_secret(), value.as_str());
    }
    for id in reported.granted.iter().filter(|id| fresh.contains(*id)) {
        let id = CredentialId::new(id.as_str()).expect("id");
        let grants = vault.grants(&owner, &id).await.expect("grants");
        assert!(
            grants.iter().any(|g| g.app == "crm" && g.is_active()),
            "round {round}: reported grant on {id} is gone"
        );
    }
    let resolves = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("rows")
        .iter()
        .filter(|r| r.event.action == Action::Resolve && r.event.outcome == Outcome::Success)
        .count();
    assert!(
        resolves >= reported.resolved,
        "round {round}: {} resolves reported, {resolves} audited",
        reported.resolved
    );
    rows
}

/// `kills` rounds on one file, delays drawn from `seed`.
async fn kill_rounds(seed: u64, kills: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("vault.db");
    let rng = SplitMix::new(seed);
    let mut reported = Reported::default();
    let mut last_rows = 0;
    let mut killed_after_writes = 0;
    let mut checking = Duration::ZERO;
    let began = Instant::now();
    for round in 0..kills {
        // Anywhere in the first few dozen calls (a call takes a few milliseconds).
        let delay = Duration::from_micros(rng.below(80_000));
        let lines = run_and_kill(&db, delay);
        if lines.len() > 1 {
            killed_after_writes += 1;
        }
        let mut fresh = BTreeSet::new();
        for line in &lines {
            if let Some(id) = reported.take(line) {
                fresh.insert(id);
            }
        }
        let started = Instant::now();
        let rows = check_after_kill(&db, &reported, &fresh, round).await;
        checking += started.elapsed();
        assert!(rows >= last_rows, "round {round}: the chain shrank");
        last_rows = rows;
    }
    assert!(
        killed_after_writes * 3 >= kills * 2,
        "most children were killed mid-work ({killed_after_writes} of {kills})"
    );
    assert!(!reported.written.is_empty());
    println!(
        "{kills} kills: {} credentials written, {} resolves, {last_rows} audit rows in {:?} \
         ({checking:?} checking)",
        reported.written.len(),
        reported.resolved,
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_reported_first_file() {
    kill_rounds(0xc4a5_0001, KILLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_reported_second_file() {
    kill_rounds(0xc4a5_0002, KILLS).await;
}
