//! A supervised stdio MCP server (handler type `mcp_server`): started with the current token in
//! an environment variable, restarted when the token is refreshed or the server exits.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TokenSource;
use crate::error::{Error, Result};
use task::{spawn, Task};

mod config;
mod task;
#[cfg(test)]
mod tests;

pub use config::{StdioServerConfig, DEFAULT_INHERITED_ENV, DEFAULT_TOKEN_VAR};

/// The pipes of one started child: write MCP requests to `stdin`, read responses from
/// `stdout`. `generation` counts starts (0 for the first child, then one more per restart).
#[derive(Debug)]
pub struct ChildStdio {
    /// Which start this child is (0 for the first).
    pub generation: u64,
    /// The child's standard input.
    pub stdin: ChildStdin,
    /// The child's standard output.
    pub stdout: ChildStdout,
}

/// Runs a stdio MCP server and keeps it running; see [`StdioSupervisor::start`].
#[derive(Debug)]
pub struct StdioSupervisor {
    _private: (),
}

impl StdioSupervisor {
    /// Validate `config`, fetch a token from `source`, start the first child and return a
    /// handle to the task that supervises it.
    ///
    /// Fails when the configuration is invalid, the first token cannot be fetched, or the
    /// first child does not start (program not found): nothing is left running then.
    /// Afterwards the task, on the current Tokio runtime (its I/O driver must be enabled):
    ///
    /// - on a change from [`TokenSource::changes`], stops the child gracefully (see
    ///   [`SupervisorHandle::stop`]) and starts a new one with the token fetched afresh;
    /// - when the child exits on its own, waits [`StdioServerConfig::restart_backoff`]
    ///   (doubling on each exit in a row, up to the cap; reset after a child that ran 30 s)
    ///   and starts a new one, with the token fetched afresh;
    /// - when a token fetch or a start fails, logs a warning (never the token) and retries
    ///   with the same backoff.
    ///
    /// Each child's stdin and stdout are handed out once through
    /// [`SupervisorHandle::take_stdio`] / [`SupervisorHandle::next_stdio`]. Its stderr is the
    /// host's.
    pub async fn start(
        config: StdioServerConfig,
        source: Arc<dyn TokenSource>,
    ) -> Result<SupervisorHandle> {
        config.validate()?;
        let mut changes = source.changes();
        changes.borrow_and_update();
        let token = source.token().await?;
        let child = spawn(&config, &token)?;
        drop(token);

        let shared = Arc::new(Shared {
            stdio: Mutex::new(None),
            restarts: AtomicU64::new(0),
            child_id: AtomicU32::new(0),
        });
        let (stdio_tx, stdio_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut task = Task {
            config,
            source,
            changes,
            source_closed: false,
            shared: Arc::clone(&shared),
            stdio_tx,
            stop: stop_rx,
            generation: 0,
        };
        let child = task.install(child);
        let join = tokio::spawn(task.run(child));
        Ok(SupervisorHandle {
            shared,
            stdio: stdio_rx,
            stop: stop_tx,
            join: Some(join),
        })
    }
}

struct Shared {
    stdio: Mutex<Option<ChildStdio>>,
    restarts: AtomicU64,
    child_id: AtomicU32,
}

impl Shared {
    fn put_stdio(&self, stdio: Option<ChildStdio>) -> Option<ChildStdio> {
        match self.stdio.lock() {
            Ok(mut slot) => std::mem::replace(&mut *slot, stdio),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), stdio),
        }
    }

    fn take_stdio(&self) -> Option<ChildStdio> {
        self.put_stdio(None)
    }
}

/// Controls a running [`StdioSupervisor`].
///
/// Dropping the handle stops the child the same way [`stop`](Self::stop) does, in the
/// background (the child is also killed outright if the runtime shuts down first).
pub struct SupervisorHandle {
    shared: Arc<Shared>,
    stdio: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    join: Option<JoinHandle<()>>,
}

impl SupervisorHandle {
    /// The current child's stdin and stdout, if they have not been taken yet: each child's
    /// pipes are handed out once. After a restart the old pipes are dead (writes fail, reads
    /// end) and the new child's are here; a host must open its MCP session again on them.
    pub fn take_stdio(&self) -> Option<ChildStdio> {
        self.shared.take_stdio()
    }

    /// Wait for a child whose pipes have not been taken (the current one, or the next to
    /// start) and take them. `None` once the supervisor has ended.
    pub async fn next_stdio(&mut self) -> Option<ChildStdio> {
        loop {
            self.stdio.borrow_and_update();
            if let Some(stdio) = self.shared.take_stdio() {
                return Some(stdio);
            }
            if self.stdio.changed().await.is_err() {
                return self.shared.take_stdio();
            }
        }
    }

    /// How many times a child was started after the first (after an exit, a crash or a
    /// token change).
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// The process id of the running child; `None` while none runs (between a stop and the
    /// next start, or after the supervisor ended).
    pub fn child_id(&self) -> Option<u32> {
        match self.shared.child_id.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// Stop the child and end the supervisor, waiting for both.
    ///
    /// The child is stopped gracefully: its stdin is closed if the host has not taken it (an
    /// MCP stdio server exits on end of input) and it gets half of
    /// [`StdioServerConfig::stop_timeout`] to exit; then (on Unix) it is sent SIGTERM and
    /// gets the rest; then it is killed and reaped. A host that took the pipes should drop
    /// its stdin first to let the server exit on its own.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(join) = self.join.take() {
            join.await.map_err(|e| {
                Error::config(format!("the MCP server supervisor task failed: {e}"))
            })?;
        }
        Ok(())
    }
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("child_id", &self.child_id())
            .field("restarts", &self.restarts())
            .finish()
    }
}
