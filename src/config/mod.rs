//! App configs and credential slots: modules (host code) declare [`CredentialSlot`]s for
//! the blocks they consume; an app's YAML config names a credential in a block's
//! `credential:` key; [`compile`] checks the two against each other and produces a
//! [`Manifest`]; a [`Deployment`] resolves the manifest's references and injects the
//! decrypted fields into the config tree (shared scopes at deploy, user scopes at session
//! start). [`migrate`] rewrites inline `{{secret.X}}`/`{{env.X}}` templates into
//! `credential:` blocks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::ScopeKind;
use crate::vault::CredentialRef;

mod inject;
pub mod migrate;
pub mod yaml;

pub use inject::{Deployment, InjectedConfig};
use yaml::{Node, Pos, Value};

/// A credential a module consumes: which types and providers it accepts, which scopes it
/// prefers, and where each field of the credential goes in the consuming block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSlot {
    /// The slot id (`brain_credential`).
    pub id: String,
    /// What a person is shown.
    pub label: String,
    /// Accepted handler types; empty accepts any.
    pub handler_types: Vec<String>,
    /// Accepted providers; empty accepts any.
    pub providers: Vec<String>,
    /// Scopes the module expects; a ref in another scope compiles with a warning.
    pub scopes_preferred: Vec<ScopeKind>,
    /// Field → path template (`{block}.config.api_key`; `{name}` in a segment is the value
    /// of the credential's field `name`, as in `{block}.env.{env_token_var}`).
    pub inject: BTreeMap<String, String>,
    /// A consuming block must name a credential.
    pub required: bool,
}

impl CredentialSlot {
    /// A slot that accepts anything and injects nothing yet.
    pub fn new(id: impl Into<String>, label: impl Into<String>) -> CredentialSlot {
        CredentialSlot {
            id: id.into(),
            label: label.into(),
            handler_types: Vec::new(),
            providers: Vec::new(),
            scopes_preferred: Vec::new(),
            inject: BTreeMap::new(),
            required: false,
        }
    }

    /// Accepted handler types.
    pub fn handler_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.handler_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Accepted providers.
    pub fn providers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, providers: I) -> Self {
        self.providers = providers.into_iter().map(Into::into).collect();
        self
    }

    /// Preferred scopes.
    pub fn scopes_preferred(mut self, scopes: impl IntoIterator<Item = ScopeKind>) -> Self {
        self.scopes_preferred = scopes.into_iter().collect();
        self
    }

    /// Injects field `field` at `path` (`{block}.config.api_key`).
    pub fn inject(mut self, field: impl Into<String>, path: impl Into<String>) -> Self {
        self.inject.insert(field.into(), path.into());
        self
    }

    /// Whether a consuming block must name a credential.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
}

/// The slots modules declare, by the key of the block that consumes them (`brain`).
#[derive(Debug, Clone, Default)]
pub struct Slots {
    by_block: BTreeMap<String, Vec<Arc<CredentialSlot>>>,
}

impl Slots {
    /// No slots.
    pub fn new() -> Slots {
        Slots::default()
    }

    /// Declares that blocks under key `block_key` consume `slot`.
    pub fn declare(mut self, block_key: impl Into<String>, slot: CredentialSlot) -> Slots {
        self.by_block
            .entry(block_key.into())
            .or_default()
            .push(Arc::new(slot));
        self
    }

    /// The slots blocks under `block_key` consume.
    pub fn for_block(&self, block_key: &str) -> &[Arc<CredentialSlot>] {
        self.by_block.get(block_key).map_or(&[], Vec::as_slice)
    }
}

/// An app config: the documents of one YAML file.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The file name errors show.
    pub file: String,
    /// The text.
    pub text: String,
    /// Its documents.
    pub docs: Vec<Node>,
}

impl AppConfig {
    /// Parses YAML text; `file` is the name errors show.
    pub fn parse(file: impl Into<String>, text: impl Into<String>) -> Result<AppConfig> {
        let file = file.into();
        let text = text.into();
        let docs = yaml::parse(&file, &text).map_err(|e| Error::config(e.to_string()))?;
        Ok(AppConfig { file, text, docs })
    }

    /// Reads and parses a YAML file.
    pub fn load(path: &Path) -> Result<AppConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        AppConfig::parse(path.display().to_string(), text)
    }
}

