//! Checkpoints: signed statements of the chain head, authenticated by a checkpoint key (the
//! master key's, or one configured apart: [`CheckpointSigner`]), and the `AuditChain` that
//! makes them after commits and verifies a store's chain against them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::encoding::{hex_bytes, hex_vec, ChainHead};
use super::verify::{verify_chain, verify_rows, ChainProblem, ProblemKind, VerifyReport};
use crate::crypto::{CheckpointSigner, InternalUse, KeyRing, KeyWrapper};
use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::store::{CommitReceipt, Store};

const CHECKPOINT_LABEL: &[u8] = b"strongroom/checkpoint/v1";
/// The text format 1 used as the HKDF info of the checkpoint key. The checkpoint key is no
/// longer derived from a caller-reachable purpose: it is one of the library's internal keys
/// ([`crate::crypto::InternalKey::AuditCheckpoint`]), and
/// [`KeyWrapper::derive_key`](crate::crypto::KeyWrapper::derive_key) with this text gives a
/// caller key like any other.
pub const CHECKPOINT_KEY_PURPOSE: &str = "strongroom audit checkpoint v1";

/// The id of the key that authenticates checkpoints made under `wrapper`
/// ([`KeyWrapper::checkpoint_signer`]), or why it offers none: what a host checks before it
/// asks for checkpoints with this master key (the CLI does). It hands out the id only, never
/// the power to sign.
pub async fn checkpoint_key_id(wrapper: &dyn KeyWrapper) -> Result<String> {
    let signer = wrapper.checkpoint_signer(&InternalUse::new()).await?;
    Ok(signer.key_id().to_string())
}

/// A signed statement that the chain had `head_hash` at `seq` at `time`. Authenticated by
/// the checkpoint key named by `key_id` (`docs/AUDIT.md`: an HMAC under a key derived from a
/// local master key, a KMS's MAC, or a Key Vault signature), so someone who can only write
/// the database cannot forge one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the head row.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_bytes")]
    pub head_hash: [u8; 32],
    /// When the checkpoint was made.
    pub time: Timestamp,
    /// The checkpoint key that made `mac`: a local master key's id, or the id of a MAC or
    /// signing key (`aws_kms_mac:…`, `gcp_kms_mac:…`, `vault_hmac:…`, `azure_kv_sign:…`,
    /// `audit:…`).
    pub key_id: String,
    /// The tag over [`Checkpoint::message`]: 32 bytes for the HMAC keys, longer for a
    /// Key Vault signature or a Vault transit HMAC (`docs/AUDIT.md`). Hex in JSON.
    #[serde(with = "hex_vec")]
    pub mac: Vec<u8>,
}

impl Checkpoint {
    /// The bytes the tag covers: `"strongroom/checkpoint/v1" || u64be(seq) || head_hash ||
    /// i64be(time) || u32be(len(key_id)) || key_id`.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.head_hash, self.time, &self.key_id)
    }
}

fn checkpoint_message(seq: u64, hash: &[u8; 32], time: Timestamp, key_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_LABEL.len() + 8 + 32 + 8 + 4 + key_id.len());
    m.extend_from_slice(CHECKPOINT_LABEL);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&time.0.to_be_bytes());
    m.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
    m.extend_from_slice(key_id.as_bytes());
    m
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
    /// A checkpoint key configured apart from the master key (signs new checkpoints).
    signer: Option<Arc<dyn CheckpointSigner>>,
    /// Older configured checkpoint keys, which still check what they signed.
    retired_signers: Vec<Arc<dyn CheckpointSigner>>,
    sink: Option<Arc<dyn CheckpointSink>>,
    every: u64,
    last_checkpoint: Arc<AtomicU64>,
}

