//! Lease checks: concurrent claimers split across two handles, exactly one winner each
//! round, and a holder that lost its lease unable to commit the work it guarded.

use std::sync::Arc;
use std::time::Duration;

use super::{event, sample_record, StoreHandles};
use crate::audit::{Action, AuditEvent, AuditTarget};
use crate::model::{LifecycleState, RecordKey, Scope, Timestamp};
use crate::store::lease::Lease;
use crate::store::{Batch, Mutation, Precondition};

/// `claimers` tasks, split across both handles, claim one lease at once: exactly one wins,
/// the others lose the race with a typed error and write nothing. Once it expires, they all
/// try again with if-version: again exactly one wins. The holder that lost its lease cannot
/// commit the work it guarded (its release fails the batch); the new holder can.
pub async fn lease_claimers(handles: StoreHandles, claimers: usize) {
    let key = Lease::key("refresh", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").expect("key");
    let ttl = Duration::from_secs(60);
    let start = Timestamp::now();
    let head = handles.first().chain_head().await.expect("head");

    let winners = claim_round(&handles, &key, claimers, start, ttl, "a").await;
    assert_eq!(
        winners.len(),
        1,
        "{claimers} claimers of a free lease: exactly one wins, got {:?}",
        winners.iter().map(|l| l.holder()).collect::<Vec<_>>()
    );
    let first_holder = winners[0].clone();
    for store in [handles.first(), handles.second()] {
        let stored = store.record(&key).await.expect("record").expect("claimed");
        let lease = Lease::from_record(stored).expect("a lease");
        assert_eq!(
            (lease.holder(), lease.version(), lease.expires_at()),
            (first_holder.holder(), 1, start.saturating_add(ttl)),
            "the winner holds it, as either handle reads"
        );
    }
    let stored = handles.second().record(&key).await.expect("record");
    assert!(
        Lease::claim(&key, stored.as_ref(), "latecomer", start, ttl)
            .expect("claim")
            .is_none(),
        "a held lease is not claimable before it expires"
    );
    assert_eq!(
        handles
            .first()
            .chain_head()
            .await
            .expect("head")
            .map(|h| h.seq),
        Some(head.map_or(0, |h| h.seq) + 1),
        "only the winner's audit row was written"
    );

    // At its expiry, everyone takes it over at once: one wins.
    let expiry = first_holder.expires_at();
    let winners = claim_round(&handles, &key, claimers, expiry, ttl, "b").await;
    assert_eq!(
        winners.len(),
        1,
        "{claimers} claimers of an expired lease: exactly one wins, got {:?}",
        winners.iter().map(|l| l.holder()).collect::<Vec<_>>()
    );
    let second_holder = winners[0].clone();
    let stored = handles.first().record(&key).await.expect("record");
    let lease = Lease::from_record(stored.expect("held")).expect("a lease");
    assert_eq!(
        (lease.holder(), lease.version()),
        (second_holder.holder(), 2),
        "the takeover is the lease's next version"
    );

    // The first holder lost its lease: the work it guarded does not land.
    let head = handles.first().chain_head().await.expect("head");
    let refreshed = sample_record("refreshed", Scope::SystemWide);
    let err = handles
        .second()
        .commit(Batch {
            mutations: vec![
                Mutation::Put {
                    record: refreshed.clone(),
                    precondition: Precondition::CreateOnly,
                },
                first_holder.release(),
            ],
            events: vec![event(Action::Update, &refreshed)],
        })
        .await
        .expect_err("a holder that lost its lease cannot release it");
    assert!(Lease::lost_race(&err), "{err:?}");
    assert!(
        handles
            .first()
            .get(&refreshed.id)
            .await
            .expect("get")
            .is_none(),
        "nor commit what it guarded"
    );
    assert_eq!(handles.first().chain_head().await.expect("head"), head);

    // The current holder renews it, then commits its work and the release together.
    let renewed = second_holder.renew(expiry, ttl).expect("renew");
    handles
        .first()
        .commit(Batch {
            mutations: vec![renewed.mutation],
            events: vec![],
        })
        .await
        .expect("the holder renews");
    let mut refreshed = refreshed;
    refreshed.state = LifecycleState::Valid;
    handles
        .first()
        .commit(Batch {
            mutations: vec![
                Mutation::Put {
                    record: refreshed.clone(),
                    precondition: Precondition::CreateOnly,
                },
                renewed.lease.release(),
            ],
            events: vec![event(Action::Update, &refreshed)],
        })
        .await
        .expect("the holder's work lands with the release");
    assert_eq!(
        handles.second().get(&refreshed.id).await.expect("get"),
        Some(refreshed)
    );
    assert_eq!(
        handles.second().record(&key).await.expect("record"),
        None,
        "released"
    );
    let claim = Lease::claim(&key, None, "next", expiry, ttl)
        .expect("claim")
        .expect("free");
    handles
        .second()
        .commit(Batch {
            mutations: vec![claim.mutation],
            events: vec![],
        })
        .await
        .expect("a released lease is free to claim again (create-only)");
}

/// One round of [`lease_claimers`]: every claimer reads the lease, waits for the others,
/// then commits its claim; returns the leases of the claims that landed.
async fn claim_round(
    handles: &StoreHandles,
    key: &RecordKey,
    claimers: usize,
    now: Timestamp,
    ttl: Duration,
    round: &str,
) -> Vec<Lease> {
    let barrier = Arc::new(tokio::sync::Barrier::new(claimers));
    let mut tasks = Vec::new();
    for i in 0..claimers {
        let store = if i % 2 == 0 {
            handles.first().clone()
        } else {
            handles.second().clone()
        };
        let (key, barrier) = (key.clone(), barrier.clone());
        let holder = format!("instance-{}-{round}{i}", i % 2);
        tasks.push(tokio::spawn(async move {
            let current = store.record(&key).await.expect("record");
            // Everyone has read before anyone commits.
            barrier.wait().await;
            let claim = Lease::claim(&key, current.as_ref(), &holder, now, ttl)
                .expect("claim")
                .expect("free or expired: claimable");
            let event = AuditEvent::new(holder.clone(), Action::Update, AuditTarget::none());
            match store
                .commit(Batch {
                    mutations: vec![claim.mutation],
                    events: vec![event],
                })
                .await
            {
                Ok(_) => Some(claim.lease),
                Err(e) if Lease::lost_race(&e) => None,
                Err(e) => panic!("{holder}: a claim that lost must fail as a conflict: {e}"),
            }
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.expect("claimer task") {
            winners.push(lease);
        }
    }
    winners
}