/// One step of a path into a config tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index (`label` is the item's `id`, when it has one).
    Index(usize, Option<String>),
}

/// Where a block is: the document and the steps to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPath {
    /// The document index in the file.
    pub doc: usize,
    /// The steps.
    pub segs: Vec<Seg>,
}

impl fmt::Display for BlockPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.doc > 0 {
            write!(f, "(document {}) ", self.doc + 1)?;
        }
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(_, Some(id)) => write!(f, "[{id}]")?,
                Seg::Index(i, None) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The app cannot be deployed.
    Error,
    /// Worth fixing.
    Warning,
}

/// A compiler finding at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {kind}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// One consuming block of a compiled app.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// Where the block is.
    pub block: BlockPath,
    /// The slot it consumes.
    pub slot: Arc<CredentialSlot>,
    /// The credential it names.
    pub reference: CredentialRef,
    /// Where the `credential:` key is in the file.
    pub at: Pos,
    /// The block holds inline `{{secret.X}}`/`{{env.X}}` templates (the development
    /// fallback).
    pub has_fallback: bool,
}

impl ManifestEntry {
    /// Resolved at deploy (`system_wide`, `per_app_shared`) rather than at session start.
    pub fn at_deploy(&self) -> bool {
        matches!(
            self.reference.scope,
            ScopeKind::SystemWide | ScopeKind::PerAppShared
        )
    }

    /// `block agents[assistant].brain, slot brain_credential, ref openai_main (per_user)`
    pub fn describe(&self) -> String {
        format!(
            "block {}, slot {}, ref {} ({})",
            self.block, self.slot.id, self.reference.name, self.reference.scope
        )
    }
}

/// What the compiler produced: the consuming blocks and the warnings.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The app.
    pub app: String,
    /// The file.
    pub file: String,
    /// One entry per consuming block, in file order.
    pub entries: Vec<ManifestEntry>,
    /// Warnings (inline templates without a `credential:` block, unexpected scopes).
    pub warnings: Vec<Diagnostic>,
    /// The config's documents (the tree the injector writes into).
    pub(crate) docs: Vec<Node>,
}

/// The compiler's errors (and warnings), each with file, line and column.
#[derive(Debug, Clone)]
pub struct CompileErrors {
    /// The errors.
    pub errors: Vec<Diagnostic>,
    /// The warnings.
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().chain(&self.warnings).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileErrors {}

impl From<CompileErrors> for Error {
    fn from(e: CompileErrors) -> Error {
        Error::config(format!("the app config does not compile:\n{e}"))
    }
}

/// The `{{secret.X}}` and `{{env.X}}` templates in a string: `(kind, name)`.
pub fn templates(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        let inner = after[..close].trim();
        if let Some((kind, name)) = inner.split_once('.') {
            let kind = kind.trim();
            let name = name.trim();
            if matches!(kind, "secret" | "env")
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                out.push((kind, name));
            }
        }
        rest = &after[close + 2..];
    }
    out
}

/// A mapping that holds inline templates somewhere below it and names no credential: the
/// block the migrator adds a `credential:` key to.
pub(crate) struct TemplateBlock<'a> {
    pub path: BlockPath,
    pub node: &'a Node,
    /// The key (of `node`) whose value holds the first template.
    pub first_key: &'a Node,
    /// The template scalars, in file order.
    pub scalars: Vec<&'a Node>,
}

