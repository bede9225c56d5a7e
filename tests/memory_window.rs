//! `MemoryStore::with_audit_window`: a bounded audit log that keeps the newest rows, the
//! chain head and the anchor (the last dropped row's hash), verifiable on its own, with a
//! clear error for reads of dropped rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::{
    Action, AuditEvent, AuditQuery, AuditTarget, Batch, CredentialRef, Error, LocalKey,
    MemoryStore, NewCredential, Principal, ResolveContext, Scope, ScopeKind, SecretString, Store,
    Timestamp, Vault,
};

/// Event `n`, the same whichever store it goes to (fixed time, actor and details).
fn event(n: u64) -> AuditEvent {
    AuditEvent::new(
        format!("actor{}", n % 3),
        Action::Update,
        AuditTarget::none(),
    )
    .at(Timestamp(1_700_000_000_000 + n as i64))
    .detail("n", n.to_string())
}

/// Commits events `1..=n` to both stores, one batch per event (or two events a batch when
/// `pairs`).
async fn fill(stores: &[&dyn Store], n: u64, pairs: bool) {
    let mut k = 1;
    while k <= n {
        let events = if pairs && k < n {
            vec![event(k), event(k + 1)]
        } else {
            vec![event(k)]
        };
        let len = events.len() as u64;
        for s in stores {
            s.commit(Batch::events(events.clone()))
                .await
                .expect("commit");
        }
        k += len;
    }
}

fn not_found_text(err: &Error) -> String {
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    err.to_string()
}

#[tokio::test]
async fn the_window_is_bounded_and_the_head_and_hashes_match_an_unbounded_store() {
    let window = MemoryStore::with_audit_window(10);
    let full = MemoryStore::new();
    fill(&[&window, &full], 25, true).await;

    let w = window.audit_window();
    assert_eq!(w.capacity, Some(10));
    assert_eq!(w.kept, 10);
    assert_eq!(w.dropped, 15);
    let head = full.chain_head().await.expect("head");
    assert_eq!(w.head, head);
    assert_eq!(window.chain_head().await.expect("head"), head);
    assert_eq!(head.map(|h| h.seq), Some(25));
    // The anchor is row 15 exactly as the unbounded store has it.
    let row15 = full.audit_range(15, 1).await.expect("row 15").remove(0);
    let anchor = w.anchor.expect("an anchor once rows were dropped");
    assert_eq!((anchor.seq, anchor.hash), (15, row15.hash));
    // The kept rows are the unbounded store's last ten, byte for byte.
    assert_eq!(
        window.audit_range(16, 100).await.expect("kept rows"),
        full.audit_range(16, 100).await.expect("rows")
    );
    // The bound holds however long it runs.
    fill(&[&window], 1_000, false).await;
    assert_eq!(window.audit_window().kept, 10);
    assert_eq!(window.audit_window().dropped, 1_015);

    let unbounded = full.audit_window();
    assert_eq!(
        (unbounded.capacity, unbounded.kept, unbounded.dropped),
        (None, 25, 0)
    );
    assert_eq!(unbounded.anchor, None);
}

