//! Records: small versioned documents that are not credentials (OAuth pending flows, leases,
//! integrations, provider registrations, provisioning intents), keyed by `(kind, owner, key)`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{check_id, Timestamp};
use crate::error::{Error, Result};

/// Longest record kind, in bytes.
pub const MAX_RECORD_KIND_LEN: usize = 64;
/// Largest JSON body, in bytes of its compact encoding (64 KiB); a put of a larger one is
/// refused.
pub const MAX_RECORD_BODY: usize = 64 * 1024;
/// Largest sealed body, in bytes (128 KiB: a 64 KiB plaintext and room for any envelope).
pub const MAX_RECORD_SEALED: usize = 128 * 1024;

/// Checks a record kind: 1 to [`MAX_RECORD_KIND_LEN`] bytes of lowercase ASCII letters,
/// digits, `_`, `-` and `.`, starting with a letter (`lease`, `oauth.pending`).
pub fn validate_record_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_RECORD_KIND_LEN
        && kind.as_bytes()[0].is_ascii_lowercase()
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "record kind",
            format!(
                "`{}` must be 1 to {MAX_RECORD_KIND_LEN} lowercase ASCII letters, digits, `_`, \
                 `-` or `.`, starting with a letter",
                kind.escape_debug()
            ),
        ))
    }
}

/// Checks a record's owner or key: 1 to [`MAX_ID_LEN`](super::MAX_ID_LEN) (256) bytes of UTF-8 with no control
/// characters (C0, DEL, C1). Unlike credential ids they may contain `/` and `:`, so an owner
/// can be written `agent:a7` or `crm/alice`.
pub fn validate_record_part(field: &str, value: &str) -> Result<()> {
    check_id(field, value, true)
}

/// Where a record lives: its kind, its owner and its key within the two. Ordered by kind,
/// then owner, then key, each compared byte by byte (the order `Store::records` pages in).
///
/// All three appear in error messages and may appear in audit rows: never make a secret
/// (a token, a code verifier) part of a key — put it in the sealed body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// What sort of record (`lease`, `oauth.pending`, `integration`, …).
    pub kind: String,
    /// Whose it is (`agent:a7`, a user id, a credential id, …).
    pub owner: String,
    /// Which one of the owner's records of this kind.
    pub key: String,
}

impl RecordKey {
    /// A key, checked ([`RecordKey::validate`]).
    pub fn new(
        kind: impl Into<String>,
        owner: impl Into<String>,
        key: impl Into<String>,
    ) -> Result<RecordKey> {
        let out = RecordKey {
            kind: kind.into(),
            owner: owner.into(),
            key: key.into(),
        };
        out.validate()?;
        Ok(out)
    }

    /// Checks the kind ([`validate_record_kind`]), owner and key ([`validate_record_part`]).
    /// Stores refuse a write whose key does not pass.
    pub fn validate(&self) -> Result<()> {
        validate_record_kind(&self.kind)?;
        validate_record_part("record owner", &self.owner)?;
        validate_record_part("record key", &self.key)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record `{}` of kind `{}`, owner `{}`",
            self.key.escape_debug(),
            self.kind,
            self.owner.escape_debug()
        )
    }
}

/// A record as the store keeps it.
///
/// The version is the record's own optimistic-concurrency counter and only moves forward by
/// one: a new record has version 1, and a put that replaces version `n` must carry `n + 1`
/// (stores refuse anything else, whatever the precondition). A sealed body is bound to the
/// version ([`RecordAad`]), so it is sealed again for every new version.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What sort of record.
    pub kind: String,
    /// Whose it is.
    pub owner: String,
    /// Which one.
    pub key: String,
    /// 1 for a new record, one more on every put.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it stops meaning anything (a lease ends, a pending flow lapses). Stores keep it
    /// and filter by it; nothing deletes an expired record by itself.
    pub expires_at: Option<Timestamp>,
    /// Non-secret content, at most [`MAX_RECORD_BODY`] bytes as compact JSON.
    pub body: serde_json::Value,
    /// Secret content sealed by the crypto layer (`KeyRing::seal_record`) for this record's
    /// [`RecordAad`]; opaque to stores. At most [`MAX_RECORD_SEALED`] bytes.
    pub sealed: Option<Vec<u8>>,
}

