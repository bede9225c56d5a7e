//! Regressions found by the fuzz targets of `fuzz/` (docs/FUZZING.md): each input a target
//! found, replayed through the same public entry point, with the behaviour the fix gave.
//! Inputs are inline, or under tests/data/fuzz/ when binary.

use std::path::Path;
use std::sync::Arc;

use strongroom::audit::verify_chain;
use strongroom::store::audit_query_by_scan;
use strongroom::{
    Action, AuditEvent, AuditQuery, AuditTarget, Batch, Error, KeyRing, LocalKey, RecordIdentity,
    Scope, SqliteStore, Store, Timestamp,
};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fuzz")
            .join(name),
    )
    .expect("fuzz regression input")
}

/// The known-answer vectors' master key (00 01 … 1f).
fn vectors_key() -> Arc<LocalKey> {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    Arc::new(LocalKey::from_bytes(&bytes, "known-answer vectors"))
}

/// fuzz target `envelope`: the first format-1 vector with bytes appended to its ciphertext.
/// Re-wrapping checks the data key against the blob's commitment, not the payload, so the
/// blob is re-wrapped; it must then fail to open exactly as it did before, and re-wrapping
/// must never make it open.
#[tokio::test]
async fn a_rewrapped_blob_with_an_altered_ciphertext_still_fails_to_open() {
    let blob = data("envelope_altered_ciphertext.bin");
    let scope = Scope::SystemWide;
    let id = RecordIdentity::new("cred-0001", &scope, 1);
    let old = KeyRing::new(vectors_key());
    let before = old
        .open(&blob, &id)
        .await
        .expect_err("an altered ciphertext");
    assert!(matches!(before, Error::DecryptFailed { .. }), "{before:?}");

    let new = KeyRing::new(Arc::new(LocalKey::from_bytes(&[0x42; 32], "new")))
        .with_retired(vectors_key());
    let rewrapped = new
        .rewrap_blob(&blob, &id)
        .await
        .expect("the data key matches the commitment")
        .expect("wrapped by a retired key");
    let after = new
        .open(&rewrapped.bytes, &id)
        .await
        .expect_err("still an altered ciphertext");
    assert!(matches!(after, Error::DecryptFailed { .. }), "{after:?}");
    assert!(
        !after.to_string().is_empty() && after.to_string().contains("cred-0001"),
        "the error names the credential: {after}"
    );
}

async fn two_row_chain() -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let store = SqliteStore::open(&path).expect("open");
    for i in 0..2 {
        let event = AuditEvent::new("alice", Action::Create, AuditTarget::none())
            .at(Timestamp(1_764_000_000_000 + i));
        store
            .commit(Batch::events(vec![event]))
            .await
            .expect("commit");
    }
    (dir, path, store)
}

/// fuzz target `audit_rows`: a row stored with sequence number 0 (or a negative one), written
/// behind the vault's back. The chain starts at row 1, so verification never reads it; the
/// SQLite store's own `audit_query` returned it all the same (so `audit list` showed an
/// event `audit verify` never checked), unlike the scan it must agree with. Now no query
/// shows it.
#[tokio::test]
async fn an_audit_row_numbered_zero_or_less_is_not_shown_by_queries() {
    let (_dir, path, store) = two_row_chain().await;
    let raw = rusqlite::Connection::open(&path).expect("raw connection");
    for seq in [0i64, -5] {
        raw.execute(
            "INSERT INTO audit (seq, time, actor, action, credential_id, scope_kind, owner, \
             outcome, details, prev_hash, hash) \
             VALUES (?1, 0, 'mallory', 'credential.reveal', '', 'system_wide', '', 'success', \
             '{}', zeroblob(32), zeroblob(32))",
            [seq],
        )
        .expect("insert a forged row");
    }
    let report = verify_chain(&store).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.rows, 2);

    for query in [
        AuditQuery::default(),
        AuditQuery {
            newest_first: true,
            ..AuditQuery::default()
        },
        AuditQuery {
            actor: Some("mallory".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            before: Some(2),
            newest_first: true,
            ..AuditQuery::default()
        },
    ] {
        let rows = store.audit_query(&query).await.expect("query");
        let scanned = audit_query_by_scan(&store, &query).await.expect("scan");
        assert_eq!(
            rows, scanned,
            "the store's query agrees with the scan: {query:?}"
        );
        assert!(
            rows.iter().all(|r| r.seq >= 1 && r.event.actor == "alice"),
            "no forged row is shown: {rows:?}"
        );
    }
}

/// fuzz target `audit_rows`: a row without a scope (no scope kind) whose `owner` column was
/// edited. Decoding dropped the owner, so the decoded row hashed to the stored hash: the
/// decoding path of verification (the default `Store::audit_digests`, which PostgreSQL and
/// memory stores use) found the chain intact while SQLite's column-hashing path found the
/// edit. Both now refuse such a row as undecodable, naming it.
#[tokio::test]
async fn an_owner_written_into_a_row_without_a_scope_is_caught_by_both_paths() {
    let (_dir, path, store) = two_row_chain().await;
    let raw = rusqlite::Connection::open(&path).expect("raw connection");
    let edited = raw
        .execute("UPDATE audit SET owner = 'mallory' WHERE seq = 1", [])
        .expect("edit the row");
    assert_eq!(edited, 1);

    let columns = verify_chain(&store).await.expect("verify");
    assert_eq!(columns.first_bad_seq(), Some(1), "{columns:?}");

    let decoded = strongroom::store::digests_from_records(&store, 1, 100)
        .await
        .expect("digests");
    let first = decoded.first().expect("row 1");
    assert_eq!(first.seq, 1);
    let reason = first.computed.as_ref().expect_err("row 1 does not decode");
    assert!(reason.contains("scope owner"), "{reason}");

    match store.audit_range(1, 100).await {
        Err(Error::CorruptAuditRow { seq, reason }) => {
            assert_eq!(seq, 1);
            assert!(reason.contains("no owner"), "{reason}");
        }
        other => panic!("an edited row decoded: {other:?}"),
    }
}
