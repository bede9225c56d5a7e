//! One `tracing` span per public vault operation.
//!
//! Every operation runs inside a span named `vault` at INFO level with the fields `op`
//! (the method's name), `principal` (the acting principal, as audit rows name it),
//! `credential_id` and `scope` (once known: from the arguments, or from the credential
//! once it is loaded — [`found`]), `outcome` (`ok`, or the [`crate::ErrorKind`] of the
//! error) and `duration_us` (microseconds, set as the operation ends, before the span
//! closes). Nothing else is recorded: never a field value, a token or an error message
//! (which may quote caller input).

use std::future::Future;
use std::time::Instant;

use tracing::field::{display, Empty};
use tracing::{Instrument, Span};

use super::{Principal, ResolveManyError};
use crate::error::{Error, Result};
use crate::model::{CredentialId, CredentialRecord, Scope};

/// The span of one vault operation (see the module documentation).
pub(crate) struct Op {
    span: Span,
}

/// Starts the span of operation `name`.
pub(crate) fn op(name: &'static str) -> Op {
    Op {
        span: tracing::info_span!(
            "vault",
            op = name,
            principal = Empty,
            credential_id = Empty,
            scope = Empty,
            outcome = Empty,
            duration_us = Empty,
        ),
    }
}

/// Records a credential's id and scope on the span of the operation running now, once the
/// operation has loaded it.
pub(crate) fn found(record: &CredentialRecord) {
    let span = Span::current();
    span.record("credential_id", display(&record.id));
    span.record("scope", display(&record.scope));
}

/// Records the scope the operation running now works in, once it is known.
pub(crate) fn in_scope(scope: &Scope) {
    Span::current().record("scope", display(scope));
}

impl Op {
    /// Records the acting principal.
    pub(crate) fn actor(self, actor: &Principal) -> Op {
        self.span.record("principal", display(actor));
        self
    }

    /// Records the credential the operation is about.
    pub(crate) fn id(self, id: &CredentialId) -> Op {
        self.span.record("credential_id", display(id));
        self
    }

    /// Records the scope the operation is about.
    pub(crate) fn scope(self, scope: &Scope) -> Op {
        self.span.record("scope", display(scope));
        self
    }

    /// Runs the operation inside the span, then records its outcome and duration.
    pub(crate) async fn run<T>(self, op: impl Future<Output = Result<T>>) -> Result<T> {
        // No subscriber wants the span: nothing to enter, time or record.
        if self.span.is_disabled() {
            return op.await;
        }
        let started = Instant::now();
        let result = op.instrument(self.span.clone()).await;
        self.end(started, result.as_ref().err());
        result
    }

    /// [`Op::run`] of a batch resolve.
    pub(crate) async fn run_many<T>(
        self,
        op: impl Future<Output = std::result::Result<T, ResolveManyError>>,
    ) -> std::result::Result<T, ResolveManyError> {
        if self.span.is_disabled() {
            return op.await;
        }
        let started = Instant::now();
        let result = op.instrument(self.span.clone()).await;
        self.end(started, result.as_ref().err().map(|e| &e.error));
        result
    }

    fn end(self, started: Instant, error: Option<&Error>) {
        match error {
            None => self.span.record("outcome", "ok"),
            Some(e) => self.span.record("outcome", tracing::field::debug(e.kind())),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.span.record("duration_us", micros);
    }
}
