//! The template migrator (`strongroom yaml migrate-credentials`): finds blocks that use
//! inline `{{secret.X}}`/`{{env.X}}` templates without a `credential:` key and adds one,
//! keeping the template as the development fallback. Edits are text insertions at
//! positions the parser reports, so every byte outside the inserted lines (comments, key
//! order, quoting, indentation, anchors, other documents) stays as it was. Running it twice
//! changes nothing the second time.

use std::path::{Path, PathBuf};

use super::yaml::{self, Node, YamlError};
use super::{template_blocks, templates, Diagnostic, Severity};

/// The comment added after a template the migration keeps as the development fallback.
pub const FALLBACK_COMMENT: &str = "# dev-only fallback";

/// The result of migrating one file's text.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The file.
    pub file: String,
    /// The text before.
    pub original: String,
    /// The text after.
    pub migrated: String,
    /// The blocks that got a `credential:` key, as paths (`agents[assistant].brain`).
    pub blocks: Vec<String>,
    /// Blocks that need a `credential:` key but could not get one automatically.
    pub skipped: Vec<Diagnostic>,
}

impl Migration {
    /// Whether the text changed.
    pub fn changed(&self) -> bool {
        self.original != self.migrated
    }

    /// A unified diff of the change (empty when nothing changed).
    pub fn diff(&self) -> String {
        if !self.changed() {
            return String::new();
        }
        similar::TextDiff::from_lines(&self.original, &self.migrated)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{}", self.file), &format!("b/{}", self.file))
            .to_string()
    }
}

struct Edit {
    at: usize,
    text: String,
}

/// Migrates one file's text. A file that does not parse is an error (file, line, column)
/// and nothing is changed.
pub fn migrate_text(file: &str, text: &str) -> Result<Migration, YamlError> {
    let docs = yaml::parse(file, text)?;
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut edits: Vec<Edit> = Vec::new();
    let mut blocks = Vec::new();
    let mut skipped = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        for tb in template_blocks(i, doc) {
            let skip = |why: &str| Diagnostic {
                severity: Severity::Warning,
                file: file.to_string(),
                line: tb.node.start.line,
                column: tb.node.start.column,
                message: format!(
                    "block {}: {why}; add `credential: {{ref: NAME, scope: per_user}}` by hand",
                    tb.path
                ),
            };
            if tb.node.flow {
                skipped.push(skip("it is written in flow style ({...})"));
                continue;
            }
            let Some((at, indent)) = insertion_point(text, tb.node, tb.first_key) else {
                skipped.push(skip(
                    "there is no line in it to insert the credential before",
                ));
                continue;
            };
            let step = indent_step(text, tb.first_key, tb.node);
            let (reference, provider) = derive_ref(tb.node, &tb.scalars);
            let child = format!("{indent}{}", " ".repeat(step));
            let mut insert = format!(
                "{indent}credential:{nl}{child}ref: {reference}{nl}{child}scope: per_user{nl}"
            );
            if let Some(p) = provider {
                insert.push_str(&format!("{child}provider: {p}{nl}"));
            }
            edits.push(Edit { at, text: insert });
            for scalar in &tb.scalars {
                if let Some(at) = comment_point(text, scalar) {
                    edits.push(Edit {
                        at,
                        text: format!("  {FALLBACK_COMMENT}"),
                    });
                }
            }
            blocks.push(tb.path.to_string());
        }
    }
    // Apply from the end so earlier offsets stay valid; at one offset, keep their order.
    edits.sort_by_key(|e| std::cmp::Reverse(e.at));
    let mut migrated = text.to_string();
    for e in &edits {
        migrated.insert_str(e.at, &e.text);
    }
    Ok(Migration {
        file: file.to_string(),
        original: text.to_string(),
        migrated,
        blocks,
        skipped,
    })
}

/// Byte offset of the start of the line holding `offset`.
fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind('\n').map_or(0, |i| i + 1)
}

