//! `strongroom backup PATH` and `strongroom restore PATH`: an online, consistent copy of a
//! SQLite vault, and putting one back only after its audit chain and its credentials have
//! been checked with the master key.

use super::*;

#[derive(Args)]
pub(crate) struct BackupArgs {
    /// The new backup file (never overwritten).
    pub(crate) path: PathBuf,
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The backup file to restore.
    pub(crate) path: PathBuf,
}

/// May `actor` back up or restore the whole vault? The policy's right to manage the master
/// keys (system admins): a backup holds every sealed data key, a restore replaces them all.
fn may_handle_whole_vault(actor: &Principal, what: &str) -> Result<(), Error> {
    use strongroom::vault::{policy::allows, Relation};
    if allows(actor.role(), Action::Rewrap, Relation::NoScope) {
        return Ok(());
    }
    Err(Error::PermissionDenied {
        actor: actor.to_string(),
        action: what.into(),
        target: "the whole vault (system admins only)".into(),
    })
}

fn sqlite_only(spec: &StoreSpec, command: &str) -> Result<PathBuf, Error> {
    match spec {
        StoreSpec::Sqlite(path) => Ok(path.clone()),
        StoreSpec::Postgres(_) => Err(Error::config(format!(
            "`strongroom {command}` works on SQLite vaults; for PostgreSQL use the server's own \
             tools: `pg_dump --schema=strongroom` for a consistent copy while the vault \
             serves, `pg_restore` (or psql) into an empty schema to put one back (see \
             docs/DEPLOYMENT.md)"
        ))),
    }
}

/// What a vault file holds, read from a read-only opening of it.
struct Contents {
    credentials: u64,
    rows: u64,
    report: strongroom::VerifyReport,
}

