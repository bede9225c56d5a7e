//! `strongroom keys …`: master-key status and rotation.

use super::*;

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Count the records each master key wraps.
    Status,
    /// Move every data key onto a new master key while the vault keeps serving: atomic
    /// batches, resumable (run it again after a crash), with a final check that nothing
    /// still needs the old key. The current key (`STRONGROOM_KMS`…), the retired keys
    /// configured (`keys.toml`, `STRONGROOM_RETIRED_KEYS`) and any `--retired` keys open the
    /// old blobs.
    ///
    /// Before any data key moves, the new key becomes the vault's active key: the vault
    /// records it, and `$STRONGROOM_HOME/keys.toml` names it as `active` (and the previous
    /// key under `retired`), so every later command seals with it and finds both.
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
        /// More keys that old blobs may name (same forms as --to; a file must exist).
        #[arg(long)]
        retired: Vec<String>,
        /// Records per atomic batch.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Stop after this many batches (run again to continue).
        #[arg(long)]
        max_batches: Option<usize>,
    },
    /// Seal credentials afresh: each gets a new data key, nonce and payload under the
    /// active master key, in the current sealed format (docs/FORMAT.md). By default only
    /// records of an older format (format 1) are resealed, which brings a vault to format
    /// 2; `--all` reseals every credential, after a data key or a master key may have
    /// leaked (a rotation only re-wraps data keys). Atomic batches of one audit row each
    /// (`keys.reseal`), resumable: run it again, or pass `--after` the id it printed.
    /// System admins.
    ///
    /// Exits 0 when complete, 9 when it stopped early (`--max-batches`; run it again) and 6
    /// when some credentials did not open (they are listed and left as they are).
    ///
    /// Progress: with --json, or when stderr is not a terminal, one JSON line on stderr per
    /// committed batch: {"batch":1,"resealed":500,"next_after":"ID"}.
    Reseal {
        /// Reseal every credential, not only those of an older format.
        #[arg(long)]
        all: bool,
        /// Start after this credential id (what an interrupted run printed as next_after).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Records per atomic batch.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Stop after this many batches (run again to continue).
        #[arg(long)]
        max_batches: Option<usize>,
    },
}

/// A key named on the command line: `file:PATH`, `env:VAR` or a cloud backend.
pub(crate) fn key_from_spec(spec: &str) -> Result<Arc<dyn strongroom::KeyWrapper>, Error> {
    if let Some(path) = spec.strip_prefix("file:") {
        return Ok(Arc::new(strongroom::LocalKey::load_or_create_file(
            std::path::Path::new(path),
        )?));
    }
    if let Some(var) = spec.strip_prefix("env:") {
        let value = std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| invalid("--to", &format!("variable {var} is not set, or empty")))?;
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
                // STRONGROOM_AWS_KMS_KEY_ID is overridden by STRONGROOM_TO_AWS_KMS_KEY_ID;
                // an unprefixed variable (AWS_ACCESS_KEY_ID) by STRONGROOM_TO_AWS_ACCESS_KEY_ID.
                let short = name.strip_prefix("STRONGROOM_").unwrap_or(name);
                std::env::var(format!("STRONGROOM_TO_{short}"))
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
pub(crate) async fn key_counts(store: &dyn Store) -> Result<BTreeMap<String, u64>, Error> {
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

pub(crate) async fn keys(
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
            // Whoever may re-wrap the keys may see how many records each wraps: the vault's
            // policy decides, and audits a refusal.
            vault.authorize_unscoped(actor, Action::Rewrap).await?;
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
            // Every key the vault was opened with, then the --retired ones; a second key
            // under an id the ring holds is refused, not quietly dropped.
            let mut ring = strongroom::KeyRing::new(new.clone()).try_with_retired(current)?;
            for id in vault.keys().key_ids() {
                if let Some(key) = vault.keys().key(&id) {
                    ring = ring.try_with_retired(key.clone())?;
                }
            }
            for spec in &retired {
                ring = ring.try_with_retired(keysel::load_spec(spec, "--retired")?.key)?;
            }
            // The new key seals from now on, for this command and every later one.
            let note = keysel::activate(store.as_ref(), actor, &new, &to).await?;
            let (lines, bar) = progress_display(out);
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
            if done
                && !vault.audit().has_checkpoint_key()
                && checkpoint_key_id(new.as_ref()).await.is_ok()
            {
                // A checkpoint signed with the new key too, so the chain can be checked
                // against a current one once the old key is retired (an audit key of its
                // own signs the same before and after).
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
                        "complete: no record needs the old keys any more; {} is the vault's \
                         active key (recorded in the vault and in $STRONGROOM_HOME/keys.toml)",
                        new.key_id()
                    );
                } else {
                    println!(
                        "not complete: run the command again to continue; {} is already the \
                         active key",
                        new.key_id()
                    );
                }
            }
            if let Some(note) = note {
                eprintln!("{note}");
            }
            Ok(if done { 0 } else { 9 })
        }
        KeysCommand::Reseal {
            all,
            after,
            batch_size,
            max_batches,
        } => reseal(vault, actor, all, after, batch_size, max_batches, out).await,
    }
}

