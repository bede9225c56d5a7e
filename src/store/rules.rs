//! The rules every bundled store applies the same way: preconditions, record versions, the
//! uniqueness of names, and the errors they produce. A store decides only where the stored
//! version comes from; whether a write may happen, and what the caller is told when it may
//! not, is decided here.

use super::Precondition;
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{CredentialId, CredentialRecord, Record, RecordKey};

/// The error [`Store::commit_checked`](super::Store::commit_checked) returns when a stamped
/// read went stale.
pub fn stale_read() -> Error {
    Error::store(
        StoreErrorKind::Stale,
        "the data changed after it was read; read again and retry",
    )
}

/// A put that would give a second credential of `record`'s scope its name.
pub(crate) fn name_taken(record: &CredentialRecord) -> Error {
    Error::AlreadyExists {
        what: format!("a credential named `{}` in {}", record.name, record.scope),
    }
}

/// Checks a credential put against the stored version (`None` when there is none).
pub(crate) fn check_credential_put(
    precondition: Precondition,
    stored: Option<u64>,
    record: &CredentialRecord,
) -> Result<()> {
    check_version(precondition, stored, &record.describe(), true)
}

/// Checks a credential delete against the stored version.
pub(crate) fn check_credential_delete(
    precondition: Precondition,
    stored: Option<u64>,
    id: &CredentialId,
) -> Result<()> {
    check_version(precondition, stored, &format!("credential {id}"), false)
}

pub(crate) fn grant_target_missing(id: &CredentialId) -> Error {
    Error::NotFound {
        what: format!("credential {id}"),
        hint: Some("a grant needs an existing credential".into()),
    }
}

pub(crate) fn grant_missing(id: &CredentialId, app: &str) -> Error {
    Error::NotFound {
        what: format!("grant of credential {id} to app `{app}`"),
        hint: None,
    }
}

/// Checks a precondition against the stored version (`None` when there is no record);
/// `what` names the record in the error.
fn check_version(
    precondition: Precondition,
    stored: Option<u64>,
    what: &str,
    is_put: bool,
) -> Result<()> {
    match (precondition, stored) {
        (Precondition::CreateOnly, _) if !is_put => Err(Error::invalid(
            "precondition",
            "create-only applies to puts, not deletes",
        )),
        (Precondition::CreateOnly, Some(_)) => Err(Error::AlreadyExists {
            what: what.to_string(),
        }),
        (Precondition::IfVersion(expected), found) if found != Some(expected) => {
            Err(Error::VersionConflict {
                what: what.to_string(),
                expected,
                found,
            })
        }
        (Precondition::None, None) if !is_put => Err(Error::NotFound {
            what: what.to_string(),
            hint: None,
        }),
        _ => Ok(()),
    }
}

/// Checks a record put against the stored version (`None` when there is none) and the
/// record itself; returns the body as compact JSON. A record's version must be exactly one
/// more than the stored one (1 for a new record), whatever the precondition.
pub(crate) fn check_record_put(
    precondition: Precondition,
    stored: Option<u64>,
    record: &Record,
) -> Result<String> {
    let body = record.validate()?;
    let what = record.describe();
    check_version(precondition, stored, &what, true)?;
    let next = stored.map_or(1, |v| v.saturating_add(1));
    if record.version != next {
        return Err(match precondition {
            Precondition::None => Error::VersionConflict {
                what,
                expected: record.version - 1,
                found: stored,
            },
            _ => Error::invalid(
                "record version",
                format!(
                    "{what} is written as version {}, but a record's version moves forward by \
                     exactly one: write version {next} (Record::next_version)",
                    record.version
                ),
            ),
        });
    }
    Ok(body)
}

/// Checks a record delete against the stored version.
pub(crate) fn check_record_delete(
    precondition: Precondition,
    stored: Option<u64>,
    key: &RecordKey,
) -> Result<()> {
    check_version(precondition, stored, &key.to_string(), false)
}
