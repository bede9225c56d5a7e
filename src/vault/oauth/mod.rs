//! OAuth as the vault drives it: flows that end in a per-user credential (authorization code
//! with PKCE, device code), refreshes that happen once across every instance sharing the
//! store, revocation at the provider, and the events hosts subscribe to. The protocol itself
//! (requests, responses, provider quirks) is [`crate::oauth`].

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::broadcast;

use super::{Principal, Vault};
use crate::catalog::{OAuthSpec, Provider};
use crate::error::{Error, Result};
use crate::model::{CredentialId, CredentialRecord, Timestamp};
use crate::oauth::{ClientSecret, OAuthClient, OAuthClients, TokenResponse};
use crate::transport::HttpTransport;

mod device;
mod flow;
mod refresh;
mod refresher;
mod revoke;

pub use device::{DeviceFlow, DeviceStart, DeviceStatus};
pub use flow::{OAuthStart, OAuthStarted};
pub use refresh::{RefreshOutcome, SYNC_MARGIN};
pub use refresher::{RefreshPass, RefresherConfig, RefresherHandle};

/// The record kind of a pending authorization-code flow (owner: the user; key: the SHA-256
/// of its `state`, in hex — never the state itself).
pub const PENDING_KIND: &str = "oauth.pending";
/// How long a started authorization-code flow may be completed.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// The default refresh window: a token that expires sooner than this is refreshed.
pub const DEFAULT_REFRESH_WINDOW: Duration = Duration::from_secs(600);
/// The record owner of refresh leases (key: the credential id).
pub(crate) const REFRESH_LEASE_OWNER: &str = "oauth.refresh";
/// The service principal id the vault's own OAuth work acts as.
pub const OAUTH_SERVICE_ID: &str = "oauth-refresher";

/// Something that happened to an OAuth credential, for hosts that subscribe
/// ([`Vault::oauth_events`]). Carries ids and times, never tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuthEvent {
    /// New tokens are stored (durably) at `version`.
    Refreshed {
        /// The credential.
        id: CredentialId,
        /// Its new version.
        version: u64,
        /// When the new access token expires, if the provider said.
        expires_at: Option<Timestamp>,
    },
    /// A refresh failed; the credential stays usable while its access token is valid and
    /// the refresh is retried (`retrying`), or it failed for good.
    RefreshFailed {
        /// The credential.
        id: CredentialId,
        /// The OAuth error code or what went wrong (never a token).
        reason: String,
        /// Whether it will be tried again.
        retrying: bool,
    },
    /// The credential is now `expired` (its refresh token was refused, or its access token
    /// ran out while the provider could not be reached).
    Expired {
        /// The credential.
        id: CredentialId,
    },
    /// The provider gave a token with no `expires_in`: the vault cannot know when to
    /// refresh it, and says so rather than leave it to die silently.
    NoExpiry {
        /// The credential.
        id: CredentialId,
    },
    /// The credential was revoked (at the provider, best effort) and is `invalid`.
    Revoked {
        /// The credential.
        id: CredentialId,
    },
}

/// The vault's OAuth state: client registrations, the refresh window, the event channel
/// and the name this instance claims refresh leases under.
pub(crate) struct OAuthState {
    clients: RwLock<OAuthClients>,
    pub(crate) window: Duration,
    pub(crate) events: broadcast::Sender<OAuthEvent>,
    /// Unique per vault instance: the prefix of its lease holders' names.
    pub(crate) instance: String,
    attempts: std::sync::atomic::AtomicU64,
    /// Credentials this instance is refreshing in the background for resolves.
    pub(crate) background: std::sync::Mutex<std::collections::HashSet<CredentialId>>,
}

impl OAuthState {
    pub(crate) fn new(clients: OAuthClients, window: Duration) -> OAuthState {
        let (events, _) = broadcast::channel(1024);
        OAuthState {
            clients: RwLock::new(clients),
            window,
            events,
            instance: format!("vault-{}", uuid::Uuid::now_v7().simple()),
            attempts: std::sync::atomic::AtomicU64::new(0),
            background: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// A lease holder name no other attempt, here or in another instance, uses.
    pub(crate) fn next_holder(&self) -> String {
        let n = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}:{n}", self.instance)
    }
}

/// Is `handler_type` one whose tokens the vault refreshes?
pub(crate) fn is_oauth_type(handler_type: &str) -> bool {
    matches!(handler_type, "oauth2" | "oauth2_pkce" | "device_code")
}

/// The SHA-256 of a flow's `state`, in hex: the key its pending record is stored under.
fn state_key(state: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(state.as_bytes()))
}

