//! The `Vault` façade: every call names the acting principal, is decided by the policy
//! table, and becomes one atomic batch (the change and its audit event). Reads that release
//! secret values are audited before the values are handed back.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::audit::{
    AuditChain, AuditEvent, AuditTarget, Checkpoint, CheckpointSink, Outcome, VerifyReport,
    CHECKPOINT_KEY_PURPOSE,
};
use crate::catalog::{Catalog, CatalogProblem, Provider};
use crate::crypto::{KeyRing, KeyWrapper, LocalKey};
use crate::error::{Error, Result};
use crate::handlers::{CredentialHandler, HandlerRegistry};
use crate::model::{
    validate_id, validate_owner_id, CredentialId, CredentialRecord, Grant, LifecycleState, Scope,
    ScopeKind, Timestamp,
};
use crate::store::{
    stale_read, Batch, CommitReceipt, ListFilter, MemoryStore, Mutation, Precondition, ReadStamp,
    Store,
};
use crate::transport::HttpTransport;

mod batch;
mod keys;
pub use keys::{RewrapOptions, RewrapProgress, RewrapReport};
pub mod policy;
mod unseal;
mod verify;

pub use batch::{HeldFields, ResolveItem, ResolveManyError, Resolved};
pub use verify::{Verification, VerifyResult};

pub use policy::{Action, Principal, Relation, Role};

/// Metadata key naming who disabled a credential they do not own (an admin's `invalid`);
/// kept by the vault, never taken from a caller. While it is set, only someone other than
/// the owner may lift the disable (see docs/ACCESS.md).
pub const DISABLED_BY: &str = "disabled_by";

/// What `create` needs.
#[derive(Debug)]
#[non_exhaustive]
pub struct NewCredential {
    /// The `ref` name, unique within scope and owner.
    pub name: String,
    /// Where it lives.
    pub scope: Scope,
    /// Provider name (`openai`, …).
    pub provider: String,
    /// Handler type (`api_key`, …).
    pub handler_type: String,
    /// Secret fields.
    pub fields: BTreeMap<String, SecretString>,
    /// Non-secret metadata.
    pub metadata: BTreeMap<String, String>,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// When it stops being usable.
    pub expires_at: Option<Timestamp>,
}

impl NewCredential {
    /// A credential with these secret fields and no metadata.
    pub fn new(
        name: impl Into<String>,
        scope: Scope,
        provider: impl Into<String>,
        handler_type: impl Into<String>,
        fields: BTreeMap<String, SecretString>,
    ) -> NewCredential {
        NewCredential {
            name: name.into(),
            scope,
            provider: provider.into(),
            handler_type: handler_type.into(),
            fields,
            metadata: BTreeMap::new(),
            agent_accessible: false,
            expires_at: None,
        }
    }
}

/// Changes for `update`; unset parts stay as they are. New fields make a new version with a
/// new data key and put the credential back to `filled`.
#[derive(Debug, Default)]
pub struct CredentialUpdate {
    /// Replacement secret fields.
    pub fields: Option<BTreeMap<String, SecretString>>,
    /// Replacement metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// New `agent_accessible`.
    pub agent_accessible: Option<bool>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<Timestamp>>,
}

/// A credential's metadata as a caller sees it (never secret values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    /// Stable id.
    pub id: CredentialId,
    /// The `ref` name.
    pub name: String,
    /// Where it lives.
    pub scope: Scope,
    /// Provider name.
    pub provider: String,
    /// Handler type.
    pub handler_type: String,
    /// Lifecycle state as of now (`expired` once `expires_at` has passed).
    pub state: LifecycleState,
    /// Non-secret metadata.
    pub metadata: BTreeMap<String, String>,
    /// Whether agents may use it directly.
    pub agent_accessible: bool,
    /// Version (pass it back to `update`/`delete`).
    pub version: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Expiry, if any.
    pub expires_at: Option<Timestamp>,
    /// Names of the secret fields (not their values).
    pub field_names: Vec<String>,
}

/// A credential with its secret values. `Debug` shows field names only.
pub struct RevealedCredential {
    /// Its metadata.
    pub info: CredentialInfo,
    /// Its secret fields.
    pub fields: BTreeMap<String, SecretString>,
}

impl fmt::Debug for RevealedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevealedCredential")
            .field("info", &self.info)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A reference from an app config: `{ref, scope, provider?}`. The compact form (a bare
/// name) means `per_user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// The credential's name.
    pub name: String,
    /// The one scope kind it is looked up in.
    pub scope: ScopeKind,
    /// When given, the stored credential's provider must match.
    pub provider: Option<String>,
}

impl CredentialRef {
    /// The compact form: `per_user`, any provider.
    pub fn compact(name: impl Into<String>) -> CredentialRef {
        CredentialRef {
            name: name.into(),
            scope: ScopeKind::PerUser,
            provider: None,
        }
    }

    /// The explicit form.
    pub fn explicit(
        name: impl Into<String>,
        scope: ScopeKind,
        provider: Option<String>,
    ) -> CredentialRef {
        CredentialRef {
            name: name.into(),
            scope,
            provider,
        }
    }
}

/// Where a reference is resolved: the app and the user of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveContext {
    /// The app.
    pub app: String,
    /// The session's user.
    pub user: String,
}

