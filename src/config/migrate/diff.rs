//! A unified diff made from a list of insertions, in one pass over the text (a general
//! line diff costs time in proportion to the file times the number of changes).

use std::fmt::Write;

/// One line of the diff body.
struct Line<'a> {
    tag: char,
    text: std::borrow::Cow<'a, str>,
    /// Lines of the old and the new text before this one.
    old: usize,
    new: usize,
}

/// The unified diff that turns `text` into `text` with `edits` (offset, inserted text;
/// sorted by offset) applied, with `context` lines of context.
pub(super) fn unified<'a>(
    text: &'a str,
    edits: &'a [(usize, String)],
    old_name: &str,
    new_name: &str,
    context: usize,
) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut body: Vec<Line<'a>> = Vec::with_capacity(lines.len() + edits.len() * 4);
    let (mut old, mut new) = (0, 0);
    let mut push = |body: &mut Vec<Line<'a>>, tag: char, text: std::borrow::Cow<'a, str>| {
        body.push(Line {
            tag,
            text,
            old,
            new,
        });
        if tag != '+' {
            old += 1;
        }
        if tag != '-' {
            new += 1;
        }
    };
    let mut e = 0;
    let mut start = 0;
    for i in 0..=lines.len() {
        let line = lines.get(i).copied().unwrap_or("");
        let end = start + line.len();
        let last = i + 1 >= lines.len();
        // Whole lines inserted at the start of this line.
        while e < edits.len() && edits[e].0 == start && edits[e].1.ends_with('\n') {
            for l in edits[e].1.split_inclusive('\n') {
                push(&mut body, '+', l.into());
            }
            e += 1;
        }
        if i == lines.len() {
            break;
        }
        // Insertions inside the line (or at the very end of the text).
        let mut inner = Vec::new();
        while e < edits.len()
            && (edits[e].0 < end || (last && edits[e].0 == end && !line.ends_with('\n')))
        {
            inner.push(&edits[e]);
            e += 1;
        }
        if inner.is_empty() {
            push(&mut body, ' ', line.into());
        } else {
            push(&mut body, '-', line.into());
            let mut changed = String::with_capacity(line.len() + 64);
            let mut from = start;
            for (at, piece) in inner {
                changed.push_str(&text[from..*at]);
                changed.push_str(piece);
                from = *at;
            }
            changed.push_str(&text[from..end]);
            for l in changed.split_inclusive('\n') {
                push(&mut body, '+', l.to_string().into());
            }
        }
        start = end;
    }
    let changes: Vec<usize> = (0..body.len()).filter(|&k| body[k].tag != ' ').collect();
    hunks(
        &body,
        &changes,
        context,
        format!("--- {old_name}\n+++ {new_name}\n"),
    )
}

/// Writes the hunks of `body` around the `changes` (indices of changed lines) after `out`.
fn hunks(body: &[Line<'_>], changes: &[usize], context: usize, mut out: String) -> String {
    let mut c = 0;
    while c < changes.len() {
        let first = changes[c];
        let mut last = first;
        while c + 1 < changes.len() && changes[c + 1] - last - 1 <= 2 * context {
            c += 1;
            last = changes[c];
        }
        c += 1;
        let from = first.saturating_sub(context);
        let to = (last + context + 1).min(body.len());
        let lines = &body[from..to];
        let old_len = lines.iter().filter(|l| l.tag != '+').count();
        let new_len = lines.iter().filter(|l| l.tag != '-').count();
        let range = |before: usize, len: usize| match len {
            0 => format!("{before},0"),
            1 => format!("{}", before + 1),
            _ => format!("{},{len}", before + 1),
        };
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(lines[0].old, old_len),
            range(lines[0].new, new_len)
        );
        for l in lines {
            out.push(l.tag);
            out.push_str(&l.text);
            if !l.text.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}