impl fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditChain")
            .field("store", &self.store)
            .field("every", &self.every)
            .field("checkpoint_key", &self.signer.as_ref().map(|s| s.key_id()))
            .field("has_sink", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditChain {
    /// The chain kept by `store`; checkpoints are made with the checkpoint key of the active
    /// master key of `keys` ([`KeyWrapper::checkpoint_signer`]) unless one is configured
    /// with [`AuditChain::with_checkpoint_key`], and checked with whichever key of the ring
    /// (or configured key) made them.
    pub fn new(store: Arc<dyn Store>, keys: KeyRing) -> AuditChain {
        AuditChain {
            store,
            keys,
            signer: None,
            retired_signers: Vec::new(),
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

    /// Makes new checkpoints with `signer` instead of the master key's checkpoint key (an
    /// [`crate::crypto::AuditKey`], a KMS MAC key, …). Checkpoints the master keys made
    /// still check.
    pub fn with_checkpoint_key(mut self, signer: Arc<dyn CheckpointSigner>) -> AuditChain {
        self.signer = Some(signer);
        self
    }

    /// Adds an older checkpoint key, which checks the checkpoints it made but makes none.
    pub fn with_retired_checkpoint_key(mut self, signer: Arc<dyn CheckpointSigner>) -> AuditChain {
        self.retired_signers.push(signer);
        self
    }

    /// Whether a checkpoint key was configured apart from the master key.
    pub fn has_checkpoint_key(&self) -> bool {
        self.signer.is_some()
    }

    /// The key new checkpoints are made with.
    async fn active_signer(&self) -> Result<Arc<dyn CheckpointSigner>> {
        match &self.signer {
            Some(signer) => Ok(signer.clone()),
            None => {
                self.keys
                    .active()
                    .checkpoint_signer(&InternalUse::new())
                    .await
            }
        }
    }

    /// The id of the key new checkpoints are made with, or why none can be made (a cloud
    /// master key that offers no MAC, and no checkpoint key configured).
    pub async fn checkpoint_key_id(&self) -> Result<String> {
        Ok(self.active_signer().await?.key_id().to_string())
    }

    /// The key that checks checkpoints naming `key_id`: a configured one, or the checkpoint
    /// key of a master key in the ring (active or retired).
    async fn signer_for(&self, key_id: &str) -> Option<Arc<dyn CheckpointSigner>> {
        let configured = self.signer.iter().chain(&self.retired_signers);
        if let Some(s) = configured.into_iter().find(|s| s.key_id() == key_id) {
            return Some(s.clone());
        }
        let proof = InternalUse::new();
        // A local key's checkpoints name the key itself; a cloud key's name its MAC key.
        let named = self.keys.key(key_id).into_iter();
        let ids = self.keys.key_ids();
        let others = ids.iter().filter_map(|id| self.keys.key(id));
        for wrapper in named.chain(others) {
            if let Ok(signer) = wrapper.checkpoint_signer(&proof).await {
                if signer.key_id() == key_id {
                    return Some(signer);
                }
            }
        }
        None
    }

    /// Whether this chain holds the key that checks checkpoints naming `key_id`.
    pub async fn can_check(&self, key_id: &str) -> bool {
        self.signer_for(key_id).await.is_some()
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
        let signer = self.active_signer().await?;
        let key_id = signer.key_id().to_string();
        let message = checkpoint_message(head.seq, &head.hash, time, &key_id);
        Ok(Checkpoint {
            seq: head.seq,
            head_hash: head.hash,
            time,
            mac: signer.sign(&message).await?,
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

    /// Checks a checkpoint's tag with the key it names (a configured checkpoint key, or the
    /// checkpoint key of a master key in the ring). `Ok(false)`: forged or altered; an error
    /// when no key here checks it, or the key's service cannot be reached.
    pub async fn check_checkpoint(&self, cp: &Checkpoint) -> Result<bool> {
        let Some(signer) = self.signer_for(&cp.key_id).await else {
            return Err(Error::KeyUnavailable {
                key_id: cp.key_id.clone(),
                reason: "the checkpoint was made with a key this vault does not hold: add the \
                         master key that made it as a retired key, or the checkpoint key as \
                         a retired checkpoint key (VaultBuilder::retired_checkpoint_key)"
                    .into(),
            });
        };
        signer.verify(&cp.message(), &cp.mac).await
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
            "the checkpoint at seq {} does not authenticate with key {}: it was forged or \
             altered",
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
