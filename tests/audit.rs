//! The audit chain: every kind of tampering is found at its first bad sequence number,
//! checkpoints catch truncation and rewrites, and an outside tool verifies the SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use strongroom::audit::{chain_hash, verify_chain, ProblemKind};
use strongroom::{
    Action, AuditChain, AuditEvent, AuditTarget, Batch, Checkpoint, CredentialId, KeyRing,
    LocalKey, MemoryStore, Outcome, Scope, SqliteStore, Store,
};

fn event(i: u64) -> AuditEvent {
    let scope = match i % 3 {
        0 => Scope::SystemWide,
        1 => Scope::per_user(format!("user{}", i % 7)).expect("scope"),
        _ => Scope::per_app_per_user("crm", "bob").expect("scope"),
    };
    let target = if i.is_multiple_of(5) {
        AuditTarget::none()
    } else {
        AuditTarget::credential(&CredentialId::new(format!("cred-{i}")).expect("id"), &scope)
    };
    AuditEvent::new(format!("actor{}", i % 4), Action::Reveal, target)
        .outcome(if i.is_multiple_of(11) {
            Outcome::Denied
        } else {
            Outcome::Success
        })
        .detail("n", i.to_string())
        .detail("ünïcode", "värde \"quoted\"")
}

async fn chain(n: u64) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("audit.db")).expect("open");
    let mut i = 1;
    while i <= n {
        let end = (i + 499).min(n);
        store
            .commit(Batch::events((i..=end).map(event).collect()))
            .await
            .expect("commit");
        i = end + 1;
    }
    (dir, store)
}

fn db(store: &SqliteStore) -> Connection {
    Connection::open(store.path()).expect("open for tampering")
}

fn python_verify(path: &Path) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/verify_audit_sqlite.py"
        ))
        .arg(path)
        .output()
        .expect("python3 runs (CI installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn first_bad(store: &SqliteStore) -> (Option<u64>, Option<ProblemKind>) {
    let report = verify_chain(store).await.expect("verify runs");
    (report.first_bad_seq(), report.problem.map(|p| p.kind))
}

#[tokio::test]
async fn an_intact_chain_verifies_here_and_with_the_outside_tool() {
    let (_dir, store) = chain(1200).await;
    let report = verify_chain(&store).await.expect("verify");
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.rows, 1200);
    let head = report.head.expect("head");
    let (ok, out) = python_verify(store.path());
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        format!("ok 1200 rows, head 1200 {}", hex::encode(head.hash))
    );
}

#[tokio::test]
async fn an_edited_row_is_the_first_bad_sequence_number() {
    let (_dir, store) = chain(100).await;
    db(&store)
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 40", [])
        .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(40), Some(ProblemKind::HashMismatch))
    );
    let (ok, out) = python_verify(store.path());
    assert!(!ok && out.contains("first bad sequence number 40"), "{out}");
    // Editing a detail's value or the time is caught the same way.
    let (_dir, store) = chain(100).await;
    db(&store)
        .execute("UPDATE audit SET details = '{\"n\":\"78\",\"ünïcode\":\"värde \\\"quoted\\\"\"}' WHERE seq = 77", [])
        .expect("tamper");
    assert_eq!(first_bad(&store).await.0, Some(77));
    let (_dir, store) = chain(100).await;
    db(&store)
        .execute("UPDATE audit SET time = time + 1 WHERE seq = 3", [])
        .expect("tamper");
    assert_eq!(first_bad(&store).await.0, Some(3));
}

#[tokio::test]
async fn a_deleted_row_is_reported_as_missing() {
    let (_dir, store) = chain(100).await;
    db(&store)
        .execute("DELETE FROM audit WHERE seq = 40", [])
        .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(40), Some(ProblemKind::Missing))
    );
    let (ok, out) = python_verify(store.path());
    assert!(!ok && out.contains("first bad sequence number 40"), "{out}");
}

fn shift_up_from(conn: &Connection, seq: i64) {
    conn.execute("UPDATE audit SET seq = -seq - 1 WHERE seq >= ?1", [seq])
        .expect("shift");
    conn.execute("UPDATE audit SET seq = -seq WHERE seq < 0", [])
        .expect("shift");
}

