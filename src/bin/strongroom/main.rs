//! `strongroom`: the operator command-line tool.
//!
//! Exit codes (the README's table; `errors.rs`): 0 success, 1 other failure, 2 bad input or
//! configuration (a master key file others can read, an unknown key backend), 3 not found
//! (also a provider asked for by name), 4 permission denied, 5 conflict (already exists,
//! stale version), 6 integrity failure (a broken audit chain, a blob that does not decrypt,
//! a backup that fails its checks), 7 a credential the provider
//! rejected (also in an OAuth login or refresh), 8 verification inconclusive (also an OAuth
//! refresh that will be retried or runs elsewhere), 9 a key rotation that is not complete yet, 10 a master key that cannot be used
//! now (not held, or the key service refused or failed, with its reason). Under
//! `--json` a failure is one JSON object on stderr: `{"error": {"kind", "message"}}`.
//!
//! Audit checkpoints: every command that commits appends a checkpoint of the audit chain to
//! `$STRONGROOM_HOME/checkpoints` (one per commit), `audit verify` checks the chain against
//! the newest one, and every other command first checks that the chain still holds the row
//! it vouches for, so a cut or rewritten chain is never extended (see docs/AUDIT.md).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand};
use strongroom::audit::{checkpoint_key_id, AuditChain, AuditKey, CheckpointSink};
use strongroom::catalog::{Catalog, Provider};
use strongroom::crypto::{default_home_from_env, key_wrapper_from_env};
use strongroom::handlers::HandlerRegistry;
use strongroom::vault::policy::Action;
use strongroom::{
    Checkpoint, CredentialFilter, CredentialId, CredentialInfo, Error, ErrorKind, ExposeSecret,
    LifecycleState, NewCredential, Principal, Scope, ScopeKind, SecretString, SqliteStore, Store,
    Timestamp, Vault,
};

// Every line the CLI prints goes through these, which shadow the standard macros in this
// file and in every module declared below it: text is made terminal-safe (control
// characters from a database row, a provider file or an error are escaped, not obeyed),
// and a stdout closed by its reader (`strongroom providers list | head -c 100`) ends the
// output instead of panicking.
macro_rules! println {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
macro_rules! eprintln {
    () => {
        $crate::output::write_stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod agent;
mod audit;
mod backup;
mod credential_provider;
mod credentials;
mod errors;
mod history;
mod keys;
mod keysel;
mod oauth;
mod output;
mod providers;
mod store;
mod yaml;

use agent::*;
use audit::*;
use backup::*;
use credential_provider::*;
use credentials::*;
use errors::*;
use history::*;
use keys::*;
use oauth::*;
use output::*;
use providers::*;
use store::*;
use yaml::*;

#[derive(Parser)]
#[command(
    name = "strongroom",
    version,
    about = "Operate a strongroom credential vault"
)]
struct Cli {
    /// Where the vault lives: `sqlite:PATH` (default `$STRONGROOM_HOME/vault.db`) or
    /// `postgres://…`.
    #[arg(long, global = true, env = "STRONGROOM_STORE")]
    store: Option<String>,
    /// The acting principal: system_admin:ID, app_admin:APP:ID, app_user:APP:ID, viewer:ID,
    /// runtime:APP:USER, agent:ID or service:ID. Asserted, not authenticated: whoever holds
    /// the master key can act as anyone.
    #[arg(long = "as", global = true, env = "STRONGROOM_ACTOR")]
    actor: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Log to stderr: `-v` info (with one line per vault operation as it ends), `-vv`
    /// debug, `-vvv` trace. `RUST_LOG` (tracing-subscriber's env-filter syntax, for example
    /// `RUST_LOG=strongroom=debug`) refines it. Logs are scrubbed of every secret value the
    /// command has seen.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// A folder of provider TOML files that add to or override the bundled catalog
    /// (default: `$STRONGROOM_HOME/providers` when it exists). Refused when group or others
    /// may write it; a file they may write is skipped; an override is reported.
    #[arg(long, global = true, env = "STRONGROOM_PROVIDERS_DIR")]
    providers_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Verify the audit chain and read its rows.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Browse the provider catalog.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Work on app config YAML files.
    #[command(subcommand)]
    Yaml(YamlCommand),
    /// Master keys: how many records each wraps, and rotation onto a new key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// OAuth logins (browser with PKCE, or device code) that end in a per-user credential,
    /// and refreshing, inspecting and revoking such credentials. Clients come from
    /// `$STRONGROOM_HOME/oauth_providers.toml` (mode 0600).
    #[command(subcommand)]
    Oauth(OauthCommand),
    /// Write a consistent copy of a SQLite vault to PATH while it keeps serving (SQLite's
    /// online backup API; mode 0600; an existing PATH is refused). System admins. For
    /// PostgreSQL use pg_dump (see docs/DEPLOYMENT.md).
    Backup(BackupArgs),
    /// Replace the SQLite vault with a backup, after checking that the backup's audit chain
    /// holds (and matches the checkpoints kept for this vault) and that the master key
    /// opens every credential in it; nothing is replaced when a check fails (exit 6). The
    /// replace is atomic; the vault as it was is kept beside it
    /// (`vault.db.before-restore-TIME`), and its checkpoints are set aside likewise.
    /// System admins.
    Restore(RestoreArgs),
    /// Agents: their integrations (GitHub, GitLab, Telegram), what the credentials path
    /// hands them, and their named secrets (an org-level secret with a per-agent override).
    Agent(AgentArgs),
    /// Org-level credential providers (GitLab) that mint an identity per agent for
    /// `agent integration gitlab link AGENT --provider NAME`: add, list, remove, finish
    /// (clean up after crashed links), rotate (tokens due within seven days). System admins.
    #[command(subcommand)]
    CredentialProvider(CredentialProviderCommand),
}

/// A 32-byte key (base64url) that authenticates the audit checkpoints instead of the master
/// key's checkpoint key.
const ENV_AUDIT_KEY: &str = "STRONGROOM_AUDIT_KEY";

/// Logs to stderr through the process-wide scrubber (the vaults this tool builds register
/// with it): the level from `-v`, refined by `RUST_LOG`. Without either, warnings only.
fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    use tracing_subscriber::fmt::format::FmtSpan;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let spans = if verbose > 0 || std::env::var_os("RUST_LOG").is_some() {
        FmtSpan::CLOSE
    } else {
        FmtSpan::NONE
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(strongroom::Scrubber::global().wrap(std::io::stderr))
        .try_init();
}

fn main() -> ExitCode {
    let cli = parse_cli();
    init_logging(cli.verbose);
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut sqlite = None;
    let outcome = runtime.block_on(run(cli, &mut sqlite));
    // Checkpoint the WAL into the database and remove it, so no `-wal` file is left behind.
    if let Some(store) = sqlite {
        if let Err(e) = runtime.block_on(store.close()) {
            eprintln!("warning: the store was not closed cleanly (nothing is lost): {e}");
        }
    }
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = tell_error(json, &e);
            if e.kind() == ErrorKind::KeyUnavailable && !json {
                eprintln!(
                    "hint: this command finds retired master keys in {} (file:PATH or env:VAR, \
                     comma-separated) and under `retired` in $STRONGROOM_HOME/{}",
                    keysel::ENV_RETIRED_KEYS,
                    keysel::KEYS_FILE
                );
            }
            ExitCode::from(code)
        }
    }
}

