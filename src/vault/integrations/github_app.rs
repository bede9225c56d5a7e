//! GitHub App mode of the GitHub integration: the vault keeps the App's private key as the
//! agent's `github:private_key` (never agent-accessible) and hands the agent installation
//! tokens minted from it ([`crate::integrations::github_app`]). A token is cached per vault
//! until five minutes before its `expires_at`; a cached token is served without opening the
//! key, but every call still reads the integration and the key's record and is audited.

use std::collections::HashMap;

use super::*;
use crate::integrations::github_app::{
    check_app, installation_token, GithubApp, TokenNarrowing, REFRESH_MARGIN,
};
use crate::integrations::GITHUB_PRIVATE_KEY;

/// The bundled catalog provider of the App's key (providers/github_app.toml).
const APP_PROVIDER: &str = "github_app";

/// What [`Vault::link_github_app`] links: the App, the installation to act on, its private
/// key and how far its installation tokens are narrowed. `Debug` shows no key.
#[derive(Clone)]
#[non_exhaustive]
pub struct GithubAppLink {
    /// The App's numeric id.
    pub app_id: String,
    /// The App's client id: when given, the JWTs' issuer (as GitHub recommends).
    pub client_id: Option<String>,
    /// The installation the agent acts through.
    pub installation_id: u64,
    /// The App's private key (the `.pem` GitHub generated).
    pub private_key_pem: SecretString,
    /// What the agent's installation tokens may reach (none: all the installation has).
    pub narrowing: TokenNarrowing,
}

impl GithubAppLink {
    /// A link with no client id and no narrowing.
    pub fn new(
        app_id: impl Into<String>,
        installation_id: u64,
        private_key_pem: SecretString,
    ) -> GithubAppLink {
        GithubAppLink {
            app_id: app_id.into(),
            client_id: None,
            installation_id,
            private_key_pem,
            narrowing: TokenNarrowing::none(),
        }
    }

    /// With the App's client id as the JWTs' issuer.
    pub fn client_id(mut self, client_id: impl Into<String>) -> GithubAppLink {
        self.client_id = Some(client_id.into());
        self
    }

    /// With the installation tokens narrowed.
    pub fn narrowing(mut self, narrowing: TokenNarrowing) -> GithubAppLink {
        self.narrowing = narrowing;
        self
    }
}

impl fmt::Debug for GithubAppLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubAppLink")
            .field("app_id", &self.app_id)
            .field("client_id", &self.client_id)
            .field("installation_id", &self.installation_id)
            .field("private_key_pem", &"[redacted]")
            .field("narrowing", &self.narrowing)
            .finish()
    }
}

/// One cached installation token.
struct Cached {
    token: SecretString,
    expires_at: Timestamp,
}

impl Cached {
    fn fresh_at(&self, now: Timestamp) -> bool {
        let margin = i64::try_from(REFRESH_MARGIN.as_millis()).unwrap_or(i64::MAX);
        now.as_millis() < self.expires_at.as_millis().saturating_sub(margin)
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The vault's installation tokens, one per agent (an agent has at most one GitHub
/// integration), each valid for an (installation id, key credential id, key version): a
/// cache hit needs no key, and a new key (a new link) misses. Minting is single-flight per
/// agent. `Debug` shows the number of entries only.
#[derive(Default)]
pub(crate) struct AppTokenCache {
    entries: std::sync::Mutex<HashMap<String, Entry>>,
}

struct Entry {
    installation_id: u64,
    key_id: CredentialId,
    key_version: u64,
    /// The App's slug, as the integration names it.
    username: String,
    slot: Slot,
}

impl AppTokenCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is one call: a poisoned lock still guards a consistent map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slot of `agent`'s token if it was minted for exactly this key (id and version),
    /// with the App's slug.
    fn slot_for_key(&self, agent: &str, key: &CredentialRecord) -> Option<(Slot, String)> {
        let map = self.map();
        let e = map.get(agent)?;
        (e.key_id == key.id && e.key_version == key.version)
            .then(|| (Arc::clone(&e.slot), e.username.clone()))
    }

    fn slot(
        &self,
        agent: &str,
        installation_id: u64,
        key: &CredentialRecord,
        username: &str,
    ) -> Slot {
        let mut map = self.map();
        if let Some(e) = map.get(agent) {
            if e.installation_id == installation_id
                && e.key_version == key.version
                && e.key_id == key.id
            {
                return Arc::clone(&e.slot);
            }
        }
        // New, or another key or version than the cached token's: start afresh.
        let slot = Slot::default();
        map.insert(
            agent.to_string(),
            Entry {
                installation_id,
                key_id: key.id.clone(),
                key_version: key.version,
                username: username.to_string(),
                slot: Arc::clone(&slot),
            },
        );
        slot
    }

    fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Forgets `agent`'s token (an unlink).
    pub(crate) fn invalidate(&self, agent: &str) {
        self.map().remove(agent);
    }
}

impl fmt::Debug for AppTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppTokenCache")
            .field("entries", &self.map().len())
            .finish()
    }
}

