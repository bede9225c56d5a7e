//! The in-memory audit log: every row (in fixed-size chunks), or only the newest rows of a
//! window (a ring), with the hash of the last row it dropped as the anchor the kept rows
//! chain from.

use std::collections::VecDeque;

use crate::audit::encoding::{chain_hash, AuditRecord, ChainHead, GENESIS_HASH};
use crate::error::{Error, Result};
use crate::store::AuditQuery;

/// Rows per chunk of an unbounded log.
const AUDIT_CHUNK: usize = 1 << 14;

/// What a [`super::MemoryStore`]'s audit log holds ([`super::MemoryStore::audit_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditWindow {
    /// Most rows kept (`None`: every row is kept).
    pub capacity: Option<usize>,
    /// Rows kept now.
    pub kept: usize,
    /// Rows dropped so far: rows `1..=dropped` are gone.
    pub dropped: u64,
    /// The last dropped row (`seq == dropped`) and its hash, which the oldest kept row's
    /// `prev_hash` must equal; `None` while nothing was dropped (the oldest kept row is then
    /// row 1, chained from the genesis hash).
    pub anchor: Option<ChainHead>,
    /// The chain head: the newest row.
    pub head: Option<ChainHead>,
}

enum Rows {
    /// Every row, in chunks, so a long-running store never copies its whole log to grow it
    /// (a copy that would hold the lock for as long as it takes).
    All(Vec<Vec<AuditRecord>>),
    /// The newest `capacity` rows.
    Window {
        capacity: usize,
        rows: VecDeque<AuditRecord>,
    },
}

/// The rows and the anchor of what was dropped.
pub(super) struct AuditLog {
    rows: Rows,
    anchor: Option<ChainHead>,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog {
            rows: Rows::All(Vec::new()),
            anchor: None,
        }
    }
}

impl AuditLog {
    /// A log that keeps the newest `capacity` rows (at least 1).
    pub(super) fn window(capacity: usize) -> AuditLog {
        let capacity = capacity.max(1);
        AuditLog {
            rows: Rows::Window {
                capacity,
                rows: VecDeque::with_capacity(capacity.min(AUDIT_CHUNK)),
            },
            anchor: None,
        }
    }

    /// Appends a row; a window returns the row it drops to make room (the caller frees it,
    /// outside the store's lock).
    #[must_use]
    pub(super) fn push(&mut self, record: AuditRecord) -> Option<AuditRecord> {
        match &mut self.rows {
            Rows::All(chunks) => {
                match chunks.last_mut() {
                    Some(chunk) if chunk.len() < AUDIT_CHUNK => chunk.push(record),
                    _ => {
                        let mut chunk = Vec::with_capacity(AUDIT_CHUNK);
                        chunk.push(record);
                        chunks.push(chunk);
                    }
                }
                None
            }
            Rows::Window { capacity, rows } => {
                let old = if rows.len() == *capacity {
                    rows.pop_front()
                } else {
                    None
                };
                if let Some(old) = &old {
                    self.anchor = Some(ChainHead {
                        seq: old.seq,
                        hash: old.hash,
                    });
                }
                rows.push_back(record);
                old
            }
        }
    }

    pub(super) fn last(&self) -> Option<&AuditRecord> {
        match &self.rows {
            Rows::All(chunks) => chunks.last().and_then(|c| c.last()),
            Rows::Window { rows, .. } => rows.back(),
        }
    }

    /// The last dropped sequence number (0 while nothing was dropped).
    fn dropped(&self) -> u64 {
        self.anchor.map_or(0, |a| a.seq)
    }

    fn len(&self) -> usize {
        match &self.rows {
            Rows::All(chunks) => chunks.iter().map(Vec::len).sum(),
            Rows::Window { rows, .. } => rows.len(),
        }
    }

