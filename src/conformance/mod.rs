//! The store conformance suite (feature `conformance`): every `Store` — the bundled ones and
//! any third-party one — must pass it. Each check takes a fresh, empty store and panics with
//! a message naming the broken rule.
//!
//! [`run_all`] takes a factory called once per check. A store that can be opened twice over
//! the same data (another connection, another instance on the same file or database) returns
//! two handles, so that [`fresh_reads_across_handles`] can catch reads that miss the other
//! handle's writes:
//!
//! ```ignore
//! strongroom::conformance::run_all(|| async {
//!     let place = MyStore::fresh_place(); // a new, empty database for this check
//!     let first = Arc::new(MyStore::open(&place).await) as Arc<dyn Store>;
//!     let second = Arc::new(MyStore::open(&place).await) as Arc<dyn Store>;
//!     (first, second)
//! })
//! .await;
//! ```
//!
//! A store whose data lives in the handle itself (nothing else can open it) returns the one
//! handle, `Arc::new(MyStore::new()) as Arc<dyn Store>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::audit::{verify_chain, Action, AuditDigest, AuditEvent, AuditTarget, ChainHead};
use crate::error::{Error, ErrorKind};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Scope, ScopeKind, Timestamp,
};
use crate::store::{Batch, ListFilter, Mutation, Precondition, ReadStamp, Store};

mod records;

pub use records::{
    lease_claimers, record_filters, record_only_batches_keep_stamps, record_preconditions,
    record_round_trip, records_atomic_with_credentials, sample_stored_record,
};

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
        expires_at: None,
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

/// The handles a check runs on: two handles over the same data, `first` and `second`. The
/// checks that need only one use `first`.
///
/// Two handles are two separate openings of one store — another connection, another
/// instance on the same file or database — each with whatever caches an instance keeps.
/// The same handle twice (see [`StoreHandles::single`]) is only honest for a store that
/// cannot be opened twice, such as one whose data lives in the handle itself: through one
/// handle, a cache that misses other writers' changes cannot be told from a fresh read.
#[derive(Debug, Clone)]
pub struct StoreHandles {
    first: Arc<dyn Store>,
    second: Arc<dyn Store>,
}

impl StoreHandles {
    /// Two handles over the same data (separately opened, sharing no cache).
    pub fn pair(first: Arc<dyn Store>, second: Arc<dyn Store>) -> StoreHandles {
        StoreHandles { first, second }
    }

    /// One handle used as both, for a store that cannot be opened twice.
    pub fn single(store: Arc<dyn Store>) -> StoreHandles {
        StoreHandles {
            second: store.clone(),
            first: store,
        }
    }

    /// The handle that reads (and the one the single-handle checks use).
    pub fn first(&self) -> &Arc<dyn Store> {
        &self.first
    }

    /// The handle that changes the data under `first`.
    pub fn second(&self) -> &Arc<dyn Store> {
        &self.second
    }

    /// Are both handles the same object?
    pub fn is_single(&self) -> bool {
        Arc::ptr_eq(&self.first, &self.second)
    }
}

/// One handle used as both ([`StoreHandles::single`]).
impl From<Arc<dyn Store>> for StoreHandles {
    fn from(store: Arc<dyn Store>) -> StoreHandles {
        StoreHandles::single(store)
    }
}

/// Two handles over the same data ([`StoreHandles::pair`]).
impl From<(Arc<dyn Store>, Arc<dyn Store>)> for StoreHandles {
    fn from((first, second): (Arc<dyn Store>, Arc<dyn Store>)) -> StoreHandles {
        StoreHandles::pair(first, second)
    }
}

