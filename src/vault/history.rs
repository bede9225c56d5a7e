//! A credential's past and the audit log as a reader sees it: `rename`, `history` (its
//! versions, derived from the audit rows that made them) and `audit_log` (filtered,
//! paged audit rows).

use super::*;
use crate::audit::{Action, AuditRecord};
use crate::store::AuditQuery;

/// Audit rows read per step while a history is derived.
const HISTORY_PAGE: usize = 1_000;

/// What made a version of a credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum VersionChange {
    /// Created (version 1).
    Created,
    /// New secret fields (a new data key).
    FieldsReplaced,
    /// Metadata, expiry or the agent flag changed; the secret fields were kept.
    Updated,
    /// Renamed.
    Renamed {
        /// The name before.
        from: String,
        /// The name after.
        to: String,
    },
    /// Moved through its lifecycle.
    StateChanged {
        /// The state before.
        from: String,
        /// The state after.
        to: String,
        /// Why, as the caller gave it.
        reason: Option<String>,
    },
    /// A live check against the provider moved it.
    Verified {
        /// The check's verdict (`valid`, `invalid`).
        result: String,
    },
}

/// One version of a credential: when it was made, by whom, how, and the state it left the
/// credential in. Never a secret value: the vault keeps only the current version's fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialVersion {
    /// The version number.
    pub version: u64,
    /// When it was made.
    pub time: Timestamp,
    /// Who made it (the principal, as the audit row names it).
    pub actor: String,
    /// The audit row that records it.
    pub seq: u64,
    /// What changed.
    pub change: VersionChange,
    /// The lifecycle state it left the credential in, when the row says (rows written before
    /// the vault recorded it do not).
    pub state: Option<LifecycleState>,
}

impl Vault {
    /// Renames a credential at `expected_version` (its `ref` in app configs: configs that
    /// name the old one must be changed). A new version; the id, scope, grants and secret
    /// fields stay. The name must be free in the credential's scope
    /// ([`Error::AlreadyExists`] otherwise). Needs the right to update it; audited as
    /// `credential.update` with `renamed_from` and `name`.
    pub async fn rename(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: u64,
        new_name: &str,
    ) -> Result<CredentialInfo> {
        trace::op("rename")
            .actor(actor)
            .id(id)
            .run(async move {
                let mut record = self
                    .load_at(actor, Action::Update, id, expected_version)
                    .await?;
                validate_id("credential name", new_name)?;
                if record.name == new_name {
                    return Err(Error::invalid(
                        "name",
                        format!("{} already has that name", record.describe()),
                    ));
                }
                let previous = record.clone();
                record.name = new_name.to_string();
                record.version += 1;
                record.updated_at = Timestamp::now();
                // The blob is bound to the version: the same fields, sealed for the new one.
                self.reseal(&previous, &mut record).await?;
                let event = Vault::event(
                    actor,
                    Action::Update,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .detail("version", record.version.to_string())
                .detail("state", record.state.as_str())
                .detail("fields", "kept")
                .detail("renamed_from", previous.name.clone())
                .detail("name", record.name.clone());
                self.put_over(&record, expected_version, event).await?;
                Ok(info(&record, Vec::new()))
            })
            .await
    }

    /// A credential's versions, oldest first, derived from the audit rows that made them
    /// (create, update, rename, state changes, live checks that moved it): time, actor,
    /// what changed and the state it left. No values: the vault keeps only the current
    /// version's fields. Needs the right to see the credential's metadata.
    pub async fn history(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<Vec<CredentialVersion>> {
        trace::op("history")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::ReadMetadata, id).await?;
                let mut query = AuditQuery {
                    credential_id: Some(record.id.clone()),
                    limit: HISTORY_PAGE,
                    ..AuditQuery::default()
                };
                let mut versions: Vec<CredentialVersion> = Vec::new();
                loop {
                    let page = self.inner.store.audit_query(&query).await?;
                    let Some(last) = page.last().map(|r| r.seq) else {
                        break;
                    };
                    for row in &page {
                        let before = versions.last();
                        if let Some(version) = version_of(row, before) {
                            versions.push(version);
                        }
                    }
                    if page.len() < HISTORY_PAGE {
                        break;
                    }
                    query.after = Some(last);
                }
                Ok(versions)
            })
            .await
    }

    /// The audit rows matching `query` (see [`AuditQuery`]), for those who may verify the
    /// audit chain (system admins and viewers): reading the log is the same right. Rows
    /// carry ids, actors, actions and reasons, never secret values. A refusal is audited.
    pub async fn audit_log(
        &self,
        actor: &Principal,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRecord>> {
        trace::op("audit_log")
            .actor(actor)
            .run(async move {
                self.authorize_unscoped(actor, Action::AuditVerify).await?;
                self.inner.store.audit_query(query).await
            })
            .await
    }
}

/// The version `row` made, if it made one; `before` is the version before it.
fn version_of(row: &AuditRecord, before: Option<&CredentialVersion>) -> Option<CredentialVersion> {
    use crate::audit::Outcome;
    let e = &row.event;
    let detail = |k: &str| e.details.get(k).cloned();
    let state_detail = |k: &str| detail(k).and_then(|s| LifecycleState::parse(&s).ok());
    let next = || before.map_or(1, |b| b.version + 1);
    let numbered = || {
        detail("version")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(next)
    };
    let (version, change, state) = match e.action {
        Action::Create if e.outcome == Outcome::Success => {
            (1, VersionChange::Created, Some(LifecycleState::Filled))
        }
        Action::Update if e.outcome == Outcome::Success => {
            let change = match (detail("renamed_from"), detail("name")) {
                (Some(from), Some(to)) => VersionChange::Renamed { from, to },
                _ if detail("fields").as_deref() == Some("replaced") => {
                    VersionChange::FieldsReplaced
                }
                _ => VersionChange::Updated,
            };
            let state = state_detail("state").or_else(|| before.and_then(|b| b.state));
            (numbered(), change, state)
        }
        Action::SetState if e.outcome == Outcome::Success => {
            let change = VersionChange::StateChanged {
                from: detail("from").unwrap_or_default(),
                to: detail("to").unwrap_or_default(),
                reason: detail("reason").filter(|r| !r.is_empty()),
            };
            (numbered(), change, state_detail("to"))
        }
        // A live check makes a version only when it moved the state (and did not meet a
        // newer version: `conflict`).
        Action::Verify
            if detail("step").as_deref() == Some("result")
                && detail("conflict").is_none()
                && detail("from").is_some()
                && detail("from") != detail("to") =>
        {
            let change = VersionChange::Verified {
                result: detail("result").unwrap_or_default(),
            };
            (numbered(), change, state_detail("to"))
        }
        _ => return None,
    };
    Some(CredentialVersion {
        version,
        time: e.time,
        actor: e.actor.clone(),
        seq: row.seq,
        change,
        state,
    })
}