#[tokio::test]
async fn an_inserted_row_is_caught() {
    // A crude insertion: the row's hash is copied from elsewhere.
    let (_dir, store) = chain(100).await;
    let conn = db(&store);
    shift_up_from(&conn, 40);
    conn.execute(
        "INSERT INTO audit SELECT 40, time, 'mallory', action, credential_id, scope_kind, owner,
            outcome, details, prev_hash, hash FROM audit WHERE seq = 41",
        [],
    )
    .expect("insert");
    assert_eq!(first_bad(&store).await.0, Some(40));

    // A careful insertion that links and hashes correctly: the next row's link breaks.
    let (_dir, store) = chain(100).await;
    let rows = store.audit_range(39, 1).await.expect("row 39");
    let forged = AuditEvent::new("mallory", Action::Reveal, AuditTarget::none());
    let hash = chain_hash(&rows[0].hash, 40, &forged);
    let conn = db(&store);
    shift_up_from(&conn, 40);
    conn.execute(
        "INSERT INTO audit VALUES (40, ?1, 'mallory', 'credential.reveal', '', '', '', 'success', '{}', ?2, ?3)",
        params![forged.time.0, &rows[0].hash[..], &hash[..]],
    )
    .expect("insert");
    assert_eq!(
        first_bad(&store).await,
        (Some(41), Some(ProblemKind::PrevHashMismatch))
    );
}

#[tokio::test]
async fn reordered_rows_are_caught_at_the_lower_one() {
    let (_dir, store) = chain(100).await;
    let conn = db(&store);
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 40", [])
        .expect("swap");
    conn.execute("UPDATE audit SET seq = 40 WHERE seq = 41", [])
        .expect("swap");
    conn.execute("UPDATE audit SET seq = 41 WHERE seq = -1", [])
        .expect("swap");
    assert_eq!(first_bad(&store).await.0, Some(40));
    let (ok, out) = python_verify(store.path());
    assert!(!ok && out.contains("first bad sequence number 40"), "{out}");
}

#[tokio::test]
async fn an_undecodable_row_is_reported_not_fatal() {
    for (column, value) in [
        ("outcome", "'hacked'"),
        ("details", "'not json'"),
        ("scope_kind", "'galaxy_wide'"),
        ("action", "'credential.teleport'"),
        ("hash", "x'00'"),
    ] {
        let (_dir, store) = chain(100).await;
        db(&store)
            .execute(
                &format!("UPDATE audit SET {column} = {value} WHERE seq = 60"),
                [],
            )
            .expect("tamper");
        assert_eq!(
            first_bad(&store).await,
            (Some(60), Some(ProblemKind::Undecodable)),
            "{column}"
        );
    }
}

/// An action outside the documented vocabulary makes a row corrupt: reading it names its
/// sequence number, and both ways of hashing rows (SQLite's own path, and the provided one
/// that decodes rows) report it at that row.
#[tokio::test]
async fn an_unknown_action_is_a_corrupt_row_named_by_its_seq() {
    let (_dir, store) = chain(100).await;
    db(&store)
        .execute(
            "UPDATE audit SET action = 'credential.put' WHERE seq = 42",
            [],
        )
        .expect("tamper");
    match store.audit_range(1, 100).await {
        Err(strongroom::Error::CorruptAuditRow { seq, reason }) => {
            assert_eq!(seq, 42);
            assert!(reason.contains("credential.put"), "{reason}");
        }
        other => panic!("expected a corrupt row 42, got {other:?}"),
    }
    let rows = store
        .audit_range(1, 41)
        .await
        .expect("the rows before it read");
    assert_eq!(rows.len(), 41);
    for digests in [
        store.audit_digests(1, 100).await.expect("digests"),
        strongroom::audit::digests_from_records(&store, 1, 100)
            .await
            .expect("provided digests"),
    ] {
        assert!(digests[..41].iter().all(|d| d.computed.is_ok()));
        assert_eq!(digests[41].seq, 42);
        assert!(digests[41].computed.is_err(), "row 42 does not decode");
    }
    assert_eq!(
        first_bad(&store).await,
        (Some(42), Some(ProblemKind::Undecodable))
    );
}

