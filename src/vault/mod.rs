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
mod builder;
mod credentials;
mod grants;
mod history;
mod integrations;
mod keys;
mod named;
pub mod oauth;
mod resolve;
mod trace;
mod types;
pub use keys::{
    ResealOptions, ResealProgress, ResealReport, ResealSelection, RewrapOptions, RewrapProgress,
    RewrapReport,
};
pub mod policy;
mod unseal;
mod verify;

pub use batch::{HeldFields, ResolveItem, ResolveManyError, Resolved};
pub use history::{CredentialVersion, VersionChange};
pub use integrations::{
    AgentCredentials, CredentialProviderInfo, DeprovisionReport, DeprovisionStep, GithubAppLink,
    ProvisioningReport, RecoveredIntent, RotationOutcome, RotationReport, UnlinkReport,
};
pub use named::{agent_override_name, NamedSecret, NamedSource, LLMPROXY_API_KEY, NAMED_SECRETS};
pub use oauth::{
    DeviceFlow, DeviceStart, DeviceStatus, OAuthEvent, OAuthStart, OAuthStarted, RefreshOutcome,
    RefreshPass, RefresherConfig, RefresherHandle,
};
pub use unseal::BlobCheck;
pub use verify::{Verification, VerifyResult};

pub use builder::VaultBuilder;
pub use credentials::transition_allowed;
pub use policy::{Action, Principal, Relation, Role};
use types::{info, info_owned};
pub use types::{
    CredentialFilter, CredentialInfo, CredentialRef, CredentialUpdate, NewCredential,
    ResolveContext, RevealedCredential,
};

/// Metadata key naming who disabled a credential they do not own (an admin's `invalid`);
/// kept by the vault, never taken from a caller. While it is set, only someone other than
/// the owner may lift the disable (see docs/ACCESS.md).
pub const DISABLED_BY: &str = "disabled_by";

/// Metadata key holding the names of a credential's secret fields (never their values),
/// comma-separated, so that metadata reads can say which fields a credential has without
/// opening it. Kept by the vault (set by `create` and by an `update` with new fields), never
/// taken from a caller, and shown as [`CredentialInfo::field_names`] rather than as
/// metadata. Credentials written before it existed have it from their next field update.
pub const FIELD_NAMES: &str = "field_names";

