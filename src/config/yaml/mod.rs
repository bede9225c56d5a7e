//! A YAML tree with positions, built from `saphyr-parser` events (a maintained, pure-Rust
//! YAML 1.2 parser; `serde_yaml` is unmaintained). Every node knows its byte range, line and
//! column, so errors point into the file and the migrator can edit text in place.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a YAML file: 1-based line and column, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Byte offset into the text.
    pub offset: usize,
}

/// A YAML file that could not be parsed or used: file, line, column and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for YamlError {}

/// How a scalar was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unquoted.
    Plain,
    /// `'...'`
    SingleQuoted,
    /// `"..."`
    DoubleQuoted,
    /// `|` or `>`.
    Block,
}

/// A node's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A mapping, keys in file order.
    Map(Vec<(Node, Node)>),
    /// A sequence.
    Seq(Vec<Node>),
    /// A scalar and how it was written.
    Scalar(String, Style),
}

/// A node with its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub start: Pos,
    /// Where it ends (exclusive).
    pub end: Pos,
    /// Written in flow style (`{...}`, `[...]`, or inside one), anchors and tags
    /// notwithstanding (`&a {...}`, `!!map {...}`).
    pub flow: bool,
    /// Reached through an alias (`*name`): where the alias is. The node's own positions
    /// (and those of everything below it) are the anchored node's. Only the node the alias
    /// stands for carries it, not the nodes below.
    pub alias: Option<Pos>,
    /// The node's tag, resolved (`tag:yaml.org,2002:str` for `!!str`), when it has one.
    pub tag: Option<String>,
}

/// An entry of a mapping's data (see [`Node::merged_entries`]).
#[derive(Clone, Copy)]
pub(crate) struct MapEntry<'a> {
    pub key: &'a Node,
    pub value: &'a Node,
    /// Merged in through a `<<` key: that key, and the mapping the entry comes from.
    pub via: Option<Merge<'a>>,
}

/// Where a merged entry comes from.
#[derive(Clone, Copy)]
pub(crate) struct Merge<'a> {
    /// The `<<` key in the merging mapping's own text.
    pub key: &'a Node,
    /// The merged mapping.
    pub source: &'a Node,
}

/// The key of a YAML merge (`<<: *base`), whose mapping (or sequence of mappings) the
/// enclosing mapping takes its missing keys from.
pub const MERGE_KEY: &str = "<<";

impl Node {
    /// The value of key `key` in a mapping, taking `<<` merge keys into account: the
    /// mapping's own key first, then the merged mappings in order.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value of key `key` in a mapping (merge keys as in [`Node::get`]).
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        let Value::Map(entries) = &self.value else {
            return None;
        };
        if let Some((k, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
            return Some((k, v));
        }
        entries
            .iter()
            .filter(|(k, _)| k.as_str() == Some(MERGE_KEY))
            .find_map(|(_, v)| match &v.value {
                Value::Map(_) => v.entry(key),
                Value::Seq(items) => items.iter().find_map(|m| m.entry(key)),
                Value::Scalar(..) => None,
            })
    }

    /// The entries of a mapping as its data has them: its own (without `<<` keys), then
    /// those of the mappings it merges that no earlier entry has. Empty for a node that is
    /// not a mapping.
    pub(crate) fn merged_entries<'a>(&'a self) -> Vec<MapEntry<'a>> {
        let Value::Map(entries) = &self.value else {
            return Vec::new();
        };
        let own = |(key, value): &'a (Node, Node)| MapEntry {
            key,
            value,
            via: None,
        };
        if !entries.iter().any(|(k, _)| k.as_str() == Some(MERGE_KEY)) {
            return entries.iter().map(own).collect();
        }
        let mut out: Vec<MapEntry<'a>> = entries
            .iter()
            .filter(|(k, _)| k.as_str() != Some(MERGE_KEY))
            .map(own)
            .collect();
        let mut seen: std::collections::HashSet<&str> =
            out.iter().filter_map(|e| e.key.as_str()).collect();
        for (merge_key, v) in entries
            .iter()
            .filter(|(k, _)| k.as_str() == Some(MERGE_KEY))
        {
            let sources: Vec<&Node> = match &v.value {
                Value::Map(_) => vec![v],
                Value::Seq(items) => items.iter().filter(|m| m.is_map()).collect(),
                Value::Scalar(..) => Vec::new(),
            };
            for source in sources {
                for e in source.merged_entries() {
                    if e.key.as_str().is_none_or(|name| seen.insert(name)) {
                        out.push(MapEntry {
                            via: Some(Merge {
                                key: merge_key,
                                source,
                            }),
                            ..e
                        });
                    }
                }
            }
        }
        out
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// Whether this is a mapping.
    pub fn is_map(&self) -> bool {
        matches!(self.value, Value::Map(_))
    }

    /// The same data: values, scalar styles and tags equal, positions and layout aside.
    pub fn same_data(&self, other: &Node) -> bool {
        if self.tag != other.tag {
            return false;
        }
        match (&self.value, &other.value) {
            (Value::Scalar(a, sa), Value::Scalar(b, sb)) => a == b && sa == sb,
            (Value::Seq(a), Value::Seq(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_data(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka.same_data(kb) && va.same_data(vb))
            }
            _ => false,
        }
    }
}

