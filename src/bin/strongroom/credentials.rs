//! `strongroom credentials …`: create, list, show, grants, delete, verify (update, history
//! and rename are in `history.rs`).

use super::*;

#[derive(Args)]
pub(crate) struct ScopeArgs {
    /// system_wide, per_app_shared, per_user (default), per_app_per_user or per_agent.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// The app (default: the acting principal's).
    #[arg(long)]
    pub(crate) app: Option<String>,
    /// The user (default: the acting principal's).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// The agent, for per_agent.
    #[arg(long)]
    pub(crate) agent: Option<String>,
}

/// What every create command takes: provider, name and secret fields.
#[derive(Args)]
pub(crate) struct CredentialSource {
    /// Provider name (see the bundled list in the error for an unknown one).
    #[arg(long)]
    pub(crate) provider: String,
    /// The `ref` name (default: `<provider>_main`).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A field as name=value. name=- reads all of stdin (one field per command), name=@FILE
    /// reads a file — both kept exactly as given, multi-line values such as a PEM key or a
    /// JSON key file included, except that a single line loses its line ending — and
    /// name=? prompts for a one-line value without echo.
    #[arg(short = 'f', long = "field", required = true)]
    pub(crate) fields: Vec<String>,
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    pub(crate) source: CredentialSource,
    /// When the credential stops being usable: an RFC 3339 time (2030-01-02T03:04:05Z) or a
    /// duration from now (+30d, +12h, +90m, +2w).
    #[arg(long, value_name = "TIME")]
    pub(crate) expires_at: Option<String>,
    #[command(flatten)]
    pub(crate) scope: ScopeArgs,
}