/// The narrowing as the integration record's `external_ids` keep it.
fn narrowing_ids(narrow: &TokenNarrowing, ids: &mut BTreeMap<String, String>) {
    if !narrow.repositories.is_empty() {
        ids.insert("repositories".into(), narrow.repositories.join(","));
    }
    if !narrow.repository_ids.is_empty() {
        let list: Vec<String> = narrow.repository_ids.iter().map(u64::to_string).collect();
        ids.insert("repository_ids".into(), list.join(","));
    }
    if !narrow.permissions.is_empty() {
        let list: Vec<String> = narrow
            .permissions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        ids.insert("permissions".into(), list.join(","));
    }
}

/// The App, installation and narrowing an App integration's record names.
struct AppIds {
    app_id: String,
    client_id: Option<String>,
    installation_id: u64,
    narrowing: TokenNarrowing,
}

fn app_ids(integration: &Integration) -> Result<AppIds> {
    let ids = &integration.external_ids;
    let bad = |what: &str| {
        Error::corrupt(
            describe(integration.provider, &integration.agent),
            format!("its record has no valid `{what}`"),
        )
    };
    let app_id = ids.get("app_id").cloned().ok_or_else(|| bad("app_id"))?;
    let installation_id = ids
        .get("installation_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("installation_id"))?;
    let list = |name: &str| -> Vec<&str> {
        ids.get(name)
            .map(|s| s.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    };
    let mut narrowing = TokenNarrowing::none();
    narrowing.repositories = list("repositories")
        .into_iter()
        .map(str::to_string)
        .collect();
    narrowing.repository_ids = list("repository_ids")
        .into_iter()
        .map(|s| s.parse().map_err(|_| bad("repository_ids")))
        .collect::<Result<_>>()?;
    for pair in list("permissions") {
        let (k, v) = pair.split_once('=').ok_or_else(|| bad("permissions"))?;
        narrowing.permissions.insert(k.to_string(), v.to_string());
    }
    Ok(AppIds {
        app_id,
        client_id: ids.get("client_id").cloned(),
        installation_id,
        narrowing,
    })
}

impl Vault {
    /// Links a GitHub App installation to `agent` (system admins): the App is checked with
    /// `GET /app` (a JWT signed with the key) and one installation token is minted (which
    /// proves the installation), then the key is stored as the agent's `github:private_key`
    /// (provider `github_app`, not agent-accessible) with the integration record
    /// (`auth_type` `app`, username the App's slug, `external_ids` `app_id`,
    /// `installation_id`, `client_id` and the narrowing) — all in one batch. A key GitHub
    /// refuses (`Config`), another App's id (`InvalidInput`), an unknown installation
    /// (`NotFound`) or an unreachable GitHub (`Transport`) stores nothing; refusals
    /// otherwise as [`Vault::link_github_token`].
    pub async fn link_github_app(
        &self,
        actor: &Principal,
        agent: &str,
        link: GithubAppLink,
    ) -> Result<Integration> {
        trace::op("link_github_app")
            .actor(actor)
            .run(async move {
                let provider = IntegrationProvider::Github;
                let scope = self
                    .authorize_integration(actor, Action::IntegrationLink, agent, provider)
                    .await?;
                let mut fields = BTreeMap::new();
                fields.insert(
                    "app_id".to_string(),
                    SecretString::from(link.app_id.trim().to_string()),
                );
                fields.insert(
                    "installation_id".to_string(),
                    SecretString::from(link.installation_id.to_string()),
                );
                fields.insert("private_key".to_string(), link.private_key_pem.clone());
                let secrets = vec![NewSecret {
                    name: GITHUB_PRIVATE_KEY,
                    provider: APP_PROVIDER,
                    handler_type: "",
                    fields,
                }];
                self.precheck_link(actor, agent, &scope, provider, &secrets)
                    .await?;
                let app = GithubApp::new(
                    link.app_id,
                    link.client_id,
                    link.installation_id,
                    link.private_key_pem,
                );
                let app = match app {
                    Ok(app) => app,
                    Err(e) => {
                        self.link_failed(actor, &scope, provider, &e).await;
                        return Err(e);
                    }
                };
                let http = self.http_for("linking a GitHub App")?;
                let base = self.inner.integrations.base_url(provider);
                let checked = async {
                    let info = check_app(http.as_ref(), base, &app).await?;
                    let minted =
                        installation_token(http.as_ref(), base, &app, &link.narrowing).await?;
                    self.minted(&minted.token);
                    Ok(info)
                }
                .await;
                let info = match checked {
                    Ok(info) => info,
                    Err(e) => {
                        self.link_failed(actor, &scope, provider, &e).await;
                        return Err(e);
                    }
                };
                let mut external_ids = BTreeMap::new();
                external_ids.insert("app_id".to_string(), app.app_id().to_string());
                external_ids.insert(
                    "installation_id".to_string(),
                    app.installation_id().to_string(),
                );
                if let Some(client_id) = app.client_id() {
                    external_ids.insert("client_id".to_string(), client_id.to_string());
                }
                narrowing_ids(&link.narrowing, &mut external_ids);
                let integration = Integration {
                    agent: agent.to_string(),
                    provider,
                    auth_type: AuthType::App,
                    username: info.slug,
                    external_ids,
                    linked_at: Timestamp::now(),
                    linked_by: actor.to_string(),
                };
                self.commit_integration(actor, agent, &scope, integration, secrets)
                    .await
            })
            .await
    }

    /// The credentials path of an App integration: reads the key's record (its id and
    /// version key the cache), then either serves the cached installation token or releases
    /// the key (audited, through [`Vault::release_integration`]) and mints one. Either way
    /// one `integration.credentials` row is durable before the token is handed back.
    ///
    /// The key's record is read as a resolve reads (the store's cache allowed the first
    /// time, exact reads stamped after a stale one).
    /// The credentials path's fast way for a GitHub App token this instance holds: the key
    /// credential read (metadata only, as a resolve reads it) and found to be the one the
    /// token was minted for, the token still fresh, the call audited. `None` sends the
    /// caller the full way (a miss, another key, a token near its end).
    pub(super) async fn app_credentials_cached(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
    ) -> Result<Option<AgentCredentials>> {
        if self.inner.app_tokens.is_empty() {
            return Ok(None);
        }
        let (Some(key), stamp) = self
            .inner
            .store
            .find_named(scope, GITHUB_PRIVATE_KEY)
            .await?
        else {
            return Ok(None);
        };
        let now = Timestamp::now();
        if !matches!(
            effective_state(&key, now),
            LifecycleState::Filled | LifecycleState::Valid
        ) {
            return Ok(None);
        }
        let Some((slot, username)) = self.inner.app_tokens.slot_for_key(agent, &key) else {
            return Ok(None);
        };
        let cached = slot.lock().await;
        let Some(token) = cached.as_ref().filter(|c| c.fresh_at(now)) else {
            return Ok(None);
        };
        let event = Vault::event(
            actor,
            Action::IntegrationCredentials,
            AuditTarget::credential(&key.id, &key.scope),
        )
        .detail("provider", IntegrationProvider::Github.as_str())
        .detail("auth_type", AuthType::App.as_str())
        .detail("name", key.name.clone())
        .detail("token", "cached");
        // Checked against the read: a key deleted (an unlink) or replaced since sends the
        // call round again, the full way.
        self.commit(Batch::events(vec![event]), stamp).await?;
        Ok(Some(AgentCredentials {
            agent: agent.to_string(),
            provider: IntegrationProvider::Github,
            auth_type: AuthType::App,
            username,
            token: token.token.clone(),
            expires_at: Some(token.expires_at),
            allowed_users: Vec::new(),
        }))
    }

    pub(super) async fn app_credentials(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        integration: Integration,
    ) -> Result<AgentCredentials> {
        let mut fresh = false;
        loop {
            match self
                .app_credentials_once(actor, agent, scope, &integration, fresh)
                .await
            {
                Err(e) if is_stale(&e) && !fresh => fresh = true,
                other => return other,
            }
        }
    }

    async fn app_credentials_once(
        &self,
        actor: &Principal,
        agent: &str,
        scope: &Scope,
        integration: &Integration,
        fresh: bool,
    ) -> Result<AgentCredentials> {
        let provider = integration.provider;
        let failed = |reason: &'static str| {
            Vault::event(
                actor,
                Action::IntegrationCredentials,
                AuditTarget::scope(scope),
            )
            .outcome(Outcome::Failure)
            .detail("provider", provider.as_str())
            .detail("auth_type", AuthType::App.as_str())
            .detail("reason", reason)
        };
        if provider != IntegrationProvider::Github {
            self.commit(
                Batch::events(vec![failed("app_mode")]),
                ReadStamp::UNCHECKED,
            )
            .await?;
            return Err(Error::config(format!(
                "{} says it is an App integration, which only GitHub has",
                describe(provider, agent)
            )));
        }
        let installation_id = integration
            .external_ids
            .get("installation_id")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::corrupt(
                    describe(provider, agent),
                    "its record has no valid `installation_id`",
                )
            })?;
        let (found, stamp) = if fresh {
            let (found, stamp) = self.named(scope, GITHUB_PRIVATE_KEY).await?;
            (found.map(Arc::new), stamp)
        } else {
            match self
                .inner
                .store
                .find_named(scope, GITHUB_PRIVATE_KEY)
                .await?
            {
                (Some(found), stamp) => (Some(found), stamp),
                // A missing key is confirmed by exact reads.
                (None, _) => {
                    let (found, stamp) = self.named(scope, GITHUB_PRIVATE_KEY).await?;
                    (found.map(Arc::new), stamp)
                }
            }
        };
        let Some(key) = found else {
            self.commit(Batch::events(vec![failed("secret_missing")]), stamp)
                .await?;
            return Err(Error::NotFound {
                what: format!(
                    "secret `{GITHUB_PRIVATE_KEY}` of agent `{}`",
                    printable(agent)
                ),
                hint: Some(format!(
                    "{} is linked but its key is gone; unlink it and link it again",
                    describe(provider, agent)
                )),
            });
        };
        let now = Timestamp::now();
        let state = effective_state(&key, now);
        if !matches!(state, LifecycleState::Filled | LifecycleState::Valid) {
            self.commit(Batch::events(vec![failed("unusable")]), stamp)
                .await?;
            return Err(Error::Unusable {
                what: key.describe(),
                state: state.as_str().into(),
            });
        }
        let event = |token: &'static str| {
            Vault::event(
                actor,
                Action::IntegrationCredentials,
                AuditTarget::credential(&key.id, &key.scope),
            )
            .detail("provider", provider.as_str())
            .detail("auth_type", AuthType::App.as_str())
            .detail("name", key.name.clone())
            .detail("token", token)
        };
        let slot = self
            .inner
            .app_tokens
            .slot(agent, installation_id, &key, &integration.username);
        let mut cached = slot.lock().await;
        let (token, expires_at) = match cached.as_ref().filter(|c| c.fresh_at(now)) {
            Some(c) => {
                self.commit(Batch::events(vec![event("cached")]), stamp)
                    .await?;
                (c.token.clone(), c.expires_at)
            }
            None => {
                // The key goes to the vault alone (to sign the JWT); the release's row
                // records the call.
                let mut opened = self
                    .release_integration(vec![(key.as_ref(), event("minted"))], stamp)
                    .await?;
                let pem = opened
                    .pop()
                    .and_then(|mut f| f.remove("private_key"))
                    .ok_or_else(|| {
                        Error::corrupt(
                            describe(provider, agent),
                            "its key has no `private_key` field",
                        )
                    })?;
                let minted = async {
                    // The rest of the App's ids, read on a miss alone.
                    let ids = app_ids(integration)?;
                    let app = GithubApp::new(ids.app_id, ids.client_id, ids.installation_id, pem)?;
                    let http = self.http_for("minting a GitHub App installation token")?;
                    let base = self.inner.integrations.base_url(provider);
                    installation_token(http.as_ref(), base, &app, &ids.narrowing).await
                }
                .await;
                let minted = match minted {
                    Ok(minted) => {
                        self.minted(&minted.token);
                        minted
                    }
                    Err(e) => {
                        self.commit(
                            Batch::events(vec![failed(reason_of(&e))]),
                            ReadStamp::UNCHECKED,
                        )
                        .await?;
                        return Err(e);
                    }
                };
                *cached = Some(Cached {
                    token: minted.token.clone(),
                    expires_at: minted.expires_at,
                });
                (minted.token, minted.expires_at)
            }
        };
        drop(cached);
        Ok(AgentCredentials {
            agent: agent.to_string(),
            provider,
            auth_type: AuthType::App,
            username: integration.username.clone(),
            token,
            expires_at: Some(expires_at),
            allowed_users: Vec::new(),
        })
    }
}
