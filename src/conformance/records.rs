//! Conformance checks for records and leases: round trips, preconditions and the version
//! rule, atomic batches with credentials, filters and paging, concurrent lease claimers, and
//! record-only batches leaving read stamps current.

use std::sync::Arc;

use super::{event, is_stale, put, sample_record, stamps, StoreHandles};
use crate::audit::{Action, AuditEvent, AuditTarget};
use crate::error::{Error, ErrorKind};
use crate::model::{Record, RecordKey, Scope, Timestamp, MAX_RECORD_BODY, MAX_RECORD_SEALED};
use crate::store::{Batch, Mutation, Precondition, RecordFilter, Store};

/// A plausible record (its `sealed` bytes are opaque to stores, so they are not real).
pub fn sample_stored_record(kind: &str, owner: &str, key: &str) -> Record {
    let key = RecordKey::new(kind, owner, key).expect("a valid record key");
    let mut record = Record::new(
        key,
        serde_json::json!({ "note": "conformance", "n": 1 }),
        Timestamp(1_700_000_000_000),
    );
    record.sealed = Some(vec![1, 2, 3]);
    record
}

fn record_event(action: Action, record: &Record) -> AuditEvent {
    AuditEvent::new("conformance", action, AuditTarget::none()).detail(
        "record",
        format!("{}/{}/{}", record.kind, record.owner, record.key),
    )
}

fn one(mutation: Mutation, event: AuditEvent) -> Batch {
    Batch {
        mutations: vec![mutation],
        events: vec![event],
    }
}

/// Records round-trip exactly (JSON body, sealed body, expiry, keys with `/`, `:` and
/// non-ASCII text), through either handle: one writes, the other reads at once. Update by
/// the next version, delete at the current one.
pub async fn record_round_trip(handles: StoreHandles) {
    let (first, second) = (handles.first(), handles.second());
    let mut record = sample_stored_record("oauth.pending", "agent:a7/crm", "state-é:ü/1");
    record.body = serde_json::json!({
        "redirect_uri": "https://app.example/cb?x=1&y=ü",
        "scopes": ["repo", "read:org"],
        "nested": { "n": -17, "big": u64::MAX, "half": 0.5, "none": null, "yes": true },
        "quote": "a \"b\" \\ c\n",
    });
    record.sealed = Some((0..=255u8).collect());
    record.expires_at = Some(Timestamp(1_700_000_600_000));
    second
        .commit(one(
            Mutation::create_record(record.clone()),
            record_event(Action::Create, &record),
        ))
        .await
        .expect("a create-only put of a new record succeeds");
    let key = record.record_key();
    assert_eq!(
        first.record(&key).await.expect("record"),
        Some(record.clone()),
        "a record reads back exactly as written, through the other handle too"
    );
    assert_eq!(
        first
            .records(&RecordFilter::kind("oauth.pending"))
            .await
            .expect("records"),
        vec![record.clone()],
        "a listing reads the same record"
    );

    let mut next = record.next_version(Timestamp(1_700_000_100_000));
    next.body = serde_json::json!("just a string");
    next.expires_at = None;
    assert_eq!(next.sealed, None, "next_version drops the sealed body");
    first
        .commit(one(
            Mutation::update_record(next.clone()),
            record_event(Action::Update, &next),
        ))
        .await
        .expect("the next version replaces the record");
    assert_eq!(
        second.record(&key).await.expect("record"),
        Some(next.clone()),
        "the update replaces the whole record (no sealed body, no expiry), seen by the other handle"
    );

    second
        .commit(one(
            Mutation::delete_record(&next),
            record_event(Action::Delete, &next),
        ))
        .await
        .expect("an if-version delete succeeds");
    assert_eq!(
        first.record(&key).await.expect("record"),
        None,
        "a deleted record is gone"
    );
    let other = RecordKey::new("oauth.pending", "agent:a7/crm", "state-é:ü/2").expect("key");
    assert_eq!(first.record(&other).await.expect("record"), None);
}