/// Finds the blocks with inline templates. The block of a template is the nearest mapping
/// above it with a `provider` or `credential` key; failing that, the mapping that holds its
/// `config`, `env`, `headers` or `auth` key; failing that, the mapping that holds it. Aliased nodes are skipped (their
/// text belongs to the anchor).
pub(crate) fn template_blocks(doc_index: usize, root: &Node) -> Vec<TemplateBlock<'_>> {
    // Walk with the stack of (mapping, key-in-mapping, path) ancestors.
    struct Frame<'a> {
        map: &'a Node,
        key: &'a Node,
        path: Vec<Seg>,
    }
    fn walk<'a>(
        node: &'a Node,
        path: &mut Vec<Seg>,
        stack: &mut Vec<Frame<'a>>,
        found: &mut Vec<(Vec<Seg>, &'a Node, &'a Node, &'a Node)>,
    ) {
        if node.alias.is_some() {
            return;
        }
        match &node.value {
            Value::Scalar(text, _) => {
                if templates(text).is_empty() {
                    return;
                }
                let pick = stack
                    .iter()
                    .rposition(|f| {
                        f.map.get("provider").is_some() || f.map.get("credential").is_some()
                    })
                    .or_else(|| {
                        stack.iter().rposition(|f| {
                            matches!(f.key.as_str(), Some("config" | "env" | "headers" | "auth"))
                        })
                    })
                    .or_else(|| stack.len().checked_sub(1));
                if let Some(i) = pick {
                    let f = &stack[i];
                    found.push((f.path.clone(), f.map, f.key, node));
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let id = item.get("id").and_then(Node::as_str).map(str::to_string);
                    path.push(Seg::Index(i, id));
                    walk(item, path, stack, found);
                    path.pop();
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Some(key) = k.as_str() else { continue };
                    stack.push(Frame {
                        map: node,
                        key: k,
                        path: path.clone(),
                    });
                    path.push(Seg::Key(key.to_string()));
                    walk(v, path, stack, found);
                    path.pop();
                    stack.pop();
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(root, &mut Vec::new(), &mut Vec::new(), &mut found);
    let mut blocks: Vec<TemplateBlock<'_>> = Vec::new();
    for (segs, map, key, scalar) in found {
        if map.get("credential").is_some() {
            continue;
        }
        match blocks.iter_mut().find(|b| std::ptr::eq(b.node, map)) {
            Some(b) => b.scalars.push(scalar),
            None => blocks.push(TemplateBlock {
                path: BlockPath {
                    doc: doc_index,
                    segs,
                },
                node: map,
                first_key: key,
                scalars: vec![scalar],
            }),
        }
    }
    blocks
}

fn diag(file: &str, severity: Severity, at: Pos, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity,
        file: file.to_string(),
        line: at.line.max(1),
        column: at.column.max(1),
        message: message.into(),
    }
}

/// Reads a `credential:` value: a bare name (scope `per_user`) or `{ref, scope, provider?,
/// slot?}`.
fn read_ref(node: &Node) -> std::result::Result<(CredentialRef, Option<String>), (Pos, String)> {
    match &node.value {
        Value::Scalar(name, _) => {
            crate::model::validate_id("credential ref", name)
                .map_err(|e| (node.start, e.to_string()))?;
            Ok((CredentialRef::compact(name.clone()), None))
        }
        Value::Map(entries) => {
            for (k, _) in entries {
                match k.as_str() {
                    Some("ref" | "scope" | "provider" | "slot") => {}
                    _ => {
                        return Err((
                            k.start,
                            format!(
                            "unknown key `{}` in credential (expected ref, scope, provider, slot)",
                            k.as_str().unwrap_or("?")
                        ),
                        ))
                    }
                }
            }
            let text = |key: &str| -> std::result::Result<Option<(String, Pos)>, (Pos, String)> {
                match node.get(key) {
                    None => Ok(None),
                    Some(v) => match v.as_str() {
                        Some(s) => Ok(Some((s.to_string(), v.start))),
                        None => Err((v.start, format!("credential `{key}` must be a string"))),
                    },
                }
            };
            let (name, at) = text("ref")?
                .ok_or_else(|| (node.start, "credential needs `ref: NAME`".to_string()))?;
            crate::model::validate_id("credential ref", &name).map_err(|e| (at, e.to_string()))?;
            let scope = match text("scope")? {
                None => ScopeKind::PerUser,
                Some((s, at)) => match s.as_str() {
                    "system_wide" => ScopeKind::SystemWide,
                    "per_app_shared" => ScopeKind::PerAppShared,
                    "per_user" => ScopeKind::PerUser,
                    "per_app_per_user" => ScopeKind::PerAppPerUser,
                    _ => {
                        return Err((
                            at,
                            format!(
                                "unknown scope `{s}`; use system_wide, per_app_shared, per_user \
                                 or per_app_per_user"
                            ),
                        ))
                    }
                },
            };
            let provider = text("provider")?.map(|(p, _)| p);
            let slot = text("slot")?.map(|(s, _)| s);
            Ok((CredentialRef::explicit(name, scope, provider), slot))
        }
        Value::Seq(_) => Err((
            node.start,
            "credential must be a name or a mapping with ref, scope and provider".into(),
        )),
    }
}

/// Checks an inject path template against a block: it starts with `{block}`, names fields
/// only in whole segments, and does not pass through a value that is not a mapping.
fn check_inject_path(template: &str, block: &Node) -> std::result::Result<(), String> {
    let segs = inject::path_segments(template)?;
    let mut node = Some(block);
    for seg in segs {
        let Some(current) = node else { break };
        match &current.value {
            Value::Map(_) => {
                node = match seg {
                    inject::PathSeg::Literal(key) => current.get(key),
                    inject::PathSeg::Field(_) => None,
                };
            }
            _ => {
                return Err(format!(
                    "inject path `{template}` does not resolve: it passes through a value that \
                     is not a mapping"
                ))
            }
        }
    }
    Ok(())
}

/// Compiles an app config against the declared slots and the provider catalog: one manifest
/// entry per block with a `credential:` key, or every error found.
///
/// Errors: a malformed `credential:` value; a provider the slot does not accept; a provider
/// whose handler type the slot does not accept; a required slot with no credential; an
/// inject path that does not resolve; a block naming a slot its key does not declare.
/// Warnings: inline `{{secret.X}}`/`{{env.X}}` templates in a block without `credential:`;
/// a ref in a scope the slot does not prefer.
pub fn compile(
    app: &str,
    config: &AppConfig,
    slots: &Slots,
    catalog: &Catalog,
) -> std::result::Result<Manifest, CompileErrors> {
    let file = config.file.as_str();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut entries = Vec::new();

    struct Ctx<'a> {
        file: &'a str,
        slots: &'a Slots,
        catalog: &'a Catalog,
        errors: &'a mut Vec<Diagnostic>,
        warnings: &'a mut Vec<Diagnostic>,
        entries: &'a mut Vec<ManifestEntry>,
        doc: usize,
    }

    fn block(cx: &mut Ctx<'_>, key: &str, node: &Node, segs: &[Seg]) {
        let declared = cx.slots.for_block(key);
        let path = BlockPath {
            doc: cx.doc,
            segs: segs.to_vec(),
        };
        let Some((cred_key, cred)) = node.entry("credential") else {
            for slot in declared.iter().filter(|s| s.required) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    node.start,
                    format!(
                        "block {path} needs a credential for slot `{}` ({}); add \
                         `credential: {{ref: NAME, scope: SCOPE}}`",
                        slot.id, slot.label
                    ),
                ));
            }
            return;
        };
        let (reference, slot_id) = match read_ref(cred) {
            Ok(r) => r,
            Err((at, message)) => {
                cx.errors.push(diag(cx.file, Severity::Error, at, message));
                return;
            }
        };
        let slot: Arc<CredentialSlot> = match (&slot_id, declared.len()) {
            (Some(id), _) => match declared.iter().find(|s| &s.id == id) {
                Some(s) => s.clone(),
                None => {
                    cx.errors.push(diag(
                        cx.file,
                        Severity::Error,
                        cred.start,
                        format!(
                            "block {path} names slot `{id}`, which no module declares for `{key}` \
                             blocks (declared: {})",
                            names(declared.iter().map(|s| s.id.as_str()))
                        ),
                    ));
                    return;
                }
            },
            (None, 1) => declared[0].clone(),
            (None, 0) => Arc::new(default_slot(cx.catalog, reference.provider.as_deref())),
            (None, _) => {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!(
                        "`{key}` blocks consume several slots ({}); say which with `slot:` in \
                         the credential",
                        names(declared.iter().map(|s| s.id.as_str()))
                    ),
                ));
                return;
            }
        };
        let before = cx.errors.len();
        if let Some(provider) = &reference.provider {
            if !slot.providers.is_empty() && !slot.providers.contains(provider) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!(
                        "block {path}: slot `{}` does not accept provider `{provider}` (it \
                         accepts {})",
                        slot.id,
                        names(slot.providers.iter().map(String::as_str))
                    ),
                ));
            }
            match cx.catalog.get(provider) {
                None => cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    cred.start,
                    format!("block {path}: provider `{provider}` is not in the provider catalog"),
                )),
                Some(p) => {
                    if !slot.handler_types.is_empty()
                        && !slot.handler_types.contains(&p.handler_type)
                    {
                        cx.errors.push(diag(
                            cx.file,
                            Severity::Error,
                            cred.start,
                            format!(
                                "block {path}: provider `{provider}` gives `{}` credentials, \
                                 which slot `{}` does not accept (it accepts {})",
                                p.handler_type,
                                slot.id,
                                names(slot.handler_types.iter().map(String::as_str))
                            ),
                        ));
                    }
                }
            }
        }
        for (field, template) in &slot.inject {
            if let Err(message) = check_inject_path(template, node) {
                cx.errors.push(diag(
                    cx.file,
                    Severity::Error,
                    node.start,
                    format!(
                        "block {path}, slot `{}`, field `{field}`: {message}",
                        slot.id
                    ),
                ));
            }
        }
        if !slot.scopes_preferred.is_empty() && !slot.scopes_preferred.contains(&reference.scope) {
            cx.warnings.push(diag(
                cx.file,
                Severity::Warning,
                cred.start,
                format!(
                    "block {path}: slot `{}` expects a credential in {}, not {}",
                    slot.id,
                    names(slot.scopes_preferred.iter().map(|s| s.as_str())),
                    reference.scope
                ),
            ));
        }
        if cx.errors.len() == before {
            let has_fallback = has_templates(node);
            cx.entries.push(ManifestEntry {
                block: path,
                slot,
                reference,
                at: cred_key.start,
                has_fallback,
            });
        }
    }

    fn walk(cx: &mut Ctx<'_>, node: &Node, segs: &mut Vec<Seg>) {
        match &node.value {
            Value::Map(items) => {
                for (k, v) in items {
                    let Some(key) = k.as_str() else { continue };
                    if key == "credential" {
                        continue;
                    }
                    segs.push(Seg::Key(key.to_string()));
                    if v.is_map()
                        && (v.get("credential").is_some() || !cx.slots.for_block(key).is_empty())
                    {
                        block(cx, key, v, segs);
                    }
                    walk(cx, v, segs);
                    segs.pop();
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let id = item.get("id").and_then(Node::as_str).map(str::to_string);
                    segs.push(Seg::Index(i, id));
                    walk(cx, item, segs);
                    segs.pop();
                }
            }
            Value::Scalar(..) => {}
        }
    }

    for (doc, root) in config.docs.iter().enumerate() {
        let mut cx = Ctx {
            file,
            slots,
            catalog,
            errors: &mut errors,
            warnings: &mut warnings,
            entries: &mut entries,
            doc,
        };
        walk(&mut cx, root, &mut Vec::new());
        for tb in template_blocks(doc, root) {
            let first = tb.scalars[0];
            warnings.push(diag(
                file,
                Severity::Warning,
                first.start,
                format!(
                    "block {} uses inline {} templates without a `credential:` block; run \
                     `strongroom yaml migrate-credentials {file} --write` to add one",
                    tb.path,
                    names(
                        tb.scalars
                            .iter()
                            .flat_map(|s| templates(s.as_str().unwrap_or("")))
                            .map(|(k, _)| if k == "env" {
                                "{{env.X}}"
                            } else {
                                "{{secret.X}}"
                            })
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                    )
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Manifest {
            app: app.to_string(),
            file: file.to_string(),
            entries,
            warnings,
            docs: config.docs.clone(),
        })
    } else {
        Err(CompileErrors { errors, warnings })
    }
}

/// Whether any scalar below `node` holds an inline template.
fn has_templates(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(s, _) => !templates(s).is_empty(),
        Value::Seq(items) => items.iter().any(has_templates),
        Value::Map(entries) => entries.iter().any(|(_, v)| has_templates(v)),
    }
}

/// The slot of a block whose key no module declares: any type, the provider's handler's
/// default injection when the provider is named, else `{block}.config.<field>` for every
/// field the credential has (worked out at injection).
fn default_slot(catalog: &Catalog, provider: Option<&str>) -> CredentialSlot {
    let mut slot = CredentialSlot::new("default", "Credential");
    if let Some(p) = provider.and_then(|p| catalog.get(p)) {
        for f in &p.fields {
            slot.inject.insert(
                f.spec.name.clone(),
                format!("{{block}}.config.{}", f.spec.name),
            );
        }
    }
    slot
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
