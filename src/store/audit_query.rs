//! Reading the audit log by what a row says rather than by position: [`AuditQuery`] (which
//! rows, from where, how many) and the scan every store can fall back on.

use crate::audit::encoding::AuditRecord;
use crate::audit::event::{Action, Outcome};
use crate::error::Result;
use crate::model::{CredentialId, Timestamp};

use super::Store;

/// Which audit rows [`Store::audit_query`] returns: those matching every filter that is set,
/// in sequence order (oldest first, or newest first with [`AuditQuery::newest_first`]), at
/// most [`AuditQuery::limit`] of them.
///
/// Page through a long log with the cursor: pass the last row's `seq` back as `after`
/// (oldest first) or `before` (newest first). The cursor is a sequence number, not an
/// offset, so rows appended meanwhile never shift a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only rows about this credential.
    pub credential_id: Option<CredentialId>,
    /// Only rows by this principal (as written in the row: `app_user:crm:alice`).
    pub actor: Option<String>,
    /// Only rows of this action.
    pub action: Option<Action>,
    /// Only rows with this outcome.
    pub outcome: Option<Outcome>,
    /// Only rows written at or after this time.
    pub since: Option<Timestamp>,
    /// Only rows written before this time.
    pub until: Option<Timestamp>,
    /// Only rows whose `seq` is greater than this.
    pub after: Option<u64>,
    /// Only rows whose `seq` is less than this.
    pub before: Option<u64>,
    /// Newest first (descending `seq`) instead of oldest first.
    pub newest_first: bool,
    /// At most this many rows (default 100).
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            credential_id: None,
            actor: None,
            action: None,
            outcome: None,
            since: None,
            until: None,
            after: None,
            before: None,
            newest_first: false,
            limit: 100,
        }
    }
}

impl AuditQuery {
    /// Does `row` pass every filter and the cursor?
    pub fn matches(&self, row: &AuditRecord) -> bool {
        let e = &row.event;
        self.after.is_none_or(|a| row.seq > a)
            && self.before.is_none_or(|b| row.seq < b)
            && self
                .credential_id
                .as_ref()
                .is_none_or(|id| e.target.credential_id.as_ref() == Some(id))
            && self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.is_none_or(|a| e.action == a)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.since.is_none_or(|s| e.time >= s)
            && self.until.is_none_or(|u| e.time < u)
    }
}

/// Rows read per step by [`audit_query_by_scan`].
const SCAN_PAGE: usize = 1_000;

/// The provided [`Store::audit_query`]: reads the chain in pages with
/// [`Store::audit_range`] (from the cursor, forwards or backwards from the head) and keeps
/// the rows that match. A store with an index or a query language overrides it; the
/// conformance suite checks that both agree.
pub async fn audit_query_by_scan<S: Store + ?Sized>(
    store: &S,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    if query.limit == 0 {
        return Ok(out);
    }
    if !query.newest_first {
        let mut from = query.after.map_or(1, |a| a.saturating_add(1));
        loop {
            let page = store.audit_range(from, SCAN_PAGE).await?;
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            for row in page {
                if query.before.is_some_and(|b| row.seq >= b) {
                    return Ok(out);
                }
                if query.matches(&row) {
                    out.push(row);
                    if out.len() == query.limit {
                        return Ok(out);
                    }
                }
            }
            if last == u64::MAX {
                break;
            }
            from = last + 1;
        }
        return Ok(out);
    }
    // Newest first: pages end just below the cursor (or at the head) and step back.
    let Some(head) = store.chain_head().await? else {
        return Ok(out);
    };
    let mut end = match query.before {
        Some(b) => b.saturating_sub(1).min(head.seq),
        None => head.seq,
    };
    let floor = query.after.map_or(1, |a| a.saturating_add(1));
    while end >= floor && end > 0 {
        let from = end.saturating_sub(SCAN_PAGE as u64 - 1).max(floor);
        let page = store.audit_range(from, (end - from + 1) as usize).await?;
        for row in page.into_iter().rev() {
            if row.seq > end {
                continue;
            }
            if query.matches(&row) {
                out.push(row);
                if out.len() == query.limit {
                    return Ok(out);
                }
            }
        }
        if from <= floor {
            break;
        }
        end = from - 1;
    }
    Ok(out)
}
