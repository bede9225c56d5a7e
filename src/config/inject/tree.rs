//! The config tree an injection writes into: YAML as JSON, inject paths, and the writes of
//! decrypted fields (or, in development, of `{{env.X}}` fallbacks) at them.

use std::fmt;

use secrecy::ExposeSecret;
use serde_json::Value as Json;
use zeroize::Zeroize;

use crate::config::yaml::{Node, Style, Value};
use crate::config::{template_spans, templates, ManifestEntry, Seg};
use crate::error::{Error, Result};
use crate::handlers::Fields;

/// A segment of an inject path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathSeg<'a> {
    /// A key as written.
    Literal(&'a str),
    /// `{name}`: the value of the credential's field `name`.
    Field(&'a str),
}

/// Splits `{block}.config.api_key` into the segments after `{block}`.
pub(crate) fn path_segments(template: &str) -> std::result::Result<Vec<PathSeg<'_>>, String> {
    let Some(rest) = template.strip_prefix("{block}") else {
        return Err(format!(
            "inject path `{template}` must start with `{{block}}` (the consuming block)"
        ));
    };
    if rest.is_empty() {
        return Err(format!(
            "inject path `{template}` names no key inside the block"
        ));
    }
    let Some(rest) = rest.strip_prefix('.') else {
        return Err(format!(
            "inject path `{template}`: `{{block}}` must be followed by `.`"
        ));
    };
    rest.split('.')
        .map(|seg| {
            if seg.is_empty() {
                Err(format!("inject path `{template}` has an empty segment"))
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    Err(format!(
                        "inject path `{template}`: `{seg}` is not a field placeholder"
                    ))
                } else {
                    Ok(PathSeg::Field(name))
                }
            } else if seg.contains(['{', '}']) {
                Err(format!(
                    "inject path `{template}`: a placeholder must be a whole segment (`{seg}`)"
                ))
            } else {
                Ok(PathSeg::Literal(seg))
            }
        })
        .collect()
}

/// A YAML node as JSON: plain scalars typed (null, booleans, numbers), quoted ones strings,
/// `<<` merge keys applied (a mapping's own keys first, then the merged mappings' in
/// order), as the walks that find the blocks see the data.
pub(super) fn to_json(node: &Node) -> Json {
    match &node.value {
        Value::Map(_) => Json::Object(
            node.merged_entries()
                .into_iter()
                .map(|e| {
                    (
                        e.key.as_str().unwrap_or_default().to_string(),
                        to_json(e.value),
                    )
                })
                .collect(),
        ),
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Scalar(s, Style::Plain) => match s.as_str() {
            "~" | "null" | "Null" | "NULL" | "" => Json::Null,
            "true" | "True" | "TRUE" => Json::Bool(true),
            "false" | "False" | "FALSE" => Json::Bool(false),
            _ => s
                .parse::<i64>()
                .map(Json::from)
                .ok()
                .or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Json::from)
                })
                .unwrap_or_else(|| Json::String(s.clone())),
        },
        Value::Scalar(s, _) => Json::String(s.clone()),
    }
}

/// A config tree with decrypted fields written in. `Debug` and [`InjectedConfig::masked`]
/// show `********` in place of every injected value; the values are zeroised on drop.
pub struct InjectedConfig {
    pub(super) docs: Vec<Json>,
    /// (document, path) of every injected value.
    pub(super) injected: Vec<(usize, Vec<String>)>,
}

impl InjectedConfig {
    /// The documents, with secret values in clear: hand them to the agent runtime.
    pub fn expose(&self) -> &[Json] {
        &self.docs
    }

    /// The documents with every injected value replaced by `********`.
    pub fn masked(&self) -> Vec<Json> {
        let mut docs = self.docs.clone();
        for (doc, path) in &self.injected {
            if let Some(v) = pointer_mut(&mut docs[*doc], path) {
                *v = Json::String("********".into());
            }
        }
        docs
    }

    /// How many values were injected.
    pub fn injected_count(&self) -> usize {
        self.injected.len()
    }
}

impl fmt::Debug for InjectedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectedConfig")
            .field("docs", &self.masked())
            .finish()
    }
}

impl Drop for InjectedConfig {
    fn drop(&mut self) {
        for (doc, path) in &self.injected {
            if let Some(Json::String(s)) = pointer_mut(&mut self.docs[*doc], path) {
                s.zeroize();
            }
        }
    }
}

fn pointer_mut<'a>(root: &'a mut Json, path: &[String]) -> Option<&'a mut Json> {
    let mut node = root;
    for key in path {
        node = match node {
            Json::Object(map) => map.get_mut(key)?,
            Json::Array(items) => items.get_mut(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The JSON path of a block: keys and indices.
fn block_json_path(entry: &ManifestEntry) -> Vec<String> {
    entry
        .block
        .segs
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i, _) => i.to_string(),
        })
        .collect()
}

