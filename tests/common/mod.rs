//! Test helpers shared by several test files.

#![allow(dead_code)]

pub mod canary;
pub mod github_app_server;
pub mod gitlab_server;
pub mod log_capture;
pub mod oauth_server;
pub mod random_faults;
pub mod service_servers;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use strongroom::audit::{AuditRecord, ChainHead};
use strongroom::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope};
use strongroom::store::{Batch, CommitReceipt, ListFilter, ReadStamp, RecordFilter, Store};
use strongroom::{Error, LocalKey, SqliteStore, StoreErrorKind, Vault};

/// A vault on `store` with a fresh random master key.
pub async fn vault_on(store: Arc<dyn Store>) -> Vault {
    Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault")
}

/// A vault on a new SQLite file at `path`, with a fresh random master key.
pub async fn sqlite_vault(path: impl AsRef<std::path::Path>) -> Vault {
    vault_on(Arc::new(SqliteStore::open(path.as_ref()).expect("open"))).await
}

/// The message of every injected failure, so tests can tell it from any other.
pub const INJECTED: &str = "injected commit failure";

/// A `Store` wrapper that makes commits fail on demand: always (`fail_commits`), after
/// some more successes (`fail_after`), or one in `every_nth`. Reads pass through. A
/// failed commit writes nothing (it never reaches the inner store).
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
    /// Commits still allowed before `failing` turns on (u64::MAX: never).
    budget: AtomicU64,
    /// Fail one commit in this many (0: off).
    every_nth: AtomicUsize,
    commits: AtomicUsize,
    /// Failures injected so far.
    pub injected: AtomicUsize,
    /// The filter of the last `list` call.
    pub last_list: std::sync::Mutex<Option<ListFilter>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner,
            failing: AtomicBool::new(false),
            budget: AtomicU64::new(u64::MAX),
            every_nth: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            last_list: std::sync::Mutex::new(None),
        })
    }

    /// Every commit from now on fails (`true`) or goes through (`false`).
    pub fn fail_commits(&self, on: bool) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.failing.store(on, Ordering::SeqCst);
    }

    /// The next `n` commits go through; every one after them fails.
    pub fn fail_after(&self, n: u64) {
        self.failing.store(false, Ordering::SeqCst);
        self.budget.store(n, Ordering::SeqCst);
    }

    /// One commit in `n` fails (0 turns it off).
    pub fn fail_every(&self, n: usize) {
        self.every_nth.store(n, Ordering::SeqCst);
    }

    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), Error> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.every_nth.load(Ordering::SeqCst);
        let budget_spent = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                u64::MAX => None,
                0 => None,
                b => Some(b - 1),
            })
            .is_err()
            && self.budget.load(Ordering::SeqCst) == 0;
        if self.failing.load(Ordering::SeqCst)
            || budget_spent
            || (every > 0 && n.is_multiple_of(every))
        {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Store {
                kind: StoreErrorKind::Other,
                message: INJECTED.into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultStore {
    async fn get(&self, id: &CredentialId) -> strongroom::Result<Option<CredentialRecord>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> strongroom::Result<Vec<CredentialRecord>> {
        *self.last_list.lock().expect("lock") = Some(filter.clone());
        self.inner.list(filter).await
    }

    async fn grants(&self, credential_id: &CredentialId) -> strongroom::Result<Vec<Grant>> {
        self.inner.grants(credential_id).await
    }

    async fn audit_range(&self, from: u64, limit: usize) -> strongroom::Result<Vec<AuditRecord>> {
        self.inner.audit_range(from, limit).await
    }

    async fn chain_head(&self) -> strongroom::Result<Option<ChainHead>> {
        self.inner.chain_head().await
    }

    async fn commit(&self, batch: Batch) -> strongroom::Result<CommitReceipt> {
        self.check()?;
        self.inner.commit(batch).await
    }

    async fn record(&self, key: &RecordKey) -> strongroom::Result<Option<Record>> {
        self.inner.record(key).await
    }

    async fn records(&self, filter: &RecordFilter) -> strongroom::Result<Vec<Record>> {
        self.inner.records(filter).await
    }

    async fn find_named(
        &self,
        scope: &Scope,
        name: &str,
    ) -> strongroom::Result<(Option<Arc<CredentialRecord>>, ReadStamp)> {
        self.inner.find_named(scope, name).await
    }

    async fn grants_stamped(
        &self,
        credential_id: &CredentialId,
    ) -> strongroom::Result<(Vec<Grant>, ReadStamp)> {
        self.inner.grants_stamped(credential_id).await
    }

    async fn commit_checked(
        &self,
        batch: Batch,
        stamp: ReadStamp,
    ) -> strongroom::Result<CommitReceipt> {
        self.check()?;
        self.inner.commit_checked(batch, stamp).await
    }
}
