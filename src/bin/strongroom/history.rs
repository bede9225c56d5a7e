//! `strongroom credentials update|history|rename`: a credential's next versions and its
//! past.

use super::*;

/// The credential commands that make new versions or read old ones (flattened into
/// `credentials`).
#[derive(Subcommand)]
pub(crate) enum VersionCommand {
    /// Give a credential new secret fields (and/or a new expiry): a new version sealed with
    /// a new data key. Its id, name, scope and grants stay. The -f fields are the complete
    /// new set: fields not given are dropped, not kept from the old version. New fields put
    /// the credential back to `filled` until it is verified again.
    Update {
        /// Credential id.
        id: String,
        /// Secret field as name=value; name=- reads the value from stdin, name=? prompts.
        #[arg(short = 'f', long = "field")]
        fields: Vec<String>,
        /// A new expiry: an RFC 3339 time or +30d, +12h, +90m, +2w.
        #[arg(long, value_name = "TIME", conflicts_with = "no_expiry")]
        expires_at: Option<String>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
        /// Only if it is still at this version (default: the version it has now).
        #[arg(long)]
        version: Option<u64>,
    },
    /// List a credential's versions, oldest first: when each was made, by whom, what
    /// changed and the state it left. Never values: only the current version's fields are
    /// kept. Derived from the audit log.
    History {
        /// Credential id.
        id: String,
    },
    /// Give a credential another name (its `ref`): a new version with the same id, scope,
    /// grants and fields. App configs that name the old ref must be changed.
    Rename {
        /// Credential id.
        id: String,
        /// The new name (unique within the credential's scope).
        name: String,
        /// Only if it is still at this version (default: the version it has now).
        #[arg(long)]
        version: Option<u64>,
    },
}

/// The version to change: the one given, or the one the credential has now.
async fn expected_version(
    vault: &Vault,
    actor: &Principal,
    id: &CredentialId,
    given: Option<u64>,
) -> Result<u64, Error> {
    match given {
        Some(v) => Ok(v),
        None => Ok(vault.get(actor, id).await?.version),
    }
}

pub(crate) async fn versions(
    vault: &Vault,
    actor: &Principal,
    cmd: VersionCommand,
    out: &Output,
) -> Result<(), Error> {
    match cmd {
        VersionCommand::Update {
            id: raw,
            fields,
            expires_at,
            no_expiry,
            version,
        } => {
            if fields.is_empty() && expires_at.is_none() && !no_expiry {
                return Err(invalid(
                    "credentials update",
                    "nothing to change: give the new fields with -f name=value (the complete \
                     set), and/or --expires-at TIME or --no-expiry",
                ));
            }
            let id = id(&raw)?;
            let mut update = strongroom::CredentialUpdate::default();
            if !fields.is_empty() {
                update.fields = Some(parse_fields(&fields)?);
            }
            if no_expiry {
                update.expires_at = Some(None);
            } else if let Some(text) = expires_at.as_deref() {
                update.expires_at = Some(Some(expiry_from_arg(text, Timestamp::now())?));
            }
            let version = expected_version(vault, actor, &id, version).await?;
            let info = vault.update(actor, &id, version, update).await?;
            out.info(&info, None);
        }
        VersionCommand::Rename {
            id: raw,
            name,
            version,
        } => {
            let id = id(&raw)?;
            let version = expected_version(vault, actor, &id, version).await?;
            let info = vault.rename(actor, &id, version, &name).await?;
            out.info(&info, None);
        }
        VersionCommand::History { id: raw } => {
            let history = vault.history(actor, &id(&raw)?).await?;
            if out.json {
                let mut value = serde_json::to_value(&history).unwrap_or_default();
                times_as_rfc3339(&mut value, &["time"]);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "{:>7}  {:<24}  {:<28}  {:<8}  CHANGE",
                "VERSION", "TIME", "ACTOR", "STATE"
            );
            for v in &history {
                println!(
                    "{:>7}  {:<24}  {:<28}  {:<8}  {}",
                    v.version,
                    v.time.to_string(),
                    printable_cell(&v.actor),
                    v.state.map_or("-", |s| s.as_str()),
                    printable_cell(&describe_change(&v.change))
                );
            }
            if history.is_empty() {
                println!("(no versions recorded in the audit log)");
            }
        }
    }
    Ok(())
}

/// A version's change in a few words.
fn describe_change(change: &strongroom::VersionChange) -> String {
    use strongroom::VersionChange as C;
    match change {
        C::Created => "created".into(),
        C::FieldsReplaced => "new secret fields (new data key)".into(),
        C::Updated => "updated (fields kept)".into(),
        C::Renamed { from, to } => format!("renamed from {from} to {to}"),
        C::StateChanged { from, to, reason } => match reason {
            Some(reason) => format!("state {from} → {to}: {reason}"),
            None => format!("state {from} → {to}"),
        },
        C::Verified { result } => format!("live check: {result}"),
        _ => "changed".into(),
    }
}

/// A table cell with control characters escaped, so that text taken from the database
/// cannot move the cursor or recolour the terminal.
pub(crate) fn printable_cell(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        text.to_string()
    }
}