async fn contents(store: &dyn Store) -> Result<Contents, Error> {
    let report = strongroom::audit::verify_chain(store).await?;
    let mut credentials = 0;
    let mut after = None;
    loop {
        let page = store
            .list(&strongroom::ListFilter {
                after_id: after.clone(),
                limit: Some(1_000),
                ..strongroom::ListFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        credentials += page.len() as u64;
    }
    Ok(Contents {
        credentials,
        rows: report.rows,
        report,
    })
}

fn read_only(path: &Path) -> Result<SqliteStore, Error> {
    let mut options = strongroom::SqliteOptions::default();
    options.read_only = true;
    SqliteStore::open_with(path, options)
}

/// `strongroom backup PATH`, on the open vault.
pub(crate) async fn backup(
    vault: &Vault,
    actor: &Principal,
    store: Option<&SqliteStore>,
    spec: &StoreSpec,
    args: BackupArgs,
    out: &Output,
) -> Result<u8, Error> {
    sqlite_only(spec, "backup")?;
    // Decided by the vault (a refusal is audited) before anything is written.
    vault
        .authorize_unscoped(actor, Action::Rewrap)
        .await
        .map_err(|e| match e {
            Error::PermissionDenied {
                actor,
                action,
                target,
            } => Error::PermissionDenied {
                actor,
                action,
                target: format!("{target}, which a backup copies (backups are for system admins)"),
            },
            other => other,
        })?;
    let store = store.ok_or_else(|| Error::config("the vault is not a SQLite store"))?;
    store.backup_to(&args.path).await?;
    let copy = read_only(&args.path)?;
    let found = contents(&copy).await;
    let _ = copy.close().await;
    let found = found?;
    if out.json {
        let doc = serde_json::json!({
            "backup": args.path.display().to_string(),
            "vault": store.path().display().to_string(),
            "credentials": found.credentials,
            "audit_rows": found.rows,
            "chain_intact": found.report.is_ok(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!(
            "backed up {} to {}: {} credentials, {} audit rows",
            store.path().display(),
            args.path.display(),
            found.credentials,
            found.rows
        );
    }
    if let Some(problem) = &found.report.problem {
        // The copy is faithful; the vault it copies is damaged.
        eprintln!(
            "warning: the vault's audit chain is BROKEN ({problem}); the backup holds it as it is"
        );
        return Ok(6);
    }
    Ok(0)
}

/// `strongroom restore PATH`: every check on the backup first, then one atomic replace.
pub(crate) async fn restore(
    actor: &Principal,
    spec: &StoreSpec,
    kept: &CheckpointFile,
    args: RestoreArgs,
    sqlite: &mut Option<SqliteStore>,
    out: &Output,
) -> Result<u8, Error> {
    may_handle_whole_vault(actor, "restore")?;
    let target = sqlite_only(spec, "restore")?;
    let backup = args.path;
    match std::fs::metadata(&backup) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(invalid(
                "PATH",
                &format!("{} is not a file", backup.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: format!("backup {}", backup.display()),
                hint: None,
            })
        }
        Err(e) => return Err(Error::io(backup.display(), e)),
    }
    if let (Ok(a), Ok(b)) = (backup.canonicalize(), target.canonicalize()) {
        if a == b {
            return Err(invalid(
                "PATH",
                "is the vault itself; name a backup made with `strongroom backup`",
            ));
        }
    }

    // 1. The backup is a vault whose chain holds, with what this home vouched for.
    let copy = read_only(&backup).map_err(|e| match e.kind() {
        ErrorKind::Store => Error::config(format!(
            "{} is not a strongroom vault backup ({e}); nothing was replaced",
            backup.display()
        )),
        _ => e,
    })?;
    let checked = check_backup(actor, &copy, kept, &store_label(spec)).await;
    let _ = copy.close().await;
    let (found, ring, namespace) = checked?;

    // 2. The vault as it is now is kept beside it (which also shows it is a vault).
    let previous = if target.exists() {
        let current = read_only(&target).map_err(|e| {
            Error::config(format!(
                "{} exists and cannot be read as a strongroom vault ({e}); move it aside \
                 before restoring; nothing was replaced",
                target.display()
            ))
        })?;
        let aside = beside(&target, &format!("before-restore-{}", stamp()));
        let copied = current.backup_to(&aside).await;
        let _ = current.close().await;
        copied?;
        Some(aside)
    } else {
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(dir.display(), e))?;
        }
        None
    };

    // 3. One atomic replace.
    SqliteStore::replace_with_backup(&target, &backup)?;

    // 4. The checkpoints kept for the old content now describe a chain that is gone: set
    //    them aside (as evidence) and vouch for the restored chain instead.
    let set_aside = set_aside_checkpoints(kept)?;
    let store = sqlite.insert(SqliteStore::open(&target)?).clone();
    let chain = with_audit_key(strongroom::AuditChain::new(Arc::new(store), ring.clone()))?;
    let mut checkpointed = false;
    if chain.checkpoint_key_id().await.is_ok() {
        if let Some(cp) = chain.checkpoint().await? {
            kept.append(&cp)
                .map_err(|e| Error::io(kept.path.display(), e))?;
            checkpointed = true;
        }
    }
    if out.json {
        let doc = serde_json::json!({
            "restored_from": backup.display().to_string(),
            "vault": target.display().to_string(),
            "namespace": namespace,
            "credentials": found.credentials,
            "audit_rows": found.rows,
            "previous_kept_at": previous.as_ref().map(|p| p.display().to_string()),
            "checkpoints_set_aside": set_aside.as_ref().map(|p| p.display().to_string()),
            "checkpoint_made": checkpointed,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!(
            "restored {} into {}: {} credentials (each opened with the master key), {} audit \
             rows (chain intact)",
            backup.display(),
            target.display(),
            found.credentials,
            found.rows
        );
        if let Some(p) = &previous {
            println!("the vault as it was is kept at {}", p.display());
        }
        if let Some(p) = &set_aside {
            println!(
                "the checkpoints kept for the old content were moved to {}",
                p.display()
            );
        }
    }
    Ok(0)
}

/// Checks a backup before it replaces anything: its audit chain verifies, it matches the
/// newest checkpoint this home kept for the vault at or below its end, and the master key
/// opens every credential. Returns what it holds and the key ring that opened it.
async fn check_backup(
    actor: &Principal,
    copy: &SqliteStore,
    kept: &CheckpointFile,
    label: &str,
) -> Result<(Contents, strongroom::KeyRing, String), Error> {
    let found = contents(copy).await?;
    if let Some(problem) = &found.report.problem {
        return Err(Error::corrupt(
            "the backup's audit chain",
            format!("{problem}; nothing was replaced"),
        ));
    }
    let namespace = std::env::var("STRONGROOM_NAMESPACE")
        .unwrap_or_else(|_| strongroom::DEFAULT_NAMESPACE.to_string());
    let store: Arc<dyn Store> = Arc::new(copy.clone());
    // The keys as every other command finds them, held to the key the backup records as
    // its active one.
    let keys = crate::keysel::select(
        store.as_ref(),
        &default_home_from_env()?,
        label,
        false,
        false,
    )
    .await?;
    let mut ring = strongroom::KeyRing::new(keys.active.key.clone());
    for retired in &keys.retired {
        ring = ring.try_with_retired(retired.key.clone())?;
    }
    // Each checkpoints file (the current one, and those set aside by earlier restores) is
    // one history of this vault. The backup must be a faithful copy of one of them: match
    // that history's newest checkpoint at or below the backup's end. A backup rewritten
    // with its hashes recomputed matches none.
    let head = store.chain_head().await?.map_or(0, |h| h.seq);
    let chain = with_audit_key(strongroom::AuditChain::new(store.clone(), ring.clone()))?;
    let mut mismatches = Vec::new();
    let mut vouched = false;
    for history in histories(kept)? {
        let mut usable = Vec::new();
        for c in history.iter().filter(|c| c.seq <= head) {
            if chain.can_check(&c.key_id).await {
                usable.push(c);
            }
        }
        let Some(cp) = usable.into_iter().max_by_key(|c| c.seq) else {
            continue;
        };
        match chain
            .verify_against(std::slice::from_ref(cp))
            .await?
            .problem
        {
            None => vouched = true,
            Some(problem) => mismatches.push(format!("checkpoint at seq {}: {problem}", cp.seq)),
        }
    }
    if !vouched && !mismatches.is_empty() {
        return Err(Error::corrupt(
            "the backup's audit chain",
            format!(
                "it differs from every history of this vault the kept checkpoints record \
                 ({}): the backup is not a faithful copy of this vault; nothing was replaced",
                mismatches.join("; ")
            ),
        ));
    }
    // Every credential opens with the master key (each value dropped at once, inside the
    // vault's one door to secret material).
    let mut builder = Vault::builder()
        .store(store.clone())
        .key_wrapper(keys.active.key.clone())
        .namespace(namespace.clone())
        .no_dek_cache();
    for retired in &keys.retired {
        builder = builder.retired_key(retired.key.clone());
    }
    let vault = builder.build().await?;
    let check = vault.check_blobs(actor, 5).await?;
    let failed = check.first;
    if let Some((_, first)) = failed.first() {
        let ids: Vec<&str> = failed.iter().map(|(id, _)| id.as_str()).collect();
        let message = format!(
            "{} of {} credentials in the backup do not open with this master key ({}{}); the \
             first fails with: {first}. Restore with the master key the backup was made with \
             (and STRONGROOM_NAMESPACE as it was); nothing was replaced",
            check.unopenable,
            check.checked,
            ids.join(", "),
            if check.unopenable > ids.len() as u64 {
                ", …"
            } else {
                ""
            }
        );
        return Err(match first.kind() {
            ErrorKind::KeyUnavailable => Error::KeyUnavailable {
                key_id: ring.active().key_id().to_string(),
                reason: message,
            },
            _ => Error::DecryptFailed { what: message },
        });
    }
    Ok((found, ring, namespace))
}

/// This vault's kept checkpoints, one list per history: the checkpoints file, then each
/// `checkpoints.before-restore-*` file an earlier restore set aside.
fn histories(kept: &CheckpointFile) -> Result<Vec<Vec<Checkpoint>>, Error> {
    let (current, _) = kept.read()?;
    let mut out = vec![current];
    let (Some(dir), Some(name)) = (kept.path.parent(), kept.path.file_name()) else {
        return Ok(out);
    };
    let prefix = format!("{}.before-restore-", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        // Unreadable lines are skipped here as `audit verify` skips them.
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.push(
            text.lines()
                .filter_map(|line| serde_json::from_str::<KeptCheckpoint>(line).ok())
                .filter(|k| k.store == kept.store)
                .map(|k| k.checkpoint)
                .collect(),
        );
    }
    Ok(out)
}

/// Moves this vault's lines of the checkpoints file into
/// `checkpoints.before-restore-TIME` (0600) and keeps the other vaults' lines in place.
/// Returns the new file, if there was anything to move.
fn set_aside_checkpoints(kept: &CheckpointFile) -> Result<Option<PathBuf>, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = match std::fs::read_to_string(&kept.path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(kept.path.display(), e)),
    };
    let (mut mine, mut others) = (String::new(), String::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let ours = serde_json::from_str::<KeptCheckpoint>(line)
            .map(|k| k.store == kept.store)
            .unwrap_or(false);
        let to = if ours { &mut mine } else { &mut others };
        to.push_str(line);
        to.push('\n');
    }
    if mine.is_empty() {
        return Ok(None);
    }
    let write_new = |path: &Path, body: &str| -> Result<(), Error> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path.display(), e))?;
        file.write_all(body.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path.display(), e))
    };
    let aside = beside(&kept.path, &format!("before-restore-{}", stamp()));
    write_new(&aside, &mine)?;
    let staging = beside(&kept.path, &format!("restoring-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    write_new(&staging, &others)?;
    std::fs::rename(&staging, &kept.path).map_err(|e| Error::io(kept.path.display(), e))?;
    Ok(Some(aside))
}

/// `PATH.SUFFIX`, beside `path`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// The current time for a file name: `20300102T030405.250Z`.
fn stamp() -> String {
    let now = Timestamp::now();
    let seconds: String = Timestamp(now.0 - now.0.rem_euclid(1000))
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect();
    format!("{seconds}.{:03}Z", now.0.rem_euclid(1000))
}

/// `chain` with `STRONGROOM_AUDIT_KEY`, when it is set, as its checkpoint key (as every
/// other command does).
fn with_audit_key(chain: strongroom::AuditChain) -> Result<strongroom::AuditChain, Error> {
    Ok(match std::env::var(ENV_AUDIT_KEY) {
        Ok(text) if !text.trim().is_empty() => {
            chain.with_checkpoint_key(Arc::new(AuditKey::from_base64(&text, ENV_AUDIT_KEY)?))
        }
        _ => chain,
    })
}
