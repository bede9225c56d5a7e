//! The hash-chained audit log. Two layers: `event` and `encoding` (what a row holds, its
//! canonical encoding and hash, the chain head) sit below `store`, which writes and hashes
//! rows with them and imports them by those paths; `verify` and `checkpoint` (chain
//! verification, `AuditChain`) read a `Store` and sit above it. The encoding is specified in
//! `docs/AUDIT.md`.

mod checkpoint;
pub(crate) mod encoding;
pub(crate) mod event;
mod verify;

pub use crate::crypto::{AuditKey, CheckpointSigner};
pub use checkpoint::{
    checkpoint_key_id, AuditChain, Checkpoint, CheckpointSink, CHECKPOINT_KEY_PURPOSE,
};
pub use encoding::{
    canonical_encoding, chain_hash, AuditDigest, AuditRecord, CanonicalRow, ChainHead,
    CANONICAL_LABEL, GENESIS_HASH,
};
pub use event::{Action, AuditEvent, AuditTarget, Outcome};
pub use verify::{verify_chain, ChainProblem, ProblemKind, VerifyReport};

/// The default [`crate::Store::audit_digests`], kept here under its old path.
pub use crate::store::digests_from_records;