/// Metadata keys of the non-secret parts of an OAuth token the vault stored: kept by the
/// vault (a caller's metadata update leaves them), refused from callers. Only the tokens
/// are sealed; these stay readable without decrypting anything (`oauth status`).
pub const OAUTH_CLIENT_ID: &str = "oauth_client_id";
/// The token type (`Bearer`).
pub const OAUTH_TOKEN_TYPE: &str = "oauth_token_type";
/// The scopes the provider granted.
pub const OAUTH_SCOPE: &str = "oauth_scope";

/// A token response as the vault stores it: the secret fields, merged over `old` (a refresh
/// that omits the refresh token keeps the old one, RFC 6749 section 6), the new expiry, and
/// the non-secret parts for the metadata. A credential written by hand whose fields carry
/// `expires_at`, `token_type` or `scope` has those fields kept current instead.
pub(crate) struct StoredTokens {
    pub fields: BTreeMap<String, SecretString>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Vec<(&'static str, String)>,
}

pub(crate) fn token_fields(
    old: Option<&BTreeMap<String, SecretString>>,
    tokens: TokenResponse,
    client_id: &str,
    now: Timestamp,
) -> StoredTokens {
    let mut fields = old.cloned().unwrap_or_default();
    // A code of a device flow in progress is no token: never carried over.
    fields.remove("device_code");
    fields.insert("access_token".into(), tokens.access_token);
    if let Some(refresh) = tokens.refresh_token {
        fields.insert("refresh_token".into(), refresh);
    }
    let mut metadata = vec![(OAUTH_CLIENT_ID, client_id.to_string())];
    for (field, key, value) in [
        ("token_type", OAUTH_TOKEN_TYPE, tokens.token_type),
        ("scope", OAUTH_SCOPE, tokens.scope),
    ] {
        let Some(value) = value else { continue };
        if fields.contains_key(field) {
            fields.insert(field.to_string(), SecretString::from(value));
        } else {
            metadata.push((key, value));
        }
    }
    let expires_at = tokens
        .expires_in
        .map(|s| now.saturating_add(Duration::from_secs(s)));
    if fields.contains_key("expires_at") {
        match expires_at {
            Some(at) => {
                fields.insert(
                    "expires_at".into(),
                    SecretString::from((at.0 / 1000).to_string()),
                );
            }
            None => {
                fields.remove("expires_at");
            }
        }
    }
    StoredTokens {
        fields,
        expires_at,
        metadata,
    }
}

impl Vault {
    /// Hosts subscribe here to hear of refreshes, failures, expiries and revocations (a
    /// broadcast: a slow subscriber misses the oldest events, never blocks the vault).
    pub fn oauth_events(&self) -> broadcast::Receiver<OAuthEvent> {
        self.inner.oauth.events.subscribe()
    }

    /// Registers (or replaces) the OAuth client used for `provider`'s flows and refreshes.
    pub fn set_oauth_client(&self, provider: impl Into<String>, client: OAuthClient) {
        self.inner
            .oauth
            .clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider, client);
    }

    pub(crate) fn emit(&self, event: OAuthEvent) {
        // No subscriber is not an error.
        let _ = self.inner.oauth.events.send(event);
    }

    /// Writes `next` (`before` with the caller's changes) as `before`'s next version: the
    /// same sealed fields, bound to the new version, committed if-version with `event`
    /// (which is told the new version).
    pub(crate) async fn put_next_version(
        &self,
        before: &CredentialRecord,
        mut next: CredentialRecord,
        event: crate::audit::AuditEvent,
    ) -> Result<CredentialRecord> {
        next.version = before.version + 1;
        next.updated_at = Timestamp::now();
        self.reseal(before, &mut next).await?;
        let event = event.detail("version", next.version.to_string());
        self.commit_one(
            crate::store::Mutation::Put {
                record: next.clone(),
                precondition: crate::store::Precondition::IfVersion(before.version),
            },
            event,
        )
        .await?;
        Ok(next)
    }

