//! What the two group-commit writers share: the request a caller queues and the one way to
//! queue it, what became of each batch of a group, and how a failed group answers its callers.

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Batch, CommitReceipt, ReadStamp};
use crate::error::{Error, Result, StoreErrorKind};

/// Where a writer sends one caller's answer.
pub(crate) type Reply = oneshot::Sender<Result<CommitReceipt>>;

/// One caller's batch, queued for a writer.
pub(crate) struct Request {
    /// What to apply.
    pub(crate) batch: Batch,
    /// Commit only if no credential or grant changed since these reads.
    pub(crate) stamp: ReadStamp,
    /// Where the answer goes.
    pub(crate) reply: Reply,
}

/// Queues `batch` with a writer and waits for its answer. `push` hands the request to the
/// writer and returns `false` when the writer has stopped; `writer` names the store in the
/// error (`SQLite`, `PostgreSQL`). A stopped writer is always [`StoreErrorKind::Closed`].
pub(crate) async fn send(
    writer: &str,
    batch: Batch,
    stamp: ReadStamp,
    push: impl FnOnce(Request) -> bool,
) -> Result<CommitReceipt> {
    let (reply, answer) = oneshot::channel();
    let request = Request {
        batch,
        stamp,
        reply,
    };
    if !push(request) {
        return Err(Error::store(
            StoreErrorKind::Closed,
            format!(
                "the {writer} store's writer has stopped (the store was closed, or the runtime \
                 that ran its writer shut down); nothing was written: open the store again"
            ),
        ));
    }
    answer.await.map_err(|_| {
        Error::store(
            StoreErrorKind::Closed,
            format!(
                "the {writer} store's writer stopped before answering; the batch may or may not \
                 have been written: open the store again and read before retrying"
            ),
        )
    })?
}

/// What became of one batch in a group transaction.
pub(crate) enum Outcome {
    /// Refused on its own (a precondition, a stale stamp, a mutation its savepoint undid):
    /// nothing of it is written, whatever becomes of the group.
    Refused(Error),
    /// Applied inside the transaction: written once the transaction commits.
    Applied(CommitReceipt),
    /// Not applied, because the transaction had already failed (or failed on it).
    Skipped,
}

/// Why a group transaction failed: every batch applied in it, or skipped, is answered with
/// it. Its cause, the backend's error, is shared by every answer (errors are not `Clone`),
/// so each answer's source chain reaches it.
pub(crate) struct GroupFailure {
    kind: StoreErrorKind,
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl GroupFailure {
    /// The failure, saying that the transaction was rolled back.
    pub(crate) fn rolled_back(mut self) -> GroupFailure {
        self.message
            .push_str("; the group transaction was rolled back, nothing in it was written");
        self
    }

    /// The error one caller receives.
    pub(crate) fn error(&self) -> Error {
        match &self.cause {
            Some(cause) => Error::store_with_source(
                self.kind,
                self.message.clone(),
                SharedCause(cause.clone()),
            ),
            None => Error::store(self.kind, self.message.clone()),
        }
    }
}

/// A store error keeps its kind, message and source; any other error (a batch that cannot
/// be encoded, say) becomes an [`StoreErrorKind::Other`] failure whose source it is.
impl From<Error> for GroupFailure {
    fn from(error: Error) -> GroupFailure {
        match error {
            Error::Store {
                kind,
                message,
                source,
            } => GroupFailure {
                kind,
                message,
                cause: source.map(Arc::from),
            },
            other => GroupFailure {
                kind: StoreErrorKind::Other,
                message: other.to_string(),
                cause: Some(Arc::new(other)),
            },
        }
    }
}

/// Answers every caller of a group: refused batches with their own error, the others with
/// their receipt when the transaction committed (`failure` is `None`) and with the failure
/// otherwise.
pub(crate) fn answer(results: Vec<(Reply, Outcome)>, failure: Option<&GroupFailure>) {
    for (reply, outcome) in results {
        let answer = match (outcome, failure) {
            (Outcome::Refused(error), _) => Err(error),
            (Outcome::Applied(receipt), None) => Ok(receipt),
            (Outcome::Applied(_) | Outcome::Skipped, Some(failure)) => Err(failure.error()),
            // A group is committed only when nothing was skipped.
            (Outcome::Skipped, None) => Err(Error::store(
                StoreErrorKind::Other,
                "the batch was skipped by a group transaction that committed; it was not written",
            )),
        };
        // A caller that stopped waiting has nothing left to tell.
        let _ = reply.send(answer);
    }
}

/// The backend error behind a failed group transaction, as the source of each caller's
/// error; its own source is the backend's error itself.
#[derive(Debug)]
struct SharedCause(Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the failure of the group transaction, shared by each of its batches")
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
