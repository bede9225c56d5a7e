//! Where a migration writes: the place and indentation of a block's `credential:` lines,
//! the ref name it derives, and where a fallback comment goes.

use crate::config::templates;
use crate::config::yaml::{Node, Value};

/// Byte offset of the start of the line holding `offset` (after a byte order mark).
fn line_start(text: &str, offset: usize) -> usize {
    let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
    text[..offset]
        .rfind('\n')
        .map_or(0, |i| i + 1)
        .max(bom.min(offset))
}

/// Where to insert the `credential:` lines, and their indentation: before the line of the
/// key that holds the first template (moving above comment lines that belong to it); else
/// before another key of the block that starts its line (`? key` counts: the lines go at
/// the `?`'s column); else after the block's last entry.
pub(super) fn insertion_point(
    text: &str,
    block: &Node,
    first_key: &Node,
) -> Option<(usize, String)> {
    let Value::Map(entries) = &block.value else {
        return None;
    };
    let from = entries
        .iter()
        .position(|(k, _)| k.start.offset == first_key.start.offset)
        .unwrap_or(0);
    let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let order = entries[from..].iter().chain(&entries[..from]);
    for (key, _) in order {
        let start = line_start(text, key.start.offset);
        let prefix = &text[start..key.start.offset];
        let indent = if prefix.bytes().all(|b| b == b' ') {
            prefix
        } else {
            let spaces = prefix.len() - prefix.trim_start_matches(' ').len();
            let rest = &prefix[spaces..];
            match rest.strip_prefix('?') {
                Some(gap) if !gap.is_empty() && gap.bytes().all(|b| b == b' ') => &prefix[..spaces],
                _ => continue,
            }
        };
        // Keep comment lines directly above the key with it.
        let mut at = start;
        while at > bom {
            let prev = line_start(text, at - 1);
            let line = text[prev..at].trim_end_matches(['\n', '\r']);
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') && line.len() - trimmed.len() == indent.len() {
                at = prev;
            } else {
                break;
            }
        }
        return Some((at, indent.to_string()));
    }
    // After the last entry, at the column of the keys.
    let (first, _) = entries.first()?;
    let (_, last) = entries.last()?;
    let end = last.end.offset;
    if last.alias.is_some() || end <= first.start.offset {
        return None;
    }
    let indent = " ".repeat(first.start.column.checked_sub(1)?);
    if text.as_bytes()[end - 1] == b'\n' {
        return Some((end, indent));
    }
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
    let rest = text[end..line_end].trim_end_matches(['\n', '\r']);
    let after = rest.trim_start_matches(' ');
    (after.is_empty() || (after.starts_with('#') && rest.starts_with(' ')))
        .then_some((line_end, indent))
}

/// The file's indentation step, read from the block's first key whose value is an indented
/// block mapping of its own (the first template's key first), else 2.
pub(super) fn indent_step(block: &Node, first_key: &Node) -> usize {
    let Value::Map(entries) = &block.value else {
        return 2;
    };
    let first = entries
        .iter()
        .filter(|(k, _)| k.start.offset == first_key.start.offset);
    first
        .chain(entries.iter())
        .find_map(|(k, v)| {
            (v.is_map()
                && !v.flow
                && v.alias.is_none()
                && v.start.line > k.start.line
                && v.start.column > k.start.column)
                .then(|| v.start.column - k.start.column)
        })
        .unwrap_or(2)
}

/// The ref name and provider for a block: `<provider>_main` when the block names a
/// provider, else the first template's name in lower case.
pub(super) fn derive_ref(block: &Node, scalars: &[&Node]) -> (String, Option<String>) {
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
pub(super) fn comment_point(text: &str, scalar: &Node) -> Option<usize> {
    if scalar.start.line != scalar.end.line || scalar.end.offset <= scalar.start.offset {
        return None;
    }
    let end = scalar.end.offset;
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let rest = text[end..line_end].trim_end_matches('\r');
    rest.chars().all(|c| c == ' ').then_some(end)
}
