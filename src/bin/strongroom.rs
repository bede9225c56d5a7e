//! `strongroom`: the operator command-line tool.
//!
//! Exit codes: 0 success, 1 other failure, 2 bad input or configuration, 3 not found,
//! 4 permission denied, 5 conflict (already exists, stale version), 6 integrity failure
//! (a broken audit chain, a blob that does not decrypt), 7 a credential the provider rejected,
//! 8 verification inconclusive, 9 a key rotation that is not complete yet.
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
use strongroom::vault::policy::{allows, Action, Relation};
use strongroom::{
    Checkpoint, CredentialFilter, CredentialId, CredentialInfo, Error, ErrorKind, ExposeSecret,
    KeyRing, LifecycleState, NewCredential, Principal, Scope, ScopeKind, SecretString, SqliteStore,
    Store, Timestamp, Vault,
};

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
    /// Inspect the audit chain.
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
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Count the records each master key wraps.
    Status,
    /// Move every data key onto a new master key while the vault keeps serving: atomic
    /// batches, resumable (run it again after a crash), with a final check that nothing
    /// still needs the old key. The current key (`STRONGROOM_KMS`…) and any `--retired`
    /// keys open the old blobs.
    ///
    /// Exits 0 when complete, 9 while records still need an old key (run it again).
    ///
    /// Progress: on a terminal, a spinner. When stderr is not a terminal, or with --json,
    /// one JSON line on stderr per batch instead, written after the batch has committed,
    /// for scripts to follow or wait on: {"batch":1,"rewrapped":500,"remaining":1200}.
    /// `batch` and `rewrapped` count the batches and records this run has committed so
    /// far; `remaining` is the records on other keys when the run started less those it
    /// has moved (an estimate while the vault is being written). The summary goes to
    /// stdout at the end.
    Rotate {
        /// The new key: `file:PATH` (created when missing), `env:VAR` (a base64url key in
        /// variable VAR), or a cloud backend (`aws_kms`, `gcp_kms`, `azure_kv`, `vault`)
        /// configured by its usual variables, each overridable with a `STRONGROOM_TO_`
        /// prefix (`STRONGROOM_TO_AWS_KMS_KEY_ID`).
        #[arg(long)]
        to: String,
        /// More keys that old blobs may name (same forms as --to).
        #[arg(long)]
        retired: Vec<String>,
        /// Records per atomic batch.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Stop after this many batches (run again to continue).
        #[arg(long)]
        max_batches: Option<usize>,
    },
}

#[derive(Subcommand)]
enum YamlCommand {
    /// Add `credential:` blocks where inline {{secret.X}} / {{env.X}} templates are used
    /// (keeping each template as the development fallback). Prints a unified diff unless
    /// --write is given. `${{ ... }}` (GitHub Actions) is not a template.
    ///
    /// In a folder it visits the *.yaml / *.yml files, not those whose name starts with `.`
    /// (nor hidden folders such as .git and .github), nor symbolic links, nor the paths a
    /// .strongroomignore file in the folder or an --exclude pattern names (gitignore-style).
    /// A file that cannot be read, parsed or rewritten safely is reported and left as it
    /// was; the others are migrated; the exit code is then 2.
    MigrateCredentials {
        /// A YAML file, or a folder of *.yaml / *.yml files.
        path: PathBuf,
        /// Rewrite the files in place.
        #[arg(long)]
        write: bool,
        /// Also walk the folder's subfolders.
        #[arg(long)]
        recursive: bool,
        /// Skip the paths this gitignore-style pattern matches (relative to PATH; may be
        /// given several times), as a line of .strongroomignore would.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
    },
    /// Compile an app config: list the blocks that name credentials, and every error and
    /// warning with file:line:column. Exits 2 when there are errors.
    Check {
        /// The app config.
        file: PathBuf,
        /// The app id (default: the file name without extension).
        #[arg(long)]
        app: Option<String>,
    },
}

