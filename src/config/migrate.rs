//! The template migrator (`strongroom yaml migrate-credentials`): finds blocks that use
//! inline `{{secret.X}}`/`{{env.X}}` templates without a `credential:` key and adds one,
//! keeping the template as the development fallback. Edits are text insertions at
//! positions the parser reports, so every byte outside the inserted lines (comments, key
//! order, quoting, indentation, anchors, other documents) stays as it was; the result is
//! parsed again and must hold the original data plus the added blocks, or the block is
//! refused. Running it twice changes nothing the second time.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::yaml::{self, Node, Pos, YamlError};
use super::{odd_key_message, template_blocks, Diagnostic, Severity};

mod diff;
mod files;
mod place;
mod rewrite;

pub use files::{yaml_files, yaml_files_excluding, yaml_walk, YamlWalk, IGNORE_FILE};
use place::{comment_point, derive_ref, indent_step, insertion_point};
pub use rewrite::FALLBACK_COMMENT;
use rewrite::{rewrite, Plan, Rewrite};

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
    /// The insertions that turn `original` into `migrated`: (offset in `original`, text),
    /// sorted by offset.
    edits: Vec<(usize, String)>,
}

impl Migration {
    /// Whether the text changed.
    pub fn changed(&self) -> bool {
        self.original != self.migrated
    }

    /// A unified diff of the change (empty when nothing changed), with 3 lines of context.
    /// The headers are `a/FILE` and `b/FILE` for a relative path (`./` steps dropped), and
    /// the path itself for an absolute one. Made from the insertions in one pass, so it
    /// takes time in proportion to the file.
    pub fn diff(&self) -> String {
        if !self.changed() {
            return String::new();
        }
        let (old, new) = diff_headers(&self.file);
        diff::unified(&self.original, &self.edits, &old, &new, 3)
    }
}

/// The `---`/`+++` names of a file in a diff.
fn diff_headers(file: &str) -> (String, String) {
    let path = Path::new(file);
    if path.is_absolute() {
        return (file.to_string(), file.to_string());
    }
    let clean: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    let shown = clean.to_string_lossy().replace('\\', "/");
    (format!("a/{shown}"), format!("b/{shown}"))
}

/// Migrates one file's text. A file that does not parse is an error (file, line, column)
/// and nothing is changed. A block whose rewrite would not keep the file's data (checked
/// by parsing the result) is reported in [`Migration::skipped`] and left as it was.
pub fn migrate_text(file: &str, text: &str) -> Result<Migration, YamlError> {
    let docs = yaml::parse(file, text)?;
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut plans: Vec<Plan> = Vec::new();
    let mut skipped = Vec::new();
    let mut commented = HashSet::new();
    let note = |at: Pos, message: String| warning(file, at, message);
    for (i, doc) in docs.iter().enumerate() {
        let found = template_blocks(i, doc);
        for (key, has_templates) in found.odd_keys {
            if has_templates {
                skipped.push(note(key.start, odd_key_message(false)));
            }
        }
        for tb in found.blocks {
            let skip = |why: &str| {
                note(
                    tb.node.start,
                    format!(
                        "block {}: {why}; add `credential: {{ref: NAME, scope: per_user}}` by \
                         hand",
                        tb.path
                    ),
                )
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
            let step = indent_step(tb.node, tb.first_key);
            let scalars: Vec<&Node> = tb.scalars.iter().map(|(s, _)| *s).collect();
            let (reference, provider) = derive_ref(tb.node, &scalars);
            let child = format!("{indent}{}", " ".repeat(step));
            let mut lines = format!(
                "{indent}credential:{nl}{child}ref: {reference}{nl}{child}scope: per_user{nl}"
            );
            if let Some(p) = &provider {
                lines.push_str(&format!("{child}provider: {p}{nl}"));
            }
            // At the end of a file with no final line break, the lines start with one.
            if at == text.len() && !text.is_empty() && !text.ends_with('\n') {
                lines = format!("{nl}{}", lines.strip_suffix(nl).unwrap_or(&lines));
            }
            let comments = scalars
                .iter()
                .filter_map(|s| comment_point(text, s))
                .filter(|at| commented.insert(*at))
                .collect();
            plans.push(Plan {
                path: tb.path,
                block: (tb.node.start.offset, tb.node.end.offset),
                at: tb.node.start,
                insert: (at, lines),
                comments,
                reference,
                provider,
            });
        }
    }
    Ok(finish(file, text, &docs, plans, skipped))
}

/// Applies the plans that keep the data (see [`keepers`]) and reports the others.
fn finish(
    file: &str,
    text: &str,
    docs: &[Node],
    plans: Vec<Plan>,
    mut skipped: Vec<Diagnostic>,
) -> Migration {
    let note = |at: Pos, message: String| warning(file, at, message);
    let all: Vec<usize> = (0..plans.len()).collect();
    let (accepted, rewritten) = match rewrite(file, text, docs, &plans, &all) {
        Ok(r) => (all, r),
        Err(_) => {
            let (left, right) = all.split_at(all.len() / 2);
            let mut good = keepers(file, text, docs, &plans, left);
            good.extend(keepers(file, text, docs, &plans, right));
            match rewrite(file, text, docs, &plans, &good) {
                Ok(r) => (good, r),
                // Each block keeps the data alone, but not all together: refuse them all.
                Err(_) => (Vec::new(), Rewrite::of(text, &plans, &[])),
            }
        }
    };
    let accepted_set: HashSet<usize> = accepted.iter().copied().collect();
    for (i, plan) in plans.iter().enumerate() {
        if !accepted_set.contains(&i) {
            let why = match rewrite(file, text, docs, &plans, &[i]) {
                Err(why) => why,
                Ok(_) => "together with the file's other blocks, the rewritten file would not \
                          keep its data"
                    .to_string(),
            };
            skipped.push(note(
                plan.at,
                format!(
                    "block {}: not rewritten, because {why}; add `credential: {{ref: NAME, \
                     scope: per_user}}` by hand",
                    plan.path
                ),
            ));
        }
    }
    skipped.sort_by_key(|d| (d.line, d.column));
    Migration {
        file: file.to_string(),
        original: text.to_string(),
        migrated: rewritten.text,
        blocks: accepted
            .iter()
            .map(|&i| plans[i].path.to_string())
            .collect(),
        skipped,
        edits: rewritten.edits,
    }
}

/// A migrator's warning at `at`.
fn warning(file: &str, at: Pos, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: file.to_string(),
        line: at.line.max(1),
        column: at.column.max(1),
        message,
    }
}