#[derive(Subcommand)]
pub(crate) enum CredentialsCommand {
    /// List credentials you may see.
    List {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one credential; --reveal prints its secret values (if you may read them).
    Show {
        /// Credential id.
        id: String,
        /// Print the secret values.
        #[arg(long)]
        reveal: bool,
    },
    /// Create a credential (per_user of the acting user unless --scope says otherwise).
    Create(CreateArgs),
    /// Delete a credential.
    Delete {
        /// Credential id.
        id: String,
        /// Only if it is still at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// List the apps granted a per-user credential.
    Grants {
        /// Credential id.
        id: String,
    },
    /// Grant an app the use of a per-user credential.
    GrantAdd {
        /// Credential id.
        id: String,
        /// App id.
        app: String,
    },
    /// Revoke an app's grant (kept as history; --hard deletes it).
    GrantRevoke {
        /// Credential id.
        id: String,
        /// App id.
        app: String,
        /// Delete the grant row instead of marking it revoked.
        #[arg(long)]
        hard: bool,
    },
    /// List credentials in every scope, not only the acting user's: what the policy lets
    /// you see (everything, for a system admin or a viewer).
    AdminList,
    /// Create a system_wide credential, per_app_shared with --app, or per_agent with
    /// --agent (administrators).
    AdminCreate {
        #[command(flatten)]
        source: CredentialSource,
        /// Make it per_app_shared for this app.
        #[arg(long, conflicts_with = "agent")]
        app: Option<String>,
        /// Make it per_agent for this agent (its own secret).
        #[arg(long)]
        agent: Option<String>,
        /// Let the agent read it itself (`--as agent:ID`); without it the agent reaches it
        /// only through the credentials path. Needs --agent.
        #[arg(long, requires = "agent")]
        agent_accessible: bool,
        /// When the credential stops being usable: an RFC 3339 time or +30d, +12h, +90m, +2w.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Delete any credential (administrators).
    AdminDelete {
        /// Credential id.
        id: String,
    },
    /// Test a credential against its provider's API; moves it to valid or invalid. Exits 0
    /// when valid, 7 when the provider rejected it, 8 when there was no verdict.
    Verify {
        /// Credential id.
        id: String,
    },
    #[command(flatten)]
    Versions(VersionCommand),
}

/// `--expires-at`: an RFC 3339 time or `+N` minutes, hours, days or weeks from `now`; a
/// bare number (seconds? milliseconds?) and a time that is not in the future are refused.
pub(crate) fn expiry_from_arg(text: &str, now: Timestamp) -> Result<Timestamp, Error> {
    const HOW: &str = "write an RFC 3339 time such as 2030-01-02T03:04:05Z, or a duration \
                       from now such as +30d, +12h, +90m or +2w";
    let text = text.trim();
    let at = if let Some(duration) = text.strip_prefix('+') {
        let unit_at = duration
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(duration.len());
        let (count, unit) = duration.split_at(unit_at);
        let minutes: u64 = match unit {
            "m" => 1,
            "h" => 60,
            "d" => 24 * 60,
            "w" => 7 * 24 * 60,
            _ => {
                return Err(invalid(
                    "--expires-at",
                    &format!("`{text}` is not a duration: {HOW}"),
                ))
            }
        };
        let count: u64 = count.parse().map_err(|_| {
            invalid(
                "--expires-at",
                &format!("`{text}` is not a duration: {HOW}"),
            )
        })?;
        let millis = count
            .checked_mul(minutes * 60_000)
            .ok_or_else(|| invalid("--expires-at", &format!("`{text}` is too far away")))?;
        now.saturating_add(std::time::Duration::from_millis(millis))
    } else if !text.is_empty()
        && text
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid(
            "--expires-at",
            &format!("`{text}` is a bare number, which could mean seconds or milliseconds: {HOW}"),
        ));
    } else {
        Timestamp::parse_rfc3339(text)
            .map_err(|_| invalid("--expires-at", &format!("`{text}` is not a time: {HOW}")))?
    };
    if at <= now {
        return Err(invalid(
            "--expires-at",
            &format!("{at} is not in the future (it is {now} now); {HOW}",),
        ));
    }
    Ok(at)
}

pub(crate) fn scope_from(args: &ScopeArgs, actor: &Principal) -> Result<Option<Scope>, Error> {
    let Some(kind) = &args.scope else {
        return Ok(None);
    };
    let kind = ScopeKind::parse(kind)?;
    let app = || {
        args.app
            .clone()
            .or_else(|| actor.app().map(str::to_string))
            .ok_or_else(|| invalid("--app", "this scope needs an app: pass --app"))
    };
    let user = || {
        args.user
            .clone()
            .or_else(|| actor.user().map(str::to_string))
            .ok_or_else(|| invalid("--user", "this scope needs a user: pass --user"))
    };
    Ok(Some(match kind {
        ScopeKind::SystemWide => Scope::SystemWide,
        ScopeKind::PerAppShared => Scope::per_app_shared(app()?)?,
        ScopeKind::PerUser => Scope::per_user(user()?)?,
        ScopeKind::PerAppPerUser => Scope::per_app_per_user(app()?, user()?)?,
        ScopeKind::PerAgent => Scope::per_agent(
            args.agent
                .clone()
                .ok_or_else(|| invalid("--agent", "per_agent needs --agent"))?,
        )?,
        _ => return Err(invalid("--scope", "unsupported scope")),
    }))
}

/// The most one field may read from stdin or a file (1 MiB, above every field's limit).
const MAX_FIELD_INPUT: usize = 1024 * 1024;

/// Reads all of `reader` (at most `limit` bytes) into memory that is wiped when dropped,
/// growing it without leaving copies behind. `None` when there is more than `limit`.
fn read_secret(
    mut reader: impl std::io::Read,
    limit: usize,
) -> std::io::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    use zeroize::Zeroizing;
    let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = match reader.read(&mut chunk[..]) {
            Ok(0) => return Ok(Some(buf)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() + n > limit {
            return Ok(None);
        }
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).min(limit)));
            bigger.extend_from_slice(&buf);
            buf = bigger; // the smaller buffer is wiped as it drops
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A field value read from stdin or a file, as text. A single line loses its line ending
/// (`echo KEY |` adds one that is no part of the key); anything longer is kept byte for
/// byte. Errors name the field (and `flag`, the option it came through) and the source,
/// never the content.
fn secret_text(
    flag: &str,
    name: &str,
    from: &str,
    bytes: zeroize::Zeroizing<Vec<u8>>,
) -> Result<String, Error> {
    let mut bytes = bytes;
    let mut text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        invalid(
            flag,
            &format!("`{name}` read from {from} is not UTF-8 text"),
        )
    })?;
    let single_line = text.find('\n').is_some_and(|at| at + 1 == text.len());
    if single_line {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(invalid(
            flag,
            &format!("`{name}` read from {from} is empty"),
        ));
    }
    // An exact-size copy, so that turning it into a secret does not reallocate and leave
    // the longer buffer unwiped.
    let mut exact = String::with_capacity(text.len());
    exact.push_str(&text);
    zeroize::Zeroize::zeroize(&mut text);
    Ok(exact)
}

/// Where a secret value given on the command line comes from, and how errors spell it: the
/// `-f name=value` fields, or an option of its own (`oauth complete --code -`).
pub(crate) struct SecretInput<'a> {
    /// The option, as errors name it (`-f`, `--code`).
    pub(crate) flag: &'a str,
    /// The value's name (a field name, or `code`).
    pub(crate) name: &'a str,
    /// How the value is written with a given form (`-`, `@FILE`, `?`): `name=-` for a
    /// field, `--code -` for an option.
    pub(crate) spell: fn(&str, &str) -> String,
}

