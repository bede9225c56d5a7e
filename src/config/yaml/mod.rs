//! A YAML tree with positions, built from `saphyr-parser` events (a maintained, pure-Rust
//! YAML 1.2 parser; `serde_yaml` is unmaintained). Every node knows its byte range, line and
//! column, so errors point into the file and the migrator can edit text in place.

mod build;
mod node;
mod patch;

pub use build::MAX_DEPTH;
use build::{build, Failed};
pub use node::{Node, Pos, Style, Value, YamlError, MERGE_KEY};
use patch::{empty_scalar_deletions, Patched};

/// Parses every document of a YAML stream.
///
/// A document-level block scalar with no content, ended by a document marker (`--- |1`
/// then `---`, `--- >1-` then `...`, `--- |` then a line of spaces then `---`), is valid
/// YAML that `saphyr-parser` 0.3 rejects ("wrongly indented line in block scalar"). When
/// the parser reports that error at a document marker, the scalar's header is read without
/// its indentation indicator and its blank lines without their spaces, which gives the
/// same (empty) value; positions are mapped back to the original text. See
/// `docs/SLOTS.md`.
pub fn parse(file: &str, text: &str) -> Result<Vec<Node>, YamlError> {
    let mut deletions: Vec<(usize, usize)> = Vec::new();
    loop {
        let source = Patched::new(text, &deletions);
        match build(file, &source) {
            Err(Failed { error, at }) if error.message == WRONGLY_INDENTED => {
                let more = empty_scalar_deletions(&source.text, at);
                if more.is_empty() || deletions.len() >= MAX_SCALAR_PATCHES {
                    return Err(error);
                }
                deletions.extend(more.into_iter().map(|(at, len)| (source.original(at), len)));
                deletions.sort_unstable();
            }
            Err(Failed { error, .. }) => return Err(error),
            Ok(docs) => return Ok(docs),
        }
    }
}

/// The message of the `saphyr-parser` error that [`parse`] works around.
const WRONGLY_INDENTED: &str = "not valid YAML: wrongly indented line in block scalar";

/// How many deletions the workaround in [`parse`] makes at most (each costs a parse).
const MAX_SCALAR_PATCHES: usize = 256;

#[cfg(test)]
mod tests;
