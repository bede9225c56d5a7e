//! The database file before SQLite opens it: created 0600 in a folder made 0700, or refused.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Makes sure the database file exists before SQLite opens it, so that a new one is made
/// with mode 0600 (SQLite gives the `-wal` and `-shm` files the database's mode) in a
/// folder made 0700; with `create` off, a missing or empty file is refused instead.
pub(super) fn prepare_file(path: &Path, create: bool) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 && !create => Err(Error::NotFound {
            what: format!("vault {shown}"),
            hint: Some(
                "the file is empty (0 bytes), so it holds no vault; it was left as it is".into(),
            ),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Err(Error::NotFound {
                    what: format!("vault {shown}"),
                    hint: Some("nothing was created".into()),
                });
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    let mut builder = std::fs::DirBuilder::new();
                    builder.recursive(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::DirBuilderExt;
                        builder.mode(0o700);
                    }
                    builder
                        .create(dir)
                        .map_err(|e| Error::io(dir.display(), e))?;
                }
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(path) {
                Ok(_) => Ok(()),
                // Another process made it first; it checks and initialises it as we do.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io(shown, e)),
            }
        }
        Err(e) => Err(Error::io(shown, e)),
    }
}

/// The database file `conn` has open, as SQLite resolved it at open (symbolic links
/// followed, a relative path made absolute): SQLite names the WAL after it, and later
/// connections must open it rather than the caller's path, which a change of the working
/// directory may point elsewhere. Asked of SQLite itself (`sqlite3_db_filename`); where it
/// cannot say (a name that is not UTF-8), the caller's path resolved the same way.
pub(super) fn resolved(conn: &rusqlite::Connection, given: &Path) -> std::io::Result<PathBuf> {
    match conn.path() {
        Some(name) if !name.is_empty() => Ok(PathBuf::from(name)),
        _ => std::fs::canonicalize(given),
    }
}

/// The WAL SQLite keeps beside the database file `database` (as [`resolved`]).
pub(super) fn wal_of(database: &Path) -> PathBuf {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}