#[tokio::test]
async fn problems_past_the_first_page_are_found_exactly() {
    let (_dir, store) = chain(10_000).await;
    db(&store)
        .execute("DELETE FROM audit WHERE seq = 9000", [])
        .expect("tamper");
    db(&store)
        .execute("UPDATE audit SET outcome = 'x' WHERE seq = 9500", [])
        .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(9000), Some(ProblemKind::Missing))
    );
    let (_dir, store) = chain(10_000).await;
    db(&store)
        .execute("UPDATE audit SET outcome = 'x' WHERE seq = 8200", [])
        .expect("tamper");
    db(&store)
        .execute("UPDATE audit SET actor = 'm' WHERE seq = 8193", [])
        .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(8193), Some(ProblemKind::HashMismatch))
    );
}

fn keys() -> KeyRing {
    KeyRing::new(Arc::new(LocalKey::generate().expect("key")))
}

#[tokio::test]
async fn checkpoints_catch_tail_truncation() {
    let (_dir, sqlite) = chain(100).await;
    let path = sqlite.path().to_path_buf();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let chain = AuditChain::new(store.clone(), keys());
    let cp = chain
        .checkpoint()
        .await
        .expect("checkpoint")
        .expect("non-empty");
    assert_eq!(cp.seq, 100);
    assert!(chain
        .verify_against(std::slice::from_ref(&cp))
        .await
        .expect("verify")
        .is_ok());
    Connection::open(&path)
        .expect("open")
        .execute("DELETE FROM audit WHERE seq > 90", [])
        .expect("truncate");
    let plain = chain.verify().await.expect("verify");
    assert!(plain.is_ok(), "the chain alone cannot see a cut tail");
    let report = chain.verify_against(&[cp]).await.expect("verify");
    let problem = report.problem.expect("truncation found");
    assert_eq!((problem.seq, problem.kind), (91, ProblemKind::Truncated));
}

#[tokio::test]
async fn checkpoints_catch_a_rewrite_with_recomputed_hashes() {
    let (_dir, sqlite) = chain(100).await;
    let conn = db(&sqlite);
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let chain = AuditChain::new(store.clone(), keys());
    let mut cps: Vec<Checkpoint> = Vec::new();
    // Checkpoints at rows 30 and 100 (made as the chain passed them).
    let at30 = store.audit_range(30, 1).await.expect("row")[0].clone();
    cps.push(sign_at(&chain, &store, at30.seq).await);
    cps.push(chain.checkpoint().await.expect("cp").expect("non-empty"));

    // Rewrite row 50 and recompute every later hash: the chain alone looks intact.
    let mut rows = store.audit_range(1, 1000).await.expect("rows");
    rows[49].event.actor = "mallory".into();
    let mut prev = rows[48].hash;
    for row in rows.iter_mut().skip(49) {
        row.prev_hash = prev;
        row.hash = chain_hash(&prev, row.seq, &row.event);
        prev = row.hash;
        conn.execute(
            "UPDATE audit SET actor = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            params![
                row.event.actor,
                &row.prev_hash[..],
                &row.hash[..],
                row.seq as i64
            ],
        )
        .expect("rewrite");
    }
    assert!(chain.verify().await.expect("verify").is_ok());
    let report = chain.verify_against(&cps).await.expect("verify");
    let problem = report.problem.expect("rewrite found");
    assert_eq!(
        (problem.seq, problem.kind),
        (31, ProblemKind::CheckpointMismatch)
    );
}

/// A checkpoint of the chain as it stood at `seq` (what a sink would have received then).
async fn sign_at(chain: &AuditChain, store: &Arc<dyn Store>, seq: u64) -> Checkpoint {
    let mem: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let rows = store.audit_range(1, seq as usize).await.expect("rows");
    mem.commit(Batch::events(rows.into_iter().map(|r| r.event).collect()))
        .await
        .expect("copy");
    AuditChain::new(mem, chain.key_ring().clone())
        .checkpoint()
        .await
        .expect("cp")
        .expect("non-empty")
}

#[tokio::test]
async fn forged_checkpoints_are_refused() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .commit(Batch::events((1..=10).map(event).collect()))
        .await
        .expect("commit");
    let chain = AuditChain::new(store.clone(), keys());
    let cp = chain.checkpoint().await.expect("cp").expect("non-empty");
    assert!(chain.check_checkpoint(&cp).await.expect("check"));
    let mut forged = cp.clone();
    forged.seq = 5;
    assert!(!chain.check_checkpoint(&forged).await.expect("check"));
    let report = chain.verify_against(&[forged]).await.expect("verify");
    assert_eq!(
        report.problem.map(|p| p.kind),
        Some(ProblemKind::ForgedCheckpoint)
    );
    // A checkpoint made under another master key does not authenticate either.
    let other = AuditChain::new(store.clone(), keys());
    let err = other.check_checkpoint(&cp).await.expect_err("unknown key");
    assert_eq!(err.kind(), strongroom::ErrorKind::KeyUnavailable);
}

