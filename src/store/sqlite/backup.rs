//! Online backups and restores of a SQLite vault, through SQLite's backup API: a backup is
//! one consistent snapshot taken while the store keeps serving; a restore replaces the
//! database's whole content in one write transaction, so readers see the old vault or the
//! restored one, never a mix.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::error::sql_error;
use super::SqliteStore;
use crate::error::{Error, Result, StoreErrorKind};

/// How far a restore moves the data generation past any value seen before, so that no
/// process's cached reads (stamped with an older generation) pass for current.
const GENERATION_JUMP: i64 = 1 << 20;

/// How long a backup step waits for locks held by others before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(30);

impl SqliteStore {
    /// Writes a consistent copy of the vault to `dest` while the store keeps serving
    /// (SQLite's online backup API: one snapshot, taken under a read transaction, which in
    /// WAL mode never blocks writers). The copy is a single self-contained file (rollback
    /// journal mode, no `-wal` beside it), created with mode 0600; it is written under a
    /// temporary name in `dest`'s folder and linked into place only once complete and on
    /// disk, so `dest` never holds half a backup. An existing `dest` is refused
    /// ([`Error::AlreadyExists`]).
    ///
    /// The copy holds what the vault holds: sealed blobs (useless without the master key),
    /// metadata and the audit chain. Keep it as you keep the database.
    pub async fn backup_to(&self, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref().to_path_buf();
        self.read(move |conn| backup_connection(conn, &dest)).await
    }

    /// Replaces the content of the SQLite vault at `target` with the backup at `backup`
    /// (made by [`SqliteStore::backup_to`] or any SQLite copy of a vault), in one write
    /// transaction on `target`: a reader sees the vault as it was or as restored. `target`
    /// is created (0600) when missing. Check the backup first — its audit chain, and that
    /// the master key opens its credentials; the `strongroom restore` command does both —
    /// because this replaces everything, including what was written since the backup.
    ///
    /// The data generation is moved past its old value, so other processes' cached reads
    /// of the old content are never taken for current; still, stop the services that use
    /// the vault first: anything they commit meanwhile is lost with the old content.
    pub fn replace_with_backup(target: &Path, backup: &Path) -> Result<()> {
        let shown = backup.display().to_string();
        let source = Connection::open_with_flags(
            backup,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(&format!("cannot open the backup {shown}"), e))?;
        // A private copy first, so the generation can be set before the copy goes live.
        let staging = temporary_beside(target, "restore")?;
        let result = (|| {
            let mut copy = open_new_file(&staging)?;
            copy_all(&source, &mut copy, &staging)?;
            // A copy of a WAL-mode file says WAL in its header: keep the staging file whole.
            copy.pragma_update(None, "journal_mode", "DELETE")
                .map_err(|e| sql_error("cannot prepare the staged copy", e))?;
            let old = if target.exists() {
                read_generation_at(target)?
            } else {
                0
            };
            copy.execute(
                "UPDATE strongroom_generation SET value = max(value, ?1) + ?2 WHERE id = 1",
                rusqlite::params![old, GENERATION_JUMP],
            )
            .map_err(|e| sql_error("cannot set the restored data generation", e))?;
            drop(copy);
            if !target.exists() {
                let _ = open_new_file(target)?;
            }
            let mut live = Connection::open(target)
                .map_err(|e| sql_error(&format!("cannot open {}", target.display()), e))?;
            let staged = Connection::open_with_flags(
                &staging,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| sql_error("cannot reopen the staged copy", e))?;
            copy_all(&staged, &mut live, target)
        })();
        let _ = std::fs::remove_file(&staging);
        result
    }
}

/// The backup behind [`SqliteStore::backup_to`], from an open connection.
fn backup_connection(source: &Connection, dest: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(Error::AlreadyExists {
            what: format!(
                "{} (a backup never overwrites a file: name a new one)",
                dest.display()
            ),
        });
    }
    let staging = temporary_beside(dest, "partial")?;
    let result = (|| {
        let mut copy = open_new_file(&staging)?;
        copy_all(source, &mut copy, dest)?;
        // One self-contained file: no `-wal` to carry along.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| sql_error("cannot finish the backup file", e))?;
        drop(copy);
        std::fs::File::open(&staging)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(staging.display(), e))?;
        // Linked, not renamed: a file that appeared at `dest` meanwhile is not replaced.
        std::fs::hard_link(&staging, dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    what: dest.display().to_string(),
                }
            } else {
                Error::io(dest.display(), e)
            }
        })?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&staging);
    result
}

/// Copies every page of `source` into `dest` in one backup step (one snapshot of the
/// source, one write transaction on the destination), waiting out other connections'
/// locks for up to [`LOCK_WAIT`].
fn copy_all(source: &Connection, dest: &mut Connection, shown: &Path) -> Result<()> {
    let backup = Backup::new(source, dest)
        .map_err(|e| sql_error(&format!("cannot start copying into {}", shown.display()), e))?;
    let started = Instant::now();
    loop {
        match backup
            .step(-1)
            .map_err(|e| sql_error(&format!("cannot copy into {}", shown.display()), e))?
        {
            StepResult::Done => return Ok(()),
            StepResult::More => continue,
            StepResult::Busy | StepResult::Locked if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                return Err(Error::store(
                    StoreErrorKind::Busy,
                    format!(
                        "cannot copy into {}: another connection held a lock for {}s; retry",
                        shown.display(),
                        LOCK_WAIT.as_secs()
                    ),
                ))
            }
        }
    }
}

/// The data generation of the vault at `path` (0 when it has none yet).
fn read_generation_at(path: &Path) -> Result<i64> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
             AND name = 'strongroom_generation'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| sql_error(&format!("cannot read {}", path.display()), e))?;
    if !has_table {
        return Ok(0);
    }
    conn.query_row(
        "SELECT value FROM strongroom_generation WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .optional()
    .map(Option::unwrap_or_default)
    .map_err(|e| {
        sql_error(
            &format!("cannot read the data generation of {}", path.display()),
            e,
        )
    })
}

/// A new, empty file at `path` (mode 0600; refused if it exists), opened as a database.
fn open_new_file(path: &Path) -> Result<Connection> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| Error::io(path.display(), e))?;
    Connection::open(path).map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))
}

/// A name for a temporary file in `path`'s folder, which must exist.
fn temporary_beside(path: &Path, what: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid("path", format!("{} names no file", path.display())))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: format!("folder {}", dir.display()),
            hint: Some("create it first".into()),
        });
    }
    let nonce: u32 = rand_suffix();
    Ok(dir.join(format!(".{name}.{what}-{}-{nonce:08x}", std::process::id())))
}

/// A random suffix, so two runs in one process never pick one name.
fn rand_suffix() -> u32 {
    let mut bytes = [0u8; 4];
    // Uniqueness only: a failure leaves zeros, and `create_new` still refuses a clash.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}
