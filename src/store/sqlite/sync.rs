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
//!
//! The WAL is the one SQLite names after the database file it resolved at open (not the
//! caller's path, which may be a symbolic link or relative); the thread opens it once and
//! keeps it, syncing its folder then so that a new WAL's name is durable too. A barrier
//! ([`Syncer::barrier`]) is answered after the sync covering every group handed over
//! before it: the store's chain head waits for one, so no head is vouched for early.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::Counters;
use crate::error::{Error, Result, StoreErrorKind};
use crate::store::group::{answer, GroupFailure, Outcome, Reply};

/// A committed group whose callers wait for the sync.
pub(super) type Unsynced = Vec<(Reply, Outcome)>;

/// What the syncer is handed, in the order the writer committed.
enum Job {
    /// A committed group: answered once a sync covers it.
    Group(Unsynced),
    /// A barrier: answered once everything handed over before it is durable.
    Barrier(oneshot::Sender<Result<()>>),
}

/// Makes the WAL durable; `groups` is false when only barriers wait (nothing of this
/// process's was committed since the last sync).
type SyncFn = Box<dyn FnMut(bool) -> Result<()> + Send>;

/// The writer's end of the syncer.
pub(super) struct Syncer {
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer thread for the WAL at `wal`: the `-wal` file of the database file
    /// as SQLite itself resolved it (see [`super::files::wal_of`]).
    pub(super) fn start(wal: PathBuf, counters: Arc<Counters>) -> std::io::Result<Syncer> {
        let mut file: Option<File> = None;
        Syncer::start_with(
            Box::new(move |groups| sync_wal(&mut file, &wal, groups)),
            counters,
        )
    }

