//! A supervised stdio MCP server (handler type `mcp_server`): started with the current token in
//! an environment variable, restarted when the token is refreshed or the server exits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::TokenSource;
use crate::error::{Error, Result};
use crate::handlers::formats::env_var_name;

/// The variable that carries the token when a credential sets no `env_token_var`.
pub const DEFAULT_TOKEN_VAR: &str = "MCP_TOKEN";

/// The host's environment variables a child sees by default
/// ([`StdioServerConfig::inherit_env`]): enough to find programs and run, nothing of the
/// vault's own (`STRONGROOM_MASTER_KEY` and the like are never passed on unless named).
pub const DEFAULT_INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
];

/// A child that ran at least this long before exiting resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// How to run one stdio MCP server.
///
/// Its `Debug` shows the names of [`env`](Self::env) entries, never their values (a
/// credential's `env` field is a secret field).
#[derive(Clone)]
pub struct StdioServerConfig {
    /// The program to start (the credential's `command`).
    pub program: PathBuf,
    /// Its arguments (the credential's `args`).
    pub args: Vec<String>,
    /// Extra environment variables (the credential's `env`). Must not set
    /// [`token_var`](Self::token_var).
    pub env: BTreeMap<String, String>,
    /// The variable the token is passed in (the credential's `env_token_var`; default
    /// [`DEFAULT_TOKEN_VAR`]).
    pub token_var: String,
    /// Names of the host's environment variables passed on to the child when set (default
    /// [`DEFAULT_INHERITED_ENV`]). The child's environment is otherwise cleared.
    pub inherit_env: Vec<String>,
    /// How long a stopping child gets in all before it is killed (stdin closed, then SIGTERM
    /// on Unix; see [`SupervisorHandle::stop`]). Default 5 s.
    pub stop_timeout: Duration,
    /// The wait before restarting a child that exited on its own, or retrying a failed token
    /// fetch or start; doubled on each failure in a row up to
    /// [`max_restart_backoff`](Self::max_restart_backoff). Default 1 s.
    pub restart_backoff: Duration,
    /// The cap on [`restart_backoff`](Self::restart_backoff)'s doubling. Default 30 s.
    pub max_restart_backoff: Duration,
}

impl Default for StdioServerConfig {
    fn default() -> Self {
        StdioServerConfig {
            program: PathBuf::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            token_var: DEFAULT_TOKEN_VAR.to_owned(),
            inherit_env: DEFAULT_INHERITED_ENV
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            stop_timeout: Duration::from_secs(5),
            restart_backoff: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(30),
        }
    }
}

impl StdioServerConfig {
    /// The defaults with `program` to run.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        StdioServerConfig {
            program: program.into(),
            ..StdioServerConfig::default()
        }
    }

    /// The configuration an `mcp_server` credential describes (as resolved from the vault):
    /// `command`, `args` (a JSON array of strings), `env` (a JSON object of strings) and
    /// `env_token_var` (default [`DEFAULT_TOKEN_VAR`]); the other settings are the defaults.
    /// The token itself comes from the supervisor's [`TokenSource`](super::TokenSource): a
    /// [`VaultTokenSource`](super::VaultTokenSource) on this credential's `token` field, or
    /// on the OAuth credential whose access token the server takes. A token in `env` under
    /// the token variable is dropped (the source is what the server gets). Errors name the
    /// field, never a value.
    pub fn from_fields(fields: &crate::handlers::Fields) -> Result<StdioServerConfig> {
        let text = |name: &str| fields.get(name).map(|v| v.expose_secret());
        let command = text("command")
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                Error::invalid("command", "the mcp_server credential names no command")
            })?;
        let args: Vec<String> = match text("args") {
            Some(json) => serde_json::from_str(json).map_err(|_| {
                Error::invalid(
                    "args",
                    "must be a JSON array of strings, such as [\"--port\", \"8080\"]",
                )
            })?,
            None => Vec::new(),
        };
        let mut env: BTreeMap<String, String> = match text("env") {
            Some(json) => serde_json::from_str(json)
                .map_err(|_| Error::invalid("env", "must be a JSON object of strings"))?,
            None => BTreeMap::new(),
        };
        let token_var = text("env_token_var")
            .unwrap_or(DEFAULT_TOKEN_VAR)
            .to_string();
        env.remove(&token_var);
        let config = StdioServerConfig {
            args,
            env,
            token_var,
            ..StdioServerConfig::new(command)
        };
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration: a program is named, [`token_var`](Self::token_var) and every
    /// [`env`](Self::env) and [`inherit_env`](Self::inherit_env) name is an environment
    /// variable name, `env` does not set the token variable, and the durations are usable.
    /// Errors name the field, never a value of `env`.
    pub fn validate(&self) -> Result<()> {
        if self.program.as_os_str().is_empty() {
            return Err(Error::invalid("program", "must name the program to start"));
        }
        env_var_name(&self.token_var).map_err(|rule| Error::invalid("token_var", rule))?;
        for name in self.env.keys() {
            env_var_name(name)
                .map_err(|rule| Error::invalid("env", format!("variable `{name}`: {rule}")))?;
        }
        if self.env.contains_key(&self.token_var) {
            return Err(Error::invalid(
                "env",
                format!(
                    "sets `{}`, the token variable; the token is passed there by the \
                     supervisor, remove it from env",
                    self.token_var
                ),
            ));
        }
        for name in &self.inherit_env {
            env_var_name(name).map_err(|rule| {
                Error::invalid("inherit_env", format!("variable `{name}`: {rule}"))
            })?;
        }
        if self.restart_backoff.is_zero() {
            return Err(Error::invalid(
                "restart_backoff",
                "must be more than zero (a crashing server would be restarted in a busy loop)",
            ));
        }
        if self.max_restart_backoff < self.restart_backoff {
            return Err(Error::invalid(
                "max_restart_backoff",
                "must be at least restart_backoff",
            ));
        }
        Ok(())
    }

    fn command(&self, token: &SecretString) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for name in &self.inherit_env {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(&self.env);
        cmd.env(&self.token_var, token.expose_secret());
        cmd
    }
}