/// No stream may hold more nodes than this, aliases expanded: a guard against alias bombs
/// ("billion laughs") and against files far larger than any config.
const MAX_NODES: usize = 1_000_000;

/// How deep collections may nest (aliases expanded), as in `serde_json`. Deeper files are
/// refused with an error that names the place, so that no walk over a tree (nor a clone or
/// a drop of it, nor the JSON the injector makes) can exhaust a thread's stack; real
/// configs (Kubernetes manifests and CRDs, workflows, Helm values) stay far below it.
pub const MAX_DEPTH: usize = 128;

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

/// The text the parser reads: the original with some bytes deleted, and the way back to
/// original byte offsets.
struct Patched<'a> {
    text: std::borrow::Cow<'a, str>,
    /// (offset in `text`, bytes deleted before it), sorted.
    shifts: Vec<(usize, usize)>,
}

impl<'a> Patched<'a> {
    /// `text` without the byte ranges `deletions` (original offsets, sorted, disjoint).
    fn new(text: &'a str, deletions: &[(usize, usize)]) -> Patched<'a> {
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
    fn original(&self, at: usize) -> usize {
        let i = self.shifts.partition_point(|&(p, _)| p <= at);
        at + if i == 0 { 0 } else { self.shifts[i - 1].1 }
    }
}

/// The deletions (offset, length in `text`) that let the parser read the empty block
/// scalar it rejected at byte `at`: `at` starts a document marker, the lines above it up
/// to the scalar's header hold only spaces, and the header ends with an indicator (`|1`,
/// `>2-`). The indentation digit and the spaces go. Empty when that is not the case.
fn empty_scalar_deletions(text: &str, at: usize) -> Vec<(usize, usize)> {
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

/// A parse that failed: the error, and the byte offset (in the text parsed) it is at.
struct Failed {
    error: YamlError,
    at: usize,
}

fn build(file: &str, source: &Patched<'_>) -> Result<Vec<Node>, Failed> {
    let text: &str = &source.text;
    let offsets = CharOffsets::new(text);
    let mut builder = Builder {
        file,
        text,
        offsets: &offsets,
        source,
        anchors: HashMap::new(),
        nodes: 0,
        aliased: 0,
        error_at: 0,
    };
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let failed = |b: &Builder<'_>, error| Failed {
        error,
        at: b.error_at,
    };
    loop {
        let (event, span) = builder.next(&mut parser).map_err(|e| failed(&builder, e))?;
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentEnd | Event::DocumentStart(_) => {}
            other => {
                let built = builder
                    .document(&mut parser, other, span)
                    .map_err(|e| failed(&builder, e))?;
                docs.push(built.node);
            }
        }
    }
    Ok(docs)
}

/// Character index to byte offset (saphyr counts characters).
struct CharOffsets {
    ascii: bool,
    bytes: Vec<usize>,
    len: usize,
}

impl CharOffsets {
    fn new(text: &str) -> CharOffsets {
        let ascii = text.is_ascii();
        CharOffsets {
            ascii,
            bytes: if ascii {
                Vec::new()
            } else {
                text.char_indices().map(|(i, _)| i).collect()
            },
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.ascii {
            char_index.min(self.len)
        } else {
            self.bytes.get(char_index).copied().unwrap_or(self.len)
        }
    }
}

/// The length of a quoted scalar written in `raw` (after its properties, if any), up to
/// and with its closing quote.
fn closing_quote(raw: &str, style: Style) -> Option<usize> {
    let bytes = raw.as_bytes();
    let quote = if style == Style::SingleQuoted {
        b'\''
    } else {
        b'"'
    };
    let mut i = bytes.iter().position(|b| *b == quote)? + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 2,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Which kind of collection a start event opens.
enum StartKind {
    Map,
    Other,
}

/// A collection being built.
struct Open {
    start: Pos,
    flow: bool,
    anchor: usize,
    tag: Option<String>,
    kind: OpenKind,
    size: usize,
    height: usize,
}

enum OpenKind {
    Seq(Vec<Node>),
    /// The entries, and a key waiting for its value.
    Map(Vec<(Node, Node)>, Option<Node>),
}

impl Open {
    fn add(&mut self, child: Built) {
        self.size += child.size;
        self.height = self.height.max(child.height);
        match &mut self.kind {
            OpenKind::Seq(items) => items.push(child.node),
            OpenKind::Map(entries, key) => match key.take() {
                None => *key = Some(child.node),
                Some(k) => entries.push((k, child.node)),
            },
        }
    }

    /// The finished node; `end` is where the closing event is.
    fn finish(self, end: Pos) -> Built {
        let flow = self.flow;
        let (value, start, end) = match self.kind {
            OpenKind::Seq(items) => {
                let end = match items.last() {
                    Some(n) if !flow => n.end,
                    _ => end,
                };
                (Value::Seq(items), self.start, end)
            }
            OpenKind::Map(entries, _) => {
                // A block mapping's start marker may sit on an anchor; its first key is
                // where it really starts. Its end is its last value's end.
                let start = match entries.first() {
                    Some((k, _)) if !flow => k.start,
                    _ => self.start,
                };
                let end = match entries.last() {
                    Some((_, v)) if !flow => v.end,
                    _ => end,
                };
                (Value::Map(entries), start, end)
            }
        };
        Built {
            node: Node {
                value,
                start,
                end,
                flow,
                alias: None,
                tag: self.tag,
            },
            size: self.size,
            height: self.height + 1,
        }
    }
}

/// A node as built, with what an alias to it costs: its node count and its height.
#[derive(Clone)]
struct Built {
    node: Node,
    size: usize,
    height: usize,
}

struct Builder<'a> {
    file: &'a str,
    text: &'a str,
    offsets: &'a CharOffsets,
    source: &'a Patched<'a>,
    anchors: HashMap<usize, Built>,
    nodes: usize,
    /// Of `nodes`, those that aliases added (copies of anchored nodes).
    aliased: usize,
    /// The byte offset (in `text`) of the last parser error.
    error_at: usize,
}

impl Builder<'_> {
    fn pos(&self, m: &saphyr_parser::Marker) -> Pos {
        Pos {
            line: m.line(),
            column: m.col() + 1,
            offset: self.source.original(self.offsets.byte(m.index())),
        }
    }