#[tokio::test]
async fn the_kept_rows_verify_from_the_anchor_and_tampering_is_found() {
    let store = MemoryStore::with_audit_window(8);
    fill(&[&store], 20, false).await;
    let ok = store
        .verify_kept_audit()
        .expect("an intact window verifies");
    assert_eq!((ok.kept, ok.dropped), (8, 12));

    // Nothing dropped yet: verified from the genesis hash.
    let young = MemoryStore::with_audit_window(8);
    fill(&[&young], 5, false).await;
    assert_eq!(young.verify_kept_audit().expect("verifies").dropped, 0);
    let empty = MemoryStore::with_audit_window(8);
    assert_eq!(empty.verify_kept_audit().expect("empty").kept, 0);

    let bad_seq = |store: &MemoryStore| match store.verify_kept_audit() {
        Err(Error::CorruptAuditRow { seq, reason }) => (seq, reason),
        other => panic!("expected a corrupt row, got {other:?}"),
    };

    // An edited row.
    let edited = MemoryStore::with_audit_window(8);
    fill(&[&edited], 20, false).await;
    edited.tamper_audit(|rows| {
        let row = rows.iter_mut().find(|r| r.seq == 17).expect("row 17");
        row.event.actor = "someone-else".into();
    });
    let (seq, reason) = bad_seq(&edited);
    assert_eq!(seq, 17);
    assert!(reason.contains("edited"), "{reason}");

    // A deleted row in the middle.
    let deleted = MemoryStore::with_audit_window(8);
    fill(&[&deleted], 20, false).await;
    deleted.tamper_audit(|rows| rows.retain(|r| r.seq != 15));
    let (seq, reason) = bad_seq(&deleted);
    assert_eq!(seq, 15);
    assert!(reason.contains("missing"), "{reason}");

    // The oldest kept row no longer chains to the anchor.
    let unanchored = MemoryStore::with_audit_window(8);
    fill(&[&unanchored], 20, false).await;
    unanchored.tamper_audit(|rows| rows[0].prev_hash = [7; 32]);
    let (seq, reason) = bad_seq(&unanchored);
    assert_eq!(seq, 13);
    assert!(reason.contains("prev_hash"), "{reason}");
}

#[tokio::test]
async fn reads_of_dropped_rows_say_which_rows_are_gone_and_where_the_kept_ones_start() {
    let store = MemoryStore::with_audit_window(10);
    fill(&[&store], 25, false).await;

    let err = store
        .audit_range(1, 10)
        .await
        .expect_err("rows 1.. are gone");
    let text = not_found_text(&err);
    assert!(text.contains("audit rows 1..=15"), "{text}");
    assert!(text.contains("row 16 on"), "{text}");
    assert!(text.contains("newest 10"), "{text}");
    let err = store.audit_range(15, 3).await.expect_err("row 15 is gone");
    assert!(not_found_text(&err).contains("audit rows 15..=15"));
    assert_eq!(
        store.audit_range(0, 0).await.expect("nothing asked"),
        vec![]
    );
    let kept = store.audit_range(16, 3).await.expect("kept rows");
    assert_eq!(kept.iter().map(|r| r.seq).collect::<Vec<_>>(), [16, 17, 18]);

    // Verifying the whole chain needs row 1: a clear error, not a report of a chain it
    // cannot see.
    let err = strongroom::audit::verify_chain(&store)
        .await
        .expect_err("the whole chain is not there");
    assert!(not_found_text(&err).contains("verify_kept_audit"));

    // Newest first, within the kept rows: answered.
    let newest = |limit: usize| AuditQuery {
        newest_first: true,
        limit,
        ..AuditQuery::default()
    };
    let rows = store.audit_query(&newest(5)).await.expect("newest five");
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [25, 24, 23, 22, 21]
    );
    // Newest first, running out of kept rows before its limit: the rest is gone.
    let err = store
        .audit_query(&newest(11))
        .await
        .expect_err("needs dropped rows");
    not_found_text(&err);
    // ... but not when the cursor keeps it inside the window.
    let inside = AuditQuery {
        after: Some(20),
        ..newest(100)
    };
    assert_eq!(store.audit_query(&inside).await.expect("inside").len(), 5);
    // A filter that matches few kept rows still needs the dropped ones to fill its limit.
    let filtered = AuditQuery {
        actor: Some("actor0".into()),
        ..newest(100)
    };
    store
        .audit_query(&filtered)
        .await
        .expect_err("the dropped rows might match");
    // Oldest first from the start: gone; from the window on: answered.
    let err = store
        .audit_query(&AuditQuery::default())
        .await
        .expect_err("starts in dropped rows");
    assert!(not_found_text(&err).contains("audit rows 1..=15"));
    let from_window = AuditQuery {
        after: Some(15),
        limit: 3,
        ..AuditQuery::default()
    };
    let rows = store.audit_query(&from_window).await.expect("kept");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [16, 17, 18]);
    // A range that ends before it starts asks for nothing.
    let empty = AuditQuery {
        after: Some(3),
        before: Some(4),
        ..AuditQuery::default()
    };
    assert_eq!(store.audit_query(&empty).await.expect("empty"), vec![]);
}

