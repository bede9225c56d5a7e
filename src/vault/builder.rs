//! [`VaultBuilder`]: the store, master keys, handlers, providers, HTTP client, data-key
//! cache and audit checkpoints a vault is built from.

use super::*;

/// Builds a [`Vault`].
#[derive(Default)]
pub struct VaultBuilder {
    store: Option<Arc<dyn Store>>,
    key: Option<Arc<dyn KeyWrapper>>,
    retired: Vec<Arc<dyn KeyWrapper>>,
    handlers: Vec<Arc<dyn CredentialHandler>>,
    providers_dir: Option<PathBuf>,
    http: Option<Arc<dyn HttpTransport>>,
    dek_cache: Option<Option<crate::crypto::DekCacheConfig>>,
    checkpoints: Option<(Arc<dyn CheckpointSink>, u64)>,
    checkpoint_key: Option<Arc<dyn crate::crypto::CheckpointSigner>>,
    retired_checkpoint_keys: Vec<Arc<dyn crate::crypto::CheckpointSigner>>,
    namespace: Option<String>,
    oauth_clients: Option<crate::oauth::OAuthClients>,
    oauth_clients_file: Option<PathBuf>,
    refresh_window: Option<std::time::Duration>,
    integration_base_urls: Vec<(crate::integrations::IntegrationProvider, String)>,
    scrubber: Option<crate::scrub::Scrubber>,
}

