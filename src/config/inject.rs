//! The injector: a [`Deployment`] resolves an app's shared references once at deploy and
//! keeps them (re-reading a credential when it has changed), resolves the user-scoped ones
//! at each session start, and writes the decrypted fields into the config tree at the
//! slots' inject paths. Every injection writes one audit row.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use secrecy::ExposeSecret;
use serde_json::Value as Json;
use zeroize::Zeroize;

use super::yaml::{Node, Style, Value};
use super::{Manifest, ManifestEntry, Seg};
use crate::error::{Error, Result};
use crate::handlers::Fields;
use crate::model::ScopeKind;
use crate::vault::{
    CredentialInfo, HeldFields, Principal, ResolveContext, ResolveItem, Resolved, Vault,
};

/// A segment of an inject path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathSeg<'a> {
    /// A key as written.
    Literal(&'a str),
    /// `{name}`: the value of the credential's field `name`.
    Field(&'a str),
}

/// Splits `{block}.config.api_key` into the segments after `{block}`.
pub(crate) fn path_segments(template: &str) -> std::result::Result<Vec<PathSeg<'_>>, String> {
    let Some(rest) = template.strip_prefix("{block}") else {
        return Err(format!(
            "inject path `{template}` must start with `{{block}}` (the consuming block)"
        ));
    };
    if rest.is_empty() {
        return Err(format!(
            "inject path `{template}` names no key inside the block"
        ));
    }
    let Some(rest) = rest.strip_prefix('.') else {
        return Err(format!(
            "inject path `{template}`: `{{block}}` must be followed by `.`"
        ));
    };
    rest.split('.')
        .map(|seg| {
            if seg.is_empty() {
                Err(format!("inject path `{template}` has an empty segment"))
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    Err(format!(
                        "inject path `{template}`: `{seg}` is not a field placeholder"
                    ))
                } else {
                    Ok(PathSeg::Field(name))
                }
            } else if seg.contains(['{', '}']) {
                Err(format!(
                    "inject path `{template}`: a placeholder must be a whole segment (`{seg}`)"
                ))
            } else {
                Ok(PathSeg::Literal(seg))
            }
        })
        .collect()
}

/// A YAML node as JSON: plain scalars typed (null, booleans, numbers), quoted ones strings,
/// `<<` merge keys applied (a mapping's own keys first, then the merged mappings' in
/// order), as the walks that find the blocks see the data.
fn to_json(node: &Node) -> Json {
    match &node.value {
        Value::Map(_) => Json::Object(
            node.merged_entries()
                .into_iter()
                .map(|e| {
                    (
                        e.key.as_str().unwrap_or_default().to_string(),
                        to_json(e.value),
                    )
                })
                .collect(),
        ),
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Scalar(s, Style::Plain) => match s.as_str() {
            "~" | "null" | "Null" | "NULL" | "" => Json::Null,
            "true" | "True" | "TRUE" => Json::Bool(true),
            "false" | "False" | "FALSE" => Json::Bool(false),
            _ => s
                .parse::<i64>()
                .map(Json::from)
                .ok()
                .or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Json::from)
                })
                .unwrap_or_else(|| Json::String(s.clone())),
        },
        Value::Scalar(s, _) => Json::String(s.clone()),
    }
}

/// A config tree with decrypted fields written in. `Debug` and [`InjectedConfig::masked`]
/// show `********` in place of every injected value; the values are zeroised on drop.
pub struct InjectedConfig {
    docs: Vec<Json>,
    /// (document, path) of every injected value.
    injected: Vec<(usize, Vec<String>)>,
}

impl InjectedConfig {
    /// The documents, with secret values in clear: hand them to the agent runtime.
    pub fn expose(&self) -> &[Json] {
        &self.docs
    }

    /// The documents with every injected value replaced by `********`.
    pub fn masked(&self) -> Vec<Json> {
        let mut docs = self.docs.clone();
        for (doc, path) in &self.injected {
            if let Some(v) = pointer_mut(&mut docs[*doc], path) {
                *v = Json::String("********".into());
            }
        }
        docs
    }

    /// How many values were injected.
    pub fn injected_count(&self) -> usize {
        self.injected.len()
    }
}

impl fmt::Debug for InjectedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectedConfig")
            .field("docs", &self.masked())
            .finish()
    }
}

impl Drop for InjectedConfig {
    fn drop(&mut self) {
        for (doc, path) in &self.injected {
            if let Some(Json::String(s)) = pointer_mut(&mut self.docs[*doc], path) {
                s.zeroize();
            }
        }
    }
}

fn pointer_mut<'a>(root: &'a mut Json, path: &[String]) -> Option<&'a mut Json> {
    let mut node = root;
    for key in path {
        node = match node {
            Json::Object(map) => map.get_mut(key)?,
            Json::Array(items) => items.get_mut(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

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

/// The JSON path of a block: keys and indices.
fn block_json_path(entry: &ManifestEntry) -> Vec<String> {
    entry
        .block
        .segs
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i, _) => i.to_string(),
        })
        .collect()
}

