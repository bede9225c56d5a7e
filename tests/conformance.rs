//! The store conformance suite, run against every bundled store, both through `Arc<dyn Store>`
//! and with the concrete type behind it.

use std::sync::Arc;

use strongroom::conformance;
use strongroom::{MemoryStore, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    conformance::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let dir_path = dir.path().to_path_buf();
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir_path.join(format!("store{n}.db"));
        async move { Arc::new(SqliteStore::open(path).expect("open")) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms_on_a_current_thread_runtime_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("a.db")).expect("open"));
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(conformance::concurrent_commits(store, 32, 5));
    });
    handle.join().expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concrete_types_work_through_box_dyn_as_well() {
    let boxed: Box<dyn Store> = Box::new(MemoryStore::new());
    let arc: Arc<dyn Store> = Arc::from(boxed);
    conformance::round_trip(arc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_survives_reopen_with_its_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reopen.db");
    {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("open"));
        conformance::audit_chain(store).await;
    }
    let store = SqliteStore::open(&path).expect("reopen");
    let head = store.chain_head().await.expect("head").expect("non-empty");
    assert_eq!(head.seq, 15);
    let receipt = store
        .commit(strongroom::Batch::events(vec![
            strongroom::AuditEvent::new(
                "t",
                strongroom::Action::AuditVerify,
                strongroom::AuditTarget::none(),
            ),
        ]))
        .await
        .expect("commit");
    assert_eq!(
        receipt.seqs,
        Some((16, 16)),
        "the chain continues after a reopen"
    );
    let report = strongroom::audit::verify_chain(&store)
        .await
        .expect("verify");
    assert!(report.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms_with_a_one_entry_point_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let dir_path = dir.path().to_path_buf();
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir_path.join(format!("tiny{n}.db"));
        let mut options = strongroom::SqliteOptions::default();
        options.point_cache_entries = 1;
        async move { Arc::new(SqliteStore::open_with(path, options).expect("open")) as Arc<dyn Store> }
    })
    .await;
}
