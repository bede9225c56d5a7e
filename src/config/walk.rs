//! Finding blocks and templates in a config tree: the template matcher and the one walk
//! the compiler, the injector, the migrator and the warnings share.

use super::*;

/// The `{{secret.X}}` and `{{env.X}}` templates in a string: `(kind, name)`.
///
/// A template is exactly `{{secret.NAME}}` or `{{env.NAME}}` (no spaces; a name of
/// letters, digits, `_`, `-` and `.`) not preceded by `$`: `${{ secrets.X }}` and
/// `${{ env.X }}` are GitHub Actions expressions, and `{{ .Values.x }}` is Helm's.
pub fn templates(text: &str) -> Vec<(&str, &str)> {
    template_spans(text)
        .into_iter()
        .map(|t| (t.kind, t.name))
        .collect()
}

/// A template in a string: where it is, its kind (`secret` or `env`) and its name.
pub(crate) struct TemplateSpan<'a> {
    pub range: std::ops::Range<usize>,
    pub kind: &'a str,
    pub name: &'a str,
}

/// The templates of a string (see [`templates`]), in order.
pub(crate) fn template_spans(text: &str) -> Vec<TemplateSpan<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("{{") {
        let open = from + i;
        from = open + 1;
        if text[..open].ends_with('$') {
            continue;
        }
        let after = &text[open + 2..];
        let Some((kind, rest)) = ["secret", "env"].into_iter().find_map(|kind| {
            after
                .strip_prefix(kind)
                .and_then(|r| r.strip_prefix('.'))
                .map(|r| (kind, r))
        }) else {
            continue;
        };
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(rest.len());
        if len == 0 || !rest[len..].starts_with("}}") {
            continue;
        }
        let end = open + 2 + kind.len() + 1 + len + 2;
        out.push(TemplateSpan {
            range: open..end,
            kind,
            name: &rest[..len],
        });
        from = end;
    }
    out
}

/// Whether any scalar in `node` (keys included) holds an inline template.
pub(crate) fn has_templates(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(s, _) => s.contains("{{") && !template_spans(s).is_empty(),
        Value::Seq(items) => items.iter().any(has_templates),
        Value::Map(entries) => entries
            .iter()
            .any(|(k, v)| has_templates(k) || has_templates(v)),
    }
}

/// Whether any mapping in `node` (keys included) has a `credential` key.
pub(super) fn has_credential_key(node: &Node) -> bool {
    match &node.value {
        Value::Scalar(..) => false,
        Value::Seq(items) => items.iter().any(has_credential_key),
        Value::Map(entries) => entries.iter().any(|(k, v)| {
            k.as_str() == Some("credential") || has_credential_key(k) || has_credential_key(v)
        }),
    }
}

/// The labels of a sequence's items (see [`Seg::Index`]).
pub(super) fn item_labels(items: &[Node]) -> Vec<Option<String>> {
    let labels: Vec<Option<&str>> = items
        .iter()
        .map(|item| {
            ["id", "name"]
                .into_iter()
                .find_map(|k| item.get(k).and_then(Node::as_str))
                .filter(|l| {
                    !l.is_empty()
                        && !l.bytes().all(|b| b.is_ascii_digit())
                        && !l.chars().any(|c| matches!(c, '[' | ']') || c.is_control())
                })
        })
        .collect();
    let mut count: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in labels.iter().flatten() {
        *count.entry(l).or_default() += 1;
    }
    labels
        .into_iter()
        .map(|l| l.filter(|l| count[l] == 1).map(str::to_string))
        .collect()
}

/// A mapping on the way down to a node, as [`walk`] sees it.
pub(crate) struct Frame<'a> {
    /// The mapping.
    pub map: &'a Node,
    /// The key being walked (a key merged in through `<<` under its own name).
    pub key: &'a str,
    /// That key in the mapping's own text: the key, or the `<<` key it was merged through.
    pub key_node: &'a Node,
    /// The length of the path to the mapping.
    pub depth: usize,
    /// The mapping has a `provider` or a `credential` key (merges included).
    pub names_provider_or_credential: bool,
    /// The mapping has a `credential` key (merges included).
    pub has_credential: bool,
}

