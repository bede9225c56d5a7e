//! Which credentials and records to list: [`ListFilter`] and [`RecordFilter`], and how a
//! record is tested against them (the SQL stores translate them in `store::sql`).

use crate::model::{
    CredentialId, CredentialRecord, LifecycleState, Record, RecordKey, Scope, ScopeKind, Timestamp,
};

/// Which credentials to list. Every set field must match; results come in id order.
///
/// # Scope patterns
///
/// [`ListFilter::scopes`] asks the store for the credentials in any of a list of scope
/// patterns ([`ScopeMatch`]: a scope kind and which of its owners), so that a caller who
/// may see only some scopes — a principal listing what the policy lets them see — reads
/// only those rows instead of reading everything and filtering afterwards. The list is an
/// OR; it is AND-ed with every other field, and paging (`after_id`, `limit`) runs over the
/// union in id order, so a page never repeats or skips a credential that two patterns
/// both match:
///
/// ```
/// use strongroom::store::{ListFilter, ScopeMatch};
/// use strongroom::{Scope, ScopeKind};
///
/// # fn main() -> strongroom::Result<()> {
/// // What alice may see: system-wide credentials, her own, and hers in any app.
/// let filter = ListFilter::in_scopes(vec![
///     ScopeMatch::kind(ScopeKind::SystemWide),
///     ScopeMatch::scope(&Scope::per_user("alice")?),
///     ScopeMatch::user_in_any_app("alice"),
/// ]);
/// assert!(filter.matches_scope(&Scope::per_app_per_user("crm", "alice")?));
/// assert!(!filter.matches_scope(&Scope::per_app_per_user("crm", "bob")?));
/// # Ok(())
/// # }
/// ```
///
/// `scopes: None` (the default) restricts nothing; `Some(vec![])` matches nothing at all.
/// The SQL stores evaluate the patterns in the database with bound parameters, so an id
/// holding `%`, `_` or quotes is compared as the text it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exactly this scope (kind and owner).
    pub scope: Option<Scope>,
    /// Any scope of this kind.
    pub scope_kind: Option<ScopeKind>,
    /// Only credentials in a scope one of these patterns matches (see
    /// [Scope patterns](ListFilter#scope-patterns)); an empty list matches nothing.
    pub scopes: Option<Vec<ScopeMatch>>,
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
            && self.matches_scope(&record.scope)
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

    /// Does `scope` match [`ListFilter::scopes`] (any pattern of it; `true` when unset)?
    /// The other fields are not looked at.
    pub fn matches_scope(&self, scope: &Scope) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(scope)))
    }

    /// Only this scope.
    pub fn in_scope(scope: Scope) -> ListFilter {
        ListFilter {
            scope: Some(scope),
            ..ListFilter::default()
        }
    }

    /// Only scopes one of `patterns` matches (an empty list matches nothing).
    pub fn in_scopes(patterns: Vec<ScopeMatch>) -> ListFilter {
        ListFilter {
            scopes: Some(patterns),
            ..ListFilter::default()
        }
    }
}

/// A scope pattern for [`ListFilter::scopes`]: credentials of one scope kind whose owner
/// matches. Owners are compared as stored ([`Scope::owner`]): empty for system-wide, the
/// app, user or agent id, and `app/user` for per-app-per-user — ids never contain `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeMatch {
    /// The scope kind.
    pub kind: ScopeKind,
    /// Which owners of that kind.
    pub owner: OwnerMatch,
}

/// Which owners a [`ScopeMatch`] takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OwnerMatch {
    /// Every owner of the kind.
    Any,
    /// Exactly this owner (as [`Scope::owner`] writes it).
    Exactly(String),
    /// Per-app-per-user owners of this app, whichever the user (`app/*`). Owners of other
    /// kinds hold no `/`, so with another kind it matches nothing.
    App(String),
    /// Per-app-per-user owners of this user, whichever the app (`*/user`). With another kind
    /// it matches nothing.
    User(String),
}

impl ScopeMatch {
    /// Every credential of `kind`.
    pub fn kind(kind: ScopeKind) -> ScopeMatch {
        ScopeMatch {
            kind,
            owner: OwnerMatch::Any,
        }
    }

    /// Exactly `scope`.
    pub fn scope(scope: &Scope) -> ScopeMatch {
        ScopeMatch {
            kind: scope.kind(),
            owner: OwnerMatch::Exactly(scope.owner()),
        }
    }

    /// Per-app-per-user credentials of `app`, whoever the user (`app/*`).
    pub fn app_for_any_user(app: impl Into<String>) -> ScopeMatch {
        ScopeMatch {
            kind: ScopeKind::PerAppPerUser,
            owner: OwnerMatch::App(app.into()),
        }
    }

    /// Per-app-per-user credentials of `user`, in whichever app (`*/user`).
    pub fn user_in_any_app(user: impl Into<String>) -> ScopeMatch {
        ScopeMatch {
            kind: ScopeKind::PerAppPerUser,
            owner: OwnerMatch::User(user.into()),
        }
    }

    /// Does `scope` match? Exactly what the SQL stores compute: same kind, and an owner
    /// equal to, starting with `app/` or ending with `/user` as the pattern says.
    pub fn matches(&self, scope: &Scope) -> bool {
        if scope.kind() != self.kind {
            return false;
        }
        let (first, user) = scope.owner_parts();
        match (&self.owner, user) {
            (OwnerMatch::Any, _) => true,
            (OwnerMatch::Exactly(owner), None) => owner == first,
            (OwnerMatch::Exactly(owner), Some(user)) => owner
                .strip_prefix(first)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| rest == user),
            (OwnerMatch::App(app), Some(_)) => app == first,
            (OwnerMatch::User(wanted), Some(user)) => wanted == user,
            (OwnerMatch::App(_) | OwnerMatch::User(_), None) => false,
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
