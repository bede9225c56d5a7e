//! The tree: nodes with their places in the file, and the errors that point there.

use std::fmt;

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