/// Writes `fields` at the slot's inject paths (every field at `{block}.config.NAME` when the
/// slot names none). Missing mappings on the way are created.
pub(super) fn write_fields(
    config: &mut InjectedConfig,
    entry: &ManifestEntry,
    fields: &Fields,
) -> Result<()> {
    let default;
    let inject = if entry.slot.inject.is_empty() {
        default = fields
            .keys()
            .map(|k| (k.clone(), format!("{{block}}.config.{k}")))
            .collect::<std::collections::BTreeMap<_, _>>();
        &default
    } else {
        &entry.slot.inject
    };
    for (field, template) in inject {
        let Some(value) = fields.get(field) else {
            continue; // an optional field the credential does not have
        };
        let mut path = block_json_path(entry);
        for seg in path_segments(template).map_err(|m| Error::invalid("inject", m))? {
            match seg {
                PathSeg::Literal(k) => path.push(k.to_string()),
                PathSeg::Field(name) => {
                    let v = fields.get(name).ok_or_else(|| {
                        Error::invalid(
                            "inject",
                            format!(
                                "{}: inject path `{template}` needs field `{name}`, which the \
                                 credential does not have",
                                entry.describe()
                            ),
                        )
                    })?;
                    path.push(v.expose_secret().to_string());
                }
            }
        }
        set_path(
            &mut config.docs[entry.block.doc],
            &path,
            value.expose_secret(),
        )
        .map_err(|m| Error::invalid("inject", format!("{}: {m}", entry.describe())))?;
        config.injected.push((entry.block.doc, path));
    }
    Ok(())
}

fn set_path(root: &mut Json, path: &[String], value: &str) -> std::result::Result<(), String> {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        node = match node {
            Json::Object(map) => {
                if last {
                    map.insert(key.clone(), Json::String(value.to_string()));
                    return Ok(());
                }
                let next = map
                    .entry(key.clone())
                    .or_insert_with(|| Json::Object(Default::default()));
                if next.is_null() {
                    *next = Json::Object(Default::default());
                }
                next
            }
            Json::Array(items) => {
                let idx: usize = key
                    .parse()
                    .map_err(|_| format!("`{key}` is not an index of a sequence"))?;
                let len = items.len();
                let item = items
                    .get_mut(idx)
                    .ok_or_else(|| format!("index {idx} is past the end of a sequence of {len}"))?;
                if last {
                    *item = Json::String(value.to_string());
                    return Ok(());
                }
                item
            }
            _ => {
                return Err(format!(
                    "the inject path does not resolve: `{}` is not a mapping",
                    path[..i].join(".")
                ))
            }
        };
    }
    Err("the inject path is empty".into())
}

/// Development mode: fills `{{env.X}}` templates of a block from the environment.
pub(super) fn fill_templates(
    config: &mut InjectedConfig,
    entry: &ManifestEntry,
    cause: &Error,
) -> Result<()> {
    fn walk(
        node: &mut Json,
        path: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, String)>,
        cause: &Error,
        entry: &ManifestEntry,
    ) -> Result<()> {
        match node {
            Json::Object(map) => {
                for (k, v) in map.iter_mut() {
                    path.push(k.clone());
                    walk(v, path, out, cause, entry)?;
                    path.pop();
                }
            }
            Json::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    walk(v, path, out, cause, entry)?;
                    path.pop();
                }
            }
            Json::String(s) => {
                let found = templates(s);
                if found.is_empty() {
                    return Ok(());
                }
                let mut rendered = s.clone();
                for (kind, name) in found {
                    let value = match kind {
                        "env" => std::env::var(name).ok(),
                        _ => None,
                    };
                    let Some(value) = value else {
                        return Err(Error::invalid(
                            "credential",
                            format!(
                                "{}: {cause}; the development fallback `{{{{{kind}.{name}}}}}` \
                                 has no value either",
                                entry.describe()
                            ),
                        ));
                    };
                    rendered = replace_template(&rendered, kind, name, &value);
                }
                *s = rendered;
                out.push((path.clone(), String::new()));
            }
            _ => {}
        }
        Ok(())
    }
    let base = block_json_path(entry);
    let doc = entry.block.doc;
    let Some(block) = pointer_mut(&mut config.docs[doc], &base) else {
        return Ok(());
    };
    let mut filled = Vec::new();
    let mut path = base.clone();
    walk(block, &mut path, &mut filled, cause, entry)?;
    for (p, _) in filled {
        config.injected.push((doc, p));
    }
    Ok(())
}

fn replace_template(text: &str, kind: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for t in template_spans(text) {
        if t.kind == kind && t.name == name {
            out.push_str(&text[from..t.range.start]);
            out.push_str(value);
            from = t.range.end;
        }
    }
    out.push_str(&text[from..]);
    out
}
