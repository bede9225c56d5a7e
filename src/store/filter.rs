//! Which credentials and records to list: [`ListFilter`] and [`RecordFilter`], and how a
//! record is tested against them (the SQL stores translate them in `store::sql`).

use crate::model::{
    CredentialId, CredentialRecord, LifecycleState, Record, RecordKey, Scope, ScopeKind, Timestamp,
};

/// Which credentials to list. Every set field must match; results come in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exactly this scope (kind and owner).
    pub scope: Option<Scope>,
    /// Any scope of this kind.
    pub scope_kind: Option<ScopeKind>,
    /// This name (`ref`).
    pub name: Option<String>,
    /// This provider.
    pub provider: Option<String>,
    /// This handler type (`oauth2`, `api_key`, …).
    pub handler_type: Option<String>,
    /// Only credentials whose `expires_at` is set and earlier than this (strictly): what a
    /// refresher has to renew, found without decrypting anything.
    pub expires_before: Option<Timestamp>,
    /// This lifecycle state (as stored: a credential past its `expires_at` is still stored
    /// as `filled` or `valid`; use `expires_before` to find it).
    pub state: Option<LifecycleState>,
    /// Wrapped by this master key.
    pub key_id: Option<String>,
    /// Wrapped by any master key but this one (what re-wrapping still has to do).
    pub key_id_not: Option<String>,
    /// Only ids greater than this one (for paging).
    pub after_id: Option<CredentialId>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Does `record` match every set field (except `limit`)?
    pub fn matches(&self, record: &CredentialRecord) -> bool {
        self.scope.as_ref().is_none_or(|s| *s == record.scope)
            && self.scope_kind.is_none_or(|k| k == record.scope.kind())
            && self.name.as_ref().is_none_or(|n| *n == record.name)
            && self.provider.as_ref().is_none_or(|p| *p == record.provider)
            && self
                .handler_type
                .as_ref()
                .is_none_or(|h| *h == record.handler_type)
            && self
                .expires_before
                .is_none_or(|t| record.expires_at.is_some_and(|at| at < t))
            && self.state.is_none_or(|s| s == record.state)
            && self.key_id.as_ref().is_none_or(|k| *k == record.key_id)
            && self.key_id_not.as_ref().is_none_or(|k| *k != record.key_id)
            && self.after_id.as_ref().is_none_or(|a| record.id > *a)
    }

    /// Only this scope.
    pub fn in_scope(scope: Scope) -> ListFilter {
        ListFilter {
            scope: Some(scope),
            ..ListFilter::default()
        }
    }
}

/// Which records to list. Every set field must match; results come ordered by kind, owner
/// and key, each compared byte by byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this owner.
    pub owner: Option<String>,
    /// Only records whose `expires_at` is set and earlier than this (strictly).
    pub expires_before: Option<Timestamp>,
    /// Only records after this one in the listing order (for paging: pass the last key of
    /// the previous page).
    pub after: Option<RecordKey>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl RecordFilter {
    /// Records of this kind.
    pub fn kind(kind: impl Into<String>) -> RecordFilter {
        RecordFilter {
            kind: Some(kind.into()),
            ..RecordFilter::default()
        }
    }

    /// Only this owner's.
    pub fn owner(mut self, owner: impl Into<String>) -> RecordFilter {
        self.owner = Some(owner.into());
        self
    }

    /// Only those with an `expires_at` earlier than `at`.
    pub fn expires_before(mut self, at: Timestamp) -> RecordFilter {
        self.expires_before = Some(at);
        self
    }

    /// Only those that have expired at `now` ([`Record::is_expired_at`]: `expires_at` is
    /// `now` or earlier).
    pub fn expired_at(self, now: Timestamp) -> RecordFilter {
        self.expires_before(Timestamp(now.0.saturating_add(1)))
    }

    /// Only those after `key` in the listing order.
    pub fn after(mut self, key: RecordKey) -> RecordFilter {
        self.after = Some(key);
        self
    }

    /// At most `limit`.
    pub fn limit(mut self, limit: usize) -> RecordFilter {
        self.limit = Some(limit);
        self
    }

    /// Does `record` match every set field (except `limit`)?
    pub fn matches(&self, record: &Record) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == record.kind)
            && self.owner.as_ref().is_none_or(|o| *o == record.owner)
            && self
                .expires_before
                .is_none_or(|t| record.expires_at.is_some_and(|at| at < t))
            && self.after.as_ref().is_none_or(|a| {
                (a.kind.as_str(), a.owner.as_str(), a.key.as_str())
                    < (
                        record.kind.as_str(),
                        record.owner.as_str(),
                        record.key.as_str(),
                    )
            })
    }
}