    fn start_with(sync: SyncFn, counters: Arc<Counters>) -> std::io::Result<Syncer> {
        let (queue, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("strongroom-sqlite-sync".into())
            .spawn(move || sync_loop(&rx, &counters, sync))?;
        Ok(Syncer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands a committed group over; its callers are answered once it is durable.
    pub(super) fn push(&self, group: Unsynced) {
        if let Some(queue) = &self.queue {
            if let Err(mpsc::SendError(Job::Group(group))) = queue.send(Job::Group(group)) {
                // The thread is gone (it panicked): nobody can vouch for these rows.
                answer(group, Some(&GroupFailure::from(stopped())));
            }
        }
    }

    /// Answers `reply` once every group handed over before is durable.
    pub(super) fn barrier(&self, reply: oneshot::Sender<Result<()>>) {
        match &self.queue {
            Some(queue) => {
                if let Err(mpsc::SendError(Job::Barrier(reply))) = queue.send(Job::Barrier(reply)) {
                    let _ = reply.send(Err(stopped()));
                }
            }
            None => {
                let _ = reply.send(Err(stopped()));
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

fn stopped() -> Error {
    Error::store(
        StoreErrorKind::Io,
        "the SQLite store's sync thread stopped, so the commit was not made durable; \
         close and reopen the store",
    )
}

fn sync_loop(rx: &mpsc::Receiver<Job>, counters: &Counters, mut sync: SyncFn) {
    let mut groups: Vec<Unsynced> = Vec::new();
    let mut barriers: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let take = |job: Job, groups: &mut Vec<Unsynced>, barriers: &mut Vec<_>| match job {
        Job::Group(group) => groups.push(group),
        Job::Barrier(reply) => barriers.push(reply),
    };
    while let Ok(first) = rx.recv() {
        take(first, &mut groups, &mut barriers);
        // Every group committed while the last sync ran rides on this one.
        while let Ok(more) = rx.try_recv() {
            take(more, &mut groups, &mut barriers);
        }
        let synced = if counters.sync_failed.load(Ordering::Acquire) {
            Err(earlier_failure())
        } else {
            sync(!groups.is_empty())
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
        for reply in barriers.drain(..) {
            let _ = reply.send(match &failure {
                None => Ok(()),
                Some(failure) => Err(failure.error()),
            });
        }
    }
}

/// Syncs the WAL, opening it first if this thread has not yet. A barrier alone (`groups`
/// false) still syncs, since the head it vouches for may hold another process's commit,
/// but a WAL that does not exist yet holds nothing to sync then.
fn sync_wal(file: &mut Option<File>, wal: &Path, groups: bool) -> Result<()> {
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
        let opened = match File::open(wal) {
            Ok(opened) => opened,
            Err(e) if !groups && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail("open", e)),
        };
        // A new WAL's name is durable only once its folder is synced (SQLite's `FULL` does
        // this on its first WAL sync; with `NORMAL` it is ours to do). Once per handle.
        opened.sync_data().map_err(|e| fail("sync", e))?;
        let folder = wal.parent().unwrap_or(Path::new("/"));
        File::open(folder)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| fail("sync the folder of", e))?;
        *file = Some(opened);
        return Ok(());
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::store::CommitReceipt;

    /// A sync that blocks until released, and says when it has started.
    fn blocking_sync() -> (SyncFn, mpsc::Receiver<bool>, mpsc::Sender<Result<()>>) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<Result<()>>();
        let release_rx = Mutex::new(release_rx);
        let sync: SyncFn = Box::new(move |groups| {
            let _ = started_tx.send(groups);
            release_rx
                .lock()
                .expect("release")
                .recv()
                .unwrap_or_else(|_| Err(stopped()))
        });
        (sync, started, release)
    }

    fn applied() -> (Unsynced, oneshot::Receiver<Result<CommitReceipt>>) {
        let (reply, answer) = oneshot::channel();
        let receipt = CommitReceipt {
            seqs: Some((1, 1)),
            head: None,
        };
        (vec![(reply, Outcome::Applied(receipt))], answer)
    }

    #[test]
    fn a_caller_is_answered_only_after_the_sync_covering_its_group() {
        let counters = Arc::new(Counters::default());
        let (sync, started, release) = blocking_sync();
        let mut syncer = Syncer::start_with(sync, counters.clone()).expect("start");
        let (group, mut answer) = applied();
        syncer.push(group);
        assert!(started.recv_timeout(Duration::from_secs(10)).expect("sync"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "answered while the sync was still blocked"
        );
        // A barrier queued behind it waits for a sync too.
        let (reply, mut barrier) = oneshot::channel();
        syncer.barrier(reply);
        release.send(Ok(())).expect("release");
        let receipt = answer.blocking_recv().expect("answered").expect("durable");
        assert_eq!(receipt.seqs, Some((1, 1)));
        // The barrier arrived during the first sync: it takes a second one (alone).
        assert!(!started.recv_timeout(Duration::from_secs(10)).expect("sync"));
        assert!(matches!(
            barrier.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        release.send(Ok(())).expect("release");
        barrier.blocking_recv().expect("answered").expect("durable");
        syncer.finish();
        assert_eq!(counters.syncs.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_failed_sync_fails_its_callers_and_every_later_barrier() {
        let counters = Arc::new(Counters::default());
        let (sync, started, release) = blocking_sync();
        let mut syncer = Syncer::start_with(sync, counters.clone()).expect("start");
        let (group, answer) = applied();
        syncer.push(group);
        started.recv_timeout(Duration::from_secs(10)).expect("sync");
        release
            .send(Err(Error::store(StoreErrorKind::Io, "disk gone")))
            .expect("release");
        let failed = answer.blocking_recv().expect("answered");
        assert!(failed.is_err(), "a failed sync was acknowledged");
        let (reply, barrier) = oneshot::channel();
        syncer.barrier(reply);
        let later = barrier.blocking_recv().expect("answered");
        assert!(
            matches!(&later, Err(e) if e.to_string().contains("earlier sync")),
            "{later:?}"
        );
        syncer.finish();
    }
}
