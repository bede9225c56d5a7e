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
    /// A sequence index, and the item's label: its `id` (else `name`) when that is a
    /// string no sibling shares, that is not a number and holds no brackets.
    Index(usize, Option<String>),
}

/// Where a block is: the document and the steps to it. Shown as
/// `agents[assistant].brain`, `(document 2) webhook.signing`, or `(root)` for a document's
/// root mapping.
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
        if self.segs.is_empty() {
            return f.write_str("(root)");
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
///
/// A template is exactly `{{secret.NAME}}` or `{{env.NAME}}` (no spaces; a name of
/// letters, digits, `_`, `-` and `.`) not preceded by `$`: `${{ secrets.X }}` and
/// `${{ env.X }}` are GitHub Actions expressions, and `{{ .Values.x }}` is Helm's.
pub fn templates(text: &str) -> Vec<(&str, &str)> {
    template_spans(text)
        .into_iter()
        .map(|t| (t.kind, t.name))
        .collect()
}

/// A template in a string: where it is, its kind (`secret` or `env`) and its name.
pub(crate) struct TemplateSpan<'a> {
    pub range: std::ops::Range<usize>,
    pub kind: &'a str,
    pub name: &'a str,
}

/// The templates of a string (see [`templates`]), in order.
pub(crate) fn template_spans(text: &str) -> Vec<TemplateSpan<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("{{") {
        let open = from + i;
        from = open + 1;
        if text[..open].ends_with('$') {
            continue;
        }
        let after = &text[open + 2..];
        let Some((kind, rest)) = ["secret", "env"].into_iter().find_map(|kind| {
            after
                .strip_prefix(kind)
                .and_then(|r| r.strip_prefix('.'))
                .map(|r| (kind, r))
        }) else {
            continue;
        };
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(rest.len());
        if len == 0 || !rest[len..].starts_with("}}") {
            continue;
        }
        let end = open + 2 + kind.len() + 1 + len + 2;
        out.push(TemplateSpan {
            range: open..end,
            kind,
            name: &rest[..len],
        });
        from = end;
    }
    out
}

/// Whether any scalar in `node` (keys included) holds an inline template.
pub(crate) fn has_templates(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(s, _) => s.contains("{{") && !template_spans(s).is_empty(),
        Value::Seq(items) => items.iter().any(has_templates),
        Value::Map(entries) => entries
            .iter()
            .any(|(k, v)| has_templates(k) || has_templates(v)),
    }
}

/// Whether any mapping in `node` (keys included) has a `credential` key.
fn has_credential_key(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(..) => false,
        Value::Seq(items) => items.iter().any(has_credential_key),
        Value::Map(entries) => entries.iter().any(|(k, v)| {
            k.as_str() == Some("credential") || has_credential_key(k) || has_credential_key(v)
        }),
    }
}

/// The labels of a sequence's items (see [`Seg::Index`]).
fn item_labels(items: &[Node]) -> Vec<Option<String>> {
    let labels: Vec<Option<&str>> = items
        .iter()
        .map(|item| {
            ["id", "name"]
                .into_iter()
                .find_map(|k| item.get(k).and_then(Node::as_str))
                .filter(|l| {
                    !l.is_empty()
                        && !l.bytes().all(|b| b.is_ascii_digit())
                        && !l.chars().any(|c| matches!(c, '[' | ']') || c.is_control())
                })
        })
        .collect();
    let mut count: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in labels.iter().flatten() {
        *count.entry(l).or_default() += 1;
    }
    labels
        .into_iter()
        .map(|l| l.filter(|l| count[l] == 1).map(str::to_string))
        .collect()
}

/// A mapping on the way down to a node, as [`walk`] sees it.
pub(crate) struct Frame<'a> {
    /// The mapping.
    pub map: &'a Node,
    /// The key being walked (a key merged in through `<<` under its own name).
    pub key: &'a str,
    /// That key in the mapping's own text: the key, or the `<<` key it was merged through.
    pub key_node: &'a Node,
    /// The length of the path to the mapping.
    pub depth: usize,
    /// The mapping has a `provider` or a `credential` key (merges included).
    pub names_provider_or_credential: bool,
    /// The mapping has a `credential` key (merges included).
    pub has_credential: bool,
}

/// What a walk over a document reports.
pub(crate) trait Visit<'a> {
    /// A mapping that can be a block: a document's root, a mapping value, or a sequence
    /// item; `key` is the nearest mapping key above it (through sequences), `None` at the
    /// root.
    fn mapping(&mut self, _node: &'a Node, _path: &[Seg], _key: Option<&'a str>) {}
    /// A scalar that holds templates, the mappings above it, and the nearest alias above
    /// it (or at it) when it is reached through one.
    fn template(
        &mut self,
        _scalar: &'a Node,
        _path: &[Seg],
        _frames: &[Frame<'a>],
        _alias: Option<Pos>,
    ) {
    }
    /// A mapping key that is not a scalar (`? [x]`), which the walk does not enter.
    fn odd_key(&mut self, _key: &'a Node, _value: &'a Node, _path: &[Seg]) {}
}