impl fmt::Debug for StdioServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioServerConfig")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("token_var", &self.token_var)
            .field("inherit_env", &self.inherit_env)
            .field("stop_timeout", &self.stop_timeout)
            .field("restart_backoff", &self.restart_backoff)
            .field("max_restart_backoff", &self.max_restart_backoff)
            .finish()
    }
}

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

fn spawn(config: &StdioServerConfig, token: &SecretString) -> Result<Child> {
    config
        .command(token)
        .spawn()
        .map_err(|e| Error::io(config.program.display(), e))
}

/// Why a running child's wait ended.
enum Event {
    Exited(String),
    TokenChanged,
    Stop,
}

struct Task {
    config: StdioServerConfig,
    source: Arc<dyn TokenSource>,
    changes: watch::Receiver<u64>,
    source_closed: bool,
    shared: Arc<Shared>,
    stdio_tx: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
    generation: u64,
}

impl Task {
    /// Publish a newly started child's pipes and id; keep the child (without them).
    fn install(&mut self, mut child: Child) -> Child {
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

    async fn run(mut self, first: Child) {
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
fn terminate(child: &Child) {
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
fn terminate(_child: &Child) {}

#[cfg(test)]
mod tests {
    #[test]
    fn an_mcp_server_credential_becomes_a_config() {
        let mut fields = crate::handlers::Fields::new();
        let put = |f: &mut crate::handlers::Fields, k: &str, v: &str| {
            f.insert(k.to_string(), SecretString::from(v.to_string()));
        };
        put(&mut fields, "command", "/usr/bin/mcp-notion");
        put(&mut fields, "args", r#"["--stdio"]"#);
        put(
            &mut fields,
            "env",
            r#"{"LOG_LEVEL":"info","NOTION_TOKEN":"stale-CANARY"}"#,
        );
        put(&mut fields, "env_token_var", "NOTION_TOKEN");
        let config = StdioServerConfig::from_fields(&fields).expect("config");
        assert_eq!(config.program, PathBuf::from("/usr/bin/mcp-notion"));
        assert_eq!(config.args, vec!["--stdio"]);
        assert_eq!(config.token_var, "NOTION_TOKEN");
        assert_eq!(
            config.env.len(),
            1,
            "the token variable comes from the source only"
        );
        assert!(!format!("{config:?}").contains("CANARY"));
        put(&mut fields, "args", "--stdio");
        let err = StdioServerConfig::from_fields(&fields).expect_err("args");
        assert!(err.to_string().contains("args"));
        fields.remove("command");
        assert!(StdioServerConfig::from_fields(&fields).is_err());
    }

    use super::*;

    fn config(token_var: &str) -> StdioServerConfig {
        StdioServerConfig {
            token_var: token_var.to_owned(),
            ..StdioServerConfig::new("/bin/true")
        }
    }

    #[test]
    fn the_default_token_variable_is_mcp_token() {
        assert_eq!(StdioServerConfig::default().token_var, "MCP_TOKEN");
        assert_eq!(
            StdioServerConfig::default().stop_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            StdioServerConfig::default().restart_backoff,
            Duration::from_secs(1)
        );
        assert!(config("MCP_TOKEN").validate().is_ok());
    }

    #[test]
    fn token_var_must_be_an_environment_variable_name() {
        for good in ["MCP_TOKEN", "_X", "github_token", "A1"] {
            assert!(config(good).validate().is_ok(), "{good}");
        }
        for bad in ["", "1ABC", "MCP-TOKEN", "A B", "A=B", "TOKEN\n", "Ä"] {
            let err = config(bad).validate().expect_err(bad);
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "token_var"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn env_may_not_set_the_token_variable_or_bad_names() {
        let mut c = config("MCP_TOKEN");
        c.env.insert("MCP_TOKEN".into(), "secret-canary".into());
        let err = c.validate().expect_err("token var in env");
        assert!(!err.to_string().contains("secret-canary"));
        let mut c = config("MCP_TOKEN");
        c.env.insert("BAD-NAME".into(), "v".into());
        assert!(c.validate().is_err());
        let mut c = config("MCP_TOKEN");
        c.inherit_env.push("BAD NAME".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn program_and_backoff_are_checked() {
        assert!(StdioServerConfig::default().validate().is_err());
        let mut c = config("MCP_TOKEN");
        c.restart_backoff = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = config("MCP_TOKEN");
        c.max_restart_backoff = Duration::from_millis(1);
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_shows_env_names_not_values() {
        let mut c = config("MCP_TOKEN");
        c.env.insert("API_KEY".into(), "secret-canary".into());
        let text = format!("{c:?}");
        assert!(text.contains("API_KEY"));
        assert!(!text.contains("secret-canary"));
    }
}
