//! Audit-chain verification of arbitrary rows: the rows of a real `SqliteStore`'s audit
//! table are replaced by rows read from the input, written behind the store's back with
//! SQL (as someone editing the database would), then the chain is verified
//! (`verify_chain`, `AuditChain::verify_against` with a checkpoint of the last row) and the
//! rows are read back (`audit_range`, `audit_query`).
//!
//! Input: one row per line, columns separated by `|`:
//! `seq|time|actor|action|credential_id|scope_kind|owner|outcome|details|prev_hash|hash`.
//! A column that parses as an integer is stored as one; `x:HEX` is stored as a blob; for
//! `prev_hash` and `hash`, `*` is the right value (the previous row's hash, the row's own
//! chain hash), so that inputs can hold intact chains and edit them; anything else is text.
//!
//! Checks beyond "no panic": the fast digest path (which hashes rows straight from their
//! columns) and the decoding path agree: when verification finds the chain intact, every
//! row decodes and re-hashes to its stored hash, and a chain reported broken at row `n`
//! never decodes and links cleanly through row `n`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value;
use strongroom::audit::{chain_hash, verify_chain, ProblemKind, GENESIS_HASH};
use strongroom::{
    Action, AuditChain, AuditEvent, AuditQuery, AuditTarget, Checkpoint, KeyRing, LocalKey,
    Outcome, SqliteStore, Store, Timestamp,
};
use strongroom_fuzz::{block_on, AcceptingSigner, ACCEPTING_KEY_ID};

struct Fixture {
    store: Arc<SqliteStore>,
    chain: AuditChain,
    raw: std::sync::Mutex<rusqlite::Connection>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("strongroom-fuzz-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("vault.db");
        let store = Arc::new(SqliteStore::open(&path).expect("open the fuzz store"));
        let raw = rusqlite::Connection::open(&path).expect("raw connection");
        raw.pragma_update(None, "synchronous", "OFF")
            .expect("pragma");
        let key = Arc::new(LocalKey::from_bytes(&[7; 32], "fuzz"));
        let chain = AuditChain::new(store.clone(), KeyRing::new(key))
            .with_checkpoint_key(Arc::new(AcceptingSigner));
        Fixture {
            store,
            chain,
            raw: std::sync::Mutex::new(raw),
        }
    })
}

fn column(text: &str) -> Value {
    if let Some(hex) = text.strip_prefix("x:") {
        if let Ok(bytes) = hex_decode(hex) {
            return Value::Blob(bytes);
        }
    }
    match text.parse::<i64>() {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::Text(text.to_string()),
    }
}