impl ResolveContext {
    /// The context a principal resolves in: its own app and user. A context passed to
    /// [`Vault::resolve`] must be exactly this one.
    pub fn of(principal: &Principal) -> Option<ResolveContext> {
        Some(ResolveContext {
            app: principal.app()?.to_string(),
            user: principal.user()?.to_string(),
        })
    }

    /// Is this the principal's own context?
    fn belongs_to(&self, principal: &Principal) -> bool {
        principal.app() == Some(self.app.as_str()) && principal.user() == Some(self.user.as_str())
    }

    /// The concrete scope a reference of kind `kind` names in this context.
    pub fn scope_for(&self, kind: ScopeKind) -> Result<Scope> {
        match kind {
            ScopeKind::SystemWide => Ok(Scope::SystemWide),
            ScopeKind::PerAppShared => Scope::per_app_shared(self.app.clone()),
            ScopeKind::PerUser => Scope::per_user(self.user.clone()),
            ScopeKind::PerAppPerUser => {
                Scope::per_app_per_user(self.app.clone(), self.user.clone())
            }
            ScopeKind::PerAgent => Err(Error::invalid(
                "scope",
                "per_agent credentials are not resolved through app references",
            )),
        }
    }
}

/// Which credentials `list` returns; each set field must match. Results hold only what the
/// principal may see.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    /// Exactly this scope.
    pub scope: Option<Scope>,
    /// Any scope of this kind.
    pub scope_kind: Option<ScopeKind>,
    /// This provider.
    pub provider: Option<String>,
    /// This state (as of now).
    pub state: Option<LifecycleState>,
}

/// Is `from → to` a lifecycle transition the vault allows?
pub fn transition_allowed(from: LifecycleState, to: LifecycleState) -> bool {
    use LifecycleState::*;
    matches!(
        (from, to),
        (Filled, Valid | Expired | Invalid | Pending)
            | (Pending, Valid | Expired | Invalid)
            | (Valid, Expired | Invalid | Pending)
            | (Expired, Valid | Invalid | Pending)
    )
}

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
}

impl fmt::Debug for VaultBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBuilder")
            .field("store", &self.store)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl VaultBuilder {
    /// Caches unwrapped data keys within `config`'s limits. The default is a cache with
    /// [`crate::crypto::DekCacheConfig::default`] when the master key is remote (a KMS), and
    /// none for a local key (its unwrap costs less than a lookup).
    pub fn dek_cache(mut self, config: crate::crypto::DekCacheConfig) -> Self {
        self.dek_cache = Some(Some(config));
        self
    }

    /// No data-key cache, whatever the master key: every open unwraps.
    pub fn no_dek_cache(mut self) -> Self {
        self.dek_cache = Some(None);
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
        let key = match self.key {
            Some(key) => key,
            None => crate::crypto::key_wrapper_from_env_with(self.http.clone())?,
        };
        let store = match self.store {
            Some(store) => store,
            None => default_store()?,
        };
        let remote = key.backend_id() != crate::crypto::BackendId::Local;
        let cache = self
            .dek_cache
            .unwrap_or_else(|| remote.then(crate::crypto::DekCacheConfig::default));
        let mut keys = self
            .retired
            .into_iter()
            .fold(KeyRing::new(key), KeyRing::with_retired);
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
            if let Err(e) = active.derive_key(CHECKPOINT_KEY_PURPOSE).await {
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

struct Inner {
    store: Arc<dyn Store>,
    keys: KeyRing,
    audit: AuditChain,
    handlers: HandlerRegistry,
    catalog: RwLock<Arc<Catalog>>,
    /// The bundled providers alone: what a non-owner's live check is sent to.
    bundled: Catalog,
    providers_dir: Option<PathBuf>,
    http: Option<Arc<dyn HttpTransport>>,
}

/// The credential vault. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("store", &self.inner.store)
            .field("keys", &self.inner.keys)
            .finish()
    }
}

/// How many times a resolve starts over because what it read changed under it.
const STALE_RETRIES: u32 = 16;

fn is_stale(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            kind: crate::StoreErrorKind::Stale,
            ..
        }
    )
}

fn effective_state(record: &CredentialRecord, now: Timestamp) -> LifecycleState {
    match (record.state, expires_at(record)) {
        (LifecycleState::Filled | LifecycleState::Valid, Some(at)) if at <= now => {
            LifecycleState::Expired
        }
        (state, _) => state,
    }
}

fn expires_at(record: &CredentialRecord) -> Option<Timestamp> {
    record.expires_at
}

fn info(record: &CredentialRecord, field_names: Vec<String>) -> CredentialInfo {
    CredentialInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        scope: record.scope.clone(),
        provider: record.provider.clone(),
        handler_type: record.handler_type.clone(),
        state: effective_state(record, Timestamp::now()),
        metadata: record.metadata.clone(),
        agent_accessible: record.agent_accessible,
        version: record.version,
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: expires_at(record),
        field_names,
    }
}

/// Serialises secret fields as a JSON object into a buffer sized up front (so no copy is
/// left behind by growth) and wiped on drop.
fn encode_fields(fields: &BTreeMap<String, SecretString>) -> Result<Zeroizing<Vec<u8>>> {
    let worst: usize = fields
        .iter()
        .map(|(k, v)| 6 * (k.len() + v.expose_secret().len()) + 8)
        .sum::<usize>()
        + 2;
    let mut buf = Zeroizing::new(Vec::with_capacity(worst));
    let view: BTreeMap<&str, &str> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    serde_json::to_writer(&mut *buf, &view).map_err(|e| Error::invalid("fields", e.to_string()))?;
    Ok(buf)
}

