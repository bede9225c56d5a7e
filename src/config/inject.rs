//! The injector: a [`Deployment`] resolves an app's shared references once at deploy and
//! keeps them (re-reading a credential when it has changed), resolves the user-scoped ones
//! at each session start, and writes the decrypted fields into the config tree at the
//! slots' inject paths. Every injection writes one audit row.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::{Manifest, ManifestEntry};
use crate::error::{Error, Result};
use crate::handlers::Fields;
use crate::model::ScopeKind;
use crate::vault::{
    CredentialInfo, HeldFields, Principal, ResolveContext, ResolveItem, Resolved, Vault,
};

mod tree;

pub use tree::InjectedConfig;
use tree::{fill_templates, to_json, write_fields};
pub(crate) use tree::{path_segments, PathSeg};

/// A deployed app: its manifest, the config tree, and the shared-scope credentials resolved
/// at deploy.
pub struct Deployment {
    vault: Vault,
    manifest: Arc<Manifest>,
    base: Vec<Json>,
    held: Mutex<HashMap<usize, HeldFields>>,
    dev_fallback: bool,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("app", &self.manifest.app)
            .field("entries", &self.manifest.entries.len())
            .field("dev_fallback", &self.dev_fallback)
            .finish()
    }
}

/// The principal that resolves shared references at deploy: the app's runtime, for no
/// user in particular (`runtime:APP:*`).
fn deploy_principal(app: &str) -> Principal {
    Principal::AppRuntime {
        app: app.to_string(),
        user: "*".into(),
    }
}

impl Deployment {
    /// Deploys a compiled app on `vault`: resolves its `system_wide` and `per_app_shared`
    /// references once (audited as `credential.inject` by `runtime:APP:*`) and checks each
    /// against its slot (provider and handler type of the stored credential). Errors name
    /// the block, slot, ref and scope. Uses only the vault's public API
    /// ([`Vault::resolve_many`]).
    pub async fn new(vault: &Vault, manifest: Manifest) -> Result<Deployment> {
        let base = manifest.docs.iter().map(to_json).collect();
        let deployment = Deployment {
            vault: vault.clone(),
            manifest: Arc::new(manifest),
            base,
            held: Mutex::new(HashMap::new()),
            dev_fallback: false,
        };
        deployment.refresh_shared().await?;
        Ok(deployment)
    }