    /// The principal the vault's own OAuth work acts as.
    pub(crate) fn oauth_service() -> Principal {
        Principal::Service {
            id: OAUTH_SERVICE_ID.to_string(),
        }
    }

    /// The HTTP client, or a configuration error naming what needs it.
    pub(crate) fn http_for(&self, what: &str) -> Result<std::sync::Arc<dyn HttpTransport>> {
        self.inner.http.clone().ok_or_else(|| {
            Error::config(format!(
                "{what} needs an HTTP client; build the vault with VaultBuilder::http \
                 (ReqwestTransport with the `reqwest` feature)"
            ))
        })
    }

    /// The provider and its `[oauth]` table.
    pub(crate) fn oauth_provider(
        &self,
        name: &str,
    ) -> Result<(std::sync::Arc<Provider>, OAuthSpec)> {
        let provider = self.provider(name)?;
        let spec = provider.oauth.clone().ok_or_else(|| {
            Error::config(format!(
                "provider `{name}` has no [oauth] table, so the vault cannot run its OAuth \
                 flows; add one to its provider file (see providers/README.md)"
            ))
        })?;
        Ok((provider, spec))
    }

    /// The registered client of `provider`.
    pub(crate) fn oauth_client(&self, provider: &str) -> Result<OAuthClient> {
        self.inner
            .oauth
            .clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(provider)
            .cloned()
            .ok_or_else(|| {
                Error::config(format!(
                    "no OAuth client is registered for provider `{provider}`; add a \
                     `[{provider}]` table with its client_id to $STRONGROOM_HOME/\
                     oauth_providers.toml, or call VaultBuilder::oauth_client"
                ))
            })
    }

    /// The client secret to send, if any: none for a public client (`oauth2_pkce`, or no
    /// secret registered). A secret kept as a vault credential is read through the one
    /// unseal door, audited as the OAuth service's resolve of it.
    pub(crate) async fn client_secret(
        &self,
        client: &OAuthClient,
        handler_type: &str,
    ) -> Result<Option<SecretString>> {
        if handler_type == "oauth2_pkce" {
            return Ok(None);
        }
        match &client.client_secret {
            None => Ok(None),
            Some(ClientSecret::Inline(secret)) => Ok(Some(secret.clone())),
            Some(ClientSecret::Credential(id)) => {
                let fields = self.open_client_secret(id).await?;
                let secret = fields
                    .get("client_secret")
                    .or_else(|| fields.values().next())
                    .cloned()
                    .ok_or_else(|| {
                        Error::config(format!(
                            "credential {id}, named as an OAuth client secret, has no fields"
                        ))
                    })?;
                Ok(Some(secret))
            }
        }
    }

    /// Does `record` hold an OAuth token the vault may refresh (an OAuth type with a
    /// refresh token, usable or expired only by time), and is it due at `now`? Reads
    /// columns and metadata only.
    pub(crate) fn refresh_due(&self, record: &CredentialRecord, now: Timestamp) -> bool {
        use crate::model::LifecycleState as S;
        // The field names are read last: most tokens are not inside the window.
        is_oauth_type(&record.handler_type)
            && matches!(record.state, S::Filled | S::Valid)
            && record
                .expires_at
                .is_some_and(|at| at.0.saturating_sub(now.0) < window_ms(self.inner.oauth.window))
            && has_field(record, "refresh_token")
    }
}

fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

/// Does the record name this secret field (from the field names the vault keeps in its
/// metadata; never by opening it)?
pub(crate) fn has_field(record: &CredentialRecord, name: &str) -> bool {
    record
        .metadata
        .get(super::FIELD_NAMES)
        .is_some_and(|names| names.split(',').any(|n| n == name))
}

/// A short reason for audit details and events: the OAuth error code, or the kind of
/// failure. Never a response body or a token.
pub(crate) fn reason_of(error: &crate::oauth::OAuthError) -> String {
    use crate::oauth::OAuthError as E;
    match error {
        E::Rejected { code, .. } => code.chars().take(64).flat_map(char::escape_debug).collect(),
        E::Unavailable { status } => format!("http_{status}"),
        E::Transport(_) => "unreachable".into(),
        E::Malformed(_) => "malformed_response".into(),
    }
}
