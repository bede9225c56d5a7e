//! The row codec: column lists, and decoding rows that may have been edited by hand into
//! records or typed errors naming the row.

use std::collections::BTreeMap;

use rusqlite::types::ValueRef;

use crate::audit::encoding::{AuditDigest, AuditRecord, CanonicalRow, PlainDetails};
use crate::audit::event::{Action, AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::model::{
    CredentialId, CredentialRecord, LifecycleState, Record, Scope, ScopeKind, Timestamp,
};

pub(super) const RECORD_COLUMNS: &str =
    "kind, owner, key, version, created_at, updated_at, expires_at, body, sealed";

/// Decodes a record row; one that does not decode is reported as corrupt by its key.
pub(super) fn decode_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record>> {
    let c = Cols { row };
    let part = |i: usize, name: &str| {
        c.text(i, name)
            .unwrap_or_else(|_| format!("<unreadable {name}>"))
    };
    let what = || {
        format!(
            "record `{}` of kind `{}`, owner `{}`",
            part(2, "key"),
            part(0, "kind"),
            part(1, "owner")
        )
    };
    let decode = || -> std::result::Result<Record, String> {
        let body = serde_json::from_str(&c.text(7, "body")?)
            .map_err(|e| format!("body is not JSON: {e}"))?;
        let sealed = match row.get_ref(8) {
            Ok(ValueRef::Null) => None,
            _ => Some(c.bytes(8, "sealed")?),
        };
        Ok(Record {
            kind: c.text(0, "kind")?,
            owner: c.text(1, "owner")?,
            key: c.text(2, "key")?,
            version: u64::try_from(c.int(3, "version")?)
                .map_err(|_| "negative version".to_string())?,
            created_at: Timestamp(c.int(4, "created_at")?),
            updated_at: Timestamp(c.int(5, "updated_at")?),
            expires_at: c.opt_int(6, "expires_at")?.map(Timestamp),
            body,
            sealed,
        })
    };
    Ok(decode().map_err(|reason| Error::corrupt(what(), reason)))
}

pub(super) const CREDENTIAL_COLUMNS: &str =
    "id, name, scope_kind, owner, provider, handler_type, state, \
    metadata, agent_accessible, version, created_at, updated_at, key_id, sealed, expires_at";

/// Reads one column of a row that may have been edited by hand: a missing value or a value
/// of the wrong type becomes a message, not a failed query.
pub(super) struct Cols<'r, 's> {
    row: &'r rusqlite::Row<'s>,
}

impl Cols<'_, '_> {
    fn text(&self, i: usize, name: &str) -> std::result::Result<String, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Text(t)) => String::from_utf8(t.to_vec())
                .map_err(|_| format!("column `{name}` is not valid UTF-8")),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not text",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn int(&self, i: usize, name: &str) -> std::result::Result<i64, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Integer(v)) => Ok(v),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not an integer",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn opt_int(&self, i: usize, name: &str) -> std::result::Result<Option<i64>, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Null) => Ok(None),
            _ => self.int(i, name).map(Some),
        }
    }

    /// Bytes; text is taken as its bytes, so a mangled blob fails later, at decryption.
    fn bytes(&self, i: usize, name: &str) -> std::result::Result<Vec<u8>, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Blob(b)) | Ok(ValueRef::Text(b)) => Ok(b.to_vec()),
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not bytes",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }
}

/// Decodes a credential row; a row that does not decode is reported as corrupt by id, so
/// one bad row never hides the others.
pub(super) fn decode_credential(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<CredentialRecord>> {
    let c = Cols { row };
    let id = c
        .text(0, "id")
        .unwrap_or_else(|_| "<unreadable id>".to_string());
    let what = || format!("credential row {id}");
    let decode = || -> std::result::Result<CredentialRecord, String> {
        let scope_kind = c.text(2, "scope_kind")?;
        let owner = c.text(3, "owner")?;
        let scope = ScopeKind::parse(&scope_kind)
            .and_then(|k| Scope::from_parts(k, &owner))
            .map_err(|e| format!("bad scope: {e}"))?;
        let state =
            LifecycleState::parse(&c.text(6, "state")?).map_err(|e| format!("bad state: {e}"))?;
        let metadata: BTreeMap<String, String> = serde_json::from_str(&c.text(7, "metadata")?)
            .map_err(|e| format!("metadata is not a JSON object of strings: {e}"))?;
        Ok(CredentialRecord {
            id: CredentialId::new(id.clone()).map_err(|e| e.to_string())?,
            name: c.text(1, "name")?,
            scope,
            provider: c.text(4, "provider")?,
            handler_type: c.text(5, "handler_type")?,
            state,
            metadata,
            agent_accessible: c.int(8, "agent_accessible")? != 0,
            version: u64::try_from(c.int(9, "version")?)
                .map_err(|_| "negative version".to_string())?,
            created_at: Timestamp(c.int(10, "created_at")?),
            updated_at: Timestamp(c.int(11, "updated_at")?),
            key_id: c.text(12, "key_id")?,
            sealed: c.bytes(13, "sealed")?,
            expires_at: c.opt_int(14, "expires_at")?.map(Timestamp),
        })
    };
    Ok(decode().map_err(|reason| Error::corrupt(what(), reason)))
}

pub(super) const AUDIT_SELECT: &str =
    "SELECT seq, time, actor, action, credential_id, scope_kind, owner, \
    outcome, details, prev_hash, hash FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2";

impl Cols<'_, '_> {
    fn str(&self, i: usize, name: &str) -> std::result::Result<&str, String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Text(t)) => {
                std::str::from_utf8(t).map_err(|_| format!("column `{name}` is not valid UTF-8"))
            }
            Ok(other) => Err(format!(
                "column `{name}` holds {:?}, not text",
                other.data_type()
            )),
            Err(e) => Err(format!("column `{name}` cannot be read: {e}")),
        }
    }

    fn hash(&self, i: usize, name: &str) -> std::result::Result<[u8; 32], String> {
        match self.row.get_ref(i) {
            Ok(ValueRef::Blob(b)) => b.try_into().map_err(|_| format!("{name} is not 32 bytes")),
            _ => Err(format!("{name} is not a 32-byte blob")),
        }
    }
}