fn check_fields(fields: &BTreeMap<String, SecretString>) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::invalid(
            "fields",
            "a credential needs at least one secret field (for example -f api_key=...)",
        ));
    }
    for name in fields.keys() {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::invalid(
                "field name",
                format!("`{name}` must be non-empty and use only letters, digits, `_` and `-`"),
            ));
        }
    }
    Ok(())
}

/// A caller-supplied text for an audit detail or a message: control characters escaped,
/// at most 256 characters kept.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(256)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 256 {
        out.push('…');
    }
    out
}

/// Refuses metadata keys the vault keeps itself.
fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.contains_key(DISABLED_BY) {
        return Err(Error::invalid(
            "metadata",
            format!("`{DISABLED_BY}` is kept by the vault (set_state records it); remove it"),
        ));
    }
    if metadata.contains_key("expires_at") {
        return Err(Error::invalid(
            "metadata",
            "`expires_at` is not metadata: set the credential's expiry with \
             `NewCredential::expires_at` or `CredentialUpdate::expires_at`",
        ));
    }
    Ok(())
}

/// Is `actor` the credential's owner, in the sense that it may read the secret itself? An
/// owner may send its own secret anywhere; anyone else acts on it only within limits.
fn is_owner(actor: &Principal, scope: &Scope) -> bool {
    policy::allows(
        actor.role(),
        Action::Reveal,
        Relation::of(actor, Some(scope)),
    )
}

impl Vault {
    /// A builder (defaults: SQLite under `$STRONGROOM_HOME`, key from `STRONGROOM_KMS`).
    pub fn builder() -> VaultBuilder {
        VaultBuilder::default()
    }

    /// A vault in memory with a random key, for test suites.
    pub async fn in_memory() -> Result<Vault> {
        Vault::builder()
            .store(Arc::new(MemoryStore::new()))
            .key_wrapper(Arc::new(LocalKey::generate()?))
            .build()
            .await
    }

    /// The credential types this vault knows.
    pub fn handlers(&self) -> &HandlerRegistry {
        &self.inner.handlers
    }

    /// The provider catalog as loaded now (bundled providers plus the drop-in folder).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A provider by name.
    pub fn provider(&self, name: &str) -> Result<Arc<Provider>> {
        self.catalog().require(name).cloned()
    }