/// The home (`STRONGROOM_HOME`, default `~/.strongroom`): refused when group or others may
/// write it (they could swap the master key, the vault or the providers folder), and made
/// 0700 by a command that starts a vault.
fn home(create: bool) -> Result<PathBuf, Error> {
    let home = default_home_from_env()?;
    check_home(&home)?;
    if create && !home.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)
            .map_err(|e| Error::Io {
                path: home.display().to_string(),
                source: e,
            })?;
    }
    Ok(home)
}

/// Refuses a home folder that group or others may write.
fn check_home(home: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(home) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                path: home.display().to_string(),
                source: e,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        return Err(Error::Config {
            message: format!(
                "STRONGROOM_HOME {} is not a folder; point it at a folder of its own",
                home.display()
            ),
        });
    }
    if mode & 0o022 != 0 {
        return Err(Error::Config {
            message: format!(
                "refusing STRONGROOM_HOME {}: group or others can write it (mode {mode:04o}), so \
                 they could replace the master key, the vault or the providers folder; run \
                 `chmod 700 {}`",
                home.display(),
                home.display()
            ),
        });
    }
    Ok(())
}

fn invalid(field: &str, reason: &str) -> Error {
    Error::InvalidInput {
        field: field.into(),
        reason: reason.into(),
    }
}