/// What a walk over a document reports.
pub(crate) trait Visit<'a> {
    /// A mapping that can be a block: a document's root, a mapping value, or a sequence
    /// item; `key` is the nearest mapping key above it (through sequences), `None` at the
    /// root.
    fn mapping(&mut self, _node: &'a Node, _path: &[Seg], _key: Option<&'a str>) {}
    /// A scalar that holds templates, the mappings above it, and the nearest alias above
    /// it (or at it) when it is reached through one.
    fn template(
        &mut self,
        _scalar: &'a Node,
        _path: &[Seg],
        _frames: &[Frame<'a>],
        _alias: Option<Pos>,
    ) {
    }
    /// A mapping key that is not a scalar (`? [x]`), which the walk does not enter.
    fn odd_key(&mut self, _key: &'a Node, _value: &'a Node, _path: &[Seg]) {}
}

/// Walks a document in file order: every mapping's data (`<<` merges applied, a
/// `credential:` value not entered), sequences with their item labels, aliases expanded.
/// It keeps its own stack, so the depth of a document costs heap, not the thread's stack.
pub(crate) fn walk<'a>(root: &'a Node, visit: &mut impl Visit<'a>) {
    /// What is left to do, last first.
    enum Step<'a> {
        /// Walk a node: the nearest mapping key above it, and the alias it is reached
        /// through.
        Node(&'a Node, Option<&'a str>, Option<Pos>),
        /// Go down one step: into a sequence item, or (with a frame) into a mapping's
        /// entry.
        Enter(
            Seg,
            Option<Frame<'a>>,
            &'a Node,
            Option<&'a str>,
            Option<Pos>,
        ),
        /// Report a mapping key that is not a scalar.
        OddKey(&'a Node, &'a Node),
        /// Come back up one step (and drop the frame, if there is one).
        Leave(bool),
    }
    let mut path: Vec<Seg> = Vec::new();
    let mut frames: Vec<Frame<'a>> = Vec::new();
    let mut todo = vec![Step::Node(root, None, None)];
    if root.is_map() {
        visit.mapping(root, &path, None);
    }
    while let Some(step) = todo.pop() {
        match step {
            Step::Enter(seg, frame, node, key, alias) => {
                path.push(seg);
                let framed = frame.is_some();
                frames.extend(frame);
                if node.is_map() {
                    visit.mapping(node, &path, key);
                }
                todo.push(Step::Leave(framed));
                todo.push(Step::Node(node, key, alias));
            }
            Step::Leave(framed) => {
                path.pop();
                if framed {
                    frames.pop();
                }
            }
            Step::OddKey(k, v) => visit.odd_key(k, v, &path),
            Step::Node(node, key, alias) => {
                let alias = node.alias.or(alias);
                match &node.value {
                    Value::Scalar(text, _) => {
                        if text.contains("{{") && !template_spans(text).is_empty() {
                            visit.template(node, &path, &frames, alias);
                        }
                    }
                    Value::Seq(items) => {
                        let labeled: Vec<_> = items.iter().zip(item_labels(items)).collect();
                        for (i, (item, label)) in labeled.into_iter().enumerate().rev() {
                            todo.push(Step::Enter(Seg::Index(i, label), None, item, key, alias));
                        }
                    }
                    Value::Map(_) => {
                        let entries = node.merged_entries();
                        let has_credential =
                            entries.iter().any(|e| e.key.as_str() == Some("credential"));
                        let names_provider_or_credential = has_credential
                            || entries.iter().any(|e| e.key.as_str() == Some("provider"));
                        for e in entries.into_iter().rev() {
                            let Some(name) = e.key.as_str() else {
                                todo.push(Step::OddKey(e.key, e.value));
                                continue;
                            };
                            if name == "credential" {
                                continue;
                            }
                            let frame = Frame {
                                map: node,
                                key: name,
                                key_node: e.via.map_or(e.key, |m| m.key),
                                depth: path.len(),
                                names_provider_or_credential,
                                has_credential,
                            };
                            let alias = e.via.map_or(alias, |m| m.source.alias.or(alias));
                            todo.push(Step::Enter(
                                Seg::Key(name.to_string()),
                                Some(frame),
                                e.value,
                                Some(name),
                                alias,
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// A mapping that holds inline templates somewhere below it and names no credential: the
/// block the migrator adds a `credential:` key to.
pub(crate) struct TemplateBlock<'a> {
    pub path: BlockPath,
    pub node: &'a Node,
    /// The key (in `node`'s own text) before which the `credential:` lines go first.
    pub first_key: &'a Node,
    /// The template scalars, in walk order, each with the alias it was reached through.
    pub scalars: Vec<(&'a Node, Option<Pos>)>,
}

/// What the template walk finds in a document.
pub(crate) struct TemplateFindings<'a> {
    /// The blocks, in file order of their first template.
    pub blocks: Vec<TemplateBlock<'a>>,
    /// Mapping keys that are not scalars with templates (`true`) or credentials below them.
    pub odd_keys: Vec<(&'a Node, bool)>,
}

/// Finds the blocks with inline templates. The block of a template is the nearest mapping
/// above it with a `provider` or `credential` key; failing that, the mapping that holds its
/// `config`, `env`, `headers` or `auth` key; failing that, the mapping that holds it. A
/// template reached through an alias counts for the block it is reached from; a block
/// reached through an alias is the anchored mapping (one block however many aliases reach
/// it). Merge keys (`<<`) count as the merging mapping's own keys.
pub(crate) fn template_blocks(doc_index: usize, root: &Node) -> TemplateFindings<'_> {
    struct Finder<'a> {
        doc: usize,
        blocks: Vec<TemplateBlock<'a>>,
        /// A block's mapping (start and end offsets: an alias's copy is its anchor's) to
        /// its index in `blocks`.
        index: std::collections::HashMap<(usize, usize), usize>,
        odd_keys: Vec<(&'a Node, bool)>,
    }
    impl<'a> Visit<'a> for Finder<'a> {
        fn template(
            &mut self,
            scalar: &'a Node,
            path: &[Seg],
            frames: &[Frame<'a>],
            alias: Option<Pos>,
        ) {
            let pick = frames
                .iter()
                .rposition(|f| f.names_provider_or_credential)
                .or_else(|| {
                    frames
                        .iter()
                        .rposition(|f| matches!(f.key, "config" | "env" | "headers" | "auth"))
                })
                .or_else(|| frames.len().checked_sub(1));
            let Some(f) = pick.map(|i| &frames[i]) else {
                return;
            };
            if f.has_credential {
                return;
            }
            let id = (f.map.start.offset, f.map.end.offset);
            match self.index.get(&id) {
                Some(&i) => {
                    let b = &mut self.blocks[i];
                    if f.key_node.start.offset < b.first_key.start.offset {
                        b.first_key = f.key_node;
                    }
                    b.scalars.push((scalar, alias));
                }
                None => {
                    self.index.insert(id, self.blocks.len());
                    self.blocks.push(TemplateBlock {
                        path: BlockPath {
                            doc: self.doc,
                            segs: path[..f.depth].to_vec(),
                        },
                        node: f.map,
                        first_key: f.key_node,
                        scalars: vec![(scalar, alias)],
                    });
                }
            }
        }

        fn odd_key(&mut self, key: &'a Node, value: &'a Node, _path: &[Seg]) {
            let templates = has_templates(key) || has_templates(value);
            if templates || has_credential_key(key) || has_credential_key(value) {
                self.odd_keys.push((key, templates));
            }
        }
    }
    let mut finder = Finder {
        doc: doc_index,
        blocks: Vec::new(),
        index: std::collections::HashMap::new(),
        odd_keys: Vec::new(),
    };
    walk(root, &mut finder);
    TemplateFindings {
        blocks: finder.blocks,
        odd_keys: finder.odd_keys,
    }
}

/// The message for a mapping key that is not a scalar with templates or credentials below.
pub(crate) fn odd_key_message(credential: bool) -> String {
    format!(
        "a mapping key here is not a scalar (`? [...]` or `? {{...}}`), and {} below it; \
         strongroom names blocks by scalar keys only, so it cannot {} — use a plain key",
        if credential {
            "a `credential:` is"
        } else {
            "inline templates are"
        },
        if credential {
            "inject that credential"
        } else {
            "migrate those templates"
        }
    )
}