impl fmt::Debug for VaultBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBuilder")
            .field("store", &self.store)
            .field("key", &self.key)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultBuilder {
    /// The log scrubber the vault registers every value it unseals, mints or refreshes
    /// with (a shared one, for several vaults or for a writer set up before the vault).
    /// Default: [`crate::scrub::Scrubber::global`].
    pub fn scrubber(mut self, scrubber: crate::scrub::Scrubber) -> Self {
        self.scrubber = Some(scrubber);
        self
    }

    /// Caches the payload keys of opened blobs (data keys unwrapped, payload keys derived)
    /// within `config`'s limits. The default, for every master key, is a cache with
    /// [`crate::crypto::DekCacheConfig::default`] (see docs/DEPLOYMENT.md, "The data-key
    /// cache").
    pub fn dek_cache(mut self, config: crate::crypto::DekCacheConfig) -> Self {
        self.dek_cache = Some(Some(config));
        self
    }

    /// No data-key cache, whatever the master key: every open unwraps.
    pub fn no_dek_cache(mut self) -> Self {
        self.dek_cache = Some(None);
        self
    }

    /// The vault's namespace, bound into every blob it seals (format 2), so that a blob
    /// sealed by another vault under the same master key never opens in this one, even at
    /// the same credential id, scope, owner and version. Default
    /// [`crate::DEFAULT_NAMESPACE`] (`"default"`).
    ///
    /// **Two vaults that share a master key (two environments, two tenants) must set
    /// distinct namespaces**, and a vault must keep its namespace for life: it comes from
    /// configuration, never from the database, and its blobs open under no other (the
    /// error names the namespace used). 1 to 1024 bytes of UTF-8 without control characters.
    /// Version-1 blobs, sealed before namespaces existed, open in any namespace until they
    /// are sealed again.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Uses this store (default: SQLite at `$STRONGROOM_HOME/vault.db`).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this master key (default: the `STRONGROOM_KMS` selection).
    pub fn key_wrapper(mut self, key: Arc<dyn KeyWrapper>) -> Self {
        self.key = Some(key);
        self
    }

    /// Adds a retired master key that still opens older blobs.
    pub fn retired_key(mut self, key: Arc<dyn KeyWrapper>) -> Self {
        self.retired.push(key);
        self
    }

    /// Registers a credential type of the host's own, next to the 19 built-in ones.
    pub fn handler(mut self, handler: Arc<dyn CredentialHandler>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// A folder of provider TOML files that add to or override the bundled catalog
    /// ([`Vault::reload_providers`] re-reads it while the host runs).
    pub fn providers_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.providers_dir = Some(dir.into());
        self
    }

    /// Hands a checkpoint of the audit chain to `sink` each time the vault's commits have
    /// grown the chain by `every_n_rows` rows (1: after every commit), so that a host that
    /// keeps them out of the database writers' reach can later catch a cut tail or a
    /// rewrite ([`Vault::verify_audit_with`]). Checkpoints are authenticated with the
    /// checkpoint key given to [`VaultBuilder::checkpoint_key`], or else the master key's
    /// ([`KeyWrapper::checkpoint_signer`]: an HMAC key derived from a local key, the MAC key
    /// configured on an AWS or Google Cloud key, the Vault transit key's HMAC, an Azure Key
    /// Vault signature); `build` fails with a configuration error when there is none.
    pub fn checkpoints(mut self, sink: Arc<dyn CheckpointSink>, every_n_rows: u64) -> Self {
        self.checkpoints = Some((sink, every_n_rows));
        self
    }

    /// Authenticates new checkpoints with `key` rather than the master key's checkpoint key:
    /// a [`crate::crypto::AuditKey`] of the host's, or any [`crate::crypto::CheckpointSigner`]
    /// (for a master key in a KMS that makes no MACs, or to keep checkpoints apart from the
    /// master key). Checkpoints made earlier with a master key of the ring still check.
    pub fn checkpoint_key(mut self, key: Arc<dyn crate::crypto::CheckpointSigner>) -> Self {
        self.checkpoint_key = Some(key);
        self
    }

    /// Adds an older checkpoint key, which still checks the checkpoints it made.
    pub fn retired_checkpoint_key(mut self, key: Arc<dyn crate::crypto::CheckpointSigner>) -> Self {
        self.retired_checkpoint_keys.push(key);
        self
    }

    /// The HTTP client for live verification (and, later, OAuth and cloud KMS calls).
    pub fn http(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.http = Some(transport);
        self
    }

    /// Registers the OAuth client (id, secret, redirect URI) of `provider`, for its flows
    /// and refreshes. Replaces one read from [`VaultBuilder::oauth_clients_file`].
    pub fn oauth_client(
        mut self,
        provider: impl Into<String>,
        client: crate::oauth::OAuthClient,
    ) -> Self {
        self.oauth_clients
            .get_or_insert_with(crate::oauth::OAuthClients::new)
            .insert(provider, client);
        self
    }

    /// Reads OAuth clients from this file (`oauth_providers.toml`: one table per provider;
    /// it must not be readable by group or others). A missing file registers none.
    pub fn oauth_clients_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.oauth_clients_file = Some(path.into());
        self
    }

    /// Refreshes OAuth tokens that expire sooner than this (default 10 minutes), in the
    /// background refresher and when a resolve meets one.
    pub fn refresh_window(mut self, window: std::time::Duration) -> Self {
        self.refresh_window = Some(window);
        self
    }

    /// The API base URL of an integration provider: a GitHub Enterprise Server
    /// (`https://HOST/api/v3`), a self-managed GitLab (`https://HOST/api/v4`), a local Bot API
    /// server. Defaults: `https://api.github.com`, `https://gitlab.com/api/v4`,
    /// `https://api.telegram.org`. Checked by [`VaultBuilder::build`] (an http(s) URL with a
    /// host).
    pub fn integration_base_url(
        mut self,
        provider: crate::integrations::IntegrationProvider,
        url: impl Into<String>,
    ) -> Self {
        self.integration_base_urls.push((provider, url.into()));
        self
    }

    /// Builds the vault.
    pub async fn build(self) -> Result<Vault> {
        let mut integrations = crate::integrations::IntegrationsConfig::default();
        for (provider, url) in &self.integration_base_urls {
            integrations.set_base_url(*provider, url)?;
        }
        let namespace = self
            .namespace
            .unwrap_or_else(|| crate::model::DEFAULT_NAMESPACE.to_string());
        crate::model::validate_namespace(&namespace)?;
        let key = match self.key {
            Some(key) => key,
            None => crate::crypto::key_wrapper_from_env_with(self.http.clone())?,
        };
        let store = match self.store {
            Some(store) => store,
            None => default_store()?,
        };
        let cache = self
            .dek_cache
            .unwrap_or_else(|| Some(crate::crypto::DekCacheConfig::default()));
        let mut keys = KeyRing::new(key);
        for retired in self.retired {
            keys = keys.try_with_retired(retired)?;
        }
        if let Some(config) = cache {
            keys = keys.with_dek_cache(config);
        }
        let mut handlers = HandlerRegistry::builtin();
        for handler in self.handlers {
            handlers.register(handler)?;
        }
        let catalog = Catalog::load(&handlers, self.providers_dir.as_deref())?;
        let bundled = Catalog::bundled(&handlers);
        for problem in catalog.problems() {
            tracing::warn!(%problem, "provider file skipped");
        }
        let mut audit = AuditChain::new(store.clone(), keys.clone());
        if let Some(signer) = self.checkpoint_key {
            audit = audit.with_checkpoint_key(signer);
        }
        for signer in self.retired_checkpoint_keys {
            audit = audit.with_retired_checkpoint_key(signer);
        }
        if let Some((sink, every)) = self.checkpoints {
            if let Err(e) = audit.checkpoint_key_id().await {
                let active = keys.active();
                return Err(Error::config(format!(
                    "audit checkpoints need a key that authenticates them, and the {} master \
                     key `{}` offers none ({e}); configure the service's MAC key on it (see \
                     docs/DEPLOYMENT.md, \"Audit checkpoints with a cloud master key\"), give \
                     the vault a checkpoint key of its own (VaultBuilder::checkpoint_key, an \
                     AuditKey), or build the vault without VaultBuilder::checkpoints",
                    active.backend_id().name(),
                    active.key_id()
                )));
            }
            audit = audit.with_sink(sink, every);
        }
        let mut clients = match &self.oauth_clients_file {
            Some(path) => crate::oauth::OAuthClients::load(path)?,
            None => crate::oauth::OAuthClients::new(),
        };
        if let Some(given) = self.oauth_clients {
            for provider in given.providers() {
                if let Some(client) = given.get(provider) {
                    clients.insert(provider, client.clone());
                }
            }
        }
        let oauth = oauth::OAuthState::new(
            clients,
            self.refresh_window.unwrap_or(oauth::DEFAULT_REFRESH_WINDOW),
        );
        Ok(Vault {
            inner: Arc::new(Inner {
                oauth,
                audit,
                store,
                keys,
                handlers,
                catalog: RwLock::new(Arc::new(catalog)),
                bundled,
                providers_dir: self.providers_dir,
                http: self.http,
                namespace,
                integrations,
                app_tokens: Default::default(),
                scrubber: self
                    .scrubber
                    .unwrap_or_else(|| crate::scrub::Scrubber::global().clone()),
            }),
        })
    }
}

#[cfg(feature = "sqlite")]
fn default_store() -> Result<Arc<dyn Store>> {
    let home = crate::crypto::default_home_from_env()?;
    Ok(Arc::new(crate::store::SqliteStore::open(
        home.join("vault.db"),
    )?))
}

#[cfg(not(feature = "sqlite"))]
fn default_store() -> Result<Arc<dyn Store>> {
    Err(Error::config(
        "no store given and the `sqlite` feature is off; pass one with VaultBuilder::store",
    ))
}