#[derive(Subcommand)]
enum ProvidersCommand {
    /// List the providers (bundled and drop-in), and any provider file that could not be used.
    List,
    /// Show one provider: its credential type, fields, prefix checks and verification.
    Show {
        /// Provider name.
        name: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain against the newest checkpoint kept in
    /// `$STRONGROOM_HOME/checkpoints`; exits 6 if it is broken, naming the first bad
    /// sequence number and what was lost (rows cut from the tail, an emptied chain, rows
    /// rewritten).
    Verify,
}

#[derive(Args)]
struct ScopeArgs {
    /// system_wide, per_app_shared, per_user (default), per_app_per_user or per_agent.
    #[arg(long)]
    scope: Option<String>,
    /// The app (default: the acting principal's).
    #[arg(long)]
    app: Option<String>,
    /// The user (default: the acting principal's).
    #[arg(long)]
    user: Option<String>,
    /// The agent, for per_agent.
    #[arg(long)]
    agent: Option<String>,
}

/// What every create command takes: provider, name and secret fields.
#[derive(Args)]
struct CredentialSource {
    /// Provider name (see the bundled list in the error for an unknown one).
    #[arg(long)]
    provider: String,
    /// The `ref` name (default: `<provider>_main`).
    #[arg(long)]
    name: Option<String>,
    /// Secret field as name=value; name=- reads the value from stdin, name=? prompts.
    #[arg(short = 'f', long = "field", required = true)]
    fields: Vec<String>,
}

#[derive(Args)]
struct CreateArgs {
    #[command(flatten)]
    source: CredentialSource,
    /// When the credential stops being usable: an RFC 3339 time (2030-01-02T03:04:05Z) or a
    /// duration from now (+30d, +12h, +90m, +2w).
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    #[command(flatten)]
    scope: ScopeArgs,
}

#[derive(Subcommand)]
enum CredentialsCommand {
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
    /// List every credential (administrators).
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
}

fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Config => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied => 4,
        ErrorKind::AlreadyExists | ErrorKind::VersionConflict => 5,
        ErrorKind::DecryptFailed | ErrorKind::Corrupt => 6,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Where the vault lives.
enum StoreSpec {
    Sqlite(PathBuf),
    Postgres(String),
}

fn store_spec(spec: Option<&str>) -> Result<StoreSpec, Error> {
    match spec {
        None => Ok(StoreSpec::Sqlite(default_home_from_env()?.join("vault.db"))),
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            Ok(StoreSpec::Postgres(s.to_string()))
        }
        Some(s) => match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(StoreSpec::Sqlite(PathBuf::from(path))),
            _ => Err(invalid(
                "--store",
                "is not a store; write sqlite:PATH or postgres://USER@HOST:PORT/DATABASE",
            )),
        },
    }
}

/// Opens the store (`STRONGROOM_PG_SCHEMA` picks the PostgreSQL schema, default
/// `strongroom`).
async fn open_store(spec: &StoreSpec) -> Result<Arc<dyn Store>, Error> {
    Ok(match spec {
        StoreSpec::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        StoreSpec::Postgres(url) => {
            let mut options = strongroom::PostgresOptions::default();
            if let Ok(schema) = std::env::var("STRONGROOM_PG_SCHEMA") {
                options = options.schema(schema);
            }
            Arc::new(strongroom::PostgresStore::connect_with(url, options).await?)
        }
    })
}

/// `--expires-at`: an RFC 3339 time or `+N` minutes, hours, days or weeks from `now`; a
/// bare number (seconds? milliseconds?) and a time that is not in the future are refused.
fn expiry_from_arg(text: &str, now: Timestamp) -> Result<Timestamp, Error> {
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

/// Rewrites the named millisecond fields of a JSON object (or of each object in an array) as
/// RFC 3339 text, as the CLI prints every time.
fn times_as_rfc3339(value: &mut serde_json::Value, fields: &[&str]) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                times_as_rfc3339(item, fields);
            }
        }
        serde_json::Value::Object(map) => {
            for field in fields {
                if let Some(slot) = map.get_mut(*field) {
                    if let Some(ms) = slot.as_i64() {
                        *slot = serde_json::Value::String(Timestamp(ms).to_string());
                    }
                }
            }
        }
        _ => {}
    }
}