/// The plans among `set` whose rewrite keeps the data: all of them when together they do,
/// else those found by halving (one parse per try, so a few bad blocks cost a few parses
/// each).
fn keepers(file: &str, text: &str, docs: &[Node], plans: &[Plan], set: &[usize]) -> Vec<usize> {
    if set.is_empty() || rewrite(file, text, docs, plans, set).is_ok() {
        return set.to_vec();
    }
    if set.len() == 1 {
        return Vec::new();
    }
    let (left, right) = set.split_at(set.len() / 2);
    let mut good = keepers(file, text, docs, plans, left);
    good.extend(keepers(file, text, docs, plans, right));
    good
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
/// The text written has been parsed again and checked to hold the original data plus the
/// added blocks (see [`migrate_text`]).
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

/// Replaces the file at `path` with `text` atomically (a temporary file beside it, renamed
/// over it), keeping its permissions. A symbolic link is written through: the file it
/// points to (after every link) is replaced and the link stays a link.
fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let path = &std::fs::canonicalize(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockPath;

    /// A rewrite that would not keep the data (here: block lines inside a flow mapping, as
    /// the migrator once wrote for `brain: &b {`) is refused, and the other blocks are
    /// still migrated.
    #[test]
    fn a_rewrite_that_changes_the_data_is_refused_block_by_block() {
        let text = "a:\n  provider: openai\n  config:\n    k: '{{env.K}}'\nb: &b {\n  c: 1,\n  d: '{{env.D}}'\n}\n";
        let docs = yaml::parse("t.yaml", text).expect("parse");
        let found = template_blocks(0, &docs[0]);
        let good = &found.blocks[0];
        let b = docs[0].get("b").expect("b");
        let plan = |path: &BlockPath, node: &Node, at: usize, indent: &str| Plan {
            path: path.clone(),
            block: (node.start.offset, node.end.offset),
            at: node.start,
            insert: (
                at,
                format!("{indent}credential:\n{indent}  ref: r\n{indent}  scope: per_user\n"),
            ),
            comments: Vec::new(),
            reference: "r".into(),
            provider: None,
        };
        let inside_flow = text.find("  d:").expect("d");
        let plans = vec![
            plan(
                &good.path,
                good.node,
                text.find("  config").expect("config"),
                "  ",
            ),
            plan(&found.blocks[1].path, b, inside_flow, "  "),
        ];
        assert!(rewrite("t.yaml", text, &docs, &plans, &[0]).is_ok());
        let why = rewrite("t.yaml", text, &docs, &plans, &[1])
            .err()
            .expect("refused");
        assert!(why.contains("would not"), "{why}");
        let m = finish("t.yaml", text, &docs, plans, Vec::new());
        assert_eq!(m.blocks, ["a"]);
        assert!(m
            .migrated
            .contains("b: &b {\n  c: 1,\n  d: '{{env.D}}'\n}\n"));
        assert_eq!(m.skipped.len(), 1);
        assert!(
            m.skipped[0]
                .message
                .starts_with("block b: not rewritten, because the rewritten"),
            "{}",
            m.skipped[0]
        );
        assert_eq!(m.skipped[0].line, 5);
        // Lines that land in another mapping than the planned one are refused too.
        let wrong_block = Plan {
            block: (0, 1),
            ..plan(
                &good.path,
                good.node,
                text.find("  config").expect("config"),
                "  ",
            )
        };
        let why = rewrite("t.yaml", text, &docs, &[wrong_block], &[0])
            .err()
            .expect("refused");
        assert!(why.contains("would not keep the data"), "{why}");
    }
}