/// Runs every check, each on a fresh, empty store from `make`.
///
/// `make` returns anything that converts into [`StoreHandles`]: an `Arc<dyn Store>` (one
/// handle, used as both) or `(Arc<dyn Store>, Arc<dyn Store>)` (two handles over the same
/// data; each call of `make` must give a new, empty store, which its two handles share).
///
/// A store that can be opened twice — another connection, another instance on the same file
/// or database — must return two handles: one handle cannot reveal a stale cache, because a
/// store sees its own writes, so a store that serves stale reads to other handles passes
/// [`fresh_reads_across_handles`] through one handle. Only a store that cannot be opened
/// twice (its data lives in the handle, like `MemoryStore`'s) returns one.
pub async fn run_all<F, Fut, H>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
    H: Into<StoreHandles>,
{
    let fresh = || async {
        let handles: StoreHandles = make().await.into();
        handles
    };
    let first_of = |handles: StoreHandles| handles.first;
    round_trip(first_of(fresh().await)).await;
    list_filters(first_of(fresh().await)).await;
    precondition_conflicts(first_of(fresh().await)).await;
    names_unique_within_scope(first_of(fresh().await)).await;
    atomicity(first_of(fresh().await)).await;
    audit_chain(first_of(fresh().await)).await;
    grants(first_of(fresh().await)).await;
    concurrent_commits(first_of(fresh().await), 32, 20).await;
    stamped_reads(first_of(fresh().await)).await;
    fresh_reads_across_handles(fresh().await).await;
    record_round_trip(fresh().await).await;
    record_preconditions(first_of(fresh().await)).await;
    records_atomic_with_credentials(fresh().await).await;
    record_filters(first_of(fresh().await)).await;
    lease_claimers(fresh().await, 32).await;
    record_only_batches_keep_stamps(fresh().await).await;
}

/// Stamped reads: a checked commit lands while nothing changed since the reads, and fails
/// as stale, writing nothing, after a credential or grant change. A store that stamps
/// nothing (its reads are never stale) is held to the rest: reads after a change see it.
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
    let mut updated = record.clone();
    updated.version = 2;
    store
        .commit(put(updated.clone(), Precondition::IfVersion(1)))
        .await
        .expect("update");
    if stamps(stamp) {
        let head = store.chain_head().await.expect("head");
        let err = store
            .commit_checked(Batch::events(vec![event(Action::Reveal, &record)]), stamp)
            .await
            .expect_err("a credential changed after the read: the checked commit must fail");
        assert!(
            is_stale(&err),
            "stale reads fail with StoreErrorKind::Stale, got {err:?}"
        );
        assert_eq!(
            store.chain_head().await.expect("head"),
            head,
            "a stale commit writes nothing"
        );
    }
    let (found, stamp) = store.find_named(&scope, "stamped").await.expect("find");
    assert_eq!(
        found.map(|r| r.version),
        Some(2),
        "a read after the change sees it"
    );
    let (grants, grants_stamp) = store.grants_stamped(&record.id).await.expect("grants");
    assert!(grants.is_empty(), "no grants yet");
    let both = stamp.and(grants_stamp);
    let grant = Grant {
        credential_id: record.id.clone(),
        app: "crm".into(),
        granted_by: "u1".into(),
        granted_at: Timestamp(1_000),
        revoked_at: None,
        revoked_by: None,
    };
    store
        .commit(Batch {
            mutations: vec![Mutation::PutGrant {
                grant: grant.clone(),
            }],
            events: vec![],
        })
        .await
        .expect("grant");
    if stamps(both) {
        let err = store
            .commit_checked(Batch::events(vec![event(Action::Reveal, &record)]), both)
            .await
            .expect_err("a grant changed after the read: the checked commit must fail");
        assert!(is_stale(&err), "{err:?}");
    }
    let (grants, _) = store.grants_stamped(&record.id).await.expect("grants");
    assert_eq!(grants, vec![grant], "a read after the grant change sees it");
}

/// Does `stamp` check anything (or is it [`ReadStamp::UNCHECKED`])?
fn stamps(stamp: ReadStamp) -> bool {
    stamp.current_at(0).is_some()
}

fn is_stale(err: &Error) -> bool {
    matches!(
        err,
        Error::Store {
            kind: crate::StoreErrorKind::Stale,
            ..
        }
    )
}

/// How many read-and-commit rounds [`fresh_reads_across_handles`] allows `first` to reach a
/// read that is current and commits (a store may refuse a current read whose stamp is older
/// than its data; the caller reads again).
const FRESH_ATTEMPTS: usize = 8;

