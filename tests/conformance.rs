//! The store conformance suite, run against every bundled store, both through `Arc<dyn Store>`
//! and with the concrete type behind it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use strongroom::conformance::{self, StoreHandles};
use strongroom::{
    AuditRecord, Batch, ChainHead, CommitReceipt, CredentialId, CredentialRecord, Grant,
    ListFilter, MemoryStore, Mutation, Precondition, ReadStamp, Record, RecordFilter, RecordKey,
    Result, Scope, SqliteStore, Store,
};

/// One handle is the honest form for `MemoryStore`: its data lives in the handle (it is not
/// `Clone` and nothing else can open it), so a second handle over the same data could only
/// be the same object again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    conformance::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

/// Two `SqliteStore`s opened on one file: each has its own point cache and writer, as a host
/// service and the CLI would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let dir_path = dir.path().to_path_buf();
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir_path.join(format!("store{n}.db"));
        async move {
            let first = Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>;
            let second = Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>;
            (first, second)
        }
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
        options.point_cache_entries = Some(1);
        async move {
            let open = || {
                Arc::new(SqliteStore::open_with(&path, options.clone()).expect("open"))
                    as Arc<dyn Store>
            };
            (open(), open())
        }
    })
    .await;
}

/// Two entries hold exactly what the check reads (one name, one grant list), so every warm
/// read is a cache hit; with one entry the two reads evict each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_reads_fresh_across_handles_with_a_small_point_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.db");
    let mut options = strongroom::SqliteOptions::default();
    options.point_cache_entries = Some(2);
    let open = || {
        Arc::new(SqliteStore::open_with(&path, options.clone()).expect("open")) as Arc<dyn Store>
    };
    conformance::fresh_reads_across_handles(StoreHandles::pair(open(), open())).await;
}

/// A broken store for the negative tests, over a correct one (`inner`).
#[derive(Debug)]
struct Broken {
    inner: Arc<dyn Store>,
    how: Breakage,
    named: Mutex<HashMap<(Scope, String), Found>>,
    grants: Mutex<HashMap<CredentialId, Vec<Grant>>>,
}

#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// `find_named` and `grants_stamped` are served from a cache that only this handle's own
    /// commits clear, stamped with nothing. Through one handle it looks correct; another
    /// handle's changes reach it only when its cache is cleared.
    StaleCache,
    /// Reads are fresh and stamped (by `inner`), but the stamp is never checked.
    StampIgnored,
}

/// What `find_named` found.
type Found = Option<Arc<CredentialRecord>>;

impl Broken {
    fn over(inner: Arc<dyn Store>, how: Breakage) -> Arc<dyn Store> {
        Arc::new(Broken {
            inner,
            how,
            named: Mutex::default(),
            grants: Mutex::default(),
        })
    }
}

