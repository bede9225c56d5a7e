//! Chain verification: reads a store's rows (as digests) page by page and reports the first
//! bad sequence number. Sits above `store`, which it reads.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::encoding::{AuditDigest, ChainHead, GENESIS_HASH};
use crate::error::Result;
use crate::store::Store;

/// Rows read per page while verifying.
const VERIFY_PAGE: usize = 8192;

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

pub(super) async fn verify_rows(
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
