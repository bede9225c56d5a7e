//! Freshness: stamped reads, and reads through one handle after another handle changed the
//! data — each either sees the change or refuses a checked commit as stale.

use std::sync::Arc;

use super::{event, put, sample_record, StoreHandles};
use crate::audit::{Action, AuditEvent, ChainHead};
use crate::error::Error;
use crate::model::{CredentialId, CredentialRecord, Grant, LifecycleState, Scope, Timestamp};
use crate::store::{Batch, Mutation, Precondition, ReadStamp, Store};

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
pub(super) fn stamps(stamp: ReadStamp) -> bool {
    stamp.current_at(0).is_some()
}

pub(super) fn is_stale(err: &Error) -> bool {
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
pub(super) const FRESH_ATTEMPTS: usize = 8;

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
/// handles whenever the store can be opened twice (see [`run_all`](super::run_all)).
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