impl SecretInput<'_> {
    /// A `-f name=value` field.
    fn field(name: &str) -> SecretInput<'_> {
        SecretInput {
            flag: "-f",
            name,
            spell: |name, form| format!("{name}={form}"),
        }
    }

    /// Reads the value as given: `-` all of stdin (`stdin_taken` names the one value per
    /// command that may), `@FILE` a file, `?` a prompt without echo on a terminal, anything
    /// else is the value itself.
    pub(crate) fn read(
        &self,
        value: &str,
        stdin_taken: &mut Option<String>,
    ) -> Result<String, Error> {
        let (flag, name) = (self.flag, self.name);
        let spell = |form: &str| (self.spell)(name, form);
        Ok(match value {
            "-" => {
                if let Some(first) = stdin_taken {
                    return Err(invalid(
                        flag,
                        &format!(
                            "`{first}` already reads stdin, and one value per command can; give \
                             `{name}` as {} or {}",
                            spell("@FILE"),
                            spell("?")
                        ),
                    ));
                }
                *stdin_taken = Some(name.to_string());
                let bytes = read_secret(std::io::stdin().lock(), MAX_FIELD_INPUT)
                    .map_err(|e| invalid(flag, &format!("cannot read `{name}` from stdin: {e}")))?
                    .ok_or_else(|| {
                        invalid(
                            flag,
                            &format!(
                                "`{name}` on stdin is over {MAX_FIELD_INPUT} bytes, more than any \
                                 field holds"
                            ),
                        )
                    })?;
                secret_text(flag, name, "stdin", bytes)?
            }
            "?" => {
                if !std::io::stdin().is_terminal() {
                    return Err(invalid(
                        flag,
                        &format!(
                            "cannot prompt for `{name}`: stdin is not a terminal; use {} or {}",
                            spell("-"),
                            spell("@FILE")
                        ),
                    ));
                }
                rpassword::prompt_password(format!("{name}: "))
                    .map_err(|e| invalid(flag, &format!("cannot read `{name}`: {e}")))?
            }
            v if v.starts_with('@') => {
                let path = Path::new(&v[1..]);
                // The path is not repeated: a value that merely starts with `@` (a
                // password) must not end up in an error message.
                let unreadable = |why: String| {
                    invalid(
                        flag,
                        &format!(
                            "cannot read `{name}` from the file named after `@` ({why}); a value \
                             that starts with `@` names a file: give such a value with {} or {} \
                             instead",
                            spell("-"),
                            spell("?")
                        ),
                    )
                };
                if v.len() == 1 {
                    return Err(unreadable("no file named".into()));
                }
                let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
                let bytes = read_secret(file, MAX_FIELD_INPUT)
                    .map_err(|e| unreadable(e.to_string()))?
                    .ok_or_else(|| {
                        unreadable(format!(
                            "over {MAX_FIELD_INPUT} bytes, more than any field holds"
                        ))
                    })?;
                secret_text(flag, name, "its file", bytes)?
            }
            v => v.to_string(),
        })
    }
}

pub(crate) fn parse_fields(raw: &[String]) -> Result<BTreeMap<String, SecretString>, Error> {
    let mut out = BTreeMap::new();
    // The one field that may take stdin.
    let mut from_stdin: Option<String> = None;
    for item in raw {
        let Some((name, value)) = item.split_once('=') else {
            // Never echoed: without `name=`, what was given may well be the secret itself.
            return Err(invalid(
                "-f",
                "a field must be written name=value (name=- reads stdin, name=@FILE a file, \
                 name=? prompts); what was given has no `name=` and is not shown here, since \
                 it may be a secret",
            ));
        };
        if name.is_empty() {
            return Err(invalid("-f", "a field needs a name before `=`"));
        }
        let value = SecretInput::field(name).read(value, &mut from_stdin)?;
        if out
            .insert(name.to_string(), SecretString::from(value))
            .is_some()
        {
            return Err(invalid("-f", &format!("field `{name}` is given twice")));
        }
    }
    Ok(out)
}

pub(crate) fn new_credential(
    source: CredentialSource,
    scope: Scope,
) -> Result<NewCredential, Error> {
    let CredentialSource {
        provider,
        name,
        fields,
    } = source;
    let fields = parse_fields(&fields)?;
    // The handler type comes from the provider's catalog entry.
    Ok(NewCredential::new(
        name.unwrap_or_else(|| format!("{provider}_main")),
        scope,
        provider,
        "",
        fields,
    ))
}

