//! The store conformance suite (feature `conformance`): every `Store` — the bundled ones and
//! any third-party one — must pass it. Each check takes a fresh, empty store and panics with
//! a message naming the broken rule.
//!
//! ```ignore
//! strongroom::conformance::run_all(|| async { Arc::new(MyStore::new()) as Arc<dyn Store> }).await;
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::audit::{verify_chain, Action, AuditDigest, AuditEvent, AuditTarget};
use crate::error::{Error, ErrorKind};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Scope, ScopeKind, Timestamp,
};
use crate::store::{Batch, ListFilter, Mutation, Precondition, Store};

/// A plausible record (its `sealed` bytes are opaque to stores, so they are not real).
pub fn sample_record(name: &str, scope: Scope) -> CredentialRecord {
    let now = Timestamp::now();
    CredentialRecord {
        id: CredentialId::generate(),
        name: name.to_string(),
        scope,
        provider: "openai".into(),
        handler_type: "api_key".into(),
        state: LifecycleState::Filled,
        metadata: BTreeMap::from([("label".to_string(), name.to_string())]),
        agent_accessible: false,
        version: 1,
        created_at: now,
        updated_at: now,
        key_id: "local:0000000000000000".into(),
        sealed: vec![1, 2, 3, 4, 5],
    }
}

fn event(action: Action, record: &CredentialRecord) -> AuditEvent {
    AuditEvent::new(
        "conformance",
        action,
        AuditTarget::credential(&record.id, &record.scope),
    )
    .detail("name", record.name.clone())
}

fn put(record: CredentialRecord, precondition: Precondition) -> Batch {
    let action = match precondition {
        Precondition::CreateOnly => Action::Create,
        _ => Action::Update,
    };
    let ev = event(action, &record);
    Batch {
        mutations: vec![Mutation::Put {
            record,
            precondition,
        }],
        events: vec![ev],
    }
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    round_trip(make().await).await;
    list_filters(make().await).await;
    precondition_conflicts(make().await).await;
    names_unique_within_scope(make().await).await;
    atomicity(make().await).await;
    audit_chain(make().await).await;
    grants(make().await).await;
    concurrent_commits(make().await, 32, 20).await;
    stamped_reads(make().await).await;
}