    /// Re-reads the drop-in providers folder, replacing the catalog in one step (no restart
    /// of the host). Files that cannot be used are returned, each with file and line, and
    /// skipped; every other provider stays usable. A provider whose file has become unusable
    /// since the last load keeps its previous definition until the file is fixed (its
    /// credentials stay usable). With no folder configured, this reloads the bundled
    /// providers only. A folder that cannot be read is an error and keeps the catalog as it
    /// was.
    pub fn reload_providers(&self) -> Result<Vec<CatalogProblem>> {
        let mut catalog = Catalog::load(&self.inner.handlers, self.inner.providers_dir.as_deref())?;
        let mut slot = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner());
        catalog.carry_over(&slot);
        let problems = catalog.problems().to_vec();
        *slot = Arc::new(catalog);
        Ok(problems)
    }

    /// Checks a field set against its provider (known, prefix checks, required fields) and
    /// the provider's handler; returns the handler type to store. An empty `handler_type`
    /// means the provider's.
    fn check_against_catalog(
        &self,
        provider: &str,
        handler_type: &str,
        fields: &BTreeMap<String, SecretString>,
    ) -> Result<String> {
        let catalog = self.catalog();
        let provider = catalog.require(provider)?;
        if !handler_type.is_empty() && handler_type != provider.handler_type {
            return Err(Error::invalid(
                "handler type",
                format!(
                    "provider `{}` takes `{}` credentials, not `{handler_type}`",
                    provider.name, provider.handler_type
                ),
            ));
        }
        let handler = self.inner.handlers.require(&provider.handler_type)?;
        handler.validate(fields)?;
        provider.check_fields(fields)?;
        Ok(provider.handler_type.clone())
    }

    /// The expiry a token type carries in its fields (Unix seconds), as a timestamp.
    fn expiry_from_fields(
        &self,
        handler_type: &str,
        fields: &BTreeMap<String, SecretString>,
    ) -> Option<Timestamp> {
        let handler = self.inner.handlers.get(handler_type)?;
        let rule = handler.expiry();
        let seconds: i64 = fields
            .get(rule.expiry_field()?)?
            .expose_secret()
            .parse()
            .ok()?;
        Some(Timestamp(seconds.checked_mul(1000)?))
    }

    /// The key ring (active and retired master keys, data-key cache counters).
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The audit chain (checkpoints, verification).
    pub fn audit(&self) -> &AuditChain {
        &self.inner.audit
    }

    fn event(actor: &Principal, action: Action, target: AuditTarget) -> AuditEvent {
        AuditEvent::new(actor.to_string(), action, target)
    }

    /// Commits `batch` — checked against `stamp` (see [`Store::commit_checked`]) unless it
    /// is [`ReadStamp::UNCHECKED`] — and hands the receipt to the audit chain, which makes
    /// a checkpoint when one is due. Every commit the vault makes goes through here.
    async fn commit(&self, batch: Batch, stamp: ReadStamp) -> Result<CommitReceipt> {
        let store = &self.inner.store;
        let receipt = if stamp == ReadStamp::UNCHECKED {
            store.commit(batch).await?
        } else {
            store.commit_checked(batch, stamp).await?
        };
        self.checkpoint_after(&receipt).await;
        Ok(receipt)
    }

    /// Gives the audit chain a commit's receipt. A checkpoint that cannot be made is
    /// logged, not returned: the batch is durable already, and an error would invite the
    /// caller to repeat a change that was made.
    async fn checkpoint_after(&self, receipt: &CommitReceipt) {
        if let Err(e) = self.inner.audit.after_commit(receipt).await {
            tracing::warn!(error = %e, "audit checkpoint not made");
        }
    }

    /// Commits one mutation with the audit event that records it.
    async fn commit_one(&self, mutation: Mutation, event: AuditEvent) -> Result<()> {
        let batch = Batch {
            mutations: vec![mutation],
            events: vec![event],
        };
        self.commit(batch, ReadStamp::UNCHECKED).await.map(drop)
    }

    /// Seals `plain` into `record` for its current identity (version), with a fresh data key.
    async fn seal_into(&self, record: &mut CredentialRecord, plain: &[u8]) -> Result<()> {
        let sealed = self.inner.keys.seal(plain, &record.identity()).await?;
        record.key_id = sealed.key_id;
        record.sealed = sealed.bytes;
        Ok(())
    }

    /// Checks the policy; a denial is audited (durably) before the error is returned.
    async fn authorize(
        &self,
        actor: &Principal,
        action: Action,
        scope: Option<&Scope>,
        target: AuditTarget,
        what: &str,
    ) -> Result<()> {
        actor.validate()?;
        let relation = Relation::of(actor, scope);
        if policy::allows(actor.role(), action, relation) {
            return Ok(());
        }
        let event = Vault::event(actor, action, target).outcome(Outcome::Denied);
        self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await?;
        Err(Error::PermissionDenied {
            actor: actor.to_string(),
            action: action.as_str().to_string(),
            target: what.to_string(),
        })
    }

    /// What a caller is told of a credential it cannot have: the same for an id that does
    /// not exist and for one the caller may not even see.
    fn not_found(id: &CredentialId) -> Error {
        Error::NotFound {
            what: format!("credential {id}"),
            hint: None,
        }
    }

    /// Loads a credential and authorises `action` on it. A denial is audited with the full
    /// target; a principal who may not see the credential's metadata is told what it would
    /// be told of an id that does not exist, so ids cannot be probed.
    async fn load_for(
        &self,
        actor: &Principal,
        action: Action,
        id: &CredentialId,
    ) -> Result<CredentialRecord> {
        actor.validate()?;
        let Some(record) = self.inner.store.get(id).await? else {
            return Err(Vault::not_found(id));
        };
        let target = AuditTarget::credential(&record.id, &record.scope);
        let denied = self
            .authorize(
                actor,
                action,
                Some(&record.scope),
                target,
                &record.describe(),
            )
            .await;
        match denied {
            Ok(()) => Ok(record),
            Err(Error::PermissionDenied { .. })
                if !policy::allows(
                    actor.role(),
                    Action::ReadMetadata,
                    Relation::of(actor, Some(&record.scope)),
                ) =>
            {
                Err(Vault::not_found(id))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a credential (version 1, state `filled`).
    ///
    /// The permission is checked first (a denial is audited); a scope whose ids the vault
    /// refuses ([`Scope::validate`]) is left out of the denial's audit row, so that nothing
    /// unreadable is ever written.
    pub async fn create(&self, actor: &Principal, new: NewCredential) -> Result<CredentialInfo> {
        let scope_ok = new.scope.validate();
        let target = match scope_ok {
            Ok(()) => AuditTarget::scope(&new.scope),
            Err(_) => AuditTarget::none(),
        };
        let what = format!(
            "credential `{}` ({})",
            printable(&new.name),
            printable(&new.scope.to_string())
        );
        self.authorize(actor, Action::Create, Some(&new.scope), target, &what)
            .await?;
        scope_ok?;
        validate_id("credential name", &new.name)?;
        validate_id("provider", &new.provider)?;
        if !new.handler_type.is_empty() {
            validate_id("handler type", &new.handler_type)?;
        }
        check_fields(&new.fields)?;
        check_metadata(&new.metadata)?;
        let handler_type =
            self.check_against_catalog(&new.provider, &new.handler_type, &new.fields)?;
        let now = Timestamp::now();
        let expires_at = new
            .expires_at
            .or_else(|| self.expiry_from_fields(&handler_type, &new.fields));
        let mut record = CredentialRecord {
            id: CredentialId::generate(),
            name: new.name,
            scope: new.scope,
            provider: new.provider,
            handler_type,
            state: LifecycleState::Filled,
            metadata: new.metadata,
            agent_accessible: new.agent_accessible,
            version: 1,
            created_at: now,
            updated_at: now,
            expires_at,
            key_id: String::new(),
            sealed: Vec::new(),
        };
        let plain = encode_fields(&new.fields)?;
        self.seal_into(&mut record, &plain).await?;
        let event = Vault::event(
            actor,
            Action::Create,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("name", record.name.clone())
        .detail("provider", record.provider.clone());
        let field_names = new.fields.keys().cloned().collect();
        self.commit_one(
            Mutation::Put {
                record: record.clone(),
                precondition: Precondition::CreateOnly,
            },
            event,
        )
        .await?;
        Ok(info(&record, field_names))
    }

    /// Updates a credential at `expected_version`, making a new version (new fields get a
    /// new data key; the blob is re-sealed for the new version either way).
    pub async fn update(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: u64,
        update: CredentialUpdate,
    ) -> Result<CredentialInfo> {
        let mut record = self.load_for(actor, Action::Update, id).await?;
        if record.version != expected_version {
            return Err(Error::VersionConflict {
                what: record.describe(),
                expected: expected_version,
                found: Some(record.version),
            });
        }
        if let Some(metadata) = &update.metadata {
            check_metadata(metadata)?;
        }
        let previous = record.clone();
        let new_fields = match update.fields {
            Some(fields) => {
                check_fields(&fields)?;
                self.check_against_catalog(&record.provider, &record.handler_type, &fields)?;
                if update.expires_at.is_none() {
                    if let Some(at) = self.expiry_from_fields(&record.handler_type, &fields) {
                        record.expires_at = Some(at);
                    }
                }
                // New fields start over as `filled` — unless someone other than the owner
                // disabled the credential: that stays until they (or another admin) lift it.
                if !record.metadata.contains_key(DISABLED_BY) {
                    record.state = LifecycleState::Filled;
                }
                Some(fields)
            }
            None => None,
        };
        if let Some(metadata) = update.metadata {
            let kept: Vec<(String, String)> = [DISABLED_BY]
                .into_iter()
                .filter_map(|k| record.metadata.remove_entry(k))
                .collect();
            record.metadata = metadata;
            record.metadata.extend(kept);
        }
        if let Some(flag) = update.agent_accessible {
            record.agent_accessible = flag;
        }
        if let Some(expires_at) = update.expires_at {
            record.expires_at = expires_at;
        }
        record.version += 1;
        record.updated_at = Timestamp::now();
        match &new_fields {
            Some(fields) => {
                let plain = encode_fields(fields)?;
                self.seal_into(&mut record, &plain).await?;
            }
            // The same fields, bound to the new version.
            None => self.reseal(&previous, &mut record).await?,
        }
        let event = Vault::event(
            actor,
            Action::Update,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("version", record.version.to_string());
        self.commit_one(
            Mutation::Put {
                record: record.clone(),
                precondition: Precondition::IfVersion(expected_version),
            },
            event,
        )
        .await?;
        let names = new_fields
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        Ok(info(&record, names))
    }

    /// Deletes a credential (and its grants); `expected_version` guards against deleting a
    /// version the caller has not seen.
    pub async fn delete(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: Option<u64>,
    ) -> Result<()> {
        let record = self.load_for(actor, Action::Delete, id).await?;
        let event = Vault::event(
            actor,
            Action::Delete,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("name", record.name.clone());
        self.commit_one(
            Mutation::Delete {
                id: record.id.clone(),
                precondition: Precondition::IfVersion(expected_version.unwrap_or(record.version)),
            },
            event,
        )
        .await?;
        Ok(())
    }

    /// A credential's metadata.
    pub async fn get(&self, actor: &Principal, id: &CredentialId) -> Result<CredentialInfo> {
        let record = self.load_for(actor, Action::ReadMetadata, id).await?;
        Ok(info(&record, Vec::new()))
    }

    /// Credentials matching `filter` that `actor` may see, in id order.
    pub async fn list(
        &self,
        actor: &Principal,
        filter: &CredentialFilter,
    ) -> Result<Vec<CredentialInfo>> {
        actor.validate()?;
        if let Some(scope) = &filter.scope {
            scope.validate()?;
        }
        let store_filter = ListFilter {
            scope: filter.scope.clone(),
            scope_kind: filter.scope_kind,
            provider: filter.provider.clone(),
            ..ListFilter::default()
        };
        let records = self.inner.store.list(&store_filter).await?;
        Ok(records
            .iter()
            .filter(|r| {
                policy::allows(
                    actor.role(),
                    Action::ReadMetadata,
                    Relation::of(actor, Some(&r.scope)),
                )
            })
            .map(|r| info(r, Vec::new()))
            .filter(|i| filter.state.is_none_or(|s| s == i.state))
            .collect())
    }

    /// Opens a record's fields and audits the release before returning them (see
    /// [`Vault::release`]).
    async fn release_revealed(
        &self,
        actor: &Principal,
        action: Action,
        record: &CredentialRecord,
        detail: Option<(&str, String)>,
        stamp: ReadStamp,
    ) -> Result<RevealedCredential> {
        let mut event = Vault::event(
            actor,
            action,
            AuditTarget::credential(&record.id, &record.scope),
        );
        if let Some((k, v)) = detail {
            event = event.detail(k, v);
        }
        let fields = self.release_one(actor, record, event, stamp).await?;
        let names = fields.keys().cloned().collect();
        Ok(RevealedCredential {
            info: info(record, names),
            fields,
        })
    }

    /// A credential's secret values, for a person allowed to read them. Audited.
    pub async fn reveal(&self, actor: &Principal, id: &CredentialId) -> Result<RevealedCredential> {
        let record = self.load_for(actor, Action::Reveal, id).await?;
        self.release_revealed(actor, Action::Reveal, &record, None, ReadStamp::UNCHECKED)
            .await
    }

    /// Resolves an app reference in a session context: looks the name up in exactly the
    /// scope the reference names (no fallback), checks the provider, the grant of a per-user
    /// credential to the app, and the lifecycle state. Audited.
    ///
    /// The lookups may be answered from the store's cache; the audit row is committed only
    /// if nothing they read has changed since (see [`ReadStamp`]), and the resolve starts
    /// over when something has, so a resolve never returns a value that was already
    /// replaced, revoked or deleted when it was called.
    ///
    /// `ctx` must be the principal's own app and user ([`ResolveContext::of`]): the app
    /// whose grant a per-user credential needs is the acting runtime's, never one a caller
    /// names. A context that disagrees is refused with `PermissionDenied` and audited.
    pub async fn resolve(
        &self,
        actor: &Principal,
        reference: &CredentialRef,
        ctx: &ResolveContext,
    ) -> Result<RevealedCredential> {
        self.check_context(actor, ctx).await?;
        let scope = ctx.scope_for(reference.scope)?;
        self.resolve_in(actor, reference, &scope, Some(("app", ctx.app.clone())))
            .await
    }

    /// An agent's own per-agent secret, by name: for an [`Principal::Agent`] only, and only
    /// a credential marked agent-accessible (anything else reaches an agent through the
    /// audited credentials path). The same checks and audit as [`Vault::resolve`].
    pub async fn agent_secret(&self, actor: &Principal, name: &str) -> Result<RevealedCredential> {
        actor.validate()?;
        let Some(agent) = actor.agent() else {
            self.authorize(
                actor,
                Action::Resolve,
                None,
                AuditTarget::none(),
                "agent secrets (for agent principals only)",
            )
            .await?;
            // No role may resolve outside a scope, so the line above has returned the
            // audited denial; should the table ever change, agents only all the same.
            return Err(Error::PermissionDenied {
                actor: actor.to_string(),
                action: Action::Resolve.as_str().into(),
                target: "agent secrets (for agent principals only)".into(),
            });
        };
        let scope = Scope::per_agent(agent)?;
        let reference = CredentialRef::explicit(name, ScopeKind::PerAgent, None);
        self.resolve_in(actor, &reference, &scope, None).await
    }

    /// A resolve of `reference` in `scope`, once the context is settled: the policy (a
    /// denial audited), then lookups and the release, started over while what was read
    /// changes under it.
    async fn resolve_in(
        &self,
        actor: &Principal,
        reference: &CredentialRef,
        scope: &Scope,
        detail: Option<(&str, String)>,
    ) -> Result<RevealedCredential> {
        let relation = Relation::of(actor, Some(scope));
        if !policy::allows(actor.role(), Action::Resolve, relation) {
            let what = format!("credential `{}` ({scope})", reference.name);
            self.authorize(
                actor,
                Action::Resolve,
                Some(scope),
                AuditTarget::scope(scope),
                &what,
            )
            .await?;
        }
        // The first attempt may read from the store's cache; after that, every read is
        // fresh. An error that writes no audit row (not found, wrong provider, unusable)
        // is never given on a cached read alone: it sends the resolve round again.
        let mut attempts = 0;
        loop {
            let fresh = attempts > 0;
            let attempt = async {
                let (record, stamp) = self
                    .lookup(actor, Action::Resolve, reference, scope, fresh)
                    .await?;
                self.release_revealed(actor, Action::Resolve, &record, detail.clone(), stamp)
                    .await
            };
            match attempt.await {
                Err(e) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                other => return other,
            }
        }
    }

    /// Refuses (and audits) a resolve whose context is not the principal's own app and user.
    pub(crate) async fn check_context(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
    ) -> Result<()> {
        actor.validate()?;
        if ctx.belongs_to(actor) {
            return Ok(());
        }
        let mut event = Vault::event(actor, Action::Resolve, AuditTarget::none())
            .outcome(Outcome::Denied)
            .detail("reason", "the context is not the principal's own")
            .detail("context_app", printable(&ctx.app))
            .detail("context_user", printable(&ctx.user));
        if let Some(app) = actor.app() {
            event = event.detail("app", app);
        }
        if let Some(user) = actor.user() {
            event = event.detail("user", user);
        }
        self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await?;
        Err(Error::PermissionDenied {
            actor: actor.to_string(),
            action: Action::Resolve.as_str().into(),
            target: format!(
                "credentials of app `{}`, user `{}`: a principal resolves only for its own app \
                 and user (pass ResolveContext::of(principal))",
                printable(&ctx.app),
                printable(&ctx.user)
            ),
        })
    }

    /// The checks of a resolve (scope-strict lookup, provider, grant, state) without the
    /// release: the record and the stamp of what was read. A missing grant is audited here,
    /// as a denied `action` (a resolve or an injection).
    /// On a cached read (`fresh` false), errors that write no audit row come back as stale
    /// reads, so the caller confirms them with fresh reads.
    pub(crate) async fn lookup(
        &self,
        actor: &Principal,
        action: Action,
        reference: &CredentialRef,
        scope: &Scope,
        fresh: bool,
    ) -> Result<(Arc<CredentialRecord>, ReadStamp)> {
        let store = &self.inner.store;
        // A fresh read decides from exact reads, stamped by a stamped read taken just
        // before: the checked commit then lands only if nothing changed since that stamp,
        // so nothing changed between the exact read and the commit either.
        let (found, mut stamp) = if fresh {
            let (_, before) = store.find_named(scope, &reference.name).await?;
            let found = store
                .list(&ListFilter {
                    scope: Some(scope.clone()),
                    name: Some(reference.name.clone()),
                    limit: Some(1),
                    ..ListFilter::default()
                })
                .await?;
            (found.into_iter().next().map(Arc::new), before)
        } else {
            store.find_named(scope, &reference.name).await?
        };
        // Errors below that write no audit row are confirmed by a fresh read first.
        let unconfirmed = |e: Error| if fresh { e } else { stale_read() };
        let Some(record) = found else {
            return Err(unconfirmed(Error::NotFound {
                what: format!("credential `{}` ({scope})", reference.name),
                hint: Some(format!(
                    "scopes are strict — create it in {} or change the ref's scope",
                    reference.scope
                )),
            }));
        };
        if let Some(provider) = &reference.provider {
            if *provider != record.provider {
                return Err(unconfirmed(Error::invalid(
                    "provider",
                    format!(
                        "the ref asks for provider `{provider}` but {} is a `{}` credential",
                        record.describe(),
                        record.provider
                    ),
                )));
            }
        }
        if matches!(record.scope, Scope::PerUser { .. }) {
            let (grants, grants_stamp) = if fresh {
                let (_, before) = store.grants_stamped(&record.id).await?;
                (store.grants(&record.id).await?, before)
            } else {
                store.grants_stamped(&record.id).await?
            };
            stamp = stamp.and(grants_stamp);
            // The grant must be the acting principal's app's (the caller checked that `ctx`
            // is the principal's own; this does not rest on it).
            let app = actor.app().unwrap_or_default();
            if !grants.iter().any(|g| g.app == app && g.is_active()) {
                let event = Vault::event(
                    actor,
                    action,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .outcome(Outcome::Denied)
                .detail("reason", "no grant");
                self.commit(Batch::events(vec![event]), stamp).await?;
                return Err(Error::PermissionDenied {
                    actor: actor.to_string(),
                    action: action.as_str().into(),
                    target: format!(
                        "{}: app `{}` holds no grant (the user adds one with grant-add)",
                        record.describe(),
                        app
                    ),
                });
            }
        }
        let state = effective_state(&record, Timestamp::now());
        if !matches!(state, LifecycleState::Filled | LifecycleState::Valid) {
            return Err(unconfirmed(Error::Unusable {
                what: record.describe(),
                state: state.as_str().into(),
            }));
        }
        Ok((record, stamp))
    }

    /// Moves a credential through its lifecycle (see [`transition_allowed`]). Audited.
    pub async fn set_state(
        &self,
        actor: &Principal,
        id: &CredentialId,
        expected_version: u64,
        to: LifecycleState,
        reason: &str,
    ) -> Result<CredentialInfo> {
        let mut record = self.load_for(actor, Action::SetState, id).await?;
        if record.version != expected_version {
            return Err(Error::VersionConflict {
                what: record.describe(),
                expected: expected_version,
                found: Some(record.version),
            });
        }
        let from = effective_state(&record, Timestamp::now());
        let owner = is_owner(actor, &record.scope);
        let disabled_by = record.metadata.get(DISABLED_BY).cloned();
        // Lifting a disable that someone other than the owner set: only a non-owner with
        // the right to set the state may, back to `filled`.
        let lift = disabled_by.is_some() && from == LifecycleState::Invalid;
        if lift && owner {
            let event = Vault::event(
                actor,
                Action::SetState,
                AuditTarget::credential(&record.id, &record.scope),
            )
            .outcome(Outcome::Denied)
            .detail("reason", "disabled by an admin")
            .detail("disabled_by", disabled_by.clone().unwrap_or_default());
            self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                .await?;
            return Err(Error::PermissionDenied {
                actor: actor.to_string(),
                action: Action::SetState.as_str().into(),
                target: format!(
                    "{}: it was disabled by {}; only an admin may lift that (set_state to filled)",
                    record.describe(),
                    disabled_by.unwrap_or_default()
                ),
            });
        }
        let allowed = if lift {
            to == LifecycleState::Filled
        } else {
            transition_allowed(from, to)
        };
        if !allowed {
            return Err(Error::invalid(
                "state",
                format!("{} cannot go from {from} to {to}", record.describe()),
            ));
        }
        let previous = record.clone();
        if lift {
            record.metadata.remove(DISABLED_BY);
        } else if to == LifecycleState::Invalid && !owner {
            record
                .metadata
                .insert(DISABLED_BY.into(), actor.to_string());
        }
        record.state = to;
        record.version += 1;
        record.updated_at = Timestamp::now();
        // The blob is bound to the version: seal it again for the new one.
        self.reseal(&previous, &mut record).await?;
        let event = Vault::event(
            actor,
            Action::SetState,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("from", from.as_str())
        .detail("to", to.as_str())
        .detail("reason", reason);
        self.commit_one(
            Mutation::Put {
                record: record.clone(),
                precondition: Precondition::IfVersion(expected_version),
            },
            event,
        )
        .await?;
        Ok(info(&record, Vec::new()))
    }

    /// The grant rows of a per-user credential (active and revoked).
    pub async fn grants(&self, actor: &Principal, id: &CredentialId) -> Result<Vec<Grant>> {
        let record = self.load_for(actor, Action::GrantList, id).await?;
        self.inner.store.grants(&record.id).await
    }

    fn per_user_only(record: &CredentialRecord) -> Result<()> {
        match record.scope {
            Scope::PerUser { .. } => Ok(()),
            _ => Err(Error::invalid(
                "credential",
                format!(
                    "{} is not per_user; only per_user credentials take grants",
                    record.describe()
                ),
            )),
        }
    }

    /// Grants `app` the use of a per-user credential. Audited.
    pub async fn grant_add(
        &self,
        actor: &Principal,
        id: &CredentialId,
        app: &str,
    ) -> Result<Grant> {
        let record = self.load_for(actor, Action::GrantAdd, id).await?;
        validate_owner_id("app id", app)?;
        Vault::per_user_only(&record)?;
        let grant = Grant {
            credential_id: record.id.clone(),
            app: app.to_string(),
            granted_by: actor.to_string(),
            granted_at: Timestamp::now(),
            revoked_at: None,
            revoked_by: None,
        };
        let event = Vault::event(
            actor,
            Action::GrantAdd,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("app", app);
        self.commit_one(
            Mutation::PutGrant {
                grant: grant.clone(),
            },
            event,
        )
        .await?;
        Ok(grant)
    }

    /// Revokes `app`'s grant: kept as history, or deleted with `hard`. Audited.
    pub async fn grant_revoke(
        &self,
        actor: &Principal,
        id: &CredentialId,
        app: &str,
        hard: bool,
    ) -> Result<()> {
        let record = self.load_for(actor, Action::GrantRevoke, id).await?;
        Vault::per_user_only(&record)?;
        let grants = self.inner.store.grants(&record.id).await?;
        let Some(mut grant) = grants.into_iter().find(|g| g.app == app) else {
            return Err(Error::NotFound {
                what: format!("grant of {} to app `{app}`", record.describe()),
                hint: None,
            });
        };
        let event = Vault::event(
            actor,
            Action::GrantRevoke,
            AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("app", app)
        .detail("hard", hard.to_string());
        let mutation = if hard {
            Mutation::DeleteGrant {
                credential_id: record.id.clone(),
                app: app.to_string(),
            }
        } else if !grant.is_active() {
            // Already revoked: the first revocation's who and when stand; the repeat is
            // recorded and changes nothing.
            let event = event.detail(
                "already_revoked_by",
                grant.revoked_by.clone().unwrap_or_default(),
            );
            self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                .await?;
            return Ok(());
        } else {
            grant.revoked_at = Some(Timestamp::now());
            grant.revoked_by = Some(actor.to_string());
            Mutation::PutGrant { grant }
        };
        self.commit_one(mutation, event).await?;
        Ok(())
    }

    /// Verifies the audit chain (system admins and viewers) against a checkpoint the host
    /// kept (the newest one, from the sink given to [`VaultBuilder::checkpoints`]): besides
    /// what [`Vault::verify_audit`] finds, rows cut from the tail up to the checkpoint, an
    /// emptied chain, and rows rewritten with their hashes recomputed are reported, and a
    /// forged checkpoint too. The checkpoint's master key must be in the key ring (active
    /// or retired).
    pub async fn verify_audit_with(
        &self,
        actor: &Principal,
        checkpoint: &Checkpoint,
    ) -> Result<VerifyReport> {
        self.authorize_unscoped(actor, Action::AuditVerify).await?;
        self.inner
            .audit
            .verify_against(std::slice::from_ref(checkpoint))
            .await
    }

    /// Verifies the audit chain (system admins and viewers). The chain alone cannot show a
    /// cut tail or a rewrite with recomputed hashes: [`Vault::verify_audit_with`] can.
    pub async fn verify_audit(&self, actor: &Principal) -> Result<VerifyReport> {
        self.authorize(
            actor,
            Action::AuditVerify,
            None,
            AuditTarget::none(),
            "the audit chain",
        )
        .await?;
        self.inner.audit.verify().await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every commit the vault makes must go through `Vault::commit`, which feeds the audit
    /// chain its receipt (checkpoints): a direct call of the store's `commit` in the vault
    /// or the config injector fails this test.
    #[test]
    fn every_vault_commit_goes_through_the_one_helper() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for dir in ["vault", "config"] {
            for entry in std::fs::read_dir(src.join(dir)).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("read file");
                // The code, not its tests (this one names what it looks for).
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let flat: String = code.chars().filter(|c| !c.is_whitespace()).collect();
                for needle in [
                    ".store.commit(",
                    ".store.commit_checked(",
                    "store().commit(",
                    "store().commit_checked(",
                ] {
                    assert!(
                        !flat.contains(needle),
                        "{} calls `{needle}`: commit through Vault::commit so the audit chain \
                         sees the receipt",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 8, "found the sources");
    }
}