#[tokio::test]
async fn the_sink_receives_a_checkpoint_every_interval() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let seen: Arc<Mutex<Vec<Checkpoint>>> = Arc::default();
    let sink_seen = seen.clone();
    let chain = AuditChain::new(store.clone(), keys()).with_sink(
        Arc::new(move |cp: &Checkpoint| sink_seen.lock().expect("lock").push(cp.clone())),
        10,
    );
    for i in 1..=35 {
        let receipt = store
            .commit(Batch::events(vec![event(i)]))
            .await
            .expect("commit");
        chain.after_commit(&receipt).await.expect("after commit");
    }
    let seqs: Vec<u64> = seen.lock().expect("lock").iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![10, 20, 30]);
    let cps = seen.lock().expect("lock").clone();
    assert!(chain.verify_against(&cps).await.expect("verify").is_ok());
}

#[tokio::test]
async fn memory_store_chains_verify_the_same_way() {
    let store = MemoryStore::new();
    store
        .commit(Batch::events((1..=50).map(event).collect()))
        .await
        .expect("commit");
    assert!(verify_chain(&store).await.expect("verify").is_ok());
    store.tamper_audit(|rows| rows[19].event.action = Action::Delete);
    assert_eq!(
        verify_chain(&store).await.expect("verify").first_bad_seq(),
        Some(20)
    );
    store.tamper_audit(|rows| {
        rows.remove(9);
    });
    assert_eq!(
        verify_chain(&store).await.expect("verify").first_bad_seq(),
        Some(10)
    );
}

#[tokio::test]
async fn memory_store_ranges_cross_its_internal_chunks() {
    let store = MemoryStore::new();
    for start in (1..=40_000u64).step_by(5_000) {
        store
            .commit(Batch::events((start..start + 5_000).map(event).collect()))
            .await
            .expect("commit");
    }
    let rows = store.audit_range(16_380, 10).await.expect("range");
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (16_380..16_390).collect::<Vec<_>>()
    );
    assert_eq!(store.audit_range(39_999, 10).await.expect("tail").len(), 2);
    let report = verify_chain(&store).await.expect("verify");
    assert!(report.is_ok() && report.rows == 40_000);
    store.tamper_audit(|rows| rows[20_000].event.actor = "m".into());
    assert_eq!(
        verify_chain(&store).await.expect("verify").first_bad_seq(),
        Some(20_001)
    );
}

/// Verification reads a row's details text in place when it is exactly as the stores write
/// it and decodes it otherwise: the same map written another way (spaces, keys out of order,
/// an escape where none is needed) hashes the same here and in the outside tool, and any
/// change to a key or a value is caught, in either form.
#[tokio::test]
async fn details_hash_as_their_map_however_the_json_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("plain.db")).expect("open");
    let events = (1..=40u64)
        .map(|i| {
            AuditEvent::new("app:crm", Action::Resolve, AuditTarget::none())
                .detail("slot", format!("s{i}"))
                .detail("a", "x")
        })
        .collect();
    store.commit(Batch::events(events)).await.expect("commit");
    assert_eq!(first_bad(&store).await, (None, None));
    let conn = db(&store);
    conn.execute(
        r#"UPDATE audit SET details = '{ "slot" : "s5", "a":"\u0078" }' WHERE seq = 5"#,
        [],
    )
    .expect("rewrite");
    assert_eq!(first_bad(&store).await, (None, None));
    let (ok, out) = python_verify(store.path());
    assert!(ok, "{out}");
    conn.execute(
        r#"UPDATE audit SET details = '{"a":"x","slot":"s8!"}' WHERE seq = 8"#,
        [],
    )
    .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(8), Some(ProblemKind::HashMismatch))
    );
    conn.execute(
        r#"UPDATE audit SET details = '{"slot":"s7","a":"y"}' WHERE seq = 7"#,
        [],
    )
    .expect("tamper");
    assert_eq!(
        first_bad(&store).await,
        (Some(7), Some(ProblemKind::HashMismatch))
    );
}