/// Stamped reads: a checked commit lands while nothing changed since the reads, and fails
/// as stale, writing nothing, after a credential or grant change. (A store whose reads are
/// never stale may stamp nothing; then checked commits always land.)
pub async fn stamped_reads(store: Arc<dyn Store>) {
    let scope = Scope::per_user("u1").expect("scope");
    let record = sample_record("stamped", scope.clone());
    store
        .commit(put(record.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let (found, stamp) = store.find_named(&scope, "stamped").await.expect("find");
    assert_eq!(
        found.as_ref().map(|r| &r.id),
        Some(&record.id),
        "find_named finds it"
    );
    let (none, _) = store
        .find_named(&Scope::SystemWide, "stamped")
        .await
        .expect("find");
    assert!(none.is_none(), "find_named is scope-strict");
    store
        .commit_checked(Batch::events(vec![event(Action::Reveal, &record)]), stamp)
        .await
        .expect("nothing changed: the checked commit lands");
    if stamp.current_at(i64::MIN).is_none() {
        return; // this store stamps nothing
    }
    let mut updated = record.clone();
    updated.version = 2;
    store
        .commit(put(updated.clone(), Precondition::IfVersion(1)))
        .await
        .expect("update");
    let head = store.chain_head().await.expect("head");
    let err = store
        .commit_checked(Batch::events(vec![event(Action::Reveal, &record)]), stamp)
        .await
        .expect_err("a credential changed after the read: the checked commit must fail");
    assert!(
        matches!(
            err,
            Error::Store {
                kind: crate::StoreErrorKind::Stale,
                ..
            }
        ),
        "stale reads fail with StoreErrorKind::Stale, got {err:?}"
    );
    assert_eq!(
        store.chain_head().await.expect("head"),
        head,
        "a stale commit writes nothing"
    );
    let (found, stamp) = store.find_named(&scope, "stamped").await.expect("find");
    assert_eq!(
        found.map(|r| r.version),
        Some(2),
        "a read after the change sees it"
    );
    let (_, grants_stamp) = store.grants_stamped(&record.id).await.expect("grants");
    let both = stamp.and(grants_stamp);
    store
        .commit(Batch {
            mutations: vec![Mutation::PutGrant {
                grant: Grant {
                    credential_id: record.id.clone(),
                    app: "crm".into(),
                    granted_by: "u1".into(),
                    granted_at: Timestamp(1_000),
                    revoked_at: None,
                    revoked_by: None,
                },
            }],
            events: vec![],
        })
        .await
        .expect("grant");
    let err = store
        .commit_checked(Batch::events(vec![event(Action::Reveal, &record)]), both)
        .await
        .expect_err("a grant changed after the read: the checked commit must fail");
    assert!(
        matches!(
            err,
            Error::Store {
                kind: crate::StoreErrorKind::Stale,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Grants: put, revoke (kept), hard delete, cascade on credential delete, atomic undo.
pub async fn grants(store: Arc<dyn Store>) {
    let record = sample_record("shared_key", Scope::per_user("u1").expect("scope"));
    store
        .commit(put(record.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let grant = |app: &str| Grant {
        credential_id: record.id.clone(),
        app: app.to_string(),
        granted_by: "u1".into(),
        granted_at: Timestamp(1_000),
        revoked_at: None,
        revoked_by: None,
    };
    let commit = |mutations: Vec<Mutation>| {
        let store = store.clone();
        async move {
            store
                .commit(Batch {
                    mutations,
                    events: vec![],
                })
                .await
        }
    };
    commit(vec![
        Mutation::PutGrant {
            grant: grant("crm"),
        },
        Mutation::PutGrant {
            grant: grant("blog"),
        },
    ])
    .await
    .expect("grants");
    let mut revoked = grant("crm");
    revoked.revoked_at = Some(Timestamp(2_000));
    revoked.revoked_by = Some("u1".into());
    commit(vec![Mutation::PutGrant {
        grant: revoked.clone(),
    }])
    .await
    .expect("revoke");
    assert_eq!(
        store.grants(&record.id).await.expect("grants"),
        vec![grant("blog"), revoked],
        "grants list in app order, revoked ones kept"
    );
    let missing = CredentialId::generate();
    let mut orphan = grant("crm");
    orphan.credential_id = missing.clone();
    let err = commit(vec![Mutation::PutGrant { grant: orphan }])
        .await
        .expect_err("a grant needs its credential");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A failing batch undoes its grant changes.
    let err = commit(vec![
        Mutation::DeleteGrant {
            credential_id: record.id.clone(),
            app: "blog".into(),
        },
        Mutation::DeleteGrant {
            credential_id: record.id.clone(),
            app: "nope".into(),
        },
    ])
    .await
    .expect_err("deleting a missing grant fails");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(store.grants(&record.id).await.expect("grants").len(), 2);
    commit(vec![Mutation::DeleteGrant {
        credential_id: record.id.clone(),
        app: "blog".into(),
    }])
    .await
    .expect("hard revoke");
    assert_eq!(store.grants(&record.id).await.expect("grants").len(), 1);
    commit(vec![Mutation::Delete {
        id: record.id.clone(),
        precondition: Precondition::None,
    }])
    .await
    .expect("delete credential");
    assert!(
        store.grants(&record.id).await.expect("grants").is_empty(),
        "deleting a credential deletes its grants"
    );
}

/// Create, read back, update with if-version, delete.
pub async fn round_trip(store: Arc<dyn Store>) {
    let scope = Scope::per_user("u1").expect("valid scope");
    let mut record = sample_record("openai_main", scope);
    record.sealed = (0..=255u8).collect();
    store
        .commit(put(record.clone(), Precondition::CreateOnly))
        .await
        .expect("create-only put of a new record succeeds");
    let got = store
        .get(&record.id)
        .await
        .expect("get succeeds")
        .expect("the record is there");
    assert_eq!(got, record, "a record reads back exactly as written");

    let mut updated = record.clone();
    updated.version = 2;
    updated.state = LifecycleState::Valid;
    updated.metadata.insert("account".into(), "acme".into());
    updated.sealed = vec![9; 40];
    store
        .commit(put(updated.clone(), Precondition::IfVersion(1)))
        .await
        .expect("if-version put with the current version succeeds");
    let got = store.get(&record.id).await.expect("get").expect("present");
    assert_eq!(got, updated, "an update replaces the whole record");

    store
        .commit(Batch {
            mutations: vec![Mutation::Delete {
                id: record.id.clone(),
                precondition: Precondition::IfVersion(2),
            }],
            events: vec![event(Action::Delete, &record)],
        })
        .await
        .expect("if-version delete succeeds");
    assert!(
        store.get(&record.id).await.expect("get").is_none(),
        "a deleted record is gone"
    );
    assert!(store
        .get(&CredentialId::generate())
        .await
        .expect("get")
        .is_none());
}

/// Every filter field, and paging with `after_id` + `limit`.
pub async fn list_filters(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    for i in 0..12 {
        let scope = match i % 3 {
            0 => Scope::SystemWide,
            1 => Scope::per_user(format!("user{}", i % 2)).expect("scope"),
            _ => Scope::per_app_per_user("app", format!("user{}", i % 2)).expect("scope"),
        };
        let mut r = sample_record(&format!("cred{i}"), scope);
        r.provider = if i % 2 == 0 { "openai" } else { "stripe" }.into();
        r.state = if i < 6 {
            LifecycleState::Filled
        } else {
            LifecycleState::Valid
        };
        r.key_id = if i < 4 { "old-key" } else { "new-key" }.into();
        all.push(r.clone());
        store
            .commit(put(r, Precondition::CreateOnly))
            .await
            .expect("create");
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let filters = [
        ListFilter::default(),
        ListFilter::in_scope(Scope::SystemWide),
        ListFilter::in_scope(Scope::per_user("user1").expect("scope")),
        ListFilter {
            scope_kind: Some(ScopeKind::PerAppPerUser),
            ..Default::default()
        },
        ListFilter {
            provider: Some("stripe".into()),
            state: Some(LifecycleState::Valid),
            ..Default::default()
        },
        ListFilter {
            name: Some("cred5".into()),
            ..Default::default()
        },
        ListFilter {
            key_id: Some("old-key".into()),
            ..Default::default()
        },
        ListFilter {
            key_id_not: Some("new-key".into()),
            limit: Some(3),
            ..Default::default()
        },
        ListFilter {
            after_id: Some(all[4].id.clone()),
            limit: Some(5),
            ..Default::default()
        },
    ];
    for filter in filters {
        let expected: Vec<_> = all
            .iter()
            .filter(|r| filter.matches(r))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let got = store.list(&filter).await.expect("list");
        assert_eq!(
            got, expected,
            "list({filter:?}) returns matching records in id order"
        );
    }
}

/// Create-only, if-version and delete preconditions fail with typed errors.
pub async fn precondition_conflicts(store: Arc<dyn Store>) {
    let record = sample_record("dup", Scope::SystemWide);
    store
        .commit(put(record.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let err = store
        .commit(put(record.clone(), Precondition::CreateOnly))
        .await
        .expect_err("a second create-only put fails");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    let mut stale = record.clone();
    stale.version = 2;
    let err = store
        .commit(put(stale.clone(), Precondition::IfVersion(7)))
        .await
        .expect_err("a stale if-version put fails");
    match err {
        Error::VersionConflict {
            expected, found, ..
        } => {
            assert_eq!((expected, found), (7, Some(1)));
        }
        other => panic!("expected a version conflict, got {other}"),
    }
    let missing = sample_record("missing", Scope::SystemWide);
    let err = store
        .commit(put(missing.clone(), Precondition::IfVersion(1)))
        .await
        .expect_err("if-version on a missing record fails");
    assert!(
        matches!(err, Error::VersionConflict { found: None, .. }),
        "{err}"
    );

    let err = store
        .commit(Batch {
            mutations: vec![Mutation::Delete {
                id: missing.id.clone(),
                precondition: Precondition::None,
            }],
            events: vec![],
        })
        .await
        .expect_err("deleting a missing record fails");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = store
        .commit(Batch {
            mutations: vec![Mutation::Delete {
                id: record.id.clone(),
                precondition: Precondition::IfVersion(5),
            }],
            events: vec![],
        })
        .await
        .expect_err("a stale if-version delete fails");
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    assert_eq!(
        store.get(&record.id).await.expect("get"),
        Some(record),
        "failed writes left the record untouched"
    );
    assert_eq!(
        store.chain_head().await.expect("head").map(|h| h.seq),
        Some(1),
        "failed commits appended no audit rows"
    );
}

/// A name is unique within one scope and owner, and free in every other.
pub async fn names_unique_within_scope(store: Arc<dyn Store>) {
    let u1 = Scope::per_user("u1").expect("scope");
    let first = sample_record("main", u1.clone());
    store
        .commit(put(first.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let err = store
        .commit(put(
            sample_record("main", u1.clone()),
            Precondition::CreateOnly,
        ))
        .await
        .expect_err("a second `main` in the same scope fails");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    for scope in [
        Scope::SystemWide,
        Scope::per_user("u2").expect("scope"),
        Scope::per_app_per_user("app", "u1").expect("scope"),
        Scope::per_app_shared("u1").expect("scope"),
        Scope::per_agent("u1").expect("scope"),
    ] {
        store
            .commit(put(
                sample_record("main", scope.clone()),
                Precondition::CreateOnly,
            ))
            .await
            .unwrap_or_else(|e| panic!("`main` in {scope} is allowed: {e}"));
    }
    // Renaming frees the old name.
    let mut renamed = first.clone();
    renamed.name = "renamed".into();
    renamed.version = 2;
    store
        .commit(put(renamed, Precondition::IfVersion(1)))
        .await
        .expect("rename");
    store
        .commit(put(sample_record("main", u1), Precondition::CreateOnly))
        .await
        .expect("the old name is free again after a rename");
}

/// A batch whose second mutation fails leaves neither its first mutation nor its audit rows.
pub async fn atomicity(store: Arc<dyn Store>) {
    let existing = sample_record("existing", Scope::SystemWide);
    store
        .commit(put(existing.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let head_before = store.chain_head().await.expect("head");
    let fresh = sample_record("fresh", Scope::SystemWide);
    let mut stale = existing.clone();
    stale.version = 9;
    stale.sealed = vec![0xEE; 8];
    let err = store
        .commit(Batch {
            mutations: vec![
                Mutation::Put {
                    record: fresh.clone(),
                    precondition: Precondition::CreateOnly,
                },
                Mutation::Delete {
                    id: existing.id.clone(),
                    precondition: Precondition::None,
                },
                Mutation::Put {
                    record: stale,
                    precondition: Precondition::IfVersion(8),
                },
            ],
            events: vec![
                event(Action::Create, &fresh),
                event(Action::Delete, &existing),
            ],
        })
        .await
        .expect_err("the batch fails on its last precondition");
    assert_eq!(err.kind(), ErrorKind::VersionConflict, "{err}");
    assert!(
        store.get(&fresh.id).await.expect("get").is_none(),
        "first put undone"
    );
    assert_eq!(
        store.get(&existing.id).await.expect("get"),
        Some(existing.clone()),
        "delete undone"
    );
    assert_eq!(
        store.chain_head().await.expect("head"),
        head_before,
        "no audit rows"
    );
    assert_eq!(store.audit_range(1, 100).await.expect("audit").len(), 1);
    // The name taken by the undone put is free.
    store
        .commit(put(
            sample_record("fresh", Scope::SystemWide),
            Precondition::CreateOnly,
        ))
        .await
        .expect("name of an undone put is free");
}

/// Events get consecutive sequence numbers from 1, chain correctly and page by range, and
/// every action reads back as written.
pub async fn audit_chain(store: Arc<dyn Store>) {
    assert_eq!(store.chain_head().await.expect("head"), None, "empty chain");
    let r = sample_record("x", Scope::SystemWide);
    let mut last = 0;
    let mut actions = Action::ALL.into_iter().cycle();
    for n in 1..=5usize {
        let events = (0..n)
            .map(|_| event(actions.next().expect("cycles"), &r))
            .collect();
        let receipt = store.commit(Batch::events(events)).await.expect("commit");
        let (first, end) = receipt.seqs.expect("seqs");
        assert_eq!(
            (first, end),
            (last + 1, last + n as u64),
            "consecutive seqs"
        );
        assert_eq!(receipt.head.map(|h| h.seq), Some(end));
        last = end;
    }
    let receipt = store.commit(Batch::default()).await.expect("empty commit");
    assert_eq!(receipt.seqs, None);
    let all = store.audit_range(1, 1000).await.expect("audit");
    assert_eq!(all.len(), 15);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
    for (row, action) in all.iter().zip(Action::ALL.into_iter().cycle()) {
        assert_eq!(
            row.event.action, action,
            "row {} reads back its action",
            row.seq
        );
    }
    assert_eq!(
        store.audit_range(4, 3).await.expect("range"),
        all[3..6].to_vec()
    );
    assert!(store
        .audit_range(16, 10)
        .await
        .expect("past end")
        .is_empty());
    let head = store.chain_head().await.expect("head").expect("non-empty");
    assert_eq!((head.seq, head.hash), (15, all[14].hash));
    let report = verify_chain(store.as_ref()).await.expect("verify");
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.rows, 15);
    let digests = store.audit_digests(3, 10).await.expect("digests");
    let expected: Vec<AuditDigest> = all[2..12].iter().map(AuditDigest::of).collect();
    assert_eq!(digests, expected, "audit_digests agrees with audit_range");
}

/// `tasks` tasks each make `rounds` read-modify-write increments of one shared counter
/// (if-version, retried on conflict) plus one audit event per commit: no update may be
/// lost and the audit sequence may have no gap.
pub async fn concurrent_commits(store: Arc<dyn Store>, tasks: usize, rounds: usize) {
    let counter = sample_record("counter", Scope::SystemWide);
    store
        .commit(put(counter.clone(), Precondition::CreateOnly))
        .await
        .expect("create");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let id = counter.id.clone();
        handles.push(tokio::spawn(async move {
            let mut commits = 0u64;
            for _ in 0..rounds {
                loop {
                    let current = store.get(&id).await.expect("get").expect("present");
                    let count: u64 = current.metadata["label"].parse().unwrap_or(0);
                    let mut next = current.clone();
                    next.version += 1;
                    next.metadata
                        .insert("label".into(), (count + 1).to_string());
                    let ev =
                        AuditEvent::new(format!("task{t}"), Action::Update, AuditTarget::none());
                    match store
                        .commit(Batch {
                            mutations: vec![Mutation::Put {
                                record: next,
                                precondition: Precondition::IfVersion(current.version),
                            }],
                            events: vec![ev],
                        })
                        .await
                    {
                        Ok(_) => {
                            commits += 1;
                            break;
                        }
                        Err(Error::VersionConflict { .. }) => continue,
                        Err(e) => panic!("unexpected commit error: {e}"),
                    }
                }
                // An independent audited write that never conflicts.
                store
                    .commit(Batch::events(vec![AuditEvent::new(
                        format!("task{t}"),
                        Action::Reveal,
                        AuditTarget::none(),
                    )]))
                    .await
                    .expect("event-only commit");
                commits += 1;
            }
            commits
        }));
    }
    let mut total = 1u64;
    for h in handles {
        total += h.await.expect("task");
    }
    let final_record = store.get(&counter.id).await.expect("get").expect("present");
    let expected = (tasks * rounds) as u64;
    assert_eq!(
        final_record.metadata["label"],
        expected.to_string(),
        "no lost update"
    );
    assert_eq!(final_record.version, 1 + expected);
    let head = store.chain_head().await.expect("head").expect("non-empty");
    assert_eq!(head.seq, total, "one audit row per successful commit");
    let report = verify_chain(store.as_ref()).await.expect("verify");
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.rows, total, "no gap in sequence numbers");
}