    /// The position of byte `to` of the parsed text, counted from `from` (before it).
    fn pos_after(&self, from: &saphyr_parser::Marker, to: usize) -> Pos {
        let start = self.offsets.byte(from.index());
        let between = &self.text[start..to];
        let (line, column) = match between.rfind('\n') {
            None => (from.line(), from.col() + 1 + between.chars().count()),
            Some(i) => (
                from.line() + between.matches('\n').count(),
                between[i + 1..].chars().count() + 1,
            ),
        };
        Pos {
            line,
            column,
            offset: self.source.original(to),
        }
    }

    fn error(&self, pos: Pos, message: impl Into<String>) -> YamlError {
        YamlError {
            file: self.file.to_string(),
            line: pos.line.max(1),
            column: pos.column.max(1),
            message: message.into(),
        }
    }

    fn next<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(Event<'i>, Span), YamlError> {
        match parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => {
                self.error_at = self.offsets.byte(e.marker().index());
                let pos = self.pos(e.marker());
                Err(self.error(pos, format!("not valid YAML: {}", e.info())))
            }
            None => Err(self.error(Pos::default(), "the YAML stream ends early")),
        }
    }

    /// Counts `n` more nodes (`aliased`: copies an alias adds), refusing a stream past
    /// [`MAX_NODES`] with the reason that is true: aliases that expand it, or its own size.
    fn count(&mut self, pos: Pos, n: usize, aliased: bool) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if aliased {
            self.aliased = self.aliased.saturating_add(n);
        }
        if self.nodes > MAX_NODES {
            let written = self.nodes - self.aliased;
            let message = if self.aliased > written {
                format!(
                    "aliases expand this document past a million nodes ({} of the {} come from \
                     aliases); refusing to expand it",
                    self.aliased, self.nodes
                )
            } else {
                format!(
                    "this file holds more than a million YAML nodes ({} written out, {} from \
                     aliases) by the time it reaches here ({} bytes in all); strongroom does \
                     not load files that large: split it",
                    written,
                    self.aliased,
                    self.text.len()
                )
            };
            return Err(self.error(pos, message));
        }
        Ok(())
    }

    fn too_deep(&self, pos: Pos, through_alias: bool) -> YamlError {
        self.error(
            pos,
            format!(
                "collections nest deeper than {MAX_DEPTH} levels here{}; strongroom does not \
                 load such files (flatten the structure)",
                if through_alias {
                    " (through this alias)"
                } else {
                    ""
                }
            ),
        )
    }

    /// Builds the document whose root starts with `event`, with an explicit stack of the
    /// open collections (no recursion, so no depth can exhaust the thread's stack), refusing
    /// nesting past [`MAX_DEPTH`].
    fn document<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        event: Event<'i>,
        span: Span,
    ) -> Result<Built, YamlError> {
        let mut stack: Vec<Open> = Vec::new();
        let mut pending = Some((event, span));
        loop {
            let (event, span) = match pending.take() {
                Some(pair) => pair,
                None => self.next(parser)?,
            };
            let depth = stack.len() + 1;
            let in_flow = stack.last().is_some_and(|o| o.flow);
            let event_kind = match event {
                Event::MappingStart(..) => StartKind::Map,
                _ => StartKind::Other,
            };
            let start = self.pos(&span.start);
            // A flow collection's start event spans its properties and the bracket.
            let opens_flow = self.text[..self.offsets.byte(span.end.index())].ends_with(['{', '[']);
            let tag_of = |t: Option<std::borrow::Cow<'_, saphyr_parser::Tag>>| {
                t.map(|t| format!("{}{}", t.handle, t.suffix))
            };
            let (built, anchor) = match event {
                Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                    if depth > MAX_DEPTH {
                        return Err(self.too_deep(start, false));
                    }
                    self.count(start, 1, false)?;
                    let kind = if matches!(event_kind, StartKind::Map) {
                        OpenKind::Map(Vec::new(), None)
                    } else {
                        OpenKind::Seq(Vec::new())
                    };
                    stack.push(Open {
                        start,
                        flow: in_flow || opens_flow,
                        anchor,
                        tag: tag_of(tag),
                        kind,
                        size: 1,
                        height: 0,
                    });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let Some(open) = stack.pop() else {
                        return Err(self.error(start, "unexpected end of a collection"));
                    };
                    // A flow collection ends at its bracket (the event spans a comment after
                    // it too); a block one where its last entry ends.
                    let at = self.offsets.byte(span.start.index());
                    let end = if open.flow && self.text[at..].starts_with(['}', ']']) {
                        self.pos_after(&span.start, at + 1)
                    } else {
                        self.pos(&span.end)
                    };
                    let anchor = open.anchor;
                    (open.finish(end), anchor)
                }
                Event::Scalar(text, style, anchor, tag) => {
                    if depth > MAX_DEPTH {
                        return Err(self.too_deep(start, false));
                    }
                    self.count(start, 1, false)?;
                    let style = match style {
                        ScalarStyle::Plain => Style::Plain,
                        ScalarStyle::SingleQuoted => Style::SingleQuoted,
                        ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                        _ => Style::Block,
                    };
                    // A quoted scalar ends at its closing quote (the event spans the
                    // spaces and a comment after it too).
                    let from = self.offsets.byte(span.start.index());
                    let to = self.offsets.byte(span.end.index());
                    let end = match style {
                        Style::SingleQuoted | Style::DoubleQuoted => {
                            match closing_quote(&self.text[from..to], style) {
                                Some(len) => self.pos_after(&span.start, from + len),
                                None => self.pos(&span.end),
                            }
                        }
                        _ => self.pos(&span.end),
                    };
                    let node = Node {
                        value: Value::Scalar(text.into_owned(), style),
                        start,
                        end,
                        flow: in_flow,
                        alias: None,
                        tag: tag_of(tag),
                    };
                    (
                        Built {
                            node,
                            size: 1,
                            height: 1,
                        },
                        anchor,
                    )
                }
                Event::Alias(id) => {
                    let Some(target) = self.anchors.get(&id) else {
                        return Err(
                            self.error(start, "an alias names an anchor that is not defined")
                        );
                    };
                    if depth + target.height - 1 > MAX_DEPTH {
                        return Err(self.too_deep(start, true));
                    }
                    let mut built = target.clone();
                    built.node.alias = Some(start);
                    self.count(start, built.size, true)?;
                    (built, 0)
                }
                _ => return Err(self.error(start, "unexpected YAML event")),
            };
            if anchor != 0 {
                self.anchors.insert(anchor, built.clone());
            }
            match stack.last_mut() {
                None => return Ok(built),
                Some(parent) => parent.add(built),
            }
        }
    }
}

#[cfg(test)]
mod tests;
