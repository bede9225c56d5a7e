//! Credential checks: round trips, every list filter and paging, preconditions, names
//! unique within a scope, atomic batches, and grants.

use std::sync::Arc;

use super::{event, put, sample_record};
use crate::audit::Action;
use crate::error::{Error, ErrorKind};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Scope, ScopeKind, Timestamp,
};
use crate::store::{Batch, ListFilter, Mutation, Precondition, Store};

/// Create, read back, update with if-version, delete.
pub async fn round_trip(store: Arc<dyn Store>) {
    let scope = Scope::per_user("u1").expect("valid scope");
    let mut record = sample_record("openai_main", scope);
    record.sealed = (0..=255u8).collect();
    record.expires_at = Some(Timestamp(1_900_000_000_123));
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
    updated.expires_at = None;
    store
        .commit(put(updated.clone(), Precondition::IfVersion(1)))
        .await
        .expect("if-version put with the current version succeeds");
    let got = store.get(&record.id).await.expect("get").expect("present");
    assert_eq!(
        got, updated,
        "an update replaces the whole record (expires_at cleared)"
    );
    let by_name = ListFilter {
        scope: Some(updated.scope.clone()),
        name: Some(updated.name.clone()),
        ..ListFilter::default()
    };
    assert_eq!(
        store.list(&by_name).await.expect("list"),
        vec![updated.clone()],
        "a listing reads the same record"
    );

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
        r.handler_type = if i % 4 == 1 { "oauth2" } else { "api_key" }.into();
        // Every third has no expiry; the others expire at 1000, 2000, … (two share 5000).
        r.expires_at = match i {
            _ if i % 3 == 2 => None,
            7 => Some(Timestamp(5_000)),
            _ => Some(Timestamp(1_000 * (i as i64 + 1))),
        };
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
        ListFilter {
            handler_type: Some("oauth2".into()),
            ..Default::default()
        },
        ListFilter {
            expires_before: Some(Timestamp(5_000)),
            ..Default::default()
        },
        ListFilter {
            expires_before: Some(Timestamp(5_001)),
            ..Default::default()
        },
        ListFilter {
            expires_before: Some(Timestamp(i64::MAX)),
            ..Default::default()
        },
        ListFilter {
            expires_before: Some(Timestamp(100_000)),
            handler_type: Some("api_key".into()),
            after_id: Some(all[2].id.clone()),
            limit: Some(3),
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
    // A refresher pages through everything due before 9000, three at a time.
    let due = |r: &&CredentialRecord| r.expires_at.is_some_and(|t| t < Timestamp(9_000));
    let expected: Vec<_> = all.iter().filter(due).cloned().collect();
    assert!(expected.len() > 3, "the check pages more than once");
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ListFilter {
                expires_before: Some(Timestamp(9_000)),
                after_id: after.clone(),
                limit: Some(3),
                ..Default::default()
            })
            .await
            .expect("list");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page);
    }
    assert_eq!(
        paged, expected,
        "paging by expires_before and after_id visits every due credential once, in id order"
    );
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
