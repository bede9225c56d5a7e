//! `strongroom audit …` and the checkpoints file kept in `$STRONGROOM_HOME/checkpoints`.

use super::*;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chain against the newest checkpoint kept in
    /// `$STRONGROOM_HOME/checkpoints`; exits 6 if it is broken, naming the first bad
    /// sequence number and what was lost (rows cut from the tail, an emptied chain, rows
    /// rewritten).
    Verify,
    /// List audit rows, oldest first (newest first with --newest or --before), with filters
    /// and paging. Needs the right to verify the chain (system admins and viewers). Rows
    /// hold ids, actors, actions and reasons, never secret values. When more rows match
    /// than --limit, the next page's flag is printed on stderr (`--after 120`), or given as
    /// `next_after` / `next_before` with --json.
    List(AuditListArgs),
    /// Show one audit row by its sequence number, with its hashes and whether its hash
    /// still matches its contents and links to the row before (exit 6 when either does
    /// not).
    Show {
        /// The row's sequence number.
        seq: u64,
    },
}

/// What `audit list` selects.
#[derive(Args)]
pub(crate) struct AuditListArgs {
    /// Only rows about this credential (its id).
    #[arg(long)]
    credential: Option<String>,
    /// Only rows by this principal, as written in the rows (app_user:crm:alice).
    // Its own id: `actor` is the global --as.
    #[arg(long = "actor", id = "actor_filter", value_name = "PRINCIPAL")]
    actor_filter: Option<String>,
    /// Only rows of this action (credential.reveal, grant.add, keys.rewrap, …; see
    /// docs/AUDIT.md).
    #[arg(long)]
    action: Option<String>,
    /// Only rows with this outcome: success, denied or failure.
    #[arg(long)]
    outcome: Option<String>,
    /// Only rows written at or after this RFC 3339 time (2030-01-02T03:04:05Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only rows written before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// At most this many rows (1 to 10000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only rows after this sequence number (the next page, oldest first).
    #[arg(long, value_name = "SEQ", conflicts_with = "before")]
    after: Option<u64>,
    /// Only rows before this sequence number, newest first (the next page of --newest).
    #[arg(long, value_name = "SEQ")]
    before: Option<u64>,
    /// Newest first, from the end of the chain.
    #[arg(long)]
    newest: bool,
}

/// May `actor` read the audit log, by the policy table alone (no row is written to ask)?
pub(crate) fn may_read_audit(actor: &Principal) -> bool {
    strongroom::vault::policy::allows(
        actor.role(),
        Action::AuditVerify,
        strongroom::vault::Relation::NoScope,
    )
}

/// The most rows one `audit list` prints.
const MAX_LIST: usize = 10_000;

impl AuditListArgs {
    fn query(&self) -> Result<strongroom::AuditQuery, Error> {
        if self.limit == 0 || self.limit > MAX_LIST {
            return Err(invalid(
                "--limit",
                &format!("give 1 to {MAX_LIST} rows per page (and page with --after/--before)"),
            ));
        }
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    Timestamp::parse_rfc3339(t.trim()).map_err(|_| {
                        invalid(
                            flag,
                            &format!(
                                "`{}` is not an RFC 3339 time; write it as 2030-01-02T03:04:05Z",
                                printable_cell(&t.chars().take(64).collect::<String>())
                            ),
                        )
                    })
                })
                .transpose()
        };
        let since = time("--since", &self.since)?;
        let until = time("--until", &self.until)?;
        if let (Some(s), Some(u)) = (since, until) {
            if u <= s {
                return Err(invalid("--until", "must be later than --since"));
            }
        }
        Ok(strongroom::AuditQuery {
            credential_id: self
                .credential
                .as_deref()
                .map(CredentialId::new)
                .transpose()?,
            actor: self.actor_filter.clone(),
            action: self.action.as_deref().map(Action::parse).transpose()?,
            outcome: self
                .outcome
                .as_deref()
                .map(strongroom::Outcome::parse)
                .transpose()?,
            since,
            until,
            after: self.after,
            before: self.before,
            newest_first: self.newest || self.before.is_some(),
            // One more than asked, to know whether another page follows.
            limit: self.limit + 1,
        })
    }
}

