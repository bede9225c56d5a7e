//! Checkpoints: signed statements of the chain head, authenticated with a key derived from
//! the master key, and the `AuditChain` that makes them after commits and verifies a store's
//! chain against them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::encoding::{hex_bytes, ChainHead};
use super::verify::{verify_chain, verify_rows, ChainProblem, ProblemKind, VerifyReport};
use crate::crypto::kdf::HmacKey;
use crate::crypto::{InternalKey, InternalUse, KeyRing, KeyWrapper};
use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::store::{CommitReceipt, Store};

const CHECKPOINT_LABEL: &[u8] = b"strongroom/checkpoint/v1";
/// The text format 1 used as the HKDF info of the checkpoint key. The checkpoint key is no
/// longer derived from a caller-reachable purpose: it is one of the library's internal keys
/// ([`InternalKey::AuditCheckpoint`]), and
/// [`KeyWrapper::derive_key`](crate::crypto::KeyWrapper::derive_key) with this text gives a
/// caller key like any other. Kept so that a `derive_key` call with it still answers whether
/// a master key derives keys at all (a local key does; the cloud ones do not).
pub const CHECKPOINT_KEY_PURPOSE: &str = "strongroom audit checkpoint v1";

/// The checkpoint key of `wrapper`: an internal key no caller purpose reaches. A checkpoint
/// that names a local key's format-1 id is checked with that key's format-1 checkpoint key.
pub(crate) async fn checkpoint_key(wrapper: &dyn KeyWrapper) -> Result<crate::crypto::DataKey> {
    wrapper
        .derive_internal(InternalKey::AuditCheckpoint, &InternalUse::new())
        .await
}

/// A signed statement that the chain had `head_hash` at `seq` at `time`. Authenticated
/// with HMAC-SHA256 under a key derived (HKDF) from the master key named by `key_id`, so
/// someone who can only write the database cannot forge one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the head row.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_bytes")]
    pub head_hash: [u8; 32],
    /// When the checkpoint was made.
    pub time: Timestamp,
    /// The master key whose derived key made `mac`.
    pub key_id: String,
    /// HMAC-SHA256 over the label, seq, head hash, time and key id.
    #[serde(with = "hex_bytes")]
    pub mac: [u8; 32],
}

fn checkpoint_mac(
    key: &crate::crypto::DataKey,
    seq: u64,
    hash: &[u8; 32],
    time: Timestamp,
    key_id: &str,
) -> [u8; 32] {
    let tag = HmacKey::new(key.expose_secret()).mac(&[
        CHECKPOINT_LABEL,
        &seq.to_be_bytes(),
        hash,
        &time.0.to_be_bytes(),
        &(key_id.len() as u32).to_be_bytes(),
        key_id.as_bytes(),
    ]);
    *tag
}

/// Receives checkpoints as they are made (write them somewhere the database's writers
/// cannot reach: a log shipper, object storage with retention, another database).
pub trait CheckpointSink: Send + Sync {
    /// Called with each new checkpoint.
    fn publish(&self, checkpoint: &Checkpoint);
}

impl<F: Fn(&Checkpoint) + Send + Sync> CheckpointSink for F {
    fn publish(&self, checkpoint: &Checkpoint) {
        self(checkpoint)
    }
}

/// The audit chain of one store: makes and checks checkpoints, verifies the chain.
#[derive(Clone)]
pub struct AuditChain {
    store: Arc<dyn Store>,
    keys: KeyRing,
    sink: Option<Arc<dyn CheckpointSink>>,
    every: u64,
    last_checkpoint: Arc<AtomicU64>,
}

