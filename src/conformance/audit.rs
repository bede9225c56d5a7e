//! Audit checks: consecutive sequence numbers, chaining and paging, and concurrent commits
//! that lose no update and leave no gap.

use std::sync::Arc;

use super::{event, put, sample_record};
use crate::audit::{verify_chain, Action, AuditDigest, AuditEvent, AuditTarget};
use crate::error::Error;
use crate::model::Scope;
use crate::store::{Batch, Mutation, Precondition, Store};

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

/// [`Store::audit_query`] returns exactly the rows [`AuditQuery::matches`](crate::store::AuditQuery::matches) keeps, in `seq`
/// order (or reverse), capped by the limit, and pages through the log by the `seq` cursor:
/// every filter alone and combined, each compared with the provided scan
/// ([`audit_query_by_scan`](crate::store::audit_query_by_scan)) and with a filter over every row.
pub async fn audit_queries(store: Arc<dyn Store>) {
    use crate::audit::Outcome;
    use crate::model::{CredentialId, Timestamp};
    use crate::store::{audit_query_by_scan, AuditQuery};

    let a = sample_record("a", Scope::SystemWide);
    let b = sample_record("b", Scope::per_user("u1").expect("scope"));
    let actions = [
        Action::Create,
        Action::Reveal,
        Action::Update,
        Action::Delete,
    ];
    let outcomes = [Outcome::Success, Outcome::Denied, Outcome::Failure];
    let base = Timestamp(1_700_000_000_000);
    let mut n = 0i64;
    for round in 0..7 {
        let events = (0..5)
            .map(|i| {
                n += 1;
                let target = match (round + i) % 3 {
                    0 => AuditTarget::credential(&a.id, &a.scope),
                    1 => AuditTarget::credential(&b.id, &b.scope),
                    _ => AuditTarget::none(),
                };
                AuditEvent::new(format!("actor{}", n % 4), actions[(n % 4) as usize], target)
                    .outcome(outcomes[(n % 3) as usize])
                    .detail("n", n.to_string())
                    .at(Timestamp(base.0 + n * 60_000))
            })
            .collect();
        store.commit(Batch::events(events)).await.expect("commit");
    }
    let all = store.audit_range(1, 1000).await.expect("all rows");
    assert_eq!(all.len(), 35);
    let unknown = CredentialId::generate();
    let filters = [
        AuditQuery::default(),
        AuditQuery {
            credential_id: Some(a.id.clone()),
            ..AuditQuery::default()
        },
        AuditQuery {
            credential_id: Some(unknown),
            ..AuditQuery::default()
        },
        AuditQuery {
            actor: Some("actor2".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            action: Some(Action::Reveal),
            ..AuditQuery::default()
        },
        AuditQuery {
            outcome: Some(Outcome::Denied),
            ..AuditQuery::default()
        },
        AuditQuery {
            since: Some(Timestamp(base.0 + 10 * 60_000)),
            until: Some(Timestamp(base.0 + 20 * 60_000)),
            ..AuditQuery::default()
        },
        AuditQuery {
            credential_id: Some(b.id.clone()),
            outcome: Some(Outcome::Success),
            since: Some(Timestamp(base.0 + 3 * 60_000)),
            ..AuditQuery::default()
        },
        AuditQuery {
            after: Some(30),
            ..AuditQuery::default()
        },
        AuditQuery {
            after: Some(5),
            before: Some(12),
            ..AuditQuery::default()
        },
    ];
    for filter in filters {
        for newest_first in [false, true] {
            for limit in [0, 1, 3, 100] {
                let query = AuditQuery {
                    newest_first,
                    limit,
                    ..filter.clone()
                };
                let mut expected: Vec<_> =
                    all.iter().filter(|r| query.matches(r)).cloned().collect();
                if newest_first {
                    expected.reverse();
                }
                expected.truncate(limit);
                let got = store.audit_query(&query).await.expect("audit query");
                assert_eq!(
                    got.iter().map(|r| r.seq).collect::<Vec<_>>(),
                    expected.iter().map(|r| r.seq).collect::<Vec<_>>(),
                    "audit_query({query:?})"
                );
                assert_eq!(got, expected, "rows read back whole: {query:?}");
                let scanned = audit_query_by_scan(store.as_ref(), &query)
                    .await
                    .expect("scan");
                assert_eq!(
                    got, scanned,
                    "the store agrees with the provided scan: {query:?}"
                );
            }
        }
    }
    // Paging by the cursor visits every matching row once, in both directions.
    for newest_first in [false, true] {
        let mut seen = Vec::new();
        let mut query = AuditQuery {
            credential_id: Some(a.id.clone()),
            newest_first,
            limit: 4,
            ..AuditQuery::default()
        };
        loop {
            let page = store.audit_query(&query).await.expect("page");
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            seen.extend(page.iter().map(|r| r.seq));
            if newest_first {
                query.before = Some(last);
            } else {
                query.after = Some(last);
            }
        }
        let mut expected: Vec<u64> = all
            .iter()
            .filter(|r| r.event.target.credential_id.as_ref() == Some(&a.id))
            .map(|r| r.seq)
            .collect();
        if newest_first {
            expected.reverse();
        }
        assert_eq!(seen, expected, "paging (newest first: {newest_first})");
    }
}