impl Record {
    /// A new record (version 1, created and updated `now`, no expiry, nothing sealed).
    pub fn new(key: RecordKey, body: serde_json::Value, now: Timestamp) -> Record {
        Record {
            kind: key.kind,
            owner: key.owner,
            key: key.key,
            version: 1,
            created_at: now,
            updated_at: now,
            expires_at: None,
            body,
            sealed: None,
        }
    }

    /// The record's next version: a copy with `version + 1`, updated `now` and no sealed
    /// body (a sealed body is bound to the version it was sealed for; seal it again).
    pub fn next_version(&self, now: Timestamp) -> Record {
        Record {
            version: self.version + 1,
            updated_at: now,
            sealed: None,
            ..self.clone()
        }
    }

    /// Where it lives.
    pub fn record_key(&self) -> RecordKey {
        RecordKey {
            kind: self.kind.clone(),
            owner: self.owner.clone(),
            key: self.key.clone(),
        }
    }

    /// The associated data its sealed body is bound to, in
    /// [`crate::model::DEFAULT_NAMESPACE`]. A vault uses [`Record::aad_in`] with its own
    /// namespace.
    pub fn aad(&self) -> RecordAad<'_> {
        self.aad_in(crate::model::DEFAULT_NAMESPACE)
    }

    /// The associated data its sealed body is bound to, in vault namespace `namespace`.
    pub fn aad_in<'a>(&'a self, namespace: &'a str) -> RecordAad<'a> {
        RecordAad::new(&self.kind, &self.owner, &self.key, self.version).in_namespace(namespace)
    }

    /// Has it expired at `now` (its `expires_at` is `now` or earlier)? A record without an
    /// expiry never expires.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Checks what a store checks before writing it: the key, a version of at least 1, and
    /// the size limits. Returns the body as compact JSON (what SQL stores keep).
    pub fn validate(&self) -> Result<String> {
        validate_record_kind(&self.kind)?;
        validate_record_part("record owner", &self.owner)?;
        validate_record_part("record key", &self.key)?;
        if self.version == 0 {
            return Err(Error::invalid(
                "record version",
                format!("{} has version 0; versions start at 1", self.describe()),
            ));
        }
        let body = serde_json::to_string(&self.body)
            .map_err(|e| Error::invalid("record body", e.to_string()))?;
        if body.len() > MAX_RECORD_BODY {
            return Err(Error::invalid(
                "record body",
                format!(
                    "the body of {} is {} bytes as JSON; at most {MAX_RECORD_BODY} are allowed \
                     (keep large content elsewhere and store a reference)",
                    self.describe(),
                    body.len()
                ),
            ));
        }
        if let Some(sealed) = &self.sealed {
            if sealed.len() > MAX_RECORD_SEALED {
                return Err(Error::invalid(
                    "record sealed body",
                    format!(
                        "the sealed body of {} is {} bytes; at most {MAX_RECORD_SEALED} are allowed",
                        self.describe(),
                        sealed.len()
                    ),
                ));
            }
        }
        Ok(body)
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        format!(
            "record `{}` of kind `{}`, owner `{}`",
            self.key.escape_debug(),
            self.kind,
            self.owner.escape_debug()
        )
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("key", &self.key)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("expires_at", &self.expires_at)
            .field("body", &self.body)
            .field(
                "sealed",
                &self
                    .sealed
                    .as_ref()
                    .map(|s| format!("<{} sealed bytes>", s.len())),
            )
            .finish()
    }
}

