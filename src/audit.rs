//! The hash-chained audit log: events, their canonical encoding (`docs/AUDIT.md`), chain
//! verification, and checkpoints authenticated with a key derived from the master key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::crypto::KeyRing;
use crate::error::{Error, Result};
use crate::model::{CredentialId, Scope, Timestamp};
use crate::store::{CommitReceipt, Store};

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];
/// The domain label that starts every row's canonical encoding.
pub const CANONICAL_LABEL: &[u8] = b"strongroom/audit/v1";
const CHECKPOINT_LABEL: &[u8] = b"strongroom/checkpoint/v1";
/// The purpose string passed to [`crate::crypto::KeyWrapper::derive_key`] for the checkpoint key.
pub const CHECKPOINT_KEY_PURPOSE: &str = "strongroom audit checkpoint v1";
/// Rows read per page while verifying.
const VERIFY_PAGE: usize = 8192;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It was done.
    Success,
    /// The policy refused it.
    Denied,
    /// It was attempted and failed.
    Failure,
}

impl Outcome {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Outcome> {
        match text {
            "success" => Ok(Outcome::Success),
            "denied" => Ok(Outcome::Denied),
            "failure" => Ok(Outcome::Failure),
            other => Err(Error::invalid(
                "outcome",
                format!("unknown outcome `{other}`; use success, denied or failure"),
            )),
        }
    }
}

/// What an audit event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTarget {
    /// The credential, when the action concerns one.
    pub credential_id: Option<CredentialId>,
    /// Its scope (kind and owner), when known.
    pub scope: Option<Scope>,
}

impl AuditTarget {
    /// No particular target (key operations, admin actions).
    pub fn none() -> AuditTarget {
        AuditTarget::default()
    }

    /// A credential in a scope.
    pub fn credential(id: &CredentialId, scope: &Scope) -> AuditTarget {
        AuditTarget {
            credential_id: Some(id.clone()),
            scope: Some(scope.clone()),
        }
    }

    /// A scope without a particular credential.
    pub fn scope(scope: &Scope) -> AuditTarget {
        AuditTarget {
            credential_id: None,
            scope: Some(scope.clone()),
        }
    }

    /// `(credential id, scope kind, owner)` as stored, empty strings for absent parts.
    pub fn columns(&self) -> (String, String, String) {
        (
            self.credential_id
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            self.scope
                .as_ref()
                .map(|s| s.kind().as_str().to_string())
                .unwrap_or_default(),
            self.scope.as_ref().map(Scope::owner).unwrap_or_default(),
        )
    }

    /// Checks stored columns the way [`AuditTarget::from_columns`] does, without building
    /// anything (for stores that hash rows straight from their columns).
    pub fn check_columns(credential_id: &str, scope_kind: &str, owner: &str) -> Result<()> {
        if !credential_id.is_empty() {
            crate::model::validate_id("credential id", credential_id)?;
        }
        if scope_kind.is_empty() {
            return Ok(());
        }
        match crate::model::ScopeKind::parse(scope_kind)? {
            crate::model::ScopeKind::SystemWide if owner.is_empty() => Ok(()),
            crate::model::ScopeKind::SystemWide => Err(Error::invalid(
                "scope owner",
                "a system_wide scope has no owner",
            )),
            crate::model::ScopeKind::PerAppPerUser => match owner.split_once('/') {
                Some((app, user)) => {
                    crate::model::validate_id("app id", app)?;
                    crate::model::validate_id("user id", user)
                }
                None => Err(Error::invalid(
                    "scope owner",
                    "a per_app_per_user owner is written `app/user`",
                )),
            },
            _ => crate::model::validate_id("scope owner", owner),
        }
    }

    /// Rebuilds a target from its stored columns.
    pub fn from_columns(credential_id: &str, scope_kind: &str, owner: &str) -> Result<AuditTarget> {
        let credential_id = if credential_id.is_empty() {
            None
        } else {
            Some(CredentialId::new(credential_id)?)
        };
        let scope = if scope_kind.is_empty() {
            None
        } else {
            Some(Scope::from_parts(
                crate::model::ScopeKind::parse(scope_kind)?,
                owner,
            )?)
        };
        Ok(AuditTarget {
            credential_id,
            scope,
        })
    }
}

