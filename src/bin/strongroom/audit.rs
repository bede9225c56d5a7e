//! `strongroom audit …` and the checkpoints file kept in `$STRONGROOM_HOME/checkpoints`.

use super::*;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chain against the newest checkpoint kept in
    /// `$STRONGROOM_HOME/checkpoints`; exits 6 if it is broken, naming the first bad
    /// sequence number and what was lost (rows cut from the tail, an emptied chain, rows
    /// rewritten).
    Verify,
}

/// `audit verify`: the chain, against the newest checkpoint this vault's key ring can check.
pub(crate) async fn audit_verify(
    vault: &Vault,
    actor: &Principal,
    kept: &CheckpointFile,
    checkpoints: bool,
    out: &Output,
) -> Result<u8, Error> {
    let newest = kept.newest(vault.audit()).await?;
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
            "note: {} newer checkpoint(s) were made with keys this vault does not hold and \
             were not used",
            newest.unheld
        );
    }
    if !checkpoints {
        eprintln!(
            "note: the master key {} offers no checkpoint key (an AWS or Google Cloud KMS key \
             without a MAC key) and no STRONGROOM_AUDIT_KEY is set, so this vault's commands \
             keep no checkpoints; see docs/DEPLOYMENT.md",
            vault.keys().active().key_id()
        );
    }
    Ok(if report.is_ok() { 0 } else { 6 })
}

/// The CLI's kept checkpoints, `$STRONGROOM_HOME/checkpoints`: append-only, one JSON
/// checkpoint per line (its fields plus `store`, the vault it vouches for), created 0600 and
/// refused when group or others may write it.
pub(crate) struct CheckpointFile {
    pub(crate) path: PathBuf,
    pub(crate) store: String,
    /// Why the last append failed, if it did (a sink cannot return an error).
    pub(crate) failed: Mutex<Option<String>>,
}

/// One line of the file.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct KeptCheckpoint {
    pub(crate) store: String,
    #[serde(flatten)]
    pub(crate) checkpoint: Checkpoint,
}

/// The checkpoint to check against, and what was passed over to find it.
pub(crate) struct Newest {
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Lines that do not parse.
    pub(crate) unreadable: usize,
    /// This vault's checkpoints newer than the one chosen, made with keys the ring lacks.
    pub(crate) unheld: usize,
}

impl CheckpointFile {
    pub(crate) fn open(home: &Path, store: String) -> Result<CheckpointFile, Error> {
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
    pub(crate) fn read(&self) -> Result<(Vec<Checkpoint>, usize), Error> {
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
    pub(crate) fn highest(&self) -> Result<Option<Checkpoint>, Error> {
        let (mine, _) = self.read()?;
        Ok(mine.into_iter().rev().max_by_key(|c| c.seq))
    }

    /// This vault's newest checkpoint that `chain` can check (made with a master key active
    /// or retired in its ring, or with its audit key).
    pub(crate) async fn newest(&self, chain: &AuditChain) -> Result<Newest, Error> {
        let (mine, unreadable) = self.read()?;
        let mut held = std::collections::HashMap::new();
        for c in &mine {
            if !held.contains_key(&c.key_id) {
                held.insert(c.key_id.clone(), chain.can_check(&c.key_id).await);
            }
        }
        let holds = |c: &&Checkpoint| held.get(&c.key_id).copied().unwrap_or(false);
        let checkpoint = mine
            .iter()
            .rev()
            .filter(holds)
            .max_by_key(|c| c.seq)
            .cloned();
        let floor = checkpoint.as_ref().map_or(0, |c| c.seq);
        let unheld = mine.iter().filter(|c| c.seq > floor && !holds(c)).count();
        Ok(Newest {
            checkpoint,
            unreadable,
            unheld,
        })
    }

    pub(crate) fn append(&self, checkpoint: &Checkpoint) -> std::io::Result<()> {
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

    pub(crate) fn failure(&self) -> Option<String> {
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