/// Hashes an audit row straight from its columns, without building an [`AuditRecord`]; it
/// applies the same checks as [`decode_audit`] so both paths agree on every row.
pub(super) fn digest_row(row: &rusqlite::Row<'_>) -> AuditDigest {
    let c = Cols { row };
    let seq = c.int(0, "seq").map(|s| s as u64).unwrap_or(0);
    let prev_hash = c.hash(9, "prev_hash");
    let hash = c.hash(10, "hash");
    let computed = (|| -> std::result::Result<[u8; 32], String> {
        let (credential_id, scope_kind, owner) = (
            c.str(4, "credential_id")?,
            c.str(5, "scope_kind")?,
            c.str(6, "owner")?,
        );
        AuditTarget::check_columns(credential_id, scope_kind, owner)
            .map_err(|e| format!("bad target: {e}"))?;
        let action = c.str(3, "action")?;
        Action::parse(action).map_err(|e| e.to_string())?;
        let outcome = c.str(7, "outcome")?;
        Outcome::parse(outcome).map_err(|e| e.to_string())?;
        let details_text = c.str(8, "details")?;
        // As the stores write it, the text is read in place; anything else the general way.
        let plain = PlainDetails::parse(details_text);
        let owned: BTreeMap<String, String> = match plain {
            Some(_) => BTreeMap::new(),
            None => serde_json::from_str(details_text)
                .map_err(|e| format!("details are not a JSON object of strings: {e}"))?,
        };
        let prev = prev_hash.clone()?;
        hash.clone()?;
        let (time, actor) = (c.int(1, "time")?, c.str(2, "actor")?);
        let row = |details| CanonicalRow {
            seq,
            time,
            actor,
            action,
            credential_id,
            scope_kind,
            owner,
            outcome,
            details,
        };
        Ok(match plain {
            Some(details) => row(Details::Plain(details)).hash(&prev),
            None => row(Details::Owned(owned.iter())).hash(&prev),
        })
    })();
    AuditDigest {
        seq,
        prev_hash: prev_hash.unwrap_or([0; 32]),
        hash: hash.unwrap_or([0; 32]),
        computed,
    }
}

pub(super) fn decode_audit(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditRecord>> {
    let c = Cols { row };
    let seq = match c.int(0, "seq") {
        Ok(seq) => seq as u64,
        Err(reason) => return Ok(Err(Error::corrupt("an audit row", reason))),
    };
    let decode = || -> std::result::Result<AuditRecord, String> {
        let target = AuditTarget::from_columns(
            &c.text(4, "credential_id")?,
            &c.text(5, "scope_kind")?,
            &c.text(6, "owner")?,
        )
        .map_err(|e| format!("bad target: {e}"))?;
        let action = Action::parse(&c.text(3, "action")?).map_err(|e| e.to_string())?;
        let outcome = Outcome::parse(&c.text(7, "outcome")?).map_err(|e| e.to_string())?;
        let details: BTreeMap<String, String> = serde_json::from_str(&c.text(8, "details")?)
            .map_err(|e| format!("details are not a JSON object of strings: {e}"))?;
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                time: Timestamp(c.int(1, "time")?),
                actor: c.text(2, "actor")?,
                action,
                target,
                outcome,
                details,
            },
            prev_hash: c
                .bytes(9, "prev_hash")?
                .try_into()
                .map_err(|_| "prev_hash is not 32 bytes".to_string())?,
            hash: c
                .bytes(10, "hash")?
                .try_into()
                .map_err(|_| "hash is not 32 bytes".to_string())?,
        })
    };
    Ok(decode().map_err(|reason| Error::CorruptAuditRow { seq, reason }))
}

/// A row's details, read in place or decoded.
#[derive(Clone)]
enum Details<'a> {
    Plain(PlainDetails<'a>),
    Owned(std::collections::btree_map::Iter<'a, String, String>),
}

impl<'a> Iterator for Details<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        match self {
            Details::Plain(plain) => plain.next(),
            Details::Owned(owned) => owned.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Details::Plain(plain) => plain.size_hint(),
            Details::Owned(owned) => owned.size_hint(),
        }
    }
}

impl ExactSizeIterator for Details<'_> {}
