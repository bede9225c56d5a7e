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

mod compile;
mod inject;
pub mod migrate;
mod walk;
pub mod yaml;

pub use compile::compile;
pub use inject::{Deployment, InjectedConfig};
pub use walk::templates;
pub(crate) use walk::*;
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