pub(crate) fn id(text: &str) -> Result<CredentialId, Error> {
    CredentialId::new(text)
}

pub(crate) async fn credentials(
    vault: &Vault,
    actor: &Principal,
    cmd: CredentialsCommand,
    out: &Output,
) -> Result<(), Error> {
    match cmd {
        CredentialsCommand::List {
            scope,
            provider,
            state,
        } => {
            let filter = CredentialFilter {
                scope: scope_from(&scope, actor)?,
                provider,
                state: state.as_deref().map(LifecycleState::parse).transpose()?,
                ..CredentialFilter::default()
            };
            out.infos(&vault.list(actor, &filter).await?);
        }
        // Every scope at once; the vault's policy decides which rows the actor sees (all of
        // them for a system admin or a viewer).
        CredentialsCommand::AdminList => {
            out.infos(&vault.list(actor, &CredentialFilter::default()).await?);
        }
        CredentialsCommand::Show { id: raw, reveal } => {
            let id = id(&raw)?;
            if reveal {
                let revealed = vault.reveal(actor, &id).await?;
                out.info(&revealed.info, Some(&revealed.fields));
            } else {
                out.info(&vault.get(actor, &id).await?, None);
            }
        }
        CredentialsCommand::Create(args) => {
            let scope = match scope_from(&args.scope, actor)? {
                Some(scope) => scope,
                None => Scope::per_user(
                    args.scope
                        .user
                        .clone()
                        .or_else(|| actor.user().map(str::to_string))
                        .ok_or_else(|| {
                            invalid(
                                "--scope",
                                "the acting principal has no user; pass --scope (and --app/--user)",
                            )
                        })?,
                )?,
            };
            let mut new = new_credential(args.source, scope)?;
            new.expires_at = args
                .expires_at
                .as_deref()
                .map(|text| expiry_from_arg(text, Timestamp::now()))
                .transpose()?;
            out.info(&vault.create(actor, new).await?, None);
        }
        CredentialsCommand::AdminCreate {
            source,
            app,
            agent,
            agent_accessible,
            expires_at,
        } => {
            let scope = match (app, agent) {
                (Some(app), _) => Scope::per_app_shared(app)?,
                (None, Some(agent)) => Scope::per_agent(agent)?,
                (None, None) => Scope::SystemWide,
            };
            let mut new = new_credential(source, scope)?;
            new.agent_accessible = agent_accessible;
            new.expires_at = expires_at
                .as_deref()
                .map(|text| expiry_from_arg(text, Timestamp::now()))
                .transpose()?;
            out.info(&vault.create(actor, new).await?, None);
        }
        CredentialsCommand::Delete { id: raw, version } => {
            vault.delete(actor, &id(&raw)?, version).await?;
            if !out.json {
                println!("deleted {raw}");
            }
        }
        // Handled in `run`, which sets the exit code from the verdict.
        CredentialsCommand::Verify { .. } => {}
        CredentialsCommand::Versions(cmd) => versions(vault, actor, cmd, out).await?,
        CredentialsCommand::AdminDelete { id: raw } => {
            vault.delete(actor, &id(&raw)?, None).await?;
            if !out.json {
                println!("deleted {raw}");
            }
        }
        CredentialsCommand::Grants { id: raw } => {
            let grants = vault.grants(actor, &id(&raw)?).await?;
            if out.json {
                let mut value = serde_json::to_value(&grants).unwrap_or_default();
                times_as_rfc3339(&mut value, &["granted_at", "revoked_at"]);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{:<20}  {:<28}  STATUS", "APP", "GRANTED BY");
                for g in grants {
                    let status = if g.is_active() { "active" } else { "revoked" };
                    println!(
                        "{:<20}  {:<28}  {status}",
                        cell(&g.app),
                        cell(&g.granted_by)
                    );
                }
            }
        }
        CredentialsCommand::GrantAdd { id: raw, app } => {
            vault.grant_add(actor, &id(&raw)?, &app).await?;
            if !out.json {
                println!("granted {raw} to app {app}");
            }
        }
        CredentialsCommand::GrantRevoke { id: raw, app, hard } => {
            vault.grant_revoke(actor, &id(&raw)?, &app, hard).await?;
            if !out.json {
                println!(
                    "revoked app {app}'s grant of {raw}{}",
                    if hard { " (deleted)" } else { "" }
                );
            }
        }
    }
    Ok(())
}