/// Freshness across handles, for every store: `second` changes a credential that `first`
/// has just read by name, with its grants (warming any cache): it creates it, writes a new
/// version, adds a grant, revokes it, deletes it, adds another, and deletes the credential.
/// After each change `first` reads again and must either see the change, or — if it returns
/// the old record or grants — refuse a checked commit of an audit event with that read's
/// stamp as [`StoreErrorKind::Stale`](crate::StoreErrorKind::Stale), writing nothing; after
/// a refusal, reading again must soon give the change. A stamp taken before the change never
/// lets a checked commit through. A store that stamps nothing is held to the same rule, so
/// it must simply read fresh.
///
/// With [`StoreHandles::single`] this checks only that a store sees its own writes: pass two
/// handles whenever the store can be opened twice (see [`run_all`]).
pub async fn fresh_reads_across_handles(handles: StoreHandles) {
    let (first, second) = (handles.first.as_ref(), handles.second.as_ref());
    let scope = Scope::per_user("u1").expect("scope");
    let record = sample_record("seen_by_both", scope.clone());
    let target = Target {
        scope,
        name: record.name.clone(),
        id: record.id.clone(),
        probe: event(Action::Reveal, &record),
    };
    let mut now = View::default();

    let mut next = now.clone();
    next.record = Some(record.clone());
    target
        .change(
            first,
            second,
            &now,
            put(record.clone(), Precondition::CreateOnly),
            &next,
            "created the credential",
        )
        .await;
    now = next;

    let mut updated = record.clone();
    updated.version = 2;
    updated.state = LifecycleState::Valid;
    updated.metadata.insert("label".into(), "second".into());
    updated.sealed = vec![6, 7, 8];
    let mut next = now.clone();
    next.record = Some(updated.clone());
    target
        .change(
            first,
            second,
            &now,
            put(updated.clone(), Precondition::IfVersion(1)),
            &next,
            "wrote a new version",
        )
        .await;
    now = next;

    let grant = |app: &str| Grant {
        credential_id: record.id.clone(),
        app: app.to_string(),
        granted_by: "u1".into(),
        granted_at: Timestamp(1_000),
        revoked_at: None,
        revoked_by: None,
    };
    let grant_batch = |mutation: Mutation, action: Action| Batch {
        mutations: vec![mutation],
        events: vec![event(action, &record)],
    };
    let mut next = now.clone();
    next.grants = vec![grant("crm")];
    target
        .change(
            first,
            second,
            &now,
            grant_batch(
                Mutation::PutGrant {
                    grant: grant("crm"),
                },
                Action::GrantAdd,
            ),
            &next,
            "added a grant",
        )
        .await;
    now = next;

    let mut revoked = grant("crm");
    revoked.revoked_at = Some(Timestamp(2_000));
    revoked.revoked_by = Some("u1".into());
    let mut next = now.clone();
    next.grants = vec![revoked.clone()];
    target
        .change(
            first,
            second,
            &now,
            grant_batch(Mutation::PutGrant { grant: revoked }, Action::GrantRevoke),
            &next,
            "revoked a grant",
        )
        .await;
    now = next;

    let mut next = now.clone();
    next.grants = vec![];
    target
        .change(
            first,
            second,
            &now,
            grant_batch(
                Mutation::DeleteGrant {
                    credential_id: record.id.clone(),
                    app: "crm".into(),
                },
                Action::GrantRevoke,
            ),
            &next,
            "deleted a grant",
        )
        .await;
    now = next;

    let mut next = now.clone();
    next.grants = vec![grant("blog")];
    target
        .change(
            first,
            second,
            &now,
            grant_batch(
                Mutation::PutGrant {
                    grant: grant("blog"),
                },
                Action::GrantAdd,
            ),
            &next,
            "added another grant",
        )
        .await;
    now = next;

    target
        .change(
            first,
            second,
            &now,
            Batch {
                mutations: vec![Mutation::Delete {
                    id: record.id.clone(),
                    precondition: Precondition::IfVersion(2),
                }],
                events: vec![event(Action::Delete, &record)],
            },
            &View::default(),
            "deleted the credential (and with it its grant)",
        )
        .await;
}

/// The credential [`fresh_reads_across_handles`] watches, and the event `first` commits.
struct Target {
    scope: Scope,
    name: String,
    id: CredentialId,
    probe: AuditEvent,
}