    /// Every kept row, oldest first.
    fn iter(&self) -> Box<dyn DoubleEndedIterator<Item = &AuditRecord> + '_> {
        match &self.rows {
            Rows::All(chunks) => Box::new(chunks.iter().flatten()),
            Rows::Window { rows, .. } => Box::new(rows.iter()),
        }
    }

    /// Kept rows with `seq >= from` (rows are in sequence order), oldest first.
    fn iter_from(&self, from: u64) -> Box<dyn Iterator<Item = &AuditRecord> + '_> {
        match &self.rows {
            Rows::All(chunks) => {
                let first = chunks.partition_point(|c| c.last().is_some_and(|r| r.seq < from));
                let start = chunks
                    .get(first)
                    .map_or(0, |c| c.partition_point(|r| r.seq < from));
                Box::new(
                    chunks[first..]
                        .iter()
                        .enumerate()
                        .flat_map(move |(i, c)| &c[if i == 0 { start } else { 0 }..]),
                )
            }
            Rows::Window { rows, .. } => {
                let start = rows.partition_point(|r| r.seq < from);
                Box::new(rows.range(start..))
            }
        }
    }

    /// The error for a read that needs dropped rows.
    fn dropped_rows(&self, from: u64) -> Error {
        let dropped = self.dropped();
        let capacity = match &self.rows {
            Rows::Window { capacity, .. } => *capacity,
            Rows::All(_) => 0,
        };
        Error::NotFound {
            what: format!("audit rows {}..={dropped}", from.max(1)),
            hint: Some(format!(
                "this MemoryStore keeps only its newest {capacity} audit rows \
                 (MemoryStore::with_audit_window) and has dropped rows 1..={dropped}; read \
                 from row {} on, and check the kept rows with MemoryStore::verify_kept_audit",
                dropped + 1
            )),
        }
    }

    /// Up to `limit` rows with `seq >= from`; an error when some of them were dropped.
    pub(super) fn range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        // Row 0 does not exist: a read from 0 asks for nothing dropped unless rows were.
        if limit > 0 && self.dropped() > 0 && from <= self.dropped() {
            return Err(self.dropped_rows(from));
        }
        Ok(self.iter_from(from).take(limit).cloned().collect())
    }

    /// The rows matching `query` (the same rows, in the same order, as a scan of the whole
    /// chain); an error when the answer depends on dropped rows.
    pub(super) fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let floor = query.after.map_or(1, |a| a.saturating_add(1));
        // Does the queried range reach below the kept rows?
        let reaches_dropped = floor <= self.dropped() && query.before.is_none_or(|b| b > floor);
        if !query.newest_first {
            if reaches_dropped {
                return Err(self.dropped_rows(floor));
            }
            return Ok(self
                .iter_from(floor)
                .take_while(|r| query.before.is_none_or(|b| r.seq < b))
                .filter(|r| query.matches(r))
                .take(query.limit)
                .cloned()
                .collect());
        }
        let out: Vec<AuditRecord> = self
            .iter()
            .rev()
            .filter(|r| query.matches(r))
            .take(query.limit)
            .cloned()
            .collect();
        if out.len() < query.limit && reaches_dropped {
            // The rest of the answer would be in the dropped rows.
            return Err(self.dropped_rows(floor));
        }
        Ok(out)
    }

    pub(super) fn describe(&self, head: Option<ChainHead>) -> AuditWindow {
        AuditWindow {
            capacity: match &self.rows {
                Rows::Window { capacity, .. } => Some(*capacity),
                Rows::All(_) => None,
            },
            kept: self.len(),
            dropped: self.dropped(),
            anchor: self.anchor,
            head,
        }
    }

    /// Checks the kept rows: consecutive sequence numbers from the anchor on, each row's
    /// `prev_hash` the hash before it (the anchor's for the oldest), each hash recomputed,
    /// and the newest row the head. The first bad row is a [`Error::CorruptAuditRow`].
    pub(super) fn verify(&self, head: Option<ChainHead>) -> Result<AuditWindow> {
        let (mut seq, mut prev) = match self.anchor {
            Some(a) => (a.seq, a.hash),
            None => (0, GENESIS_HASH),
        };
        for row in self.iter() {
            let expected = seq + 1;
            let bad = |reason: String| Error::CorruptAuditRow {
                seq: expected,
                reason,
            };
            if row.seq != expected {
                return Err(bad(format!(
                    "row {expected} is missing or out of place (row {} is there)",
                    row.seq
                )));
            }
            if row.prev_hash != prev {
                return Err(bad(format!(
                    "its prev_hash is not row {}'s hash (rows were inserted, deleted or reordered)",
                    expected - 1
                )));
            }
            if chain_hash(&prev, row.seq, &row.event) != row.hash {
                return Err(bad(
                    "its contents do not match its hash (the row was edited)".into(),
                ));
            }
            seq = row.seq;
            prev = row.hash;
        }
        let end = (seq > 0).then_some(ChainHead { seq, hash: prev });
        if end != head {
            return Err(Error::CorruptAuditRow {
                seq: head.map_or(seq, |h| h.seq),
                reason: format!(
                    "the chain head is row {:?} but the kept rows end at row {seq}",
                    head.map(|h| h.seq)
                ),
            });
        }
        Ok(self.describe(head))
    }

    /// Every kept row, handed out (for the tamper hook); `restore` puts rows back.
    pub(super) fn take_rows(&mut self) -> Vec<AuditRecord> {
        match &mut self.rows {
            Rows::All(chunks) => std::mem::take(chunks).into_iter().flatten().collect(),
            Rows::Window { rows, .. } => std::mem::take(rows).into_iter().collect(),
        }
    }
}