/// Either way, `commit_checked` is the provided one, which ignores the stamp.
#[async_trait]
impl Store for Broken {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
        self.inner.list(filter).await
    }

    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>> {
        self.inner.grants(credential_id).await
    }

    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.inner.audit_range(from, limit).await
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.inner.chain_head().await
    }

    async fn record(&self, key: &RecordKey) -> Result<Option<Record>> {
        self.inner.record(key).await
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>> {
        self.inner.records(filter).await
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        if !batch.mutations.is_empty() {
            self.named.lock().expect("lock").clear();
            self.grants.lock().expect("lock").clear();
        }
        self.inner.commit(batch).await
    }

    async fn find_named(&self, scope: &Scope, name: &str) -> Result<(Found, ReadStamp)> {
        if let Breakage::StampIgnored = self.how {
            return self.inner.find_named(scope, name).await;
        }
        let key = (scope.clone(), name.to_string());
        if let Some(hit) = self.named.lock().expect("lock").get(&key) {
            return Ok((hit.clone(), ReadStamp::UNCHECKED));
        }
        let (found, _) = self.inner.find_named(scope, name).await?;
        self.named.lock().expect("lock").insert(key, found.clone());
        Ok((found, ReadStamp::UNCHECKED))
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> Result<(Vec<Grant>, ReadStamp)> {
        if let Breakage::StampIgnored = self.how {
            return self.inner.grants_stamped(credential_id).await;
        }
        if let Some(hit) = self.grants.lock().expect("lock").get(credential_id) {
            return Ok((hit.clone(), ReadStamp::UNCHECKED));
        }
        let (grants, _) = self.inner.grants_stamped(credential_id).await?;
        self.grants
            .lock()
            .expect("lock")
            .insert(credential_id.clone(), grants.clone());
        Ok((grants, ReadStamp::UNCHECKED))
    }
}

/// Runs `check` on its own task and returns its panic message, or `None` if it passed.
async fn panic_of<F>(check: F) -> Option<String>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::spawn(AssertUnwindSafe(check)).await {
        Ok(()) => None,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            Some(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            )
        }
        Err(e) => panic!("the check's task failed without a panic: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_serving_stale_cached_reads_fails_with_two_handles() {
    // Over one MemoryStore, so the only staleness is the wrapper's cache.
    let message = panic_of(conformance::run_all(|| async {
        let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (
            Broken::over(shared.clone(), Breakage::StaleCache),
            Broken::over(shared, Breakage::StaleCache),
        )
    }))
    .await
    .expect("run_all must fail a store that serves stale cached reads to a second handle");
    assert!(
        message.contains("a checked commit with that read's stamp landed"),
        "it fails for the stale read, not something else: {message}"
    );
    // And over a SQLite file, through the check itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stale.db");
    let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("open"));
    let other: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("open"));
    let message = panic_of(conformance::fresh_reads_across_handles(StoreHandles::pair(
        Broken::over(inner, Breakage::StaleCache),
        Broken::over(other, Breakage::StaleCache),
    )))
    .await
    .expect("the check must fail a store that serves stale cached reads");
    assert!(
        message.contains("a checked commit with that read's stamp landed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_handle_cannot_reveal_a_stale_cache() {
    // The same broken store passes the whole suite through one handle: why a store that can
    // be opened twice must give `run_all` two handles.
    conformance::run_all(|| async {
        Broken::over(Arc::new(MemoryStore::new()), Breakage::StaleCache)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_stamps_reads_but_ignores_the_stamp_fails() {
    // Its reads are fresh, so only the stamp taken before a change gives it away.
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let message = panic_of(conformance::fresh_reads_across_handles(StoreHandles::pair(
        Broken::over(shared.clone(), Breakage::StampIgnored),
        Broken::over(shared, Breakage::StampIgnored),
    )))
    .await
    .expect("the check must fail a store that lets a stale stamp commit");
    assert!(
        message.contains("with a stamp taken before the change landed"),
        "{message}"
    );
}

/// A store that writes records last-writer-wins: it turns every record put into a put over
/// whatever is stored now, retrying until it lands, so no claim ever loses.
#[derive(Debug)]
struct BlindRecords {
    inner: Arc<dyn Store>,
}

#[async_trait]
impl Store for BlindRecords {
    async fn get(&self, id: &CredentialId) -> Result<Option<CredentialRecord>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CredentialRecord>> {
        self.inner.list(filter).await
    }

    async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<Grant>> {
        self.inner.grants(credential_id).await
    }

    async fn audit_range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.inner.audit_range(from, limit).await
    }

    async fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.inner.chain_head().await
    }

    async fn record(&self, key: &RecordKey) -> Result<Option<Record>> {
        self.inner.record(key).await
    }

    async fn records(&self, filter: &RecordFilter) -> Result<Vec<Record>> {
        self.inner.records(filter).await
    }

    async fn commit(&self, batch: Batch) -> Result<CommitReceipt> {
        loop {
            let mut blind = batch.clone();
            for mutation in &mut blind.mutations {
                if let Mutation::PutRecord {
                    record,
                    precondition,
                } = mutation
                {
                    let stored = self.inner.record(&record.record_key()).await?;
                    record.version = stored.as_ref().map_or(1, |r| r.version + 1);
                    *precondition = match stored {
                        Some(r) => Precondition::IfVersion(r.version),
                        None => Precondition::CreateOnly,
                    };
                }
            }
            match self.inner.commit(blind).await {
                Err(e) if strongroom::Lease::lost_race(&e) => continue,
                other => return other,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_record_writes_ignore_preconditions_fails_the_lease_check() {
    let message = panic_of(async {
        let store: Arc<dyn Store> = Arc::new(BlindRecords {
            inner: Arc::new(MemoryStore::new()),
        });
        conformance::lease_claimers(StoreHandles::single(store), 32).await;
    })
    .await
    .expect("lease_claimers must fail a store where every claim lands");
    assert!(message.contains("exactly one wins"), "{message}");
}
