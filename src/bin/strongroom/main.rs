//! `strongroom`: the operator command-line tool.
//!
//! Exit codes (the README's table; `errors.rs`): 0 success, 1 other failure, 2 bad input or
//! configuration (a master key file others can read, an unknown key backend), 3 not found
//! (also a provider asked for by name), 4 permission denied, 5 conflict (already exists,
//! stale version), 6 integrity failure (a broken audit chain, a blob that does not decrypt
//! or that no held key opens, a backup that fails its checks), 7 a credential the provider
//! rejected, 8 verification inconclusive, 9 a key rotation that is not complete yet. Under
//! `--json` a failure is one JSON object on stderr: `{"error": {"kind", "message"}}`.
//!
//! Audit checkpoints: every command that commits appends a checkpoint of the audit chain to
//! `$STRONGROOM_HOME/checkpoints` (one per commit), `audit verify` checks the chain against
//! the newest one, and every other command first checks that the chain still holds the row
//! it vouches for, so a cut or rewritten chain is never extended (see docs/AUDIT.md).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand};
use strongroom::audit::{AuditChain, CheckpointSink, CHECKPOINT_KEY_PURPOSE};
use strongroom::catalog::{Catalog, Provider};
use strongroom::crypto::{default_home_from_env, key_wrapper_from_env};
use strongroom::handlers::HandlerRegistry;
use strongroom::vault::policy::Action;
use strongroom::{
    Checkpoint, CredentialFilter, CredentialId, CredentialInfo, Error, ErrorKind, ExposeSecret,
    KeyRing, LifecycleState, NewCredential, Principal, Scope, ScopeKind, SecretString, SqliteStore,
    Store, Timestamp, Vault,
};

mod audit;
mod backup;
mod credentials;
mod errors;
mod history;
mod keys;
mod output;
mod providers;
mod store;
mod yaml;

use audit::*;
use backup::*;
use credentials::*;
use errors::*;
use history::*;
use keys::*;
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
    /// A folder of provider TOML files that add to or override the bundled catalog
    /// (default: `$STRONGROOM_HOME/providers` when it exists).
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
}

fn main() -> ExitCode {
    let cli = parse_cli();
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
        Err(e) => ExitCode::from(tell_error(json, &e)),
    }
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
        )
    );
    if let Command::Credentials(
        CredentialsCommand::Create(CreateArgs { source, .. })
        | CredentialsCommand::AdminCreate { source, .. },
    ) = &cli.command
    {
        // Refuse an unknown provider before a vault file is created for it.
        Catalog::load(&HandlerRegistry::builtin(), dir.as_deref())?.require(&source.provider)?;
    }
    let kept = Arc::new(CheckpointFile::open(
        &default_home_from_env()?,
        store_label(&spec),
    )?);
    if let Command::Restore(args) = cli.command {
        // Works on the file itself, which may not exist yet: no vault is opened first.
        return restore(&actor, &spec, &kept, args, sqlite, &out).await;
    }
    if let StoreSpec::Sqlite(path) = &spec {
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
                what: format!("vault {}", path.display()),
                hint: Some("check --store (or STRONGROOM_HOME); a vault is created by the first `credentials create`".into()),
            });
        }
    }
    let store = open_store(&spec, sqlite).await?;
    let key = key_wrapper_from_env()?;
    // Checkpoints need a key derived from the master key; the cloud backends cannot yet.
    let checkpoints = key.derive_key(CHECKPOINT_KEY_PURPOSE).await.is_ok();
    let mut builder = Vault::builder()
        .store(store)
        .key_wrapper(key)
        .http(Arc::new(strongroom::transport::ReqwestTransport::new()?));
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
            if let Some(cp) = kept.newest(vault.keys())?.checkpoint {
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
            if let Some(cp) = kept.newest(vault.keys())?.checkpoint {
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
                command => run_command(&vault, &actor, command, &kept, &out).await,
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
    kept: &Arc<CheckpointFile>,
    out: &Output,
) -> Result<u8, Error> {
    match command {
        Command::Keys(cmd) => keys(vault, actor, cmd, kept, out).await,
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
        Command::Audit(cmd) => audit_browse(vault, actor, cmd, out).await,
        Command::Providers(_) | Command::Yaml(_) | Command::Backup(_) | Command::Restore(_) => {
            Ok(0)
        }
    }
}