impl fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditChain")
            .field("store", &self.store)
            .field("every", &self.every)
            .field("has_sink", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditChain {
    /// The chain kept by `store`; checkpoints are made with keys derived from `keys`.
    pub fn new(store: Arc<dyn Store>, keys: KeyRing) -> AuditChain {
        AuditChain {
            store,
            keys,
            sink: None,
            every: 0,
            last_checkpoint: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends a checkpoint to `sink` each time the chain has grown by `every` rows (see
    /// [`AuditChain::after_commit`]).
    pub fn with_sink(mut self, sink: Arc<dyn CheckpointSink>, every: u64) -> AuditChain {
        self.sink = Some(sink);
        self.every = every.max(1);
        self
    }

    /// Makes a checkpoint of the current head (and publishes it to the sink, if any).
    /// `None` for an empty chain.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(head) = self.store.chain_head().await? else {
            return Ok(None);
        };
        let cp = self.sign(head, Timestamp::now()).await?;
        self.last_checkpoint.fetch_max(cp.seq, Ordering::Relaxed);
        if let Some(sink) = &self.sink {
            sink.publish(&cp);
        }
        Ok(Some(cp))
    }

    async fn sign(&self, head: ChainHead, time: Timestamp) -> Result<Checkpoint> {
        let active = self.keys.active();
        let key = checkpoint_key(active.as_ref()).await?;
        let key_id = active.key_id().to_string();
        Ok(Checkpoint {
            seq: head.seq,
            head_hash: head.hash,
            time,
            mac: checkpoint_mac(&key, head.seq, &head.hash, time, &key_id),
            key_id,
        })
    }

    /// Call after each commit: publishes a checkpoint when the chain has grown by the
    /// configured interval since the last one.
    pub async fn after_commit(&self, receipt: &CommitReceipt) -> Result<Option<Checkpoint>> {
        let (Some(_), Some(head)) = (&self.sink, receipt.head) else {
            return Ok(None);
        };
        let last = self.last_checkpoint.load(Ordering::Relaxed);
        if head.seq < last + self.every {
            return Ok(None);
        }
        if self
            .last_checkpoint
            .compare_exchange(last, head.seq, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None); // another task is publishing this interval
        }
        let cp = self.sign(head, Timestamp::now()).await?;
        if let Some(sink) = &self.sink {
            sink.publish(&cp);
        }
        Ok(Some(cp))
    }

    /// The key ring checkpoints are made and checked with.
    pub fn key_ring(&self) -> &KeyRing {
        &self.keys
    }

    /// Checks a checkpoint's authentication code with the key ring.
    pub async fn check_checkpoint(&self, cp: &Checkpoint) -> Result<bool> {
        let Some(wrapper) = self.keys.key(&cp.key_id) else {
            return Err(Error::KeyUnavailable {
                key_id: cp.key_id.clone(),
                reason: "the checkpoint was made with a master key this key ring does not hold"
                    .into(),
            });
        };
        let key = checkpoint_key(wrapper.as_ref()).await?;
        let expected = checkpoint_mac(&key, cp.seq, &cp.head_hash, cp.time, &cp.key_id);
        Ok(bool::from(expected.ct_eq(&cp.mac)))
    }

    /// Verifies the chain alone: catches edited, deleted, inserted and reordered rows, but
    /// not a truncated tail or a rewrite that recomputed every later hash — for those, use
    /// [`AuditChain::verify_against`].
    pub async fn verify(&self) -> Result<VerifyReport> {
        verify_chain(self.store.as_ref()).await
    }

    /// Verifies the chain and then each checkpoint against it: a checkpoint past the end
    /// means the tail was truncated (the problem names the rows missing up to the last
    /// checkpoint); a checkpoint whose hash differs means rows up to it were rewritten (the
    /// first bad sequence number reported is then the one after the last checkpoint that
    /// still matches).
    pub async fn verify_against(&self, checkpoints: &[Checkpoint]) -> Result<VerifyReport> {
        let mut cps: Vec<&Checkpoint> = checkpoints.iter().collect();
        cps.sort_by_key(|c| c.seq);
        for cp in &cps {
            if !self.check_checkpoint(cp).await? {
                return Ok(VerifyReport {
                    rows: 0,
                    head: None,
                    problem: Some(forged(cp)),
                });
            }
        }
        let watch: Vec<u64> = cps.iter().map(|c| c.seq).collect();
        let (mut report, seen) = verify_rows(self.store.as_ref(), watch).await?;
        let chain_bad = report.first_bad_seq();
        let last = cps.last().copied();
        let mut last_good = 0u64;
        for cp in cps {
            if chain_bad.is_some_and(|bad| cp.seq >= bad) {
                break; // the chain itself already failed before this checkpoint
            }
            let problem = match (seen.get(&cp.seq), last) {
                // Every later checkpoint is past the end too: name the rows up to the last.
                (None, Some(last)) => Some(truncated(report.head.map(|h| h.seq), last)),
                (Some(hash), _) if *hash != cp.head_hash => Some(rewritten(last_good, cp)),
                _ => None,
            };
            if let Some(p) = problem {
                report.problem = Some(p);
                break;
            }
            last_good = cp.seq;
        }
        Ok(report)
    }

    /// Does the chain still hold the row `checkpoint` vouches for, with the hash it vouches
    /// for? A cheap check (the checkpoint's code, the head, one row) for a writer to make
    /// before it extends the chain, so that it never adds rows, or signs a new checkpoint,
    /// over a chain that was cut or rewritten. Rows before the checkpoint's are not read:
    /// that is [`AuditChain::verify_against`]. `None` when the row is there as vouched for.
    pub async fn still_holds(&self, checkpoint: &Checkpoint) -> Result<Option<ChainProblem>> {
        if !self.check_checkpoint(checkpoint).await? {
            return Ok(Some(forged(checkpoint)));
        }
        let row = self.store.audit_digests(checkpoint.seq, 1).await?;
        match row.first() {
            Some(d) if d.seq == checkpoint.seq => {
                let intact = d.computed.as_ref().is_ok_and(|h| *h == d.hash);
                Ok((!intact || d.hash != checkpoint.head_hash).then(|| rewritten(0, checkpoint)))
            }
            _ => {
                let head = self.store.chain_head().await?.map(|h| h.seq);
                Ok(Some(match head {
                    // The row is gone but later ones are there: a hole.
                    Some(end) if end >= checkpoint.seq => ChainProblem {
                        seq: checkpoint.seq,
                        kind: ProblemKind::Missing,
                        detail: format!(
                            "row {} is missing (checkpoint at seq {})",
                            checkpoint.seq, checkpoint.seq
                        ),
                    },
                    _ => truncated(head, checkpoint),
                }))
            }
        }
    }
}

/// `rows A–B` or `row A`.
fn rows(first: u64, last: u64) -> String {
    if first == last {
        format!("row {first}")
    } else {
        format!("rows {first}–{last}")
    }
}

fn forged(cp: &Checkpoint) -> ChainProblem {
    ChainProblem {
        seq: cp.seq,
        kind: ProblemKind::ForgedCheckpoint,
        detail: format!(
            "the checkpoint at seq {} does not authenticate with master key {}: it was forged \
             or altered",
            cp.seq, cp.key_id
        ),
    }
}

/// The chain ends at `head` (`None`: it is empty) but `cp` vouches for a later row.
fn truncated(head: Option<u64>, cp: &Checkpoint) -> ChainProblem {
    let end = head.unwrap_or(0);
    let now = match head {
        Some(end) => format!("the chain now ends at row {end}"),
        None => "the chain is now empty".to_string(),
    };
    ChainProblem {
        seq: end + 1,
        kind: ProblemKind::Truncated,
        detail: format!(
            "{} missing (checkpoint at seq {}); {now}: the tail was cut off",
            rows(end + 1, cp.seq),
            cp.seq
        ),
    }
}

/// The row at `cp.seq` is not the one `cp` vouches for; the checkpoint before it (at
/// `last_good`, 0 for none) still matched.
fn rewritten(last_good: u64, cp: &Checkpoint) -> ChainProblem {
    ChainProblem {
        seq: last_good + 1,
        kind: ProblemKind::CheckpointMismatch,
        detail: format!(
            "{} rewritten (checkpoint at seq {} vouches for another row {}): a row at or \
             before it was changed and the hashes after it recomputed, or the tail was cut \
             and written again",
            rows(last_good + 1, cp.seq),
            cp.seq,
            cp.seq
        ),
    }
}
