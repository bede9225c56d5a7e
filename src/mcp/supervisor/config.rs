//! How to run one stdio MCP server: the program, its arguments and environment, and the
//! restart and stop timings; built from an `mcp_server` credential's fields.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;

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
pub(super) const STABLE_RUN: Duration = Duration::from_secs(30);

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

    pub(super) fn command(&self, token: &SecretString) -> Command {
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
