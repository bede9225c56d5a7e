//! MCP token bridging: handing a current OAuth token to an MCP server, independent of where the
//! token comes from.
//!
//! - [`TokenSource`] is the seam: the current token, and a [`watch`] receiver that changes
//!   whenever it was refreshed. [`StaticTokenSource`] is a ready-made one that a host sets by
//!   hand (and that the tests use).
//! - [`StdioSupervisor`] runs a stdio MCP server (handler type `mcp_server`) with the token in
//!   an environment variable, and restarts it when the token changes or the server exits.
//! - [`BearerHeaderSource`] builds `Authorization: Bearer <token>` for each request to an HTTP
//!   MCP server (handler type `mcp_http`).
//!
//! See `docs/MCP.md` for how a host wires them.

use std::fmt;
use std::sync::Mutex;

use secrecy::SecretString;
use tokio::sync::watch;

mod header;
mod source;
mod supervisor;

pub use header::BearerHeaderSource;
pub use source::{VaultTokenSource, VERSION_POLL};
pub use supervisor::{
    ChildStdio, StdioServerConfig, StdioSupervisor, SupervisorHandle, DEFAULT_INHERITED_ENV,
    DEFAULT_TOKEN_VAR,
};

/// Where the current token comes from, and how to hear that it changed.
///
/// An implementation's `Debug` must not show the token: the types of this module print their
/// source in theirs.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug + 'static {
    /// The current token (resolved and audited by the implementation).
    async fn token(&self) -> crate::Result<SecretString>;
    /// A receiver that changes (any new value) whenever the token was refreshed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// A [`TokenSource`] holding one token that the host replaces with [`set`](Self::set).
///
/// Every `set` bumps the change counter, so a [`StdioSupervisor`] restarts its server and a
/// [`BearerHeaderSource`] sends the new token from the next request on. Its `Debug` shows the
/// counter, never the token.
pub struct StaticTokenSource {
    token: Mutex<SecretString>,
    changes: watch::Sender<u64>,
}

impl StaticTokenSource {
    /// A source that holds `token` (change counter 0).
    pub fn new(token: SecretString) -> Self {
        StaticTokenSource {
            token: Mutex::new(token),
            changes: watch::Sender::new(0),
        }
    }

    /// Replace the token and notify every receiver from [`TokenSource::changes`].
    pub fn set(&self, token: SecretString) {
        match self.token.lock() {
            Ok(mut held) => *held = token,
            // A panic while the lock was held cannot leave a half-written SecretString.
            Err(poisoned) => *poisoned.into_inner() = token,
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn current(&self) -> SecretString {
        match self.token.lock() {
            Ok(held) => held.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl fmt::Debug for StaticTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenSource")
            .field("token", &"[REDACTED]")
            .field("changes", &*self.changes.borrow())
            .finish()
    }
}

#[async_trait::async_trait]
impl TokenSource for StaticTokenSource {
    async fn token(&self) -> crate::Result<SecretString> {
        Ok(self.current())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn set_replaces_the_token_and_bumps_the_counter() {
        let source = StaticTokenSource::new(SecretString::from("first"));
        let mut rx = source.changes();
        assert_eq!(*rx.borrow_and_update(), 0);
        source.set(SecretString::from("second"));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), 1);
        let token = source
            .token()
            .await
            .unwrap_or_else(|_| SecretString::from(""));
        assert_eq!(token.expose_secret(), "second");
        assert!(!format!("{source:?}").contains("second"));
    }
}