fn hex_decode(text: &str) -> Result<Vec<u8>, ()> {
    if !text.len().is_multiple_of(2) {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}

fn text_of(v: &Value) -> Option<&str> {
    match v {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

/// The row's own chain hash, when its columns make an event.
fn own_hash(cols: &[Value], prev: &[u8; 32]) -> Option<[u8; 32]> {
    let Value::Integer(seq) = cols[0] else {
        return None;
    };
    let Value::Integer(time) = cols[1] else {
        return None;
    };
    let target =
        AuditTarget::from_columns(text_of(&cols[4])?, text_of(&cols[5])?, text_of(&cols[6])?)
            .ok()?;
    let event = AuditEvent {
        time: Timestamp(time),
        actor: text_of(&cols[2])?.to_string(),
        action: Action::parse(text_of(&cols[3])?).ok()?,
        target,
        outcome: Outcome::parse(text_of(&cols[7])?).ok()?,
        details: serde_json::from_str(text_of(&cols[8])?).ok()?,
    };
    Some(chain_hash(prev, seq as u64, &event))
}

fn load(raw: &mut rusqlite::Connection, text: &str) -> usize {
    let tx = raw.transaction().expect("transaction");
    tx.execute("DELETE FROM audit", []).expect("delete");
    let mut prev_hash = Value::Blob(GENESIS_HASH.to_vec());
    let mut inserted = 0;
    for line in text.lines().take(64) {
        let mut cols: Vec<Value> = line.splitn(11, '|').map(column).collect();
        if cols.len() != 11 {
            continue;
        }
        if text_of(&cols[9]) == Some("*") {
            cols[9] = prev_hash.clone();
        }
        if text_of(&cols[10]) == Some("*") {
            let prev: [u8; 32] = match &cols[9] {
                Value::Blob(b) => b.as_slice().try_into().unwrap_or([0; 32]),
                _ => [0; 32],
            };
            cols[10] = Value::Blob(own_hash(&cols, &prev).unwrap_or([0; 32]).to_vec());
        }
        let ok = tx
            .execute(
                "INSERT INTO audit (seq, time, actor, action, credential_id, scope_kind, \
                 owner, outcome, details, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                rusqlite::params_from_iter(cols.iter()),
            )
            .is_ok();
        // Rows numbered 0 or less are outside the chain (it starts at 1).
        if ok && matches!(cols[0], Value::Integer(seq) if seq >= 1) {
            inserted += 1;
        }
        if ok {
            prev_hash = cols[10].clone();
        }
    }
    tx.commit().expect("commit");
    inserted
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let inserted = load(&mut f.raw.lock().expect("raw lock"), text);
    block_on(async {
        let report = verify_chain(f.store.as_ref()).await.expect("verify reads");
        let rows = f.store.audit_range(1, 100).await;
        if report.is_ok() {
            assert_eq!(
                report.rows as usize, inserted,
                "an intact chain has every row"
            );
            let rows = rows.expect("an intact chain decodes");
            assert_eq!(rows.len(), inserted);
            let mut prev = GENESIS_HASH;
            for row in &rows {
                assert_eq!(row.prev_hash, prev, "row {} links", row.seq);
                assert_eq!(
                    chain_hash(&row.prev_hash, row.seq, &row.event),
                    row.hash,
                    "row {} re-hashes to its stored hash",
                    row.seq
                );
                prev = row.hash;
            }
        } else if let (Some(bad), Ok(rows)) = (report.first_bad_seq(), &rows) {
            // The decoding path must not find the chain clean through the bad row.
            let mut prev = GENESIS_HASH;
            let mut clean_through = 0u64;
            for (expected, row) in (1u64..).zip(rows.iter()) {
                if row.seq != expected
                    || row.prev_hash != prev
                    || chain_hash(&row.prev_hash, row.seq, &row.event) != row.hash
                {
                    break;
                }
                clean_through = row.seq;
                prev = row.hash;
            }
            assert!(
                clean_through < bad,
                "verification says row {bad} is bad, but rows 1..={clean_through} decode \
                 and link cleanly: {report:?}"
            );
        }
        // A store's own query returns the rows the scan of the chain does (Store::audit_query).
        let query = AuditQuery {
            limit: 1_000,
            ..AuditQuery::default()
        };
        let (queried, scanned) = (
            f.store.audit_query(&query).await,
            strongroom::store::audit_query_by_scan(f.store.as_ref(), &query).await,
        );
        match (queried, scanned) {
            (Ok(q), Ok(s)) => assert_eq!(q, s, "audit_query and the scan disagree"),
            (q, s) => assert_eq!(q.is_ok(), s.is_ok(), "{q:?} / {s:?}"),
        }
        if let Some(head) = report.head {
            // A checkpoint of the last good row holds; one past the end is a truncation.
            let at = |seq: u64| Checkpoint {
                seq,
                head_hash: head.hash,
                time: Timestamp(0),
                key_id: ACCEPTING_KEY_ID.to_string(),
                mac: b"fuzz".to_vec(),
            };
            let against = f
                .chain
                .verify_against(&[at(head.seq)])
                .await
                .expect("verify reads");
            assert_eq!(
                against.problem, report.problem,
                "a checkpoint of the head holds"
            );
            let past = f
                .chain
                .verify_against(&[at(head.seq + 1)])
                .await
                .expect("verify reads");
            if report.is_ok() {
                let kind = past.problem.as_ref().map(|p| p.kind);
                assert_eq!(kind, Some(ProblemKind::Truncated), "{past:?}");
            } else {
                assert!(!past.is_ok());
            }
        }
    });
});