/// An audit row as the CLI prints it: the columns of docs/AUDIT.md, times in RFC 3339,
/// hashes in hex.
pub(crate) fn audit_row_json(row: &strongroom::AuditRecord) -> serde_json::Value {
    let (credential_id, scope_kind, owner) = row.event.target.columns();
    serde_json::json!({
        "seq": row.seq,
        "time": row.event.time.to_string(),
        "actor": row.event.actor,
        "action": row.event.action.as_str(),
        "credential_id": credential_id,
        "scope_kind": scope_kind,
        "owner": owner,
        "outcome": row.event.outcome.as_str(),
        "details": row.event.details,
        "prev_hash": hex(&row.prev_hash),
        "hash": hex(&row.hash),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `audit list` and `audit show`.
pub(crate) async fn audit_browse(
    vault: &Vault,
    actor: &Principal,
    cmd: AuditCommand,
    out: &Output,
) -> Result<u8, Error> {
    match cmd {
        AuditCommand::List(args) => {
            let query = args.query()?;
            let mut rows = vault.audit_log(actor, &query).await?;
            let more = rows.len() > args.limit;
            rows.truncate(args.limit);
            let next = rows.last().filter(|_| more).map(|r| r.seq);
            if out.json {
                let items: Vec<_> = rows.iter().map(audit_row_json).collect();
                let cursor = if query.newest_first {
                    "next_before"
                } else {
                    "next_after"
                };
                let doc = serde_json::json!({ "rows": items, cursor: next });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                return Ok(0);
            }
            println!(
                "{:>6}  {:<24}  {:<26}  {:<24}  {:<7}  {:<36}  DETAILS",
                "SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "CREDENTIAL"
            );
            for row in &rows {
                let e = &row.event;
                let details: Vec<String> =
                    e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:>6}  {:<24}  {:<26}  {:<24}  {:<7}  {:<36}  {}",
                    row.seq,
                    e.time.to_string(),
                    printable_cell(&e.actor),
                    e.action.as_str(),
                    e.outcome.as_str(),
                    e.target.credential_id.as_ref().map_or("-", |c| c.as_str()),
                    printable_cell(&details.join(" "))
                );
            }
            if rows.is_empty() {
                println!("(no matching rows)");
            }
            if let Some(seq) = next {
                let flag = if query.newest_first {
                    "--before"
                } else {
                    "--after"
                };
                eprintln!("more rows match: run again with {flag} {seq}");
            }
            Ok(0)
        }
        AuditCommand::Show { seq } => {
            let query = strongroom::AuditQuery {
                after: Some(seq.saturating_sub(1)),
                limit: 1,
                ..strongroom::AuditQuery::default()
            };
            let row = vault
                .audit_log(actor, &query)
                .await?
                .into_iter()
                .find(|r| r.seq == seq)
                .ok_or_else(|| Error::NotFound {
                    what: format!("audit row {seq}"),
                    hint: Some("`strongroom audit list --newest` shows the last rows".into()),
                })?;
            let hash_ok =
                strongroom::audit::chain_hash(&row.prev_hash, row.seq, &row.event) == row.hash;
            // Does it link to the row before (or start the chain)?
            let linked = if seq <= 1 {
                Some(row.prev_hash == strongroom::audit::GENESIS_HASH)
            } else {
                let before = strongroom::AuditQuery {
                    after: Some(seq - 2),
                    limit: 1,
                    ..strongroom::AuditQuery::default()
                };
                vault
                    .audit_log(actor, &before)
                    .await?
                    .into_iter()
                    .find(|r| r.seq == seq - 1)
                    .map(|prev| prev.hash == row.prev_hash)
            };
            if out.json {
                let mut doc = audit_row_json(&row);
                doc["hash_ok"] = serde_json::Value::Bool(hash_ok);
                doc["linked"] = serde_json::to_value(linked).unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                return Ok(0);
            }
            let e = &row.event;
            let (credential_id, scope_kind, owner) = e.target.columns();
            println!("seq:           {}", row.seq);
            println!("time:          {}", e.time);
            println!("actor:         {}", printable_cell(&e.actor));
            println!("action:        {}", e.action.as_str());
            println!("outcome:       {}", e.outcome.as_str());
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    printable_cell(s)
                }
            };
            println!("credential:    {}", or_dash(&credential_id));
            println!("scope:         {}", or_dash(&scope_kind));
            println!("owner:         {}", or_dash(&owner));
            for (k, v) in &e.details {
                println!("detail {}: {}", printable_cell(k), printable_cell(v));
            }
            println!("prev_hash:     {}", hex(&row.prev_hash));
            println!(
                "hash:          {} ({})",
                hex(&row.hash),
                if hash_ok {
                    "matches the row's contents"
                } else {
                    "does NOT match the row's contents: run `strongroom audit verify`"
                }
            );
            match linked {
                Some(true) => println!("link:          follows row {} intact", seq - 1),
                Some(false) if seq <= 1 => {
                    println!("link:          row 1 does NOT start from the zero hash")
                }
                Some(false) => println!(
                    "link:          does NOT follow row {}'s hash: run `strongroom audit verify`",
                    seq - 1
                ),
                None => println!("link:          row {} is missing", seq - 1),
            }
            Ok(if hash_ok && linked == Some(true) {
                0
            } else {
                6
            })
        }
        AuditCommand::Verify => Ok(0),
    }
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