    /// Development mode: when a block's credential cannot be resolved, its inline
    /// `{{env.X}}` templates are filled from the environment instead of failing the
    /// session. Off by default; never use it in production.
    pub fn with_dev_fallback(mut self, enabled: bool) -> Deployment {
        self.dev_fallback = enabled;
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Re-resolves the shared references now (a session start also re-reads any that
    /// changed).
    pub async fn refresh_shared(&self) -> Result<()> {
        let app = self.manifest.app.clone();
        let actor = deploy_principal(&app);
        let ctx = ResolveContext {
            app,
            user: "*".into(),
        };
        let indices: Vec<usize> = self
            .manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.at_deploy())
            .map(|(i, _)| i)
            .collect();
        if indices.is_empty() {
            return Ok(());
        }
        let released = self.resolve(&actor, &ctx, &indices, false).await?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (i, r) in indices.into_iter().zip(released) {
            held.insert(
                i,
                HeldFields {
                    id: r.info.id.clone(),
                    version: r.info.version,
                    fields: r.fields,
                },
            );
        }
        Ok(())
    }

    /// Starts a session for `user`: resolves the user-scoped references, takes the shared
    /// ones from the deploy (re-reading a credential that changed since), checks each
    /// against its slot, and returns the config with every slot's fields injected. One
    /// audit row per injection, committed together. A missing, unusable or mismatched
    /// credential fails the session with an error naming block, slot, ref and scope.
    pub async fn start_session(&self, user: &str) -> Result<InjectedConfig> {
        let indices: Vec<usize> = (0..self.manifest.entries.len()).collect();
        self.inject(user, &indices).await
    }

    /// Resolves one slot of one block for `user` (`block` as shown in the manifest, e.g.
    /// `agents[assistant].brain`): the credential's fields. Audited.
    pub async fn resolve_slot(&self, user: &str, block: &str, slot: &str) -> Result<Fields> {
        let Some(i) = self
            .manifest
            .entries
            .iter()
            .position(|e| e.block.to_string() == block && e.slot.id == slot)
        else {
            return Err(Error::NotFound {
                what: format!("slot `{slot}` of block {block}"),
                hint: Some(format!(
                    "the app's blocks with credentials are: {}",
                    self.manifest
                        .entries
                        .iter()
                        .map(|e| format!("{} ({})", e.block, e.slot.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        };
        let actor = self.session_principal(user)?;
        let ctx = ResolveContext {
            app: self.manifest.app.clone(),
            user: user.to_string(),
        };
        let mut released = self.resolve(&actor, &ctx, &[i], true).await?;
        let r = released
            .pop()
            .ok_or_else(|| Error::config("nothing resolved"))?;
        Ok((*r.fields).clone())
    }

    fn session_principal(&self, user: &str) -> Result<Principal> {
        crate::model::validate_id("user", user)?;
        Ok(Principal::AppRuntime {
            app: self.manifest.app.clone(),
            user: user.to_string(),
        })
    }

    /// Resolves entries `indices` in one audited batch, reusing held shared fields when the
    /// record has not changed (`reuse`), and checks each against its slot.
    async fn resolve(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
        indices: &[usize],
        reuse: bool,
    ) -> Result<Vec<Resolved>> {
        let entries: Vec<&ManifestEntry> =
            indices.iter().map(|&i| &self.manifest.entries[i]).collect();
        let held: Vec<Option<HeldFields>> = if reuse {
            let guard = self.held.lock().unwrap_or_else(|p| p.into_inner());
            indices.iter().map(|i| guard.get(i).cloned()).collect()
        } else {
            vec![None; indices.len()]
        };
        let items: Vec<ResolveItem<'_>> = entries
            .iter()
            .zip(&held)
            .map(|(e, held)| ResolveItem {
                reference: &e.reference,
                details: vec![("block", e.block.to_string()), ("slot", e.slot.id.clone())],
                held: held.clone(),
            })
            .collect();
        let resolved = self
            .vault
            .resolve_many(actor, ctx, &items)
            .await
            .map_err(|failed| entry_error(entries[failed.index], failed.error))?;
        for (k, r) in resolved.iter().enumerate() {
            check_against_slot(entries[k], &r.info).map_err(|e| entry_error(entries[k], e))?;
            // A shared credential that changed since the deploy: keep the new fields.
            if reuse && entries[k].at_deploy() {
                let changed = held[k].as_ref().is_none_or(|h| h.version != r.info.version);
                if changed {
                    self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        indices[k],
                        HeldFields {
                            id: r.info.id.clone(),
                            version: r.info.version,
                            fields: r.fields.clone(),
                        },
                    );
                }
            }
        }
        Ok(resolved)
    }

    async fn inject(&self, user: &str, indices: &[usize]) -> Result<InjectedConfig> {
        let actor = self.session_principal(user)?;
        let ctx = ResolveContext {
            app: self.manifest.app.clone(),
            user: user.to_string(),
        };
        let mut config = InjectedConfig {
            docs: self.base.clone(),
            injected: Vec::new(),
        };
        if indices.is_empty() {
            return Ok(config);
        }
        match self.resolve(&actor, &ctx, indices, true).await {
            Ok(released) => {
                for (k, r) in released.iter().enumerate() {
                    let entry = &self.manifest.entries[indices[k]];
                    write_fields(&mut config, entry, &r.fields)?;
                }
                Ok(config)
            }
            Err(e) if self.dev_fallback => {
                // Development mode: resolve what can be resolved one by one, and fill the
                // inline templates of the blocks that cannot.
                tracing::warn!(error = %e, "credential injection failed; using inline templates (development mode)");
                for &i in indices {
                    let entry = &self.manifest.entries[i];
                    match self.resolve(&actor, &ctx, &[i], true).await {
                        Ok(mut r) => {
                            let r = r.pop().ok_or_else(|| Error::config("nothing resolved"))?;
                            write_fields(&mut config, entry, &r.fields)?;
                        }
                        Err(e) if entry.has_fallback => fill_templates(&mut config, entry, &e)?,
                        Err(e) => return Err(e),
                    }
                }
                Ok(config)
            }
            Err(e) => Err(e),
        }
    }
}

/// Wraps an error with the block, slot, ref and scope it concerns, keeping its kind (a
/// KMS outage stays `KeyUnavailable`, a busy store stays a store error) so the host can
/// tell what to retry.
fn entry_error(entry: &ManifestEntry, e: Error) -> Error {
    let at = entry.describe();
    match e {
        Error::NotFound { what, .. } => Error::NotFound {
            what: format!("{at}: {what}"),
            hint: Some(match entry.reference.scope {
                ScopeKind::PerUser | ScopeKind::PerAppPerUser => {
                    "the user stores it (credentials create) or the app config names another ref"
                        .into()
                }
                _ => "an admin stores it (credentials admin-create) or the app config names \
                      another ref"
                    .into(),
            }),
        },
        Error::PermissionDenied {
            actor,
            action,
            target,
        } => Error::PermissionDenied {
            actor,
            action,
            target: format!("{target} ({at})"),
        },
        Error::Unusable { what, state } => Error::Unusable {
            what: format!("{at}: {what}"),
            state,
        },
        Error::InvalidInput { field, reason } => Error::InvalidInput {
            field,
            reason: format!("{reason} ({at})"),
        },
        Error::DecryptFailed { what } => Error::DecryptFailed {
            what: format!("{at}: {what}"),
        },
        Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
            key_id,
            reason: format!("{reason} ({at})"),
        },
        Error::Store { kind, message, .. } => Error::store(kind, format!("{at}: {message}")),
        other => other,
    }
}

/// The stored credential's provider and handler type against the slot.
fn check_against_slot(entry: &ManifestEntry, record: &CredentialInfo) -> Result<()> {
    let slot = &entry.slot;
    if !slot.providers.is_empty() && !slot.providers.contains(&record.provider) {
        return Err(Error::invalid(
            "provider",
            format!(
                "the stored credential is a `{}` credential, which slot `{}` does not accept",
                record.provider, slot.id
            ),
        ));
    }
    if !slot.handler_types.is_empty() && !slot.handler_types.contains(&record.handler_type) {
        return Err(Error::invalid(
            "handler type",
            format!(
                "the stored credential is of type `{}`, which slot `{}` does not accept",
                record.handler_type, slot.id
            ),
        ));
    }
    Ok(())
}