/// Writes `fields` at the slot's inject paths (every field at `{block}.config.NAME` when the
/// slot names none). Missing mappings on the way are created.
fn write_fields(config: &mut InjectedConfig, entry: &ManifestEntry, fields: &Fields) -> Result<()> {
    let default;
    let inject = if entry.slot.inject.is_empty() {
        default = fields
            .keys()
            .map(|k| (k.clone(), format!("{{block}}.config.{k}")))
            .collect::<std::collections::BTreeMap<_, _>>();
        &default
    } else {
        &entry.slot.inject
    };
    for (field, template) in inject {
        let Some(value) = fields.get(field) else {
            continue; // an optional field the credential does not have
        };
        let mut path = block_json_path(entry);
        for seg in path_segments(template).map_err(|m| Error::invalid("inject", m))? {
            match seg {
                PathSeg::Literal(k) => path.push(k.to_string()),
                PathSeg::Field(name) => {
                    let v = fields.get(name).ok_or_else(|| {
                        Error::invalid(
                            "inject",
                            format!(
                                "{}: inject path `{template}` needs field `{name}`, which the \
                                 credential does not have",
                                entry.describe()
                            ),
                        )
                    })?;
                    path.push(v.expose_secret().to_string());
                }
            }
        }
        set_path(
            &mut config.docs[entry.block.doc],
            &path,
            value.expose_secret(),
        )
        .map_err(|m| Error::invalid("inject", format!("{}: {m}", entry.describe())))?;
        config.injected.push((entry.block.doc, path));
    }
    Ok(())
}

fn set_path(root: &mut Json, path: &[String], value: &str) -> std::result::Result<(), String> {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        node = match node {
            Json::Object(map) => {
                if last {
                    map.insert(key.clone(), Json::String(value.to_string()));
                    return Ok(());
                }
                let next = map
                    .entry(key.clone())
                    .or_insert_with(|| Json::Object(Default::default()));
                if next.is_null() {
                    *next = Json::Object(Default::default());
                }
                next
            }
            Json::Array(items) => {
                let idx: usize = key
                    .parse()
                    .map_err(|_| format!("`{key}` is not an index of a sequence"))?;
                let len = items.len();
                let item = items
                    .get_mut(idx)
                    .ok_or_else(|| format!("index {idx} is past the end of a sequence of {len}"))?;
                if last {
                    *item = Json::String(value.to_string());
                    return Ok(());
                }
                item
            }
            _ => {
                return Err(format!(
                    "the inject path does not resolve: `{}` is not a mapping",
                    path[..i].join(".")
                ))
            }
        };
    }
    Err("the inject path is empty".into())
}

/// Development mode: fills `{{env.X}}` templates of a block from the environment.
fn fill_templates(config: &mut InjectedConfig, entry: &ManifestEntry, cause: &Error) -> Result<()> {
    fn walk(
        node: &mut Json,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, String)>,
        cause: &Error,
        entry: &ManifestEntry,
    ) -> Result<()> {
        match node {
            Json::Object(map) => {
                for (k, v) in map.iter_mut() {
                    path.push(k.clone());
                    walk(v, path, out, cause, entry)?;
                    path.pop();
                }
            }
            Json::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    walk(v, path, out, cause, entry)?;
                    path.pop();
                }
            }
            Json::String(s) => {
                let found = super::templates(s);
                if found.is_empty() {
                    return Ok(());
                }
                let mut rendered = s.clone();
                for (kind, name) in found {
                    let value = match kind {
                        "env" => std::env::var(name).ok(),
                        _ => None,
                    };
                    let Some(value) = value else {
                        return Err(Error::invalid(
                            "credential",
                            format!(
                                "{}: {cause}; the development fallback `{{{{{kind}.{name}}}}}` \
                                 has no value either",
                                entry.describe()
                            ),
                        ));
                    };
                    rendered = replace_template(&rendered, kind, name, &value);
                }
                *s = rendered;
                out.push((path.clone(), String::new()));
            }
            _ => {}
        }
        Ok(())
    }
    let base = block_json_path(entry);
    let doc = entry.block.doc;
    let Some(block) = pointer_mut(&mut config.docs[doc], &base) else {
        return Ok(());
    };
    let mut filled = Vec::new();
    let mut path = base.clone();
    walk(block, &mut path, &mut filled, cause, entry)?;
    for (p, _) in filled {
        config.injected.push((doc, p));
    }
    Ok(())
}

fn replace_template(text: &str, kind: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for t in super::template_spans(text) {
        if t.kind == kind && t.name == name {
            out.push_str(&text[from..t.range.start]);
            out.push_str(value);
            from = t.range.end;
        }
    }
    out.push_str(&text[from..]);
    out
}