async fn reseal(
    vault: &Vault,
    actor: &Principal,
    all: bool,
    after: Option<String>,
    batch_size: usize,
    max_batches: Option<usize>,
    out: &Output,
) -> Result<u8, Error> {
    let after = after.map(CredentialId::new).transpose()?;
    let (lines, bar) = progress_display(out);
    let progress: strongroom::ResealProgress = if lines {
        let reported = std::sync::atomic::AtomicUsize::new(0);
        Arc::new(move |r: &strongroom::ResealReport| {
            // Also called after a batch that conflicted and was dropped: only committed
            // batches get a line.
            if reported.swap(r.batches, std::sync::atomic::Ordering::Relaxed) == r.batches {
                return;
            }
            let line = serde_json::json!({
                "batch": r.batches,
                "resealed": r.resealed,
                "next_after": r.next_after.as_ref().map(|id| id.as_str()),
            });
            use std::io::Write;
            let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
        })
    } else {
        let progress_bar = bar.clone();
        Arc::new(move |r: &strongroom::ResealReport| {
            progress_bar.set_message(format!("{} records resealed", r.resealed));
            progress_bar.tick();
        })
    };
    let options = strongroom::ResealOptions {
        selection: if all {
            strongroom::ResealSelection::All
        } else {
            strongroom::ResealSelection::OlderFormat
        },
        batch_size,
        max_batches,
        after,
        progress: Some(progress),
    };
    let report = vault.reseal_credentials(actor, options).await;
    bar.finish_and_clear();
    let report = report?;
    let next_after = report.next_after.as_ref().map(|id| id.as_str().to_string());
    if out.json {
        let unopenable: Vec<&str> = report.unopenable.iter().map(|id| id.as_str()).collect();
        let doc = serde_json::json!({
            "selection": if all { "all" } else { "older_format" },
            "resealed": report.resealed,
            "batches": report.batches,
            "conflicts": report.conflicts,
            "unopenable": unopenable,
            "next_after": next_after,
            "complete": report.complete,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!(
            "resealed {} records in {} batches under {}",
            report.resealed,
            report.batches,
            vault.keys().active().key_id()
        );
        if !report.unopenable.is_empty() {
            println!(
                "{} credentials did not open and were left as they are: {}",
                report.unopenable.len(),
                report
                    .unopenable
                    .iter()
                    .map(|id| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if report.complete {
            println!("complete");
        } else {
            println!(
                "not complete: run it again{}",
                next_after
                    .as_deref()
                    .filter(|_| all)
                    .map(|id| format!(" with --all --after {id}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(if !report.unopenable.is_empty() {
        6
    } else if report.complete {
        0
    } else {
        9
    })
}

/// How a long key operation shows progress: JSON lines on stderr (see the commands' help)
/// when no one watches a spinner (`--json`, or stderr not a terminal), else a spinner.
/// Returns whether lines are wanted, and the spinner (hidden when they are).
fn progress_display(out: &Output) -> (bool, indicatif::ProgressBar) {
    let lines = out.json || !std::io::stderr().is_terminal();
    if lines {
        return (true, indicatif::ProgressBar::hidden());
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    (false, bar)
}
