//! The core data model shared by every layer: scopes, credential ids, lifecycle states,
//! timestamps and the stored credential record.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod record;
mod scope;

pub use record::{
    validate_record_kind, validate_record_part, Record, RecordAad, RecordKey, MAX_RECORD_BODY,
    MAX_RECORD_KIND_LEN, MAX_RECORD_SEALED,
};
use scope::check_id;
pub use scope::{
    validate_id, validate_namespace, validate_owner_id, Scope, ScopeKind, DEFAULT_NAMESPACE,
    DEPLOY_USER, MAX_ID_LEN, MAX_NAMESPACE_LEN,
};

/// A credential's stable id (a UUIDv7 string by default: time-ordered, so new rows land at
/// the end of the index).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialId(String);

impl TryFrom<String> for CredentialId {
    type Error = Error;

    fn try_from(id: String) -> Result<CredentialId> {
        CredentialId::new(id)
    }
}

impl From<CredentialId> for String {
    fn from(id: CredentialId) -> String {
        id.0
    }
}

impl CredentialId {
    /// A fresh, time-ordered id.
    pub fn generate() -> CredentialId {
        CredentialId(uuid::Uuid::now_v7().to_string())
    }

    /// Wraps an existing id, checking its form.
    pub fn new(id: impl Into<String>) -> Result<CredentialId> {
        let id = id.into();
        validate_id("credential id", &id)?;
        Ok(CredentialId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a credential stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LifecycleState {
    /// Fields stored, never verified.
    Filled,
    /// Verified live or refreshed successfully.
    Valid,
    /// TTL passed, refresh failed, or an admin marked it.
    Expired,
    /// Revoked or rejected by the remote service; never resolved.
    Invalid,
    /// An OAuth flow is in progress.
    Pending,
}

impl LifecycleState {
    /// Every state.
    pub const ALL: [LifecycleState; 5] = [
        LifecycleState::Filled,
        LifecycleState::Valid,
        LifecycleState::Expired,
        LifecycleState::Invalid,
        LifecycleState::Pending,
    ];

    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Filled => "filled",
            LifecycleState::Valid => "valid",
            LifecycleState::Expired => "expired",
            LifecycleState::Invalid => "invalid",
            LifecycleState::Pending => "pending",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<LifecycleState> {
        LifecycleState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    "state",
                    format!(
                        "unknown state `{text}`; use filled, valid, expired, invalid or pending"
                    ),
                )
            })
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// The time `duration` after this one (saturating at the end of the range).
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time in RFC 3339 form, in UTC: `2030-01-02T03:04:05Z`, with three digits of
    /// milliseconds when they are not zero (`2030-01-02T03:04:05.250Z`). `None` outside the
    /// years 0000 to 9999, which RFC 3339 cannot write.
    pub fn to_rfc3339(self) -> Option<String> {
        let nanos = i128::from(self.0) * 1_000_000;
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
        if !(0..=9999).contains(&at.year()) {
            return None;
        }
        let mut out = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        );
        if at.millisecond() != 0 {
            out.push_str(&format!(".{:03}", at.millisecond()));
        }
        out.push('Z');
        Some(out)
    }

    /// Parses an RFC 3339 time with any offset (`2030-01-02T03:04:05Z`,
    /// `2030-01-02T05:04:05.5+02:00`); digits below a millisecond are dropped.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp> {
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                Error::invalid(
                    "time",
                    format!(
                        "`{text}` is not an RFC 3339 time ({e}); write it like \
                         2030-01-02T03:04:05Z or 2030-01-02T05:04:05+02:00"
                    ),
                )
            })?;
        let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(ms)
            .map(Timestamp)
            .map_err(|_| Error::invalid("time", format!("`{text}` is out of range")))
    }
}

/// RFC 3339 in UTC ([`Timestamp::to_rfc3339`]); outside the years 0000 to 9999, the
/// milliseconds since the epoch followed by ` ms since the Unix epoch`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339() {
            Some(text) => f.write_str(&text),
            None => write!(f, "{} ms since the Unix epoch", self.0),
        }
    }
}

/// [`Timestamp::parse_rfc3339`].
impl std::str::FromStr for Timestamp {
    type Err = Error;

    fn from_str(text: &str) -> Result<Timestamp> {
        Timestamp::parse_rfc3339(text)
    }
}

/// The identity a sealed blob is bound to: moving the blob to another vault namespace,
/// credential, scope, owner or version makes it fail to open, and so does changing any of
/// the record's [`BoundFields`] (format 2; `docs/FORMAT.md`).
///
/// Build one with [`RecordIdentity::new`] (or [`CredentialRecord::identity_in`]) and the
/// `in_namespace` / `with_bound` setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordIdentity<'a> {
    /// The vault namespace (from the vault's configuration, never from the database; see
    /// [`DEFAULT_NAMESPACE`]). Bound by format 2 only: a version-1 blob opens in any.
    pub namespace: &'a str,
    /// The credential id.
    pub credential_id: &'a str,
    /// The scope (kind and owner).
    pub scope: &'a Scope,
    /// The credential version the blob was sealed for.
    pub version: u64,
    /// The policy columns bound into the blob (format 2), or `None` for a blob sealed
    /// without a credential record (the key ring used directly).
    pub bound: Option<BoundFields<'a>>,
}