/// Walks a document in file order: every mapping's data (`<<` merges applied, a
/// `credential:` value not entered), sequences with their item labels, aliases expanded.
/// It keeps its own stack, so the depth of a document costs heap, not the thread's stack.
pub(crate) fn walk<'a>(root: &'a Node, visit: &mut impl Visit<'a>) {
    /// What is left to do, last first.
    enum Step<'a> {
        /// Walk a node: the nearest mapping key above it, and the alias it is reached
        /// through.
        Node(&'a Node, Option<&'a str>, Option<Pos>),
        /// Go down one step: into a sequence item, or (with a frame) into a mapping's
        /// entry.
        Enter(
            Seg,
            Option<Frame<'a>>,
            &'a Node,
            Option<&'a str>,
            Option<Pos>,
        ),
        /// Report a mapping key that is not a scalar.
        OddKey(&'a Node, &'a Node),
        /// Come back up one step (and drop the frame, if there is one).
        Leave(bool),
    }
    let mut path: Vec<Seg> = Vec::new();
    let mut frames: Vec<Frame<'a>> = Vec::new();
    let mut todo = vec![Step::Node(root, None, None)];
    if root.is_map() {
        visit.mapping(root, &path, None);
    }
    while let Some(step) = todo.pop() {
        match step {
            Step::Enter(seg, frame, node, key, alias) => {
                path.push(seg);
                let framed = frame.is_some();
                frames.extend(frame);
                if node.is_map() {
                    visit.mapping(node, &path, key);
                }
                todo.push(Step::Leave(framed));
                todo.push(Step::Node(node, key, alias));
            }
            Step::Leave(framed) => {
                path.pop();
                if framed {
                    frames.pop();
                }
            }
            Step::OddKey(k, v) => visit.odd_key(k, v, &path),
            Step::Node(node, key, alias) => {
                let alias = node.alias.or(alias);
                match &node.value {
                    Value::Scalar(text, _) => {
                        if text.contains("{{") && !template_spans(text).is_empty() {
                            visit.template(node, &path, &frames, alias);
                        }
                    }
                    Value::Seq(items) => {
                        let labeled: Vec<_> = items.iter().zip(item_labels(items)).collect();
                        for (i, (item, label)) in labeled.into_iter().enumerate().rev() {
                            todo.push(Step::Enter(Seg::Index(i, label), None, item, key, alias));
                        }
                    }
                    Value::Map(_) => {
                        let entries = node.merged_entries();
                        let has_credential =
                            entries.iter().any(|e| e.key.as_str() == Some("credential"));
                        let names_provider_or_credential = has_credential
                            || entries.iter().any(|e| e.key.as_str() == Some("provider"));
                        for e in entries.into_iter().rev() {
                            let Some(name) = e.key.as_str() else {
                                todo.push(Step::OddKey(e.key, e.value));
                                continue;
                            };
                            if name == "credential" {
                                continue;
                            }
                            let frame = Frame {
                                map: node,
                                key: name,
                                key_node: e.via.map_or(e.key, |m| m.key),
                                depth: path.len(),
                                names_provider_or_credential,
                                has_credential,
                            };
                            let alias = e.via.map_or(alias, |m| m.source.alias.or(alias));
                            todo.push(Step::Enter(
                                Seg::Key(name.to_string()),
                                Some(frame),
                                e.value,
                                Some(name),
                                alias,
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// A mapping that holds inline templates somewhere below it and names no credential: the
/// block the migrator adds a `credential:` key to.
pub(crate) struct TemplateBlock<'a> {
    pub path: BlockPath,
    pub node: &'a Node,
    /// The key (in `node`'s own text) before which the `credential:` lines go first.
    pub first_key: &'a Node,
    /// The template scalars, in walk order, each with the alias it was reached through.
    pub scalars: Vec<(&'a Node, Option<Pos>)>,
}

/// What the template walk finds in a document.
pub(crate) struct TemplateFindings<'a> {
    /// The blocks, in file order of their first template.
    pub blocks: Vec<TemplateBlock<'a>>,
    /// Mapping keys that are not scalars with templates (`true`) or credentials below them.
    pub odd_keys: Vec<(&'a Node, bool)>,
}

/// Finds the blocks with inline templates. The block of a template is the nearest mapping
/// above it with a `provider` or `credential` key; failing that, the mapping that holds its
/// `config`, `env`, `headers` or `auth` key; failing that, the mapping that holds it. A
/// template reached through an alias counts for the block it is reached from; a block
/// reached through an alias is the anchored mapping (one block however many aliases reach
/// it). Merge keys (`<<`) count as the merging mapping's own keys.
pub(crate) fn template_blocks(doc_index: usize, root: &Node) -> TemplateFindings<'_> {
    struct Finder<'a> {
        doc: usize,
        blocks: Vec<TemplateBlock<'a>>,
        /// A block's mapping (start and end offsets: an alias's copy is its anchor's) to
        /// its index in `blocks`.
        index: std::collections::HashMap<(usize, usize), usize>,
        odd_keys: Vec<(&'a Node, bool)>,
    }
    impl<'a> Visit<'a> for Finder<'a> {
        fn template(
            &mut self,
            scalar: &'a Node,
            path: &[Seg],
            frames: &[Frame<'a>],
            alias: Option<Pos>,
        ) {
            let pick = frames
                .iter()
                .rposition(|f| f.names_provider_or_credential)
                .or_else(|| {
                    frames
                        .iter()
                        .rposition(|f| matches!(f.key, "config" | "env" | "headers" | "auth"))
                })
                .or_else(|| frames.len().checked_sub(1));
            let Some(f) = pick.map(|i| &frames[i]) else {
                return;
            };
            if f.has_credential {
                return;
            }
            let id = (f.map.start.offset, f.map.end.offset);
            match self.index.get(&id) {
                Some(&i) => {
                    let b = &mut self.blocks[i];
                    if f.key_node.start.offset < b.first_key.start.offset {
                        b.first_key = f.key_node;
                    }
                    b.scalars.push((scalar, alias));
                }
                None => {
                    self.index.insert(id, self.blocks.len());
                    self.blocks.push(TemplateBlock {
                        path: BlockPath {
                            doc: self.doc,
                            segs: path[..f.depth].to_vec(),
                        },
                        node: f.map,
                        first_key: f.key_node,
                        scalars: vec![(scalar, alias)],
                    });
                }
            }
        }

        fn odd_key(&mut self, key: &'a Node, value: &'a Node, _path: &[Seg]) {
            let templates = has_templates(key) || has_templates(value);
            if templates || has_credential_key(key) || has_credential_key(value) {
                self.odd_keys.push((key, templates));
            }
        }
    }
    let mut finder = Finder {
        doc: doc_index,
        blocks: Vec::new(),
        index: std::collections::HashMap::new(),
        odd_keys: Vec::new(),
    };
    walk(root, &mut finder);
    TemplateFindings {
        blocks: finder.blocks,
        odd_keys: finder.odd_keys,
    }
}

/// The message for a mapping key that is not a scalar with templates or credentials below.
pub(crate) fn odd_key_message(credential: bool) -> String {
    format!(
        "a mapping key here is not a scalar (`? [...]` or `? {{...}}`), and {} below it; \
         strongroom names blocks by scalar keys only, so it cannot {} — use a plain key",
        if credential {
            "a `credential:` is"
        } else {
            "inline templates are"
        },
        if credential {
            "inject that credential"
        } else {
            "migrate those templates"
        }
    )
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

    struct Blocks<'c, 'x> {
        cx: &'c mut Ctx<'x>,
    }
    impl<'a> Visit<'a> for Blocks<'_, '_> {
        fn mapping(&mut self, node: &'a Node, path: &[Seg], key: Option<&'a str>) {
            let key = key.unwrap_or("");
            if node.get("credential").is_some() || !self.cx.slots.for_block(key).is_empty() {
                block(self.cx, key, node, path);
            }
        }

        fn odd_key(&mut self, key: &'a Node, value: &'a Node, _path: &[Seg]) {
            if has_credential_key(key) || has_credential_key(value) {
                self.cx.errors.push(diag(
                    self.cx.file,
                    Severity::Error,
                    key.start,
                    odd_key_message(true),
                ));
            } else if has_templates(key) || has_templates(value) {
                self.cx.warnings.push(diag(
                    self.cx.file,
                    Severity::Warning,
                    key.start,
                    odd_key_message(false),
                ));
            }
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
        walk(root, &mut Blocks { cx: &mut cx });
        for tb in template_blocks(doc, root).blocks {
            let (first, alias) = tb.scalars[0];
            let kinds: std::collections::BTreeSet<&str> = tb
                .scalars
                .iter()
                .flat_map(|(s, _)| templates(s.as_str().unwrap_or("")))
                .map(|(k, _)| {
                    if k == "env" {
                        "{{env.X}}"
                    } else {
                        "{{secret.X}}"
                    }
                })
                .collect();
            warnings.push(diag(
                file,
                Severity::Warning,
                alias.unwrap_or(first.start),
                format!(
                    "block {} uses inline {} templates{} without a `credential:` block; run \
                     `strongroom yaml migrate-credentials {file} --write` to add one",
                    tb.path,
                    names(kinds.into_iter()),
                    match alias {
                        Some(_) => format!(
                            " (reached through this alias; the template is at line {})",
                            first.start.line
                        ),
                        None => String::new(),
                    }
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
