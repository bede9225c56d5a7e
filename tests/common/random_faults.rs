//! A `Store` wrapper whose commits fail at random from a seeded generator, in two ways: the
//! batch never reaches the store (nothing written), or it lands and the caller is told it
//! failed (as when a connection dies after COMMIT). Reads pass through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use strongroom::audit::{AuditRecord, ChainHead};
use strongroom::model::{CredentialId, CredentialRecord, Grant, Record, RecordKey, Scope};
use strongroom::store::{Batch, CommitReceipt, ListFilter, ReadStamp, RecordFilter, Store};
use strongroom::{Error, StoreErrorKind};

/// The message of a failure before the commit.
pub const DROPPED: &str = "random fault: the batch was not written";
/// The message of a failure after the commit landed.
pub const LOST_REPLY: &str = "random fault: the batch landed but its reply was lost";

/// What the wrapper did to one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Passed through and answered.
    Passed,
    /// Failed before reaching the store.
    Dropped,
    /// Reached the store; the caller got an error.
    LostReply,
}

/// SplitMix64: a small seeded generator, so a run can be repeated exactly.
#[derive(Debug)]
pub struct SplitMix(AtomicU64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(AtomicU64::new(seed))
    }

    pub fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug)]
pub struct RandomFaults {
    inner: Arc<dyn Store>,
    rng: SplitMix,
    /// Percent of audited commits dropped before the store.
    drop_percent: AtomicU64,
    /// Percent of audited commits whose reply is lost after they landed.
    lose_percent: AtomicU64,
    /// What happened to each commit that carried audit events, in order.
    pub fates: Mutex<Vec<Fate>>,
}

impl RandomFaults {
    pub fn new(inner: Arc<dyn Store>, seed: u64) -> Arc<RandomFaults> {
        Arc::new(RandomFaults {
            inner,
            rng: SplitMix::new(seed),
            drop_percent: AtomicU64::new(0),
            lose_percent: AtomicU64::new(0),
            fates: Mutex::new(Vec::new()),
        })
    }

    /// From now on, `dropped`% of commits carrying audit events fail before the store and
    /// `lost`% land but answer an error.
    pub fn set_rates(&self, dropped: u64, lost: u64) {
        self.drop_percent.store(dropped, Ordering::SeqCst);
        self.lose_percent.store(lost, Ordering::SeqCst);
    }

    pub fn count(&self, fate: Fate) -> usize {
        self.fates
            .lock()
            .expect("fates")
            .iter()
            .filter(|f| **f == fate)
            .count()
    }

    fn decide(&self, batch: &Batch) -> Fate {
        if batch.events.is_empty() {
            return Fate::Passed;
        }
        let roll = self.rng.below(100);
        let dropped = self.drop_percent.load(Ordering::SeqCst);
        let lost = self.lose_percent.load(Ordering::SeqCst);
        let fate = if roll < dropped {
            Fate::Dropped
        } else if roll < dropped + lost {
            Fate::LostReply
        } else {
            Fate::Passed
        };
        self.fates.lock().expect("fates").push(fate);
        fate
    }

    async fn run(
        &self,
        fate: Fate,
        commit: impl std::future::Future<Output = strongroom::Result<CommitReceipt>>,
    ) -> strongroom::Result<CommitReceipt> {
        match fate {
            Fate::Passed => commit.await,
            Fate::Dropped => Err(Error::Store {
                kind: StoreErrorKind::Other,
                message: DROPPED.into(),
                source: None,
            }),
            Fate::LostReply => {
                commit.await?;
                Err(Error::Store {
                    kind: StoreErrorKind::Connection,
                    message: LOST_REPLY.into(),
                    source: None,
                })
            }
        }
    }
}

#[async_trait]
impl Store for RandomFaults {
    async fn get(&self, id: &CredentialId) -> strongroom::Result<Option<CredentialRecord>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> strongroom::Result<Vec<CredentialRecord>> {
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
        let fate = self.decide(&batch);
        self.run(fate, self.inner.commit(batch)).await
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
        let fate = self.decide(&batch);
        self.run(fate, self.inner.commit_checked(batch, stamp))
            .await
    }
}
