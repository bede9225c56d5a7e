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
    /// Written in flow style (`{...}`, `[...]`).
    pub flow: bool,
    /// Reached through an alias (`*name`): its positions are the anchored node's.
    pub alias: bool,
}

impl Node {
    /// The value of key `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value of key `key` in a mapping.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
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
}

/// Aliases may not expand a document past this many nodes ("billion laughs").
const MAX_NODES: usize = 1_000_000;

/// Parses every document of a YAML stream.
pub fn parse(file: &str, text: &str) -> Result<Vec<Node>, YamlError> {
    let offsets = CharOffsets::new(text);
    let mut builder = Builder {
        file,
        text,
        offsets: &offsets,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    loop {
        let (event, span) = builder.next(&mut parser)?;
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentEnd | Event::DocumentStart(_) => {}
            other => {
                let node = builder.node(&mut parser, other, span)?;
                docs.push(node);
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

struct Builder<'a> {
    file: &'a str,
    text: &'a str,
    offsets: &'a CharOffsets,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl Builder<'_> {
    fn pos(&self, m: &saphyr_parser::Marker) -> Pos {
        Pos {
            line: m.line(),
            column: m.col() + 1,
            offset: self.offsets.byte(m.index()),
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
        &self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(Event<'i>, Span), YamlError> {
        match parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => {
                let pos = self.pos(e.marker());
                Err(self.error(pos, format!("not valid YAML: {}", e.info())))
            }
            None => Err(self.error(Pos::default(), "the YAML stream ends early")),
        }
    }

    fn count(&mut self, pos: Pos, n: usize) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.error(
                pos,
                "aliases expand this document past a million nodes; refusing to expand it",
            ));
        }
        Ok(())
    }

    fn node<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        event: Event<'i>,
        span: Span,
    ) -> Result<Node, YamlError> {
        let start = self.pos(&span.start);
        self.count(start, 1)?;
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted => Style::SingleQuoted,
                    ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                    _ => Style::Block,
                };
                (
                    Node {
                        value: Value::Scalar(text.into_owned(), style),
                        start,
                        end: self.pos(&span.end),
                        flow: false,
                        alias: false,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id).cloned() else {
                    return Err(self.error(start, "an alias names an anchor that is not defined"));
                };
                let size = count_nodes(&target);
                self.count(start, size)?;
                let mut node = target;
                node.alias = true;
                return Ok(node);
            }
            Event::SequenceStart(anchor, _) => {
                let flow = self.text[start.offset..].starts_with('[');
                let mut items = Vec::new();
                let end = loop {
                    let (ev, sp) = self.next(parser)?;
                    if matches!(ev, Event::SequenceEnd) {
                        break self.pos(&sp.end);
                    }
                    items.push(self.node(parser, ev, sp)?);
                };
                let end = items.last().map_or(end, |n| if flow { end } else { n.end });
                (
                    Node {
                        value: Value::Seq(items),
                        start,
                        end,
                        flow,
                        alias: false,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let flow = self.text[start.offset..].starts_with('{');
                let mut entries = Vec::new();
                let end = loop {
                    let (ev, sp) = self.next(parser)?;
                    if matches!(ev, Event::MappingEnd) {
                        break self.pos(&sp.end);
                    }
                    let key = self.node(parser, ev, sp)?;
                    let (ev, sp) = self.next(parser)?;
                    let value = self.node(parser, ev, sp)?;
                    entries.push((key, value));
                };
                // A block mapping's start marker may sit on an anchor; its first key is
                // where it really starts. Its end is its last value's end.
                let start = match entries.first() {
                    Some((k, _)) if !flow => k.start,
                    _ => start,
                };
                let end = entries
                    .last()
                    .map_or(end, |(_, v)| if flow { end } else { v.end });
                (
                    Node {
                        value: Value::Map(entries),
                        start,
                        end,
                        flow,
                        alias: false,
                    },
                    anchor,
                )
            }
            _ => return Err(self.error(start, "unexpected YAML event")),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Scalar(..) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_lines_columns_and_byte_offsets() {
        let text = "# é\nagents:\n  - id: a\n    brain: {provider: \"x\"}\n";
        let docs = parse("app.yaml", text).expect("parse");
        let agents = docs[0].get("agents").expect("agents");
        let Value::Seq(items) = &agents.value else {
            panic!("seq")
        };
        let brain = items[0].get("brain").expect("brain");
        assert!(brain.flow);
        let provider = brain.get("provider").expect("provider");
        assert_eq!(provider.as_str(), Some("x"));
        assert_eq!(provider.start.line, 4);
        assert_eq!(&text[provider.start.offset..provider.end.offset], "\"x\"");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("bad.yaml", "a: 1\nb: [1, 2\n").expect_err("bad");
        assert_eq!(err.file, "bad.yaml");
        assert!(err.line >= 2, "{err}");
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let docs = parse("a.yaml", "x: &a {k: v}\ny: *a\n").expect("parse");
        assert!(docs[0].get("y").expect("y").alias);
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse("bomb.yaml", &bomb).expect_err("bomb");
        assert!(err.message.contains("million"), "{err}");
    }
}