impl<'a> RecordIdentity<'a> {
    /// The identity of `credential_id` at `version` in `scope`, in [`DEFAULT_NAMESPACE`],
    /// with no bound fields.
    pub fn new(credential_id: &'a str, scope: &'a Scope, version: u64) -> RecordIdentity<'a> {
        RecordIdentity {
            namespace: DEFAULT_NAMESPACE,
            credential_id,
            scope,
            version,
            bound: None,
        }
    }

    /// The same identity in vault namespace `namespace`.
    pub fn in_namespace(self, namespace: &'a str) -> RecordIdentity<'a> {
        RecordIdentity { namespace, ..self }
    }

    /// The same identity at credential version `version`.
    pub fn at_version(self, version: u64) -> RecordIdentity<'a> {
        RecordIdentity { version, ..self }
    }

    /// The same identity with `bound` bound into the blob.
    pub fn with_bound(self, bound: BoundFields<'a>) -> RecordIdentity<'a> {
        RecordIdentity {
            bound: Some(bound),
            ..self
        }
    }
}

/// The columns of a credential the vault acts on besides its identity: which name a
/// reference finds, where live verification goes (provider, handler type), whether an agent
/// may use it, its lifecycle state and expiry, and its metadata. A format-2 blob binds them
/// (a digest in the payload's associated data), so a database writer who flips
/// `agent_accessible`, re-points the provider or a metadata `base_url`, moves `expires_at`
/// or lifts an `invalid` state makes the record fail to open. The vault seals every version
/// again after any change, so legitimate changes carry their new values.
///
/// The set of fields is part of format 2 (`docs/FORMAT.md`, "Bound fields").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundFields<'a> {
    /// The `ref` name.
    pub name: &'a str,
    /// The provider name.
    pub provider: &'a str,
    /// The handler type.
    pub handler_type: &'a str,
    /// The stored lifecycle state.
    pub state: LifecycleState,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// When it stops being usable.
    pub expires_at: Option<Timestamp>,
    /// Every metadata entry (a verification `base_url` included).
    pub metadata: &'a BTreeMap<String, String>,
}

/// A credential as the store keeps it: non-secret columns in the clear, secret fields in
/// one sealed envelope blob (see `docs/FORMAT.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Stable id.
    pub id: CredentialId,
    /// The `ref` name, unique within scope and owner.
    pub name: String,
    /// Where it lives.
    pub scope: Scope,
    /// Provider name from the catalog (`openai`, `github_app`, …).
    pub provider: String,
    /// Handler type (`api_key`, `oauth2`, …).
    pub handler_type: String,
    /// Lifecycle state.
    pub state: LifecycleState,
    /// Non-secret metadata (labels, account name, external ids).
    pub metadata: BTreeMap<String, String>,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// Version for optimistic concurrency; the sealed blob is bound to it.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it stops being usable (it reads as `expired` from then on); a column of its own
    /// in every store, so expiring credentials can be listed without decrypting anything
    /// ([`crate::ListFilter::expires_before`]).
    pub expires_at: Option<Timestamp>,
    /// Id of the master key that wraps this version's data key (from the blob; kept in a
    /// column so rotation can find what still needs re-wrapping).
    pub key_id: String,
    /// The sealed secret fields.
    pub sealed: Vec<u8>,
}

impl CredentialRecord {
    /// The identity its sealed blob is bound to in [`DEFAULT_NAMESPACE`], with its
    /// [`BoundFields`]. A vault uses [`CredentialRecord::identity_in`] with its own
    /// namespace.
    pub fn identity(&self) -> RecordIdentity<'_> {
        self.identity_in(DEFAULT_NAMESPACE)
    }

    /// The identity its sealed blob is bound to in vault namespace `namespace` (which comes
    /// from the vault's configuration, never from the record), with its [`BoundFields`].
    pub fn identity_in<'a>(&'a self, namespace: &'a str) -> RecordIdentity<'a> {
        RecordIdentity::new(self.id.as_str(), &self.scope, self.version)
            .in_namespace(namespace)
            .with_bound(self.bound_fields())
    }

    /// The columns a format-2 blob binds besides the identity.
    pub fn bound_fields(&self) -> BoundFields<'_> {
        BoundFields {
            name: &self.name,
            provider: &self.provider,
            handler_type: &self.handler_type,
            state: self.state,
            agent_accessible: self.agent_accessible,
            expires_at: self.expires_at,
            metadata: &self.metadata,
        }
    }

    /// A short description for messages: `credential `name` (scope)`.
    pub fn describe(&self) -> String {
        format!(
            "credential `{}` ({}, id {})",
            self.name, self.scope, self.id
        )
    }
}

impl fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("provider", &self.provider)
            .field("handler_type", &self.handler_type)
            .field("state", &self.state)
            .field("metadata", &self.metadata)
            .field("agent_accessible", &self.agent_accessible)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("expires_at", &self.expires_at)
            .field("key_id", &self.key_id)
            .field(
                "sealed",
                &format_args!("<{} sealed bytes>", self.sealed.len()),
            )
            .finish()
    }
}

/// An app's permission to use a per-user credential. Revoking keeps the row (history);
/// a hard revoke deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The credential.
    pub credential_id: CredentialId,
    /// The app allowed to use it.
    pub app: String,
    /// Who granted it.
    pub granted_by: String,
    /// When.
    pub granted_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

impl Grant {
    /// True while the grant is in force.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}