/// Where to insert the `credential:` lines, and the indentation: before the line of the key
/// that holds the first template (moving above comment lines that belong to it), or before
/// a later key of the block when that key shares its line with a `- `.
fn insertion_point<'a>(text: &'a str, block: &Node, first_key: &Node) -> Option<(usize, &'a str)> {
    let super::yaml::Value::Map(entries) = &block.value else {
        return None;
    };
    let from = entries
        .iter()
        .position(|(k, _)| std::ptr::eq(k, first_key))
        .unwrap_or(0);
    for (key, _) in &entries[from..] {
        let start = line_start(text, key.start.offset);
        let prefix = &text[start..key.start.offset];
        if prefix.chars().all(|c| c == ' ') {
            // Keep comment lines directly above the key with it.
            let mut at = start;
            while at > 0 {
                let prev = line_start(text, at - 1);
                let line = text[prev..at].trim_end_matches(['\n', '\r']);
                let trimmed = line.trim_start();
                if trimmed.starts_with('#') && line.len() - trimmed.len() == prefix.len() {
                    at = prev;
                } else {
                    break;
                }
            }
            return Some((at, prefix));
        }
    }
    None
}

/// The file's indentation step, read from the first template's key when its value is an
/// indented mapping, else 2.
fn indent_step(text: &str, first_key: &Node, block: &Node) -> usize {
    let Some(value) = block
        .entry(first_key.as_str().unwrap_or(""))
        .map(|(_, v)| v)
    else {
        return 2;
    };
    if value.is_map() && !value.flow && value.start.line > first_key.start.line {
        let key_col = first_key.start.column;
        let child_col = value.start.column;
        if child_col > key_col {
            return child_col - key_col;
        }
    }
    let _ = text;
    2
}

/// The ref name and provider for a block: `<provider>_main` when the block names a
/// provider, else the first template's name in lower case.
fn derive_ref(block: &Node, scalars: &[&Node]) -> (String, Option<String>) {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && s.as_bytes()[0].is_ascii_lowercase()
    };
    if let Some(p) = block.get("provider").and_then(Node::as_str) {
        if plain(p) {
            return (format!("{p}_main"), Some(p.to_string()));
        }
    }
    let name = scalars
        .iter()
        .find_map(|s| {
            templates(s.as_str().unwrap_or(""))
                .first()
                .map(|(_, n)| n.to_string())
        })
        .unwrap_or_else(|| "credential".into());
    let mut r: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !r.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
        r = format!("c_{r}");
    }
    (r, None)
}

/// Where to add the fallback comment after a template: the end of the scalar, when it is on
/// one line and nothing but spaces follows it on that line.
fn comment_point(text: &str, scalar: &Node) -> Option<usize> {
    if scalar.alias.is_some() || scalar.start.line != scalar.end.line {
        return None;
    }
    let end = scalar.end.offset;
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let rest = text[end..line_end].trim_end_matches('\r');
    rest.chars().all(|c| c == ' ').then_some(end)
}

/// The YAML files at `path`: the file itself, or the `*.yaml`/`*.yml` files of a folder
/// (and of its subfolders with `recursive`), sorted.
pub fn yaml_files(path: &Path, recursive: bool) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let p = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                if recursive {
                    dirs.push(p);
                }
            } else if ft.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What happened to one file.
#[derive(Debug)]
pub enum FileOutcome {
    /// Migrated (written when asked); the migration holds the diff.
    Changed(Migration),
    /// Nothing to do.
    Unchanged(Migration),
    /// Not parsed or not readable or not written: left as it was.
    Failed(String),
}

/// Migrates one file; with `write`, replaces it in place (through a temporary file in the
/// same folder, renamed over it, so a crash leaves the old or the new file, never half).
pub fn migrate_file(path: &Path, write: bool) -> FileOutcome {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return FileOutcome::Failed(format!("{shown}: cannot read it: {e}")),
    };
    let m = match migrate_text(&shown, &text) {
        Ok(m) => m,
        Err(e) => return FileOutcome::Failed(format!("{e} (file left unchanged)")),
    };
    if !m.changed() {
        return FileOutcome::Unchanged(m);
    }
    if write {
        if let Err(e) = write_in_place(path, &m.migrated) {
            return FileOutcome::Failed(format!(
                "{shown}: cannot write it: {e} (file left unchanged)"
            ));
        }
    }
    FileOutcome::Changed(m)
}

fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.strongroom-migrate.tmp"));
    let perms = std::fs::metadata(path)?.permissions();
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, perms)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
