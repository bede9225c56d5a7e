//! The `file` master key: `master.key`, created 0600 on first use, refused when others can
//! read it.

use std::io::Write;
use std::path::Path;

use super::super::fill_random;
use super::LocalKey;
use crate::error::{Error, Result};

#[cfg(unix)]
pub(super) fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // A configuration problem (the CLI exits 2), not a key that is missing.
        return Err(Error::config(format!(
            "refusing master key file {} with mode {mode:04o}: group or others can access it; \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

pub(super) fn create_key_file(path: &Path) -> Result<LocalKey> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
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
    let text = LocalKey::generate_base64()?;
    // The key goes into a temporary file of its own first, complete and on disk, and is
    // then linked in under its name only if that name is free: a process that loses the
    // race never sees a half-written file, and reads the winner's key instead.
    let mut nonce = [0u8; 8];
    fill_random(&mut nonce)?;
    let name = path
        .file_name()
        .map_or_else(|| "master.key".into(), |n| n.to_string_lossy());
    let temp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(temp.display(), e));
    }
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // The new name is durable only once the folder is synced.
            if let Ok(folder) = std::fs::File::open(dir) {
                let _ = folder.sync_all();
            }
            tracing::info!(path = %path.display(), "created a new master key file");
            LocalKey::from_base64(&text, &format!("master key file {}", path.display()))
        }
        // Another process created it first: use theirs (complete, since it was linked in
        // only once written).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => LocalKey::load_file(path),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}
