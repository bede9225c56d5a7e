//! The row codec: decoding rows that may have been edited by hand into records or typed
//! errors naming the row.

use std::collections::BTreeMap;

use tokio_postgres::Row;

use crate::audit::encoding::{AuditRecord, ChainHead};
use crate::audit::event::{Action, AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::model::{
    CredentialId, CredentialRecord, Grant, LifecycleState, Record, Scope, ScopeKind, Timestamp,
};

pub(super) fn decode_state(row: &Row) -> Result<(i64, Option<ChainHead>)> {
    let bad = |what: &str| Error::corrupt("the store's state row", what.to_string());
    let generation: i64 = row
        .try_get(0)
        .map_err(|_| bad("generation is not a number"))?;
    let seq: i64 = row
        .try_get(1)
        .map_err(|_| bad("head_seq is not a number"))?;
    let hash: Option<Vec<u8>> = row.try_get(2).map_err(|_| bad("head_hash is not bytes"))?;
    let head = match (seq, hash) {
        (0, _) => None,
        (seq, Some(hash)) => Some(ChainHead {
            seq: seq as u64,
            hash: hash
                .try_into()
                .map_err(|_| bad("head_hash is not 32 bytes"))?,
        }),
        (_, None) => return Err(bad("head_hash is missing")),
    };
    Ok((generation, head))
}

/// Decodes a record row; one that does not decode is reported as corrupt by its key.
pub(super) fn decode_record(row: &Row) -> Result<Record> {
    let part = |i: usize, name: &str| {
        row.try_get::<_, String>(i)
            .unwrap_or_else(|_| format!("<unreadable {name}>"))
    };
    let decode = || -> std::result::Result<Record, String> {
        let text = |i: usize, name: &str| -> std::result::Result<String, String> {
            row.try_get::<_, String>(i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let int = |i: usize, name: &str| -> std::result::Result<i64, String> {
            row.try_get::<_, i64>(i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        Ok(Record {
            kind: text(0, "kind")?,
            owner: text(1, "owner")?,
            key: text(2, "key")?,
            version: u64::try_from(int(3, "version")?).map_err(|_| "negative version")?,
            created_at: Timestamp(int(4, "created_at")?),
            updated_at: Timestamp(int(5, "updated_at")?),
            expires_at: row
                .try_get::<_, Option<i64>>(6)
                .map_err(|e| format!("column `expires_at` cannot be read: {e}"))?
                .map(Timestamp),
            body: serde_json::from_str(&text(7, "body")?)
                .map_err(|e| format!("body is not JSON: {e}"))?,
            sealed: row
                .try_get::<_, Option<Vec<u8>>>(8)
                .map_err(|e| format!("column `sealed` cannot be read: {e}"))?,
        })
    };
    decode().map_err(|reason| {
        Error::corrupt(
            format!(
                "record `{}` of kind `{}`, owner `{}`",
                part(2, "key"),
                part(0, "kind"),
                part(1, "owner")
            ),
            reason,
        )
    })
}

/// Reads credential columns starting at `at`; a row that does not decode is reported as
/// corrupt by id, so one bad row never hides the others.
pub(super) fn decode_credential(row: &Row, at: usize) -> Result<CredentialRecord> {
    let id: String = row
        .try_get::<_, String>(at)
        .unwrap_or_else(|_| "<unreadable id>".into());
    let decode = || -> std::result::Result<CredentialRecord, String> {
        let text = |i: usize, name: &str| -> std::result::Result<String, String> {
            row.try_get::<_, String>(at + i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let int = |i: usize, name: &str| -> std::result::Result<i64, String> {
            row.try_get::<_, i64>(at + i)
                .map_err(|e| format!("column `{name}` cannot be read: {e}"))
        };
        let scope = ScopeKind::parse(&text(2, "scope_kind")?)
            .and_then(|k| Scope::from_parts(k, &text(3, "owner").unwrap_or_default()))
            .map_err(|e| format!("bad scope: {e}"))?;
        let state =
            LifecycleState::parse(&text(6, "state")?).map_err(|e| format!("bad state: {e}"))?;
        let metadata: BTreeMap<String, String> = serde_json::from_str(&text(7, "metadata")?)
            .map_err(|e| format!("metadata is not a JSON object of strings: {e}"))?;
        Ok(CredentialRecord {
            id: CredentialId::new(id.clone()).map_err(|e| e.to_string())?,
            name: text(1, "name")?,
            scope,
            provider: text(4, "provider")?,
            handler_type: text(5, "handler_type")?,
            state,
            metadata,
            agent_accessible: row
                .try_get::<_, bool>(at + 8)
                .map_err(|e| format!("column `agent_accessible` cannot be read: {e}"))?,
            version: u64::try_from(int(9, "version")?).map_err(|_| "negative version")?,
            created_at: Timestamp(int(10, "created_at")?),
            updated_at: Timestamp(int(11, "updated_at")?),
            key_id: text(12, "key_id")?,
            sealed: row
                .try_get::<_, Vec<u8>>(at + 13)
                .map_err(|e| format!("column `sealed` cannot be read: {e}"))?,
            expires_at: row
                .try_get::<_, Option<i64>>(at + 14)
                .map_err(|e| format!("column `expires_at` cannot be read: {e}"))?
                .map(Timestamp),
        })
    };
    decode().map_err(|reason| Error::corrupt(format!("credential row {id}"), reason))
}

pub(super) fn decode_grant(row: &Row, at: usize) -> Result<Grant> {
    let bad = |e: tokio_postgres::Error| Error::corrupt("a grant row", e.to_string());
    Ok(Grant {
        credential_id: CredentialId::new(row.try_get::<_, String>(at).map_err(bad)?)?,
        app: row.try_get(at + 1).map_err(bad)?,
        granted_by: row.try_get(at + 2).map_err(bad)?,
        granted_at: Timestamp(row.try_get(at + 3).map_err(bad)?),
        revoked_at: row
            .try_get::<_, Option<i64>>(at + 4)
            .map_err(bad)?
            .map(Timestamp),
        revoked_by: row.try_get(at + 5).map_err(bad)?,
    })
}

pub(super) fn decode_audit(row: &Row) -> Result<AuditRecord> {
    let seq = row
        .try_get::<_, i64>(0)
        .map_err(|e| Error::corrupt("an audit row", e.to_string()))? as u64;
    let decode = || -> std::result::Result<AuditRecord, String> {
        let text = |i: usize| -> std::result::Result<String, String> {
            row.try_get::<_, String>(i).map_err(|e| e.to_string())
        };
        let target = AuditTarget::from_columns(&text(4)?, &text(5)?, &text(6)?)
            .map_err(|e| format!("bad target: {e}"))?;
        let action = Action::parse(&text(3)?).map_err(|e| e.to_string())?;
        let outcome = Outcome::parse(&text(7)?).map_err(|e| e.to_string())?;
        let details: BTreeMap<String, String> = serde_json::from_str(&text(8)?)
            .map_err(|e| format!("details are not a JSON object of strings: {e}"))?;
        let hash = |i: usize| -> std::result::Result<[u8; 32], String> {
            row.try_get::<_, Vec<u8>>(i)
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| "a hash is not 32 bytes".to_string())
        };
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                time: Timestamp(row.try_get(1).map_err(|e| e.to_string())?),
                actor: text(2)?,
                action,
                target,
                outcome,
                details,
            },
            prev_hash: hash(9)?,
            hash: hash(10)?,
        })
    };
    decode().map_err(|reason| Error::CorruptAuditRow { seq, reason })
}
