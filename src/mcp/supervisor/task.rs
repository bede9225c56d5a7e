//! The task that runs one child: start it with the current token, wait for an exit, a
//! token change or a stop, and restart with backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use super::config::STABLE_RUN;
use super::{ChildStdio, Shared, StdioServerConfig};
use crate::error::{Error, Result};
use crate::mcp::TokenSource;

pub(super) fn spawn(config: &StdioServerConfig, token: &SecretString) -> Result<Child> {
    config
        .command(token)
        .spawn()
        .map_err(|e| Error::io(config.program.display(), e))
}

/// Why a running child's wait ended.
pub(super) enum Event {
    Exited(String),
    TokenChanged,
    Stop,
}

pub(super) struct Task {
    pub(super) config: StdioServerConfig,
    pub(super) source: Arc<dyn TokenSource>,
    pub(super) changes: watch::Receiver<u64>,
    pub(super) source_closed: bool,
    pub(super) shared: Arc<Shared>,
    pub(super) stdio_tx: watch::Sender<u64>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) generation: u64,
}

impl Task {
    /// Publish a newly started child's pipes and id; keep the child (without them).
    pub(super) fn install(&mut self, mut child: Child) -> Child {
        let pipes = child.stdin.take().zip(child.stdout.take());
        self.shared
            .child_id
            .store(child.id().unwrap_or(0), Ordering::SeqCst);
        if let Some((stdin, stdout)) = pipes {
            // Any untaken pipes of the previous child are dropped here.
            self.shared.put_stdio(Some(ChildStdio {
                generation: self.generation,
                stdin,
                stdout,
            }));
        }
        self.stdio_tx.send_modify(|n| *n = n.wrapping_add(1));
        child
    }

    fn stopping(&self) -> bool {
        // A dropped handle counts as a stop.
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    pub(super) async fn run(mut self, first: Child) {
        let mut child = Some(first);
        let mut backoff = self.config.restart_backoff;
        loop {
            let Some(mut running) = child.take() else {
                // Start a new child: fetch the token, spawn, or back off and retry.
                if self.stopping() {
                    break;
                }
                self.changes.borrow_and_update();
                let started = match self.source.token().await {
                    Ok(token) => spawn(&self.config, &token).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("fetching the token failed: {e}")),
                };
                match started {
                    Ok(new) => {
                        self.generation += 1;
                        self.shared.restarts.fetch_add(1, Ordering::SeqCst);
                        child = Some(self.install(new));
                    }
                    Err(reason) => {
                        tracing::warn!(
                            program = %self.config.program.display(),
                            retry_in = ?backoff,
                            "MCP server not started: {reason}"
                        );
                        if !self.pause(backoff).await {
                            break;
                        }
                        backoff = self.next_backoff(backoff);
                    }
                }
                continue;
            };

            let started_at = Instant::now();
            match self.wait_event(&mut running).await {
                Event::Exited(status) => {
                    self.shared.child_id.store(0, Ordering::SeqCst);
                    if started_at.elapsed() >= STABLE_RUN {
                        backoff = self.config.restart_backoff;
                    }
                    tracing::warn!(
                        program = %self.config.program.display(),
                        restart_in = ?backoff,
                        %status,
                        "MCP server exited; restarting"
                    );
                    if !self.pause(backoff).await {
                        break;
                    }
                    backoff = self.next_backoff(backoff);
                }
                Event::TokenChanged => {
                    tracing::info!(
                        program = %self.config.program.display(),
                        "MCP server token refreshed; restarting the server"
                    );
                    self.shutdown(running).await;
                    backoff = self.config.restart_backoff;
                }
                Event::Stop => {
                    self.shutdown(running).await;
                    break;
                }
            }
        }
        self.shared.child_id.store(0, Ordering::SeqCst);
        drop(self.shared.take_stdio());
    }

    fn next_backoff(&self, backoff: Duration) -> Duration {
        backoff
            .saturating_mul(2)
            .min(self.config.max_restart_backoff)
    }

    /// Wait for the child to exit, the token to change or a stop.
    async fn wait_event(&mut self, child: &mut Child) -> Event {
        loop {
            if self.stopping() {
                return Event::Stop;
            }
            let source_closed = self.source_closed;
            tokio::select! {
                status = child.wait() => {
                    return Event::Exited(match status {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("waiting for it failed: {e}"),
                    })
                }
                changed = self.changes.changed(), if !source_closed => {
                    match changed {
                        Ok(()) => return Event::TokenChanged,
                        // The source is gone: no more refreshes; keep the child running.
                        Err(_) => self.source_closed = true,
                    }
                }
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Sleep `delay` unless stopped first; `false` when stopped.
    async fn pause(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            if self.stopping() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Stop `child`: close its stdin if still held, half the grace; SIGTERM, the rest; kill.
    async fn shutdown(&mut self, mut child: Child) {
        let grace = self.config.stop_timeout;
        let deadline = Instant::now() + grace;
        let held = self.shared.take_stdio();
        let closed_stdin = held.is_some();
        drop(held);
        if closed_stdin && timeout(grace / 2, child.wait()).await.is_ok() {
            self.shared.child_id.store(0, Ordering::SeqCst);
            return;
        }
        terminate(&child);
        let rest = deadline.saturating_duration_since(Instant::now());
        if timeout(rest, child.wait()).await.is_err() {
            tracing::warn!(
                program = %self.config.program.display(),
                ?grace,
                "MCP server did not exit in time; killing it"
            );
            let _ = child.start_kill();
            // Reap it so no zombie is left; a killed process exits promptly.
            if timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                tracing::warn!(
                    program = %self.config.program.display(),
                    "MCP server did not exit after being killed"
                );
            }
        }
        self.shared.child_id.store(0, Ordering::SeqCst);
    }
}

/// Ask the child to exit (SIGTERM on Unix; nothing elsewhere, where it is killed after the
/// grace period).
#[cfg(unix)]
pub(super) fn terminate(child: &Child) {
    // `id()` is `None` once the child has been reaped, so the pid cannot have been reused.
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

#[cfg(not(unix))]
pub(super) fn terminate(_child: &Child) {}