/// What a handle reads of the watched credential: the record by name, and its grants.
#[derive(Debug, Clone, Default, PartialEq)]
struct View {
    record: Option<CredentialRecord>,
    grants: Vec<Grant>,
}

impl Target {
    /// Reads the view through `store`, with the combined stamp of both reads.
    async fn read(&self, store: &dyn Store) -> (View, ReadStamp) {
        let (record, named) = store
            .find_named(&self.scope, &self.name)
            .await
            .expect("find_named");
        let (grants, granted) = store
            .grants_stamped(&self.id)
            .await
            .expect("grants_stamped");
        let view = View {
            record: record.map(|r| (*r).clone()),
            grants,
        };
        (view, named.and(granted))
    }

    /// The chain head as each handle sees it.
    async fn heads(&self, first: &dyn Store, second: &dyn Store) -> [Option<ChainHead>; 2] {
        [
            first.chain_head().await.expect("chain_head"),
            second.chain_head().await.expect("chain_head"),
        ]
    }

    /// `first` reads the view (twice, so a cache serves the second read), `second` commits
    /// `batch` (which makes the view `after`), then `first` must see it or refuse.
    async fn change(
        &self,
        first: &dyn Store,
        second: &dyn Store,
        before: &View,
        batch: Batch,
        after: &View,
        change: &str,
    ) {
        let mut stamps_before = Vec::new();
        for _ in 0..2 {
            let (seen, stamp) = self.read(first).await;
            assert_eq!(
                &seen, before,
                "before the second handle {change}, the first reads the current data"
            );
            stamps_before.push(stamp);
        }
        second
            .commit(batch)
            .await
            .unwrap_or_else(|e| panic!("the second handle {change}: {e}"));
        self.sees_or_refuses(first, second, after, change).await;
        // A stamp taken before the change must never let a commit through.
        for stamp in stamps_before.into_iter().filter(|s| stamps(*s)) {
            let heads = self.heads(first, second).await;
            match first
                .commit_checked(Batch::events(vec![self.probe.clone()]), stamp)
                .await
            {
                Ok(_) => panic!(
                    "the second handle {change}, yet a checked commit on the first with a stamp \
                     taken before the change landed: a stamp must be refused once any \
                     credential or grant changed after its read"
                ),
                Err(e) => assert!(
                    is_stale(&e),
                    "a stamp older than a change fails with StoreErrorKind::Stale, got {e:?}"
                ),
            }
            assert_eq!(
                self.heads(first, second).await,
                heads,
                "a stale commit writes nothing"
            );
        }
    }

    /// After `second` changed the data to `after`: `first` reads; a read that is not `after`
    /// must be refused by a checked commit with its stamp, writing nothing; a read that is
    /// `after` commits (or, stamped older than its data, is refused and read again).
    async fn sees_or_refuses(
        &self,
        first: &dyn Store,
        second: &dyn Store,
        after: &View,
        change: &str,
    ) {
        let mut last = None;
        for _ in 0..FRESH_ATTEMPTS {
            let (seen, stamp) = self.read(first).await;
            let heads = self.heads(first, second).await;
            let outcome = first
                .commit_checked(Batch::events(vec![self.probe.clone()]), stamp)
                .await;
            match outcome {
                Ok(_) if seen == *after => return,
                Ok(_) => panic!(
                    "the second handle {change}, but the first handle read\n{seen:#?}\ninstead \
                     of\n{after:#?}\nand a checked commit with that read's stamp landed: a \
                     store whose reads may be stale must stamp them (find_named, \
                     grants_stamped) and refuse a stale stamp in commit_checked \
                     (StoreErrorKind::Stale)"
                ),
                Err(e) if is_stale(&e) => {
                    assert_eq!(
                        self.heads(first, second).await,
                        heads,
                        "a stale commit writes nothing"
                    );
                }
                Err(e) => panic!("a checked commit after the second handle {change}: {e}"),
            }
            last = Some(seen);
        }
        panic!(
            "the second handle {change}; after {FRESH_ATTEMPTS} rounds of reading and a \
             checked commit refused as stale, the first handle still did not read the \
             change with a stamp that commits (last read: {last:#?}, expected: {after:#?})"
        );
    }
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