/// What a record's sealed body is bound to: its vault namespace (format 2), kind, owner, key
/// and version. A sealed body moved to another vault, record or version fails to open, and
/// so does a credential blob opened as a record's or the reverse (records use their own
/// associated-data labels; see `docs/FORMAT.md`, "Record bodies").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordAad<'a> {
    /// The vault namespace (from configuration; see [`crate::model::DEFAULT_NAMESPACE`]).
    /// Bound by format 2 only.
    pub namespace: &'a str,
    /// The record's kind.
    pub kind: &'a str,
    /// The record's owner.
    pub owner: &'a str,
    /// The record's key.
    pub key: &'a str,
    /// The record version the body was sealed for.
    pub version: u64,
}

impl<'a> RecordAad<'a> {
    /// The associated data of record `kind`/`owner`/`key` at `version`, in
    /// [`crate::model::DEFAULT_NAMESPACE`].
    pub fn new(kind: &'a str, owner: &'a str, key: &'a str, version: u64) -> RecordAad<'a> {
        RecordAad {
            namespace: crate::model::DEFAULT_NAMESPACE,
            kind,
            owner,
            key,
            version,
        }
    }

    /// The same, in vault namespace `namespace`.
    pub fn in_namespace(self, namespace: &'a str) -> RecordAad<'a> {
        RecordAad { namespace, ..self }
    }

    /// The same, for record version `version`.
    pub fn at_version(self, version: u64) -> RecordAad<'a> {
        RecordAad { version, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_ID_LEN;

    #[test]
    fn kinds_owners_and_keys_are_checked_exactly() {
        for ok in ["lease", "oauth.pending", "a", "x1_-.", &"k".repeat(64)] {
            assert!(validate_record_kind(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Lease",
            "1lease",
            "_x",
            "le ase",
            "lease/x",
            "é",
            &"k".repeat(65),
        ] {
            assert!(validate_record_kind(bad).is_err(), "{bad}");
        }
        for ok in [
            "agent:a7",
            "crm/alice",
            "bob@example.com",
            "ü",
            &"o".repeat(MAX_ID_LEN),
        ] {
            assert!(validate_record_part("owner", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a\nb",
            "a\u{7f}",
            "a\u{85}b",
            &"o".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_record_part("owner", bad).is_err(), "{bad:?}");
        }
        assert!(RecordKey::new("lease", "refresh", "cred-1").is_ok());
        assert!(RecordKey::new("lease", "", "cred-1").is_err());
    }

    #[test]
    fn bodies_are_bounded_and_versions_start_at_one() {
        let key = RecordKey::new("intent", "u1", "k").expect("key");
        let at_limit = serde_json::Value::String("x".repeat(MAX_RECORD_BODY - 2));
        let mut record = Record::new(key, at_limit, Timestamp(1));
        assert_eq!(
            record.validate().expect("at the limit").len(),
            MAX_RECORD_BODY
        );
        record.body = serde_json::Value::String("x".repeat(MAX_RECORD_BODY - 1));
        let err = record.validate().expect_err("one byte over");
        assert!(err.to_string().contains("65537 bytes"), "{err}");
        record.body = serde_json::Value::Null;
        record.sealed = Some(vec![0; MAX_RECORD_SEALED + 1]);
        assert!(record.validate().is_err());
        record.sealed = None;
        record.version = 0;
        assert!(record.validate().is_err());
    }

    #[test]
    fn next_version_drops_the_sealed_body_and_expiry_is_inclusive() {
        let key = RecordKey::new("lease", "o", "k").expect("key");
        let mut record = Record::new(key, serde_json::json!({"a": 1}), Timestamp(10));
        record.sealed = Some(vec![1, 2, 3]);
        record.expires_at = Some(Timestamp(100));
        let next = record.next_version(Timestamp(20));
        assert_eq!(
            (next.version, next.created_at, next.updated_at),
            (2, Timestamp(10), Timestamp(20))
        );
        assert_eq!(next.sealed, None);
        assert!(!record.is_expired_at(Timestamp(99)));
        assert!(record.is_expired_at(Timestamp(100)));
        record.expires_at = None;
        assert!(!record.is_expired_at(Timestamp(i64::MAX)));
    }
}
