//! The builder: `saphyr-parser` events to a tree of [`Node`]s with positions, aliases
//! expanded, and the caps on size and nesting that keep that safe.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::node::{Node, Pos, Style, Value, YamlError};
use super::patch::Patched;

/// No stream may hold more nodes than this, aliases expanded: a guard against alias bombs
/// ("billion laughs") and against files far larger than any config.
const MAX_NODES: usize = 1_000_000;

/// How deep collections may nest (aliases expanded), as in `serde_json`. Deeper files are
/// refused with an error that names the place, so that no walk over a tree (nor a clone or
/// a drop of it, nor the JSON the injector makes) can exhaust a thread's stack; real
/// configs (Kubernetes manifests and CRDs, workflows, Helm values) stay far below it.
pub const MAX_DEPTH: usize = 128;

/// A parse that failed: the error, and the byte offset (in the text parsed) it is at.
pub(super) struct Failed {
    pub(super) error: YamlError,
    pub(super) at: usize,
}

pub(super) fn build(file: &str, source: &Patched<'_>) -> Result<Vec<Node>, Failed> {
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