/// Create-only, if-version and the record version rule fail with typed errors and write
/// nothing: not the record, not the batch's audit rows.
pub async fn record_preconditions(store: Arc<dyn Store>) {
    let record = sample_stored_record("intent", "u1", "provision-1");
    let key = record.record_key();
    store
        .commit(one(
            Mutation::create_record(record.clone()),
            record_event(Action::Create, &record),
        ))
        .await
        .expect("create");
    let head = store.chain_head().await.expect("head");
    let fails = |mutation: Mutation| {
        let store = store.clone();
        let event = record_event(Action::Update, &record);
        async move {
            store
                .commit(one(mutation, event))
                .await
                .expect_err("the write must be refused")
        }
    };
    let err = fails(Mutation::create_record(record.clone())).await;
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "a second create: {err}"
    );

    let next = record.next_version(Timestamp(1_700_000_000_500));
    match fails(Mutation::PutRecord {
        record: next.clone(),
        precondition: Precondition::IfVersion(7),
    })
    .await
    {
        Error::VersionConflict {
            expected, found, ..
        } => assert_eq!((expected, found), (7, Some(1)), "a stale if-version put"),
        other => panic!("a stale if-version put is a version conflict, got {other}"),
    }
    let mut skipping = next.clone();
    skipping.version = 3;
    let err = fails(Mutation::PutRecord {
        record: skipping.clone(),
        precondition: Precondition::IfVersion(1),
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "an if-version put must write exactly the next version: {err}"
    );
    let mut again_one = next.clone();
    again_one.version = 1;
    let err = fails(Mutation::PutRecord {
        record: again_one,
        precondition: Precondition::IfVersion(1),
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a put may not keep the version it replaces: {err}"
    );
    let mut fresh_at_two = sample_stored_record("intent", "u1", "provision-2");
    fresh_at_two.version = 2;
    let err = fails(Mutation::create_record(fresh_at_two)).await;
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a created record starts at version 1: {err}"
    );
    let err = fails(Mutation::PutRecord {
        record: record.clone(),
        precondition: Precondition::None,
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::VersionConflict,
        "without a precondition, a put at a version that does not follow the stored one is \
         a conflict: {err}"
    );
    let err = fails(Mutation::PutRecord {
        record: sample_stored_record("intent", "u1", "never-written").next_version(Timestamp(1)),
        precondition: Precondition::IfVersion(1),
    })
    .await;
    assert!(
        matches!(err, Error::VersionConflict { found: None, .. }),
        "if-version on a missing record: {err}"
    );

    let err = fails(Mutation::DeleteRecord {
        key: RecordKey::new("intent", "u1", "never-written").expect("key"),
        precondition: Precondition::None,
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "deleting a missing record: {err}"
    );
    let err = fails(Mutation::DeleteRecord {
        key: key.clone(),
        precondition: Precondition::IfVersion(2),
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::VersionConflict,
        "a stale delete: {err}"
    );
    let err = fails(Mutation::DeleteRecord {
        key: key.clone(),
        precondition: Precondition::CreateOnly,
    })
    .await;
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "create-only delete: {err}"
    );

    // What a store refuses before looking at anything.
    let mut bad_kind = sample_stored_record("intent", "u1", "k");
    bad_kind.kind = "Not A Kind".into();
    let mut empty_owner = sample_stored_record("intent", "u1", "k");
    empty_owner.owner = String::new();
    let mut control = sample_stored_record("intent", "u1", "k");
    control.key = "a\nb".into();
    let mut too_big = sample_stored_record("intent", "u1", "big");
    too_big.body = serde_json::Value::String("x".repeat(MAX_RECORD_BODY - 1));
    let mut sealed_too_big = sample_stored_record("intent", "u1", "big");
    sealed_too_big.sealed = Some(vec![0; MAX_RECORD_SEALED + 1]);
    for (what, bad) in [
        ("a kind with capitals and spaces", bad_kind),
        ("an empty owner", empty_owner),
        ("a key with a control character", control),
        ("a body one byte over 64 KiB", too_big),
        ("a sealed body over 128 KiB", sealed_too_big),
    ] {
        let err = fails(Mutation::create_record(bad)).await;
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
    }
    assert_eq!(
        store.record(&key).await.expect("record"),
        Some(record.clone()),
        "failed writes left the record untouched"
    );
    assert_eq!(
        store.chain_head().await.expect("head"),
        head,
        "failed commits appended no audit rows"
    );

    // A body of exactly 64 KiB is fine.
    let mut at_limit = sample_stored_record("intent", "u1", "big");
    at_limit.body = serde_json::Value::String("x".repeat(MAX_RECORD_BODY - 2));
    store
        .commit(one(
            Mutation::create_record(at_limit.clone()),
            record_event(Action::Create, &at_limit),
        ))
        .await
        .expect("a body of exactly 64 KiB as JSON is accepted");
    assert_eq!(
        store.record(&at_limit.record_key()).await.expect("record"),
        Some(at_limit)
    );
    // Without a precondition, a put of the next version (or of version 1 of a new record)
    // is accepted.
    store
        .commit(one(
            Mutation::PutRecord {
                record: next.clone(),
                precondition: Precondition::None,
            },
            record_event(Action::Update, &next),
        ))
        .await
        .expect("an unconditional put of the next version");
    assert_eq!(store.record(&key).await.expect("record"), Some(next));
}

/// A record mutation and a credential mutation in one batch land together or not at all,
/// with the batch's audit rows; a lease released in the batch of what it guarded.
pub async fn records_atomic_with_credentials(handles: StoreHandles) {
    let (first, second) = (handles.first(), handles.second());
    let existing = sample_stored_record("integration", "agent:a1", "github");
    first
        .commit(one(
            Mutation::create_record(existing.clone()),
            record_event(Action::Create, &existing),
        ))
        .await
        .expect("create");
    let head = first.chain_head().await.expect("head");

    // The credential put is fine; the record put fails: neither lands.
    let credential = sample_record("github_token", Scope::per_agent("a1").expect("scope"));
    let err = first
        .commit(Batch {
            mutations: vec![
                Mutation::Put {
                    record: credential.clone(),
                    precondition: Precondition::CreateOnly,
                },
                Mutation::create_record(existing.clone()),
            ],
            events: vec![event(Action::Create, &credential)],
        })
        .await
        .expect_err("the record's create-only fails the batch");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(
        second.get(&credential.id).await.expect("get").is_none(),
        "the credential put was undone with the failed record put"
    );

    // The record put is fine; the credential put fails: neither lands.
    let fresh = sample_stored_record("integration", "agent:a1", "gitlab");
    let mut stale = credential.clone();
    stale.version = 2;
    let err = first
        .commit(Batch {
            mutations: vec![
                Mutation::create_record(fresh.clone()),
                Mutation::Put {
                    record: stale,
                    precondition: Precondition::IfVersion(1),
                },
            ],
            events: vec![record_event(Action::Create, &fresh)],
        })
        .await
        .expect_err("the credential's if-version fails the batch");
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    assert_eq!(
        second.record(&fresh.record_key()).await.expect("record"),
        None,
        "the record put was undone with the failed credential put"
    );
    assert_eq!(
        second.chain_head().await.expect("head"),
        head,
        "failed batches appended no audit rows"
    );

    // Both fine: both land, with the audit row, seen through the other handle.
    let next = existing.next_version(Timestamp(1_700_000_000_900));
    first
        .commit(Batch {
            mutations: vec![
                Mutation::Put {
                    record: credential.clone(),
                    precondition: Precondition::CreateOnly,
                },
                Mutation::update_record(next.clone()),
                Mutation::create_record(fresh.clone()),
            ],
            events: vec![event(Action::Create, &credential)],
        })
        .await
        .expect("a batch of credential and record mutations");
    assert_eq!(
        second.get(&credential.id).await.expect("get"),
        Some(credential.clone())
    );
    assert_eq!(
        second.record(&next.record_key()).await.expect("record"),
        Some(next)
    );
    assert_eq!(
        second.record(&fresh.record_key()).await.expect("record"),
        Some(fresh)
    );
    assert_eq!(
        second.chain_head().await.expect("head").map(|h| h.seq),
        head.map(|h| h.seq + 1)
    );
}

/// Every filter field and paging: by kind, by owner, by both, by expiry (strictly before;
/// never a record without one), after a key with a limit; in kind, owner, key order
/// compared byte by byte (capitals before lowercase, ASCII before other text).
pub async fn record_filters(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    let owners = ["o1", "o/2", "O3"];
    let keys = ["alpha", "Zeta", "_x", "a b", "Ärger", "a"];
    let mut i = 0i64;
    for kind in ["beta", "alpha"] {
        for owner in owners {
            for key in keys {
                let mut record = sample_stored_record(kind, owner, key);
                record.expires_at = match i % 4 {
                    0 => None,
                    _ => Some(Timestamp(1_000 * i)),
                };
                i += 1;
                all.push(record);
            }
        }
    }
    // In three batches, mixed across kinds, with their audit rows.
    for chunk in all.chunks(13) {
        store
            .commit(Batch {
                mutations: chunk.iter().cloned().map(Mutation::create_record).collect(),
                events: vec![record_event(Action::Create, &chunk[0])],
            })
            .await
            .expect("create");
    }
    all.sort_by_key(Record::record_key);
    let filters = [
        RecordFilter::default(),
        RecordFilter::kind("alpha"),
        RecordFilter::kind("gamma"),
        RecordFilter::kind("beta").owner("o/2"),
        RecordFilter::default().owner("O3"),
        RecordFilter::default().expires_before(Timestamp(10_000)),
        RecordFilter::default().expires_before(Timestamp(9_000)),
        RecordFilter::kind("alpha").expired_at(Timestamp(23_000)),
        RecordFilter::default().expires_before(Timestamp(i64::MAX)),
        RecordFilter::kind("beta").limit(5),
        RecordFilter::default().limit(0),
        RecordFilter::default().after(all[7].record_key()).limit(6),
        RecordFilter::kind("alpha")
            .owner("o1")
            .after(all[0].record_key())
            .expires_before(Timestamp(40_000)),
        // A key that is not stored still places the cursor.
        RecordFilter::default().after(RecordKey::new("alpha", "o1", "b").expect("key")),
    ];
    for filter in filters {
        let expected: Vec<_> = all
            .iter()
            .filter(|r| filter.matches(r))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let got = store.records(&filter).await.expect("records");
        assert_eq!(
            got, expected,
            "records({filter:?}) returns matching records in kind, owner, key byte order"
        );
    }
    // A sweeper pages through what has expired, four at a time.
    let now = Timestamp(30_000);
    let due: Vec<_> = all
        .iter()
        .filter(|r| r.is_expired_at(now))
        .cloned()
        .collect();
    assert!(due.len() > 8, "the check pages more than twice");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let mut filter = RecordFilter::default().expired_at(now).limit(4);
        filter.after = after.clone();
        let page = store.records(&filter).await.expect("records");
        let Some(last) = page.last() else { break };
        after = Some(last.record_key());
        paged.extend(page);
    }
    assert_eq!(
        paged, due,
        "paging with expired_at and after visits every expired record once, in order"
    );
}

/// A batch that changes only records (and appends audit rows) does not make a read stamp
/// stale, through either handle: a checked commit with a stamp taken before it lands. A
/// credential change after the stamp still refuses it, on stores that stamp.
pub async fn record_only_batches_keep_stamps(handles: StoreHandles) {
    let (first, second) = (handles.first(), handles.second());
    let scope = Scope::per_user("u1").expect("scope");
    let credential = sample_record("stamped_with_records", scope.clone());
    first
        .commit(put(credential.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    // A stamp proven current: a checked commit with it lands (a store may stamp a read
    // older than its data and refuse it once; the caller reads again).
    let current_stamp = |store: Arc<dyn Store>| {
        let (scope, id) = (scope.clone(), credential.id.clone());
        let probe = event(Action::Reveal, &credential);
        async move {
            for _ in 0..super::FRESH_ATTEMPTS {
                let (_, named) = store
                    .find_named(&scope, "stamped_with_records")
                    .await
                    .expect("find");
                let (_, granted) = store.grants_stamped(&id).await.expect("grants");
                let stamp = named.and(granted);
                match store
                    .commit_checked(Batch::events(vec![probe.clone()]), stamp)
                    .await
                {
                    Ok(_) => return stamp,
                    Err(e) if is_stale(&e) => continue,
                    Err(e) => panic!("a checked commit: {e}"),
                }
            }
            panic!("no read gave a stamp that commits, though nothing changed")
        }
    };
    let stamp_first = current_stamp(first.clone()).await;
    let stamp_second = current_stamp(second.clone()).await;
    let record = sample_stored_record("lease", "refresh", credential.id.as_str());
    let next = record.next_version(Timestamp(1_700_000_000_001));
    for (store, batch) in [
        (
            second,
            one(
                Mutation::create_record(record.clone()),
                record_event(Action::Update, &record),
            ),
        ),
        (
            first,
            Batch {
                mutations: vec![Mutation::update_record(next.clone())],
                events: vec![],
            },
        ),
        (
            second,
            one(
                Mutation::delete_record(&next),
                record_event(Action::Delete, &next),
            ),
        ),
    ] {
        store.commit(batch).await.expect("a record-only batch");
    }
    for (store, stamp, which) in [
        (first, stamp_first, "first"),
        (second, stamp_second, "second"),
    ] {
        store
            .commit_checked(
                Batch::events(vec![event(Action::Reveal, &credential)]),
                stamp,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "record-only batches must not make a stamp stale, but the {which} handle's \
                     checked commit failed: {e}"
                )
            });
    }
    let mut updated = credential.clone();
    updated.version = 2;
    second
        .commit(put(updated, Precondition::IfVersion(1)))
        .await
        .expect("update");
    if stamps(stamp_first) {
        let err = first
            .commit_checked(
                Batch::events(vec![event(Action::Reveal, &credential)]),
                stamp_first,
            )
            .await
            .expect_err("a credential change still makes the stamp stale");
        assert!(is_stale(&err), "{err:?}");
    }
}