/// The metadata keys the vault keeps itself.
const KEPT_METADATA: [&str; 9] = [
    DISABLED_BY,
    FIELD_NAMES,
    oauth::OAUTH_CLIENT_ID,
    oauth::OAUTH_TOKEN_TYPE,
    oauth::OAUTH_SCOPE,
    integrations::KEPT_METADATA[0],
    integrations::KEPT_METADATA[1],
    integrations::KEPT_METADATA[2],
    integrations::KEPT_METADATA[3],
];

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
    /// Bound into every blob the vault seals ([`VaultBuilder::namespace`]).
    namespace: String,
    /// OAuth clients, refresh window, events and this instance's lease holder name.
    oauth: oauth::OAuthState,
    /// The integration providers' API base URLs.
    integrations: crate::integrations::IntegrationsConfig,
    /// GitHub App installation tokens minted for agents (`Vault::credentials_for`).
    app_tokens: integrations::AppTokenCache,
    /// Every value unsealed, minted or refreshed is registered here.
    scrubber: crate::scrub::Scrubber,
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
            .field("namespace", &self.inner.namespace)
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
    if metadata.contains_key(FIELD_NAMES) {
        return Err(Error::invalid(
            "metadata",
            format!(
                "`{FIELD_NAMES}` is kept by the vault (the names of the secret fields); remove it"
            ),
        ));
    }
    for key in [
        oauth::OAUTH_CLIENT_ID,
        oauth::OAUTH_TOKEN_TYPE,
        oauth::OAUTH_SCOPE,
    ] {
        if metadata.contains_key(key) {
            return Err(Error::invalid(
                "metadata",
                format!("`{key}` is kept by the vault (what the OAuth provider said); remove it"),
            ));
        }
    }
    for key in integrations::KEPT_METADATA {
        if metadata.contains_key(key) {
            return Err(Error::invalid(
                "metadata",
                format!("`{key}` is kept by the vault (a provisioned identity's ids); remove it"),
            ));
        }
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

    /// The vault's namespace ([`VaultBuilder::namespace`]), bound into every blob it seals.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The identity `record`'s blob is bound to in this vault: its own identity and bound
    /// fields, in the vault's namespace. Every seal, open and re-wrap the vault makes uses
    /// this, never [`CredentialRecord::identity`] (the default namespace).
    fn identity_of<'a>(&'a self, record: &'a CredentialRecord) -> crate::model::RecordIdentity<'a> {
        record.identity_in(&self.inner.namespace)
    }

    /// The key ring (active and retired master keys, data-key cache counters).
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The log scrubber this vault registers every plaintext value with (when it is
    /// unsealed, minted or refreshed): install [`crate::scrub::Scrubber::wrap`] as the log
    /// writer, or call [`crate::scrub::Scrubber::scrub`] before writing elsewhere.
    pub fn scrubber(&self) -> &crate::scrub::Scrubber {
        &self.inner.scrubber
    }

    /// The audit chain (checkpoints, verification).
    pub fn audit(&self) -> &AuditChain {
        &self.inner.audit
    }

    fn event(actor: &Principal, action: Action, target: AuditTarget) -> AuditEvent {
        AuditEvent::new(actor.name(), action, target)
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

    /// Claims the lease `key` for `holder` for `ttl` and commits the claim: the lease, or
    /// `None` when someone else holds it (or claimed it first).
    pub(crate) async fn claim_lease(
        &self,
        key: &crate::model::RecordKey,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<crate::store::lease::Lease>> {
        use crate::store::lease::Lease;
        let current = self.inner.store.record(key).await?;
        let Some(claim) = Lease::claim(key, current.as_ref(), holder, Timestamp::now(), ttl)?
        else {
            return Ok(None);
        };
        let batch = Batch {
            mutations: vec![claim.mutation],
            events: vec![],
        };
        match self.commit(batch, ReadStamp::UNCHECKED).await {
            Ok(_) => Ok(Some(claim.lease)),
            Err(e) if Lease::lost_race(&e) => Ok(None),
            Err(e) => Err(e),
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

    /// Writes `record` over the stored version `expected` with its audit `event`; refused
    /// (nothing written) when the stored version has moved on.
    async fn put_over(
        &self,
        record: &CredentialRecord,
        expected: u64,
        event: AuditEvent,
    ) -> Result<()> {
        let put = Mutation::Put {
            record: record.clone(),
            precondition: Precondition::IfVersion(expected),
        };
        self.commit_one(put, event).await
    }

    /// Seals `plain` into `record` for its current identity (version), with a fresh data key.
    async fn seal_into(&self, record: &mut CredentialRecord, plain: &[u8]) -> Result<()> {
        let sealed = self
            .inner
            .keys
            .seal(plain, &self.identity_of(record))
            .await?;
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
    /// [`Vault::load_for`] a change made against version `expected`: a credential that has
    /// moved on since is a version conflict (nothing is changed).
    async fn load_at(
        &self,
        actor: &Principal,
        action: Action,
        id: &CredentialId,
        expected: u64,
    ) -> Result<CredentialRecord> {
        let record = self.load_for(actor, action, id).await?;
        if record.version != expected {
            return Err(Error::VersionConflict {
                what: record.describe(),
                expected,
                found: Some(record.version),
            });
        }
        Ok(record)
    }

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
        trace::in_scope(&record.scope);
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

    /// The vault binds its namespace into every blob: a seal, open or re-wrap through
    /// `CredentialRecord::identity` (the default namespace) would ignore it.
    #[test]
    fn every_vault_identity_carries_the_vault_namespace() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join("vault");
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let flat: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(
                !flat.contains(".identity()"),
                "{} calls `.identity()`: use `self.identity_of(record)` so the vault's \
                 namespace is bound",
                path.display()
            );
        }
    }
}