async fn run(cli: Cli, sqlite: &mut Option<SqliteStore>) -> Result<u8, Error> {
    let dir = providers_dir(cli.providers_dir.clone())?;
    let out = Output { json: cli.json };
    if let Command::Providers(cmd) = cli.command {
        let catalog = Catalog::load(&HandlerRegistry::builtin(), dir.as_deref())?;
        return providers(&catalog, cmd, &out);
    }
    if let Command::Yaml(cmd) = cli.command {
        let catalog = Catalog::load(&HandlerRegistry::builtin(), dir.as_deref())?;
        return yaml(&catalog, cmd, &out);
    }
    let actor = Principal::parse(cli.actor.as_deref().ok_or_else(|| {
        invalid(
            "--as",
            "name the acting principal with --as or STRONGROOM_ACTOR (for example app_user:crm:alice)",
        )
    })?)?;
    let spec = store_spec(cli.store.as_deref())?;
    let creates = matches!(
        cli.command,
        Command::Credentials(
            CredentialsCommand::Create(_) | CredentialsCommand::AdminCreate { .. }
        ) | Command::Oauth(OauthCommand::Start(_) | OauthCommand::Device { .. })
    ) || matches!(&cli.command, Command::Agent(args) if args.creates())
        || matches!(&cli.command, Command::CredentialProvider(cmd) if cmd.creates());
    if let Command::Credentials(
        CredentialsCommand::Create(CreateArgs { source, .. })
        | CredentialsCommand::AdminCreate { source, .. },
    ) = &cli.command
    {
        // Refuse an unknown provider before a vault file is created for it.
        let catalog = Catalog::load(&HandlerRegistry::builtin(), dir.as_deref())?;
        let provider = catalog.require(&source.provider)?;
        if catalog.overrides().any(|o| o.name == provider.name) {
            eprintln!(
                "note: provider `{}` comes from the drop-in file {}, which overrides the \
                 bundled definition",
                one_line(&provider.name),
                one_line(&provider.source)
            );
        }
    }
    if let Command::Oauth(
        OauthCommand::Start(StartArgs { provider, .. }) | OauthCommand::Device { provider, .. },
    ) = &cli.command
    {
        // Likewise before a login starts a vault.
        let catalog = Catalog::load(&HandlerRegistry::builtin(), dir.as_deref())?;
        catalog.require(provider)?;
    }
    let home = home(creates)?;
    let kept = Arc::new(CheckpointFile::open(&home, store_label(&spec))?);
    if let Command::Restore(args) = cli.command {
        // Works on the file itself, which may not exist yet: no vault is opened first.
        return restore(&actor, &spec, &kept, args, sqlite, &out).await;
    }
    if let StoreSpec::Sqlite(path) = &spec {
        // A command that only reads never makes a vault: not from a missing file, and not
        // from an empty one either.
        let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
        if !creates && empty {
            return Err(Error::NotFound {
                what: format!("vault at {} (the file is empty)", path.display()),
                hint: Some(
                    "create a credential to start one (`strongroom credentials create`); the \
                     file was left as it is"
                        .into(),
                ),
            });
        }
        if !creates && !path.exists() {
            if let (Command::Audit(_), Some(cp)) = (&cli.command, kept.highest()?) {
                // Gone, while a checkpoint vouches for its rows: that is a broken chain.
                println!(
                    "audit chain BROKEN: first bad sequence number 1: rows 1–{} missing \
                     (checkpoint at seq {}); the vault file {} is gone",
                    cp.seq,
                    cp.seq,
                    path.display()
                );
                return Ok(6);
            }
            return Err(Error::NotFound {
                what: format!("vault at {}", path.display()),
                hint: Some(
                    "create a credential to start one (`strongroom credentials create`), or \
                     check --store and STRONGROOM_HOME; nothing was created"
                        .into(),
                ),
            });
        }
    }
    let store = open_store(&spec, sqlite, creates).await?;
    let read_only = matches!(
        cli.command,
        Command::Credentials(
            CredentialsCommand::List { .. }
                | CredentialsCommand::Show { .. }
                | CredentialsCommand::AdminList
                | CredentialsCommand::Grants { .. }
                | CredentialsCommand::Versions(history::VersionCommand::History { .. })
        ) | Command::Audit(_)
            | Command::Keys(KeysCommand::Status)
            | Command::Oauth(OauthCommand::Status { .. })
    ) || matches!(&cli.command, Command::CredentialProvider(cmd) if cmd.reads_only());
    let keys = keysel::select(
        store.as_ref(),
        &home,
        &store_label(&spec),
        creates,
        !read_only,
    )
    .await?;
    let key = keys.active.key.clone();
    // Checkpoints are authenticated by STRONGROOM_AUDIT_KEY when it is set, else by the
    // master key's checkpoint key (a local key's derived HMAC key, a cloud key's MAC or
    // signature); an AWS or Google Cloud key without a MAC key offers none.
    let audit_key = match std::env::var(ENV_AUDIT_KEY) {
        Ok(text) if !text.trim().is_empty() => {
            Some(Arc::new(AuditKey::from_base64(&text, ENV_AUDIT_KEY)?))
        }
        _ => None,
    };
    let checkpoints = audit_key.is_some() || checkpoint_key_id(key.as_ref()).await.is_ok();
    let mut builder = Vault::builder()
        .store(store)
        .key_wrapper(key)
        .http(Arc::new(strongroom::transport::ReqwestTransport::new()?))
        // The OAuth clients (none when the file is missing; refused unless it is private).
        .oauth_clients_file(home.join(OAUTH_CLIENTS_FILE));
    for retired in &keys.retired {
        builder = builder.retired_key(retired.key.clone());
    }
    let _ = keysel::SELECTED.set(keys);
    if let Some(audit_key) = audit_key {
        builder = builder.checkpoint_key(audit_key);
    }
    // The vault namespace bound into every sealed record: fixed for a vault's life, distinct
    // for vaults that share a master key.
    if let Ok(namespace) = std::env::var("STRONGROOM_NAMESPACE") {
        builder = builder.namespace(namespace);
    }
    if checkpoints {
        // The CLI lives for one command: a checkpoint after every commit.
        builder = builder.checkpoints(kept.clone(), 1);
    }
    if let Some(dir) = dir {
        builder = builder.providers_dir(dir);
    }
    if let Command::Agent(args) = &cli.command {
        for (provider, url) in args.urls.given() {
            builder = builder.integration_base_url(provider, url);
        }
    }
    let vault = builder.build().await?;
    let result = match cli.command {
        Command::Audit(AuditCommand::Verify) => {
            audit_verify(&vault, &actor, &kept, checkpoints, &out).await
        }
        // Reading the log is what an investigation of a broken chain needs, and it adds no
        // row for someone the policy lets read it: allowed over a broken chain, with a note.
        Command::Audit(cmd @ (AuditCommand::List(_) | AuditCommand::Show { .. }))
            if may_read_audit(&actor) =>
        {
            if let Some(cp) = kept.newest(vault.audit()).await?.checkpoint {
                if let Some(problem) = vault.audit().still_holds(&cp).await? {
                    eprintln!(
                        "note: the audit chain is BROKEN ({problem}); rows are shown as \
                         stored: run `strongroom audit verify`"
                    );
                }
            }
            audit_browse(&vault, &actor, cmd, &out).await
        }
        command => {
            // Never add rows (or sign a checkpoint) over a chain that was cut or rewritten.
            if let Some(cp) = kept.newest(vault.audit()).await?.checkpoint {
                if let Some(problem) = vault.audit().still_holds(&cp).await? {
                    tell_failure(
                        out.json,
                        "audit_chain_broken",
                        &format!(
                            "audit chain BROKEN: {problem}. Nothing was done: run \
                             `strongroom audit verify`, and see docs/AUDIT.md (checkpoints) \
                             before setting {} aside",
                            kept.path.display()
                        ),
                    );
                    return Ok(6);
                }
            }
            match command {
                Command::Backup(args) => {
                    backup(&vault, &actor, sqlite.as_ref(), &spec, args, &out).await
                }
                command => run_command(&vault, &actor, command, &home, &kept, &out).await,
            }
        }
    };
    if let Some(why) = kept.failure() {
        tell_failure(
            out.json,
            "checkpoint_not_kept",
            &format!(
                "the audit checkpoint could not be kept in {} ({why}); what the command did is \
                 done and audited, but a cut tail after it would not be caught",
                kept.path.display()
            ),
        );
        return result.and(Ok(1));
    }
    result
}