/// The time fields of a credential's JSON form.
const CREDENTIAL_TIMES: [&str; 3] = ["created_at", "updated_at", "expires_at"];

fn invalid(field: &str, reason: &str) -> Error {
    Error::InvalidInput {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The drop-in providers folder: the flag or variable, else `$STRONGROOM_HOME/providers`
/// when it exists.
fn providers_dir(flag: Option<PathBuf>) -> Result<Option<PathBuf>, Error> {
    match flag {
        Some(dir) => Ok(Some(dir)),
        None => {
            let dir = default_home_from_env()?.join("providers");
            Ok(dir.is_dir().then_some(dir))
        }
    }
}

fn providers(catalog: &Catalog, cmd: ProvidersCommand, out: &Output) -> Result<u8, Error> {
    match cmd {
        ProvidersCommand::List => {
            let all: Vec<&Provider> = catalog.providers().map(|p| p.as_ref()).collect();
            if out.json {
                let problems: Vec<String> =
                    catalog.problems().iter().map(|p| p.to_string()).collect();
                let doc = serde_json::json!({ "providers": all, "problems": problems });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!(
                    "{:<16}  {:<28}  {:<20}  {:<12}  VERIFY",
                    "NAME", "DISPLAY NAME", "HANDLER", "CATEGORY"
                );
                for p in &all {
                    println!(
                        "{:<16}  {:<28}  {:<20}  {:<12}  {}",
                        p.name,
                        p.display_name,
                        p.handler_type,
                        p.category.as_deref().unwrap_or("-"),
                        if p.verify.is_some() { "yes" } else { "no" }
                    );
                }
                for problem in catalog.problems() {
                    eprintln!("skipped: {problem}");
                }
            }
            Ok(if catalog.problems().is_empty() { 0 } else { 2 })
        }
        ProvidersCommand::Show { name } => {
            let p = catalog.require(&name)?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(p.as_ref()).unwrap_or_default()
                );
                return Ok(0);
            }
            println!("{} ({})", p.display_name, p.name);
            println!("  handler type: {}", p.handler_type);
            if let Some(c) = &p.category {
                println!("  category:     {c}");
            }
            println!("  source:       {}", p.source);
            println!("  fields:");
            for f in &p.fields {
                let mut notes = vec![if f.spec.required {
                    "required"
                } else {
                    "optional"
                }];
                if f.spec.secret {
                    notes.push("secret");
                }
                let prefix = if f.prefix_check.is_empty() {
                    String::new()
                } else {
                    format!(", starts with {}", f.prefix_check.join(" or "))
                };
                println!(
                    "    {:<22} {} ({}{prefix})",
                    f.spec.name,
                    f.spec.label,
                    notes.join(", ")
                );
            }
            match &p.verify {
                Some(v) => println!(
                    "  verify:       {} {} (success: {:?})",
                    v.method, v.endpoint, v.success_codes
                ),
                None => println!("  verify:       none"),
            }
            Ok(0)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Error> {
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
    let store = open_store(&spec).await?;
    let key = key_wrapper_from_env()?;
    // Checkpoints need a key derived from the master key; the cloud backends cannot yet.
    let checkpoints = key.derive_key(CHECKPOINT_KEY_PURPOSE).await.is_ok();
    let mut builder = Vault::builder()
        .store(store)
        .key_wrapper(key)
        .http(Arc::new(strongroom::transport::ReqwestTransport::new()?));
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
        command => {
            // Never add rows (or sign a checkpoint) over a chain that was cut or rewritten.
            if let Some(cp) = kept.newest(vault.keys())?.checkpoint {
                if let Some(problem) = vault.audit().still_holds(&cp).await? {
                    eprintln!(
                        "error: audit chain BROKEN: {problem}. Nothing was done: run \
                         `strongroom audit verify`, and see docs/AUDIT.md (checkpoints) before \
                         setting {} aside",
                        kept.path.display()
                    );
                    return Ok(6);
                }
            }
            run_command(&vault, &actor, command, &kept, &out).await
        }
    };
    if let Some(why) = kept.failure() {
        eprintln!(
            "error: the audit checkpoint could not be kept in {} ({why}); what the command \
             did is done and audited, but a cut tail after it would not be caught",
            kept.path.display()
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
        Command::Providers(_) | Command::Yaml(_) | Command::Audit(_) => Ok(0),
    }
}

/// `audit verify`: the chain, against the newest checkpoint this vault's key ring can check.
async fn audit_verify(
    vault: &Vault,
    actor: &Principal,
    kept: &CheckpointFile,
    checkpoints: bool,
    out: &Output,
) -> Result<u8, Error> {
    let newest = kept.newest(vault.keys())?;
    let report = match &newest.checkpoint {
        Some(cp) => vault.verify_audit_with(actor, cp).await?,
        None => vault.verify_audit(actor).await?,
    };
    if out.json {
        let mut doc = serde_json::to_value(&report).unwrap_or_default();
        doc["checkpoint"] = serde_json::to_value(&newest.checkpoint).unwrap_or_default();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if let Some(problem) = &report.problem {
        println!("audit chain BROKEN: {problem}");
    } else if let Some(cp) = &newest.checkpoint {
        println!(
            "audit chain intact: {} rows (checked against the checkpoint at seq {})",
            report.rows, cp.seq
        );
    } else {
        println!(
            "audit chain intact: {} rows (no checkpoint kept for this vault yet, so a cut \
             tail would not show)",
            report.rows
        );
    }
    if newest.unreadable > 0 {
        eprintln!(
            "note: {} line(s) of {} could not be read and were skipped",
            newest.unreadable,
            kept.path.display()
        );
    }
    if newest.unheld > 0 {
        eprintln!(
            "note: {} newer checkpoint(s) were made with master keys this vault does not hold \
             and were not used",
            newest.unheld
        );
    }
    if !checkpoints {
        eprintln!(
            "note: the master key {} cannot derive the checkpoint key (cloud KMS backends \
             cannot yet), so this vault's commands keep no checkpoints",
            vault.keys().active().key_id()
        );
    }
    Ok(if report.is_ok() { 0 } else { 6 })
}

/// What a checkpoint line names as its vault: `sqlite:` and the file's absolute path, or
/// the PostgreSQL URL without its password, with the schema.
fn store_label(spec: &StoreSpec) -> String {
    match spec {
        StoreSpec::Sqlite(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let absolute = match (dir.canonicalize(), path.file_name()) {
                (Ok(dir), Some(name)) => dir.join(name),
                _ => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
            };
            format!("sqlite:{}", absolute.display())
        }
        StoreSpec::Postgres(url) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
            let (authority, tail) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split_once(':').map_or(user, |(u, _)| u);
                    format!("{user}@{host}")
                }
                None => authority.to_string(),
            };
            let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
            let schema =
                std::env::var("STRONGROOM_PG_SCHEMA").unwrap_or_else(|_| "strongroom".into());
            format!("{scheme}://{authority}{tail}#schema={schema}")
        }
    }
}

/// The CLI's kept checkpoints, `$STRONGROOM_HOME/checkpoints`: append-only, one JSON
/// checkpoint per line (its fields plus `store`, the vault it vouches for), created 0600 and
/// refused when group or others may write it.
struct CheckpointFile {
    path: PathBuf,
    store: String,
    /// Why the last append failed, if it did (a sink cannot return an error).
    failed: Mutex<Option<String>>,
}

/// One line of the file.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptCheckpoint {
    store: String,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

/// The checkpoint to check against, and what was passed over to find it.
struct Newest {
    checkpoint: Option<Checkpoint>,
    /// Lines that do not parse.
    unreadable: usize,
    /// This vault's checkpoints newer than the one chosen, made with keys the ring lacks.
    unheld: usize,
}

impl CheckpointFile {
    fn open(home: &Path, store: String) -> Result<CheckpointFile, Error> {
        let path = home.join("checkpoints");
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if !meta.is_file() || mode & 0o022 != 0 {
                    return Err(Error::Config {
                        message: format!(
                            "refusing the checkpoints file {}: {}; run `chmod 600 {}`",
                            path.display(),
                            if meta.is_file() {
                                format!("group or others can write it (mode {mode:04o})")
                            } else {
                                "it is not a regular file".to_string()
                            },
                            path.display()
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        }
        Ok(CheckpointFile {
            path,
            store,
            failed: Mutex::new(None),
        })
    }

    /// This vault's checkpoints in file order, and the number of unreadable lines.
    fn read(&self) -> Result<(Vec<Checkpoint>, usize), Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => {
                return Err(Error::Io {
                    path: self.path.display().to_string(),
                    source: e,
                })
            }
        };
        let (mut mine, mut unreadable) = (Vec::new(), 0);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<KeptCheckpoint>(line) {
                Ok(kept) if kept.store == self.store => mine.push(kept.checkpoint),
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
        Ok((mine, unreadable))
    }

    /// This vault's newest checkpoint (the highest seq; of equals, the later line),
    /// whatever its key.
    fn highest(&self) -> Result<Option<Checkpoint>, Error> {
        let (mine, _) = self.read()?;
        Ok(mine.into_iter().rev().max_by_key(|c| c.seq))
    }

    /// This vault's newest checkpoint that `ring` can check (its master key is active or
    /// retired there).
    fn newest(&self, ring: &KeyRing) -> Result<Newest, Error> {
        let (mine, unreadable) = self.read()?;
        let checkpoint = mine
            .iter()
            .rev()
            .filter(|c| ring.key(&c.key_id).is_some())
            .max_by_key(|c| c.seq)
            .cloned();
        let floor = checkpoint.as_ref().map_or(0, |c| c.seq);
        let unheld = mine
            .iter()
            .filter(|c| c.seq > floor && ring.key(&c.key_id).is_none())
            .count();
        Ok(Newest {
            checkpoint,
            unreadable,
            unheld,
        })
    }

    fn append(&self, checkpoint: &Checkpoint) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = self.path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        let line = serde_json::to_string(&KeptCheckpoint {
            store: self.store.clone(),
            checkpoint: checkpoint.clone(),
        })
        .map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        // One write, so a reader never sees half a line.
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl CheckpointSink for CheckpointFile {
    fn publish(&self, checkpoint: &Checkpoint) {
        if let Err(e) = self.append(checkpoint) {
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn infos(&self, infos: &[CredentialInfo]) {
        if self.json {
            let mut value = serde_json::to_value(infos).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!(
            "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  VER",
            "ID", "NAME", "PROVIDER", "SCOPE", "STATE"
        );
        for i in infos {
            println!(
                "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  {}",
                i.id,
                i.name,
                i.provider,
                i.scope.to_string(),
                i.state.as_str(),
                i.version
            );
        }
    }

    fn info(&self, info: &CredentialInfo, fields: Option<&BTreeMap<String, SecretString>>) {
        if self.json {
            let mut value = serde_json::to_value(info).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            if let Some(fields) = fields {
                let shown: BTreeMap<&str, &str> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose_secret()))
                    .collect();
                value["fields"] = serde_json::to_value(shown).unwrap_or_default();
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!("id:          {}", info.id);
        println!("name:        {}", info.name);
        println!("provider:    {} ({})", info.provider, info.handler_type);
        println!("scope:       {}", info.scope);
        println!("state:       {}", info.state);
        println!("version:     {}", info.version);
        if let Some(at) = info.expires_at {
            println!("expires_at:  {at}");
        }
        for (k, v) in &info.metadata {
            println!("meta {k}: {v}");
        }
        match fields {
            Some(fields) => {
                for (k, v) in fields {
                    println!("field {k}: {}", v.expose_secret());
                }
            }
            None => println!("fields:      (hidden; --reveal to print them)"),
        }
    }
}

fn scope_from(args: &ScopeArgs, actor: &Principal) -> Result<Option<Scope>, Error> {
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

fn parse_fields(raw: &[String]) -> Result<BTreeMap<String, SecretString>, Error> {
    let mut out = BTreeMap::new();
    for item in raw {
        let Some((name, value)) = item.split_once('=') else {
            let name = item.chars().take(40).collect::<String>();
            return Err(invalid(
                "-f",
                &format!(
                    "`{name}` must be written name=value (name=- reads stdin, name=? prompts)"
                ),
            ));
        };
        if name.is_empty() {
            return Err(invalid("-f", "a field needs a name before `=`"));
        }
        let value = match value {
            "-" => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| invalid("-f", &format!("cannot read `{name}` from stdin: {e}")))?;
                let trimmed = line.trim_end_matches(['\r', '\n']).to_string();
                zeroize::Zeroize::zeroize(&mut line);
                trimmed
            }
            "?" => {
                if !std::io::stdin().is_terminal() {
                    return Err(invalid(
                        "-f",
                        &format!(
                            "cannot prompt for `{name}`: stdin is not a terminal; use {name}=-"
                        ),
                    ));
                }
                rpassword::prompt_password(format!("{name}: "))
                    .map_err(|e| invalid("-f", &format!("cannot read `{name}`: {e}")))?
            }
            v => v.to_string(),
        };
        if out
            .insert(name.to_string(), SecretString::from(value))
            .is_some()
        {
            return Err(invalid("-f", &format!("field `{name}` is given twice")));
        }
    }
    Ok(out)
}

fn new_credential(source: CredentialSource, scope: Scope) -> Result<NewCredential, Error> {
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

fn id(text: &str) -> Result<CredentialId, Error> {
    CredentialId::new(text)
}

async fn credentials(
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
        CredentialsCommand::AdminList => {
            if !matches!(actor, Principal::SystemAdmin { .. }) {
                return Err(Error::PermissionDenied {
                    actor: actor.to_string(),
                    action: "admin-list".into(),
                    target: "every credential (system administrators only)".into(),
                });
            }
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
                    println!("{:<20}  {:<28}  {status}", g.app, g.granted_by);
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

fn yaml(catalog: &Catalog, cmd: YamlCommand, out: &Output) -> Result<u8, Error> {
    use strongroom::config::migrate::{migrate_file, yaml_files_excluding, FileOutcome};
    match cmd {
        YamlCommand::MigrateCredentials {
            path,
            write,
            recursive,
            exclude,
        } => {
            let files =
                yaml_files_excluding(&path, recursive, &exclude).map_err(|source| Error::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            let bar = indicatif::ProgressBar::new(files.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (mut changed, mut failed, mut report) = (0usize, 0usize, Vec::new());
            for file in &files {
                match migrate_file(file, write) {
                    FileOutcome::Changed(m) => {
                        changed += 1;
                        if !write && !out.json {
                            // A closed pipe (`| head`) ends the output, not the run.
                            bar.suspend(|| {
                                use std::io::Write;
                                let _ = write!(std::io::stdout(), "{}", m.diff());
                            });
                        }
                        for s in &m.skipped {
                            bar.suspend(|| eprintln!("{s}"));
                        }
                        report.push(serde_json::json!({
                            "file": m.file, "status": "changed", "blocks": m.blocks,
                            "skipped": m.skipped.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        }));
                    }
                    FileOutcome::Unchanged(m) => {
                        for s in &m.skipped {
                            bar.suspend(|| eprintln!("{s}"));
                        }
                        report.push(serde_json::json!({
                            "file": m.file, "status": "unchanged",
                            "skipped": m.skipped.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        }));
                    }
                    FileOutcome::Failed(message) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("error: {message}"));
                        report.push(serde_json::json!({
                            "file": file.display().to_string(), "status": "failed", "error": message,
                        }));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            }
            eprintln!(
                "{} file(s): {changed} {}, {failed} could not be migrated",
                files.len(),
                if write {
                    "migrated"
                } else {
                    "would change (run again with --write)"
                }
            );
            Ok(if failed > 0 { 2 } else { 0 })
        }
        YamlCommand::Check { file, app } => {
            let config = strongroom::config::AppConfig::load(&file)?;
            let app = app.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let slots = strongroom::config::Slots::new();
            match strongroom::config::compile(&app, &config, &slots, catalog) {
                Ok(manifest) => {
                    if out.json {
                        let entries: Vec<_> = manifest
                            .entries
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "block": e.block.to_string(), "slot": e.slot.id,
                                    "ref": e.reference.name, "scope": e.reference.scope.as_str(),
                                    "provider": e.reference.provider,
                                })
                            })
                            .collect();
                        let doc = serde_json::json!({ "entries": entries, "warnings": manifest.warnings });
                        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    } else {
                        for e in &manifest.entries {
                            println!("{}", e.describe());
                        }
                        for w in &manifest.warnings {
                            eprintln!("{w}");
                        }
                    }
                    Ok(0)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(2)
                }
            }
        }
    }
}

/// A key named on the command line: `file:PATH`, `env:VAR` or a cloud backend.
fn key_from_spec(spec: &str) -> Result<Arc<dyn strongroom::KeyWrapper>, Error> {
    if let Some(path) = spec.strip_prefix("file:") {
        return Ok(Arc::new(strongroom::LocalKey::load_or_create_file(
            std::path::Path::new(path),
        )?));
    }
    if let Some(var) = spec.strip_prefix("env:") {
        let value = std::env::var(var)
            .map_err(|_| invalid("--to", &format!("variable {var} is not set")))?;
        return Ok(Arc::new(strongroom::LocalKey::from_base64(
            &value,
            &format!("variable {var}"),
        )?));
    }
    match spec {
        "aws_kms" | "gcp_kms" | "azure_kv" | "vault" => {
            let backend = spec.to_string();
            strongroom::crypto::key_wrapper_from_vars(move |name| {
                if name == "STRONGROOM_KMS" {
                    return Some(backend.clone());
                }
                std::env::var(format!("STRONGROOM_TO_{name}"))
                    .or_else(|_| std::env::var(name))
                    .ok()
            })
        }
        _ => Err(invalid(
            "--to",
            "name the key as file:PATH, env:VAR, aws_kms, gcp_kms, azure_kv or vault",
        )),
    }
}

/// Counts records per master key, paging through the store.
async fn key_counts(store: &dyn Store) -> Result<BTreeMap<String, u64>, Error> {
    let mut counts = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store
            .list(&strongroom::ListFilter {
                after_id: after.clone(),
                limit: Some(5_000),
                ..strongroom::ListFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for r in &page {
            *counts.entry(r.key_id.clone()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

async fn keys(
    vault: &Vault,
    actor: &Principal,
    cmd: KeysCommand,
    kept: &Arc<CheckpointFile>,
    out: &Output,
) -> Result<u8, Error> {
    let store = vault.store().clone();
    let current = vault.keys().active().clone();
    match cmd {
        KeysCommand::Status => {
            // Whoever may re-wrap the keys may see how many records each wraps; the policy
            // decides (a rotation's refusal is audited by the vault, a status is only read).
            if !allows(actor.role(), Action::Rewrap, Relation::NoScope) {
                return Err(Error::PermissionDenied {
                    actor: actor.to_string(),
                    action: Action::Rewrap.as_str().into(),
                    target: "the master keys (only a system_admin manages them)".into(),
                });
            }
            let counts = key_counts(store.as_ref()).await?;
            if out.json {
                let doc = serde_json::json!({ "active": current.key_id(), "records": counts });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("{:<64}  {:>10}", "KEY", "RECORDS");
                for (key, n) in &counts {
                    let mark = if key == current.key_id() {
                        "  (active)"
                    } else {
                        ""
                    };
                    println!("{key:<64}  {n:>10}{mark}");
                }
                if counts.is_empty() {
                    println!("(no records)");
                }
            }
            Ok(0)
        }
        KeysCommand::Rotate {
            to,
            retired,
            batch_size,
            max_batches,
        } => {
            // Decided (and a refusal audited) before the new key is opened or created.
            vault.authorize_unscoped(actor, Action::Rewrap).await?;
            let new = key_from_spec(&to)?;
            let mut ring = strongroom::KeyRing::new(new.clone()).with_retired(current);
            for spec in &retired {
                ring = ring.with_retired(key_from_spec(spec)?);
            }
            // Progress lines (see the command's help) when no one watches a spinner.
            let lines = out.json || !std::io::stderr().is_terminal();
            let bar = if lines {
                indicatif::ProgressBar::hidden()
            } else {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar
            };
            let progress: strongroom::RewrapProgress = if lines {
                let counts = key_counts(store.as_ref()).await?;
                let at_start: u64 = counts
                    .iter()
                    .filter(|(key, _)| key.as_str() != new.key_id())
                    .map(|(_, n)| n)
                    .sum();
                let reported = std::sync::atomic::AtomicUsize::new(0);
                Arc::new(move |r: &strongroom::RewrapReport| {
                    // The callback also runs after a batch that conflicted and was dropped;
                    // only committed batches get a line.
                    if reported.swap(r.batches, std::sync::atomic::Ordering::Relaxed) == r.batches {
                        return;
                    }
                    let line = format!(
                        "{{\"batch\":{},\"rewrapped\":{},\"remaining\":{}}}\n",
                        r.batches,
                        r.rewrapped,
                        at_start.saturating_sub(r.rewrapped)
                    );
                    // One write, so a reader never sees half a line; a closed pipe does not
                    // stop the rotation.
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(line.as_bytes());
                })
            } else {
                let progress_bar = bar.clone();
                Arc::new(move |r: &strongroom::RewrapReport| {
                    progress_bar.set_message(format!("{} records re-wrapped", r.rewrapped));
                    progress_bar.tick();
                })
            };
            let options = strongroom::RewrapOptions {
                batch_size,
                max_batches,
                progress: Some(progress),
            };
            let report = vault.rewrap_keys(actor, &ring, options).await;
            bar.finish_and_clear();
            let report = report?;
            // The final check: does anything still name another key?
            let left = store
                .list(&strongroom::ListFilter {
                    key_id_not: Some(new.key_id().to_string()),
                    limit: Some(1),
                    ..strongroom::ListFilter::default()
                })
                .await?;
            let done = left.is_empty();
            if done && new.derive_key(CHECKPOINT_KEY_PURPOSE).await.is_ok() {
                // A checkpoint signed with the new key too, so the chain can be checked
                // against a current one once the old key is retired.
                let chain = AuditChain::new(store.clone(), ring.clone());
                if let Some(cp) = chain.checkpoint().await? {
                    kept.publish(&cp);
                }
            }
            if out.json {
                let doc = serde_json::json!({
                    "to": new.key_id(), "rewrapped": report.rewrapped, "batches": report.batches,
                    "conflicts": report.conflicts, "complete": done,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!(
                    "re-wrapped {} records in {} batches onto {}",
                    report.rewrapped,
                    report.batches,
                    new.key_id()
                );
                if done {
                    println!(
                        "complete: no record needs the old keys any more; make {} the active \
                         key everywhere, then retire the old ones",
                        new.key_id()
                    );
                } else {
                    println!("not complete: run the command again to continue");
                }
            }
            Ok(if done { 0 } else { 9 })
        }
    }
}
