//! The workaround [`super::parse`] makes for empty block scalars that `saphyr-parser`
//! rejects: the text with some bytes deleted, and the way back to the original offsets.

/// The text the parser reads: the original with some bytes deleted, and the way back to
/// original byte offsets.
pub(super) struct Patched<'a> {
    pub(super) text: std::borrow::Cow<'a, str>,
    /// (offset in `text`, bytes deleted before it), sorted.
    shifts: Vec<(usize, usize)>,
}

impl<'a> Patched<'a> {
    /// `text` without the byte ranges `deletions` (original offsets, sorted, disjoint).
    pub(super) fn new(text: &'a str, deletions: &[(usize, usize)]) -> Patched<'a> {
        if deletions.is_empty() {
            return Patched {
                text: text.into(),
                shifts: Vec::new(),
            };
        }
        let (mut out, mut shifts, mut from, mut removed) =
            (String::with_capacity(text.len()), Vec::new(), 0, 0);
        for &(at, len) in deletions {
            out.push_str(&text[from..at]);
            removed += len;
            shifts.push((out.len(), removed));
            from = at + len;
        }
        out.push_str(&text[from..]);
        Patched {
            text: out.into(),
            shifts,
        }
    }

    /// The original byte offset of byte offset `at` of the patched text.
    pub(super) fn original(&self, at: usize) -> usize {
        let i = self.shifts.partition_point(|&(p, _)| p <= at);
        at + if i == 0 { 0 } else { self.shifts[i - 1].1 }
    }
}

/// The deletions (offset, length in `text`) that let the parser read the empty block
/// scalar it rejected at byte `at`: `at` starts a document marker, the lines above it up
/// to the scalar's header hold only spaces, and the header ends with an indicator (`|1`,
/// `>2-`). The indentation digit and the spaces go. Empty when that is not the case.
pub(super) fn empty_scalar_deletions(text: &str, at: usize) -> Vec<(usize, usize)> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let marker = &text[line_start..];
    let is_marker = ["---", "..."].iter().any(|m| {
        marker.strip_prefix(m).is_some_and(|r| {
            r.is_empty() || r.starts_with([' ', '\t', '\n']) || r.starts_with("\r\n")
        })
    });
    if line_start != at || !is_marker {
        return Vec::new();
    }
    let mut deletions = Vec::new();
    let mut end = line_start; // the end (after its break) of the line above
    while end > 0 {
        let start = text[..end - 1].rfind('\n').map_or(0, |i| i + 1);
        let line = text[start..end].trim_end_matches(['\n', '\r']);
        if line.bytes().all(|b| b == b' ') {
            if !line.is_empty() {
                deletions.push((start, line.len()));
            }
            end = start;
            continue;
        }
        // The header: strip a comment, then the indicators after the last `|` or `>`.
        let body = match line.find(" #").or_else(|| line.find("\t#")) {
            Some(i) => &line[..i],
            None => line,
        }
        .trim_end_matches([' ', '\t']);
        let Some(bar) = body.rfind(['|', '>']) else {
            return Vec::new();
        };
        let indicators = &body[bar + 1..];
        if !indicators
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-')
        {
            return Vec::new();
        }
        if let Some(d) = indicators.find(|c: char| c.is_ascii_digit()) {
            deletions.push((start + bar + 1 + d, 1));
        }
        deletions.sort_unstable();
        return deletions;
    }
    Vec::new()
}
