//! The syncer: makes committed groups durable, one `fdatasync` of the WAL for every group
//! committed since the last one, and only then answers their callers.
//!
//! With [`Synchronous::Full`](super::Synchronous::Full) SQLite would sync the WAL inside each
//! `COMMIT`, on the writer thread, so the next group could not start before the disk
//! answered: callers computing and the disk syncing took turns. Here the writer commits
//! with SQLite's `synchronous = NORMAL` (the WAL is written, not synced, at commit; a
//! checkpoint still syncs the WAL before copying it and the database after) and hands the
//! group to this thread, which syncs the WAL file and answers. The guarantee is the one of
//! `FULL`: no batch is acknowledged before its rows are on disk. The WAL is only ever
//! appended to between checkpoints, and a checkpoint syncs it first, so one sync covers every
//! group written before it, and a group that a checkpoint copied away is durable in the
//! database already.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::Counters;
use crate::error::{Error, Result, StoreErrorKind};
use crate::store::group::{answer, GroupFailure, Outcome, Reply};

/// A committed group whose callers wait for the sync.
pub(super) type Unsynced = Vec<(Reply, Outcome)>;

/// The writer's end of the syncer.
pub(super) struct Syncer {
    queue: Option<mpsc::Sender<Unsynced>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer thread for the database at `database` (its WAL is `<database>-wal`).
    pub(super) fn start(database: PathBuf, counters: Arc<Counters>) -> std::io::Result<Syncer> {
        let mut wal = database.into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let (queue, rx) = mpsc::channel::<Unsynced>();
        let thread = std::thread::Builder::new()
            .name("strongroom-sqlite-sync".into())
            .spawn(move || sync_loop(&wal, &rx, &counters))?;
        Ok(Syncer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands a committed group over; its callers are answered once it is durable.
    pub(super) fn push(&self, group: Unsynced) {
        if let Some(queue) = &self.queue {
            if let Err(mpsc::SendError(group)) = queue.send(group) {
                // The thread is gone (it panicked): nobody can vouch for these rows.
                let failure = GroupFailure::from(Error::store(
                    StoreErrorKind::Io,
                    "the SQLite store's sync thread stopped, so the commit was not made durable; \
                     close and reopen the store",
                ));
                answer(group, Some(&failure));
            }
        }
    }

    /// Syncs and answers everything handed over, then stops the thread.
    pub(super) fn finish(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn sync_loop(wal: &std::path::Path, rx: &mpsc::Receiver<Unsynced>, counters: &Counters) {
    let mut file: Option<File> = None;
    let mut groups: Vec<Unsynced> = Vec::new();
    while let Ok(first) = rx.recv() {
        groups.push(first);
        // Every group committed while the last sync ran rides on this one.
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let synced = if counters.sync_failed.load(Ordering::Acquire) {
            Err(earlier_failure())
        } else {
            sync_wal(&mut file, wal)
        };
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        let failure = match synced {
            Ok(()) => None,
            Err(error) => {
                // Once a sync failed, the kernel may have dropped the pages it could not
                // write: no later sync can vouch for them, so every later commit fails too.
                counters.sync_failed.store(true, Ordering::Release);
                Some(GroupFailure::from(error))
            }
        };
        for group in groups.drain(..) {
            answer(group, failure.as_ref());
        }
    }
}

fn sync_wal(file: &mut Option<File>, wal: &std::path::Path) -> Result<()> {
    let shown = wal.display();
    let fail = |what: &str, e: std::io::Error| {
        Error::store_with_source(
            StoreErrorKind::Io,
            format!(
                "cannot {what} the WAL {shown}: the commit is written but may not be durable; \
                 close and reopen the store"
            ),
            e,
        )
    };
    if file.is_none() {
        *file = Some(File::open(wal).map_err(|e| fail("open", e))?);
    }
    match file {
        Some(f) => f.sync_data().map_err(|e| fail("sync", e)),
        None => Ok(()),
    }
}

/// The error of every commit after a failed sync.
pub(super) fn earlier_failure() -> Error {
    Error::store(
        StoreErrorKind::Io,
        "an earlier sync of the SQLite WAL failed, so commits since may not be durable; \
         nothing more is acknowledged: close and reopen the store",
    )
}
