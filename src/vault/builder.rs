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
    namespace: Option<String>,
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
    /// rewrite ([`Vault::verify_audit_with`]). Checkpoints are authenticated with a key
    /// derived from the master key, so `build` fails with a configuration error for a
    /// master key that cannot derive keys (the cloud KMS backends today).
    pub fn checkpoints(mut self, sink: Arc<dyn CheckpointSink>, every_n_rows: u64) -> Self {
        self.checkpoints = Some((sink, every_n_rows));
        self
    }

    /// The HTTP client for live verification (and, later, OAuth and cloud KMS calls).
    pub fn http(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.http = Some(transport);
        self
    }

    /// Builds the vault.
    pub async fn build(self) -> Result<Vault> {
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
        if let Some((sink, every)) = self.checkpoints {
            let active = keys.active();
            if let Err(e) = crate::audit::checkpoint_key(active.as_ref()).await {
                return Err(Error::config(format!(
                    "audit checkpoints need a master key that can derive keys, and the {} key \
                     `{}` cannot ({e}); use a local master key (STRONGROOM_KMS=env or file), \
                     or build the vault without VaultBuilder::checkpoints",
                    active.backend_id().name(),
                    active.key_id()
                )));
            }
            audit = audit.with_sink(sink, every);
        }
        Ok(Vault {
            inner: Arc::new(Inner {
                audit,
                store,
                keys,
                handlers,
                catalog: RwLock::new(Arc::new(catalog)),
                bundled,
                providers_dir: self.providers_dir,
                http: self.http,
                namespace,
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