/// Runs a command on an open vault (everything but `audit verify`).
async fn run_command(
    vault: &Vault,
    actor: &Principal,
    command: Command,
    home: &Path,
    kept: &Arc<CheckpointFile>,
    out: &Output,
) -> Result<u8, Error> {
    match command {
        Command::Keys(cmd) => keys(vault, actor, cmd, kept, out).await,
        Command::Oauth(cmd) => oauth(vault, actor, cmd, home, out).await,
        Command::Credentials(CredentialsCommand::Verify { id: text }) => {
            let v = vault.test_live_connection(actor, &id(&text)?).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let status = v
                    .http_status
                    .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
                println!(
                    "{:?}: {status}; credential is now {} (version {})",
                    v.result,
                    v.state.as_str(),
                    v.version
                );
                if let Some(reason) = &v.reason {
                    println!("  {reason}");
                }
            }
            Ok(match v.result {
                strongroom::VerifyResult::Valid => 0,
                strongroom::VerifyResult::Invalid => 7,
                _ => 8,
            })
        }
        Command::Credentials(cmd) => credentials(vault, actor, cmd, out).await.map(|()| 0),
        Command::Agent(args) => agent(vault, actor, args, out).await,
        Command::CredentialProvider(cmd) => credential_provider(vault, actor, cmd, out).await,
        Command::Audit(cmd) => audit_browse(vault, actor, cmd, out).await,
        Command::Providers(_) | Command::Yaml(_) | Command::Backup(_) | Command::Restore(_) => {
            Ok(0)
        }
    }
}