#[tokio::test]
async fn queries_on_an_unbounded_store_match_the_scan() {
    let store = MemoryStore::new();
    // More than one chunk of the log.
    fill(&[&store], 20_000, true).await;
    let queries = [
        AuditQuery::default(),
        AuditQuery {
            after: Some(16_380),
            limit: 10,
            ..AuditQuery::default()
        },
        AuditQuery {
            actor: Some("actor1".into()),
            newest_first: true,
            before: Some(16_390),
            limit: 7,
            ..AuditQuery::default()
        },
        AuditQuery {
            after: Some(19_990),
            before: Some(19_995),
            newest_first: true,
            ..AuditQuery::default()
        },
    ];
    for q in queries {
        assert_eq!(
            store.audit_query(&q).await.expect("query"),
            strongroom::store::audit_query_by_scan(&store, &q)
                .await
                .expect("scan"),
            "{q:?}"
        );
    }
    let rows = store.audit_range(16_383, 4).await.expect("across a chunk");
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [16_383, 16_384, 16_385, 16_386]
    );
}

#[tokio::test]
async fn a_window_of_zero_keeps_one_row() {
    let store = MemoryStore::with_audit_window(0);
    fill(&[&store], 3, false).await;
    let w = store.verify_kept_audit().expect("verifies");
    assert_eq!((w.capacity, w.kept, w.dropped), (Some(1), 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_on_a_windowed_store_resolves_past_the_window() {
    let store = Arc::new(MemoryStore::with_audit_window(50));
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    vault
        .create(
            &admin,
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "",
                BTreeMap::from([("api_key".to_string(), SecretString::from("sk-test-1"))]),
            ),
        )
        .await
        .expect("create");
    let actor = Principal::parse("runtime:crm:alice").expect("p");
    let ctx = ResolveContext::of(&actor).expect("ctx");
    let reference =
        CredentialRef::explicit("openai_main", ScopeKind::SystemWide, Some("openai".into()));
    for _ in 0..200 {
        vault
            .resolve(&actor, &reference, &ctx)
            .await
            .expect("resolve");
    }
    let w = store.verify_kept_audit().expect("the kept rows verify");
    assert_eq!(w.kept, 50);
    assert!(w.dropped >= 151, "{w:?}");
    let err = vault
        .verify_audit(&admin)
        .await
        .expect_err("the whole chain is not kept");
    assert!(not_found_text(&err).contains("with_audit_window"));
}

/// While nothing has been dropped, a windowed store is a `MemoryStore` like any other: it
/// passes the conformance suite.
#[cfg(feature = "conformance")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_windowed_store_that_has_dropped_nothing_conforms() {
    strongroom::conformance::run_all(|| async {
        Arc::new(MemoryStore::with_audit_window(1_000_000)) as Arc<dyn Store>
    })
    .await;
}

/// A read from row 0 (what a checkpoint of an empty chain leads to) is not a read of dropped
/// rows while nothing was dropped: found by the `checkpoint` fuzz target.
#[tokio::test]
async fn a_read_from_row_zero_drops_nothing_until_rows_were_dropped() {
    for store in [MemoryStore::new(), MemoryStore::with_audit_window(4)] {
        assert!(store.audit_range(0, 10).await.expect("empty").is_empty());
        fill(&[&store], 3, false).await;
        let rows = store.audit_range(0, 10).await.expect("rows from 0");
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }
    let windowed = MemoryStore::with_audit_window(2);
    fill(&[&windowed], 5, false).await;
    let err = windowed
        .audit_range(0, 10)
        .await
        .expect_err("rows were dropped");
    assert!(not_found_text(&err).contains("dropped"), "{err}");
}