/// One audited action, before the store numbers and chains it. Never put secret values in
/// any field: details are for ids, counts, reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: Timestamp,
    /// Who did it (principal id).
    pub actor: String,
    /// What was done (`credential.create`, `credential.reveal`, `keys.rewrap`, …).
    pub action: String,
    /// What it was done to.
    pub target: AuditTarget,
    /// How it ended.
    pub outcome: Outcome,
    /// Non-secret details, sorted by key.
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// A successful event at the current time.
    pub fn new(actor: impl Into<String>, action: impl Into<String>, target: AuditTarget) -> Self {
        AuditEvent {
            time: Timestamp::now(),
            actor: actor.into(),
            action: action.into(),
            target,
            outcome: Outcome::Success,
            details: BTreeMap::new(),
        }
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Adds a non-secret detail.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Sets the time.
    pub fn at(mut self, time: Timestamp) -> Self {
        self.time = time;
        self
    }
}

/// A stored audit row: the event, its sequence number and its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// The previous row's hash ([`GENESIS_HASH`] for row 1).
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash || canonical_encoding(seq, event))`.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

/// The last row of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl ChainHead {
    /// Numbers and chains `event` after `head` (or as row 1), advancing `head`.
    pub fn append(head: &mut Option<ChainHead>, event: AuditEvent) -> AuditRecord {
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS_HASH),
        };
        let hash = chain_hash(&prev_hash, seq, &event);
        *head = Some(ChainHead { seq, hash });
        AuditRecord {
            seq,
            event,
            prev_hash,
            hash,
        }
    }
}

/// Where canonical bytes go: a buffer (to show them) or a hasher (to hash them in place).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_lp(&mut self, text: &str) {
        self.put(&(text.len() as u32).to_be_bytes());
        self.put(text.as_bytes());
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// A row's fields exactly as the canonical encoding reads them, borrowed. Stores use it to
/// hash rows straight from their columns; `details` must be in ascending byte order of keys.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalRow<'a, D> {
    /// Sequence number.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time: i64,
    /// Actor.
    pub actor: &'a str,
    /// Action.
    pub action: &'a str,
    /// Credential id or `""`.
    pub credential_id: &'a str,
    /// Scope kind or `""`.
    pub scope_kind: &'a str,
    /// Owner or `""`.
    pub owner: &'a str,
    /// Outcome text.
    pub outcome: &'a str,
    /// Details, sorted by key.
    pub details: D,
}

impl<'a, D> CanonicalRow<'a, D>
where
    D: ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
{
    fn encode(&self, sink: &mut impl Sink) {
        sink.put(CANONICAL_LABEL);
        sink.put(&self.seq.to_be_bytes());
        sink.put(&self.time.to_be_bytes());
        for field in [
            self.actor,
            self.action,
            self.credential_id,
            self.scope_kind,
            self.owner,
            self.outcome,
        ] {
            sink.put_lp(field);
        }
        sink.put(&(self.details.len() as u32).to_be_bytes());
        for (k, v) in self.details.clone() {
            sink.put_lp(k);
            sink.put_lp(v);
        }
    }

    /// The canonical encoding as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.encode(&mut out);
        out
    }

    /// `SHA-256(prev_hash || canonical encoding)`.
    pub fn hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        self.encode(&mut hasher);
        hasher.finalize().into()
    }
}

fn event_owner(event: &AuditEvent) -> String {
    event
        .target
        .scope
        .as_ref()
        .map(Scope::owner)
        .unwrap_or_default()
}

fn canonical_row<'a>(
    seq: u64,
    event: &'a AuditEvent,
    owner: &'a str,
) -> CanonicalRow<'a, impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone + 'a> {
    CanonicalRow {
        seq,
        time: event.time.0,
        actor: &event.actor,
        action: &event.action,
        credential_id: event
            .target
            .credential_id
            .as_ref()
            .map(|c| c.as_str())
            .unwrap_or(""),
        scope_kind: event
            .target
            .scope
            .as_ref()
            .map(|s| s.kind().as_str())
            .unwrap_or(""),
        owner,
        outcome: event.outcome.as_str(),
        details: event.details.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    }
}

/// The canonical encoding of a row (see `docs/AUDIT.md`): the label, `seq` (u64 BE), time
/// (i64 BE, ms), then length-prefixed (u32 BE) actor, action, credential id, scope kind,
/// owner, outcome, then the detail count (u32 BE) and each key and value length-prefixed,
/// in byte order of the keys.
pub fn canonical_encoding(seq: u64, event: &AuditEvent) -> Vec<u8> {
    let owner = event_owner(event);
    let bytes = canonical_row(seq, event, &owner).to_bytes();
    bytes
}

/// `SHA-256(prev_hash || canonical_encoding(seq, event))`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: u64, event: &AuditEvent) -> [u8; 32] {
    let owner = event_owner(event);
    let hash = canonical_row(seq, event, &owner).hash(prev_hash);
    hash
}

/// What chain verification needs of one row: its number, its stored links, and the hash
/// recomputed from its contents (or why its contents cannot be decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDigest {
    /// Sequence number.
    pub seq: u64,
    /// The stored `prev_hash`.
    pub prev_hash: [u8; 32],
    /// The stored `hash`.
    pub hash: [u8; 32],
    /// `SHA-256(stored prev_hash || canonical(contents))`, or why the row does not decode.
    pub computed: std::result::Result<[u8; 32], String>,
}

impl AuditDigest {
    /// The digest of a decoded row.
    pub fn of(record: &AuditRecord) -> AuditDigest {
        AuditDigest {
            seq: record.seq,
            prev_hash: record.prev_hash,
            hash: record.hash,
            computed: Ok(chain_hash(&record.prev_hash, record.seq, &record.event)),
        }
    }
}

/// The default [`Store::audit_digests`]: reads rows with [`Store::audit_range`] and hashes
/// them. A row the store cannot decode ends the page as an undecodable digest.
pub async fn digests_from_records<S: Store + ?Sized>(
    store: &S,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditDigest>> {
    match store.audit_range(from, limit).await {
        Ok(rows) => Ok(rows.iter().map(AuditDigest::of).collect()),
        Err(Error::CorruptAuditRow { seq, reason }) if seq >= from => {
            // Read the good rows before it. Rows may be missing below `seq`, so their count
            // is unknown: find the largest limit that stops short of the bad row.
            let (mut lo, mut hi) = (0usize, ((seq - from) as usize).min(limit));
            let mut best = Vec::new();
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                match store.audit_range(from, mid).await {
                    Ok(rows) => {
                        best = rows;
                        lo = mid;
                    }
                    Err(Error::CorruptAuditRow { .. }) => hi = mid - 1,
                    Err(e) => return Err(e),
                }
            }
            if best.len() != lo {
                best = store.audit_range(from, lo).await?;
            }
            let mut out: Vec<AuditDigest> = best.iter().map(AuditDigest::of).collect();
            out.push(AuditDigest {
                seq,
                prev_hash: [0; 32],
                hash: [0; 32],
                computed: Err(reason),
            });
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A sequence number is missing (a row was deleted).
    Missing,
    /// A row's sequence number is not the next one (rows inserted or reordered).
    OutOfOrder,
    /// A row's `prev_hash` is not the previous row's hash.
    PrevHashMismatch,
    /// A row's `hash` does not match its contents (the row was edited).
    HashMismatch,
    /// A row's columns were edited into values that cannot even be decoded.
    Undecodable,
    /// The chain ends before a checkpoint's sequence number (tail truncated).
    Truncated,
    /// The row at a checkpoint's sequence number no longer has the checkpointed hash (rows
    /// were rewritten and their hashes recomputed).
    CheckpointMismatch,
    /// A checkpoint's authentication code is wrong (forged, or made with another key).
    ForgedCheckpoint,
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainProblem {
    /// The first sequence number known to be bad.
    pub seq: u64,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// A sentence for an operator.
    pub detail: String,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "first bad sequence number {}: {}", self.seq, self.detail)
    }
}

/// The result of verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Rows read and checked.
    pub rows: u64,
    /// The last good row.
    pub head: Option<ChainHead>,
    /// The first problem, or `None` when the chain is intact.
    pub problem: Option<ChainProblem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// The first bad sequence number, if any.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problem.as_ref().map(|p| p.seq)
    }
}

/// Checks a run of rows against the state carried from the rows before them.
struct Verifier {
    expected_seq: u64,
    prev_hash: [u8; 32],
    rows: u64,
    /// Sorted checkpoint seqs still to be passed, with the hash seen at each.
    watch: Vec<u64>,
    seen: BTreeMap<u64, [u8; 32]>,
}

impl Verifier {
    fn new(watch: Vec<u64>) -> Verifier {
        Verifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH,
            rows: 0,
            watch,
            seen: BTreeMap::new(),
        }
    }

    fn check(&mut self, row: &AuditDigest) -> Option<ChainProblem> {
        let seq = self.expected_seq;
        if row.seq != seq {
            let (kind, detail) = if row.seq > seq {
                (
                    ProblemKind::Missing,
                    format!("row {seq} is missing (the next row is {})", row.seq),
                )
            } else {
                (
                    ProblemKind::OutOfOrder,
                    format!("row {} appears where row {seq} was expected", row.seq),
                )
            };
            return Some(ChainProblem { seq, kind, detail });
        }
        let computed = match &row.computed {
            Ok(hash) => hash,
            Err(reason) => {
                return Some(ChainProblem {
                    seq,
                    kind: ProblemKind::Undecodable,
                    detail: format!("row {seq} cannot be decoded (it was edited): {reason}"),
                })
            }
        };
        if row.prev_hash != self.prev_hash {
            return Some(ChainProblem {
                seq,
                kind: ProblemKind::PrevHashMismatch,
                detail: format!(
                    "row {seq}'s prev_hash is not row {}'s hash (rows were inserted, deleted or reordered)",
                    seq - 1
                ),
            });
        }
        if *computed != row.hash {
            return Some(ChainProblem {
                seq,
                kind: ProblemKind::HashMismatch,
                detail: format!("row {seq}'s contents do not match its hash (the row was edited)"),
            });
        }
        if self.watch.binary_search(&seq).is_ok() {
            self.seen.insert(seq, row.hash);
        }
        self.prev_hash = row.hash;
        self.expected_seq += 1;
        self.rows += 1;
        None
    }

    fn head(&self) -> Option<ChainHead> {
        (self.expected_seq > 1).then(|| ChainHead {
            seq: self.expected_seq - 1,
            hash: self.prev_hash,
        })
    }
}

/// Verifies a whole chain from `store`, reporting the first bad sequence number.
pub async fn verify_chain(store: &dyn Store) -> Result<VerifyReport> {
    verify_rows(store, Vec::new())
        .await
        .map(|(report, _)| report)
}

/// Reads two consecutive pages at once (the second speculatively from `from + VERIFY_PAGE`,
/// which is right whenever the first page is whole and intact — and when it is not, the
/// first page's problem is reported before the second is looked at).
async fn fetch_pair(
    store: &dyn Store,
    from: u64,
) -> (Result<Vec<AuditDigest>>, Result<Vec<AuditDigest>>) {
    tokio::join!(
        store.audit_digests(from, VERIFY_PAGE),
        store.audit_digests(from + VERIFY_PAGE as u64, VERIFY_PAGE)
    )
}

fn is_whole(page: &[AuditDigest]) -> bool {
    page.len() == VERIFY_PAGE && page.iter().all(|d| d.computed.is_ok())
}

async fn verify_rows(
    store: &dyn Store,
    watch: Vec<u64>,
) -> Result<(VerifyReport, BTreeMap<u64, [u8; 32]>)> {
    let mut v = Verifier::new(watch);
    let mut problem = None;
    let mut from = 1u64;
    let mut pair = fetch_pair(store, from).await;
    loop {
        let first = pair.0?;
        if let Some(p) = first.iter().find_map(|row| v.check(row)) {
            problem = Some(p);
            break;
        }
        if !is_whole(&first) {
            break;
        }
        let second = pair.1?;
        let more = is_whole(&second);
        from += 2 * VERIFY_PAGE as u64;
        // Hash the next two pages while checking the second.
        let fetch = async {
            if more {
                Some(fetch_pair(store, from).await)
            } else {
                None
            }
        };
        let check = async { second.iter().find_map(|row| v.check(row)) };
        let (next, found) = tokio::join!(fetch, check);
        if found.is_some() {
            problem = found;
            break;
        }
        match next {
            Some(next) => pair = next,
            None => break,
        }
    }
    let head = v.head();
    let seen = std::mem::take(&mut v.seen);
    Ok((
        VerifyReport {
            rows: v.rows,
            head,
            problem,
        },
        seen,
    ))
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
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret()).expect("HMAC takes any key");
    mac.update(CHECKPOINT_LABEL);
    mac.update(&seq.to_be_bytes());
    mac.update(hash);
    mac.update(&time.0.to_be_bytes());
    mac.update(&(key_id.len() as u32).to_be_bytes());
    mac.update(key_id.as_bytes());
    mac.finalize().into_bytes().into()
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
        let key = active.derive_key(CHECKPOINT_KEY_PURPOSE).await?;
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
        let key = wrapper.derive_key(CHECKPOINT_KEY_PURPOSE).await?;
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
    /// means the tail was truncated; a checkpoint whose hash differs means rows up to it
    /// were rewritten (the first bad sequence number reported is then the one after the
    /// last checkpoint that still matches).
    pub async fn verify_against(&self, checkpoints: &[Checkpoint]) -> Result<VerifyReport> {
        let mut cps: Vec<&Checkpoint> = checkpoints.iter().collect();
        cps.sort_by_key(|c| c.seq);
        for cp in &cps {
            if !self.check_checkpoint(cp).await? {
                return Ok(VerifyReport {
                    rows: 0,
                    head: None,
                    problem: Some(ChainProblem {
                        seq: cp.seq,
                        kind: ProblemKind::ForgedCheckpoint,
                        detail: format!(
                            "the checkpoint at row {} does not authenticate with master key {}",
                            cp.seq, cp.key_id
                        ),
                    }),
                });
            }
        }
        let watch: Vec<u64> = cps.iter().map(|c| c.seq).collect();
        let (mut report, seen) = verify_rows(self.store.as_ref(), watch).await?;
        let chain_bad = report.first_bad_seq();
        let mut last_good = 0u64;
        for cp in cps {
            if chain_bad.is_some_and(|bad| cp.seq >= bad) {
                break; // the chain itself already failed before this checkpoint
            }
            let problem = match seen.get(&cp.seq) {
                None => Some(ChainProblem {
                    seq: report.head.map(|h| h.seq + 1).unwrap_or(1),
                    kind: ProblemKind::Truncated,
                    detail: format!(
                        "the chain ends at row {} but a checkpoint vouches for row {}: the tail was truncated",
                        report.head.map(|h| h.seq).unwrap_or(0),
                        cp.seq
                    ),
                }),
                Some(hash) if *hash != cp.head_hash => Some(ChainProblem {
                    seq: last_good + 1,
                    kind: ProblemKind::CheckpointMismatch,
                    detail: format!(
                        "row {} no longer has the hash its checkpoint vouches for: rows {}..={} were rewritten",
                        cp.seq,
                        last_good + 1,
                        cp.seq
                    ),
                }),
                Some(_) => None,
            };
            if let Some(p) = problem {
                report.problem = Some(p);
                break;
            }
            last_good = cp.seq;
        }
        Ok(report)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of `docs/AUDIT.md`; the doc quotes these exact bytes.
    pub(crate) fn worked_example() -> AuditEvent {
        AuditEvent {
            time: Timestamp(1_764_000_000_000),
            actor: "alice".into(),
            action: "credential.create".into(),
            target: AuditTarget::credential(
                &CredentialId::new("cred-1").expect("id"),
                &Scope::per_user("alice").expect("scope"),
            ),
            outcome: Outcome::Success,
            details: BTreeMap::from([("provider".to_string(), "openai".to_string())]),
        }
    }

    #[test]
    fn worked_example_matches_the_documentation() {
        let event = worked_example();
        let canonical = canonical_encoding(1, &event);
        let hash = chain_hash(&GENESIS_HASH, 1, &event);
        let doc = include_str!("../docs/AUDIT.md");
        assert!(
            doc.contains(&hex::encode(&canonical)),
            "canonical hex {}",
            hex::encode(&canonical)
        );
        assert!(
            doc.contains(&hex::encode(hash)),
            "hash {}",
            hex::encode(hash)
        );
    }
}
