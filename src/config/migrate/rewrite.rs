//! A migration's rewrite and its check: the planned insertions applied to the text in
//! one pass, and the result parsed again and held against the original data, where only
//! the planned `credential:` entries, each in its block, may be new.

use std::ops::Range;

use crate::config::yaml::{self, Node, Pos, Value};
use crate::config::BlockPath;

/// The comment added after a template the migration keeps as the development fallback.
pub const FALLBACK_COMMENT: &str = "# dev-only fallback";

/// One block's planned change: the `credential:` lines and the fallback comments.
pub(super) struct Plan {
    pub(super) path: BlockPath,
    /// The mapping's identity: start and end offsets (an alias's copy has its anchor's).
    pub(super) block: (usize, usize),
    pub(super) at: Pos,
    /// Where the `credential:` lines go, and the lines.
    pub(super) insert: (usize, String),
    pub(super) comments: Vec<usize>,
    pub(super) reference: String,
    pub(super) provider: Option<String>,
}

/// A text with some plans applied.
pub(super) struct Rewrite {
    pub(super) text: String,
    /// The insertions: (offset in the original, text), sorted.
    pub(super) edits: Vec<(usize, String)>,
    /// Where each `credential:` insertion is in `text`, with its plan; sorted.
    inserted: Vec<(Range<usize>, usize)>,
}

impl Rewrite {
    /// `text` with the plans `set` applied, in one pass.
    pub(super) fn of(text: &str, plans: &[Plan], set: &[usize]) -> Rewrite {
        let mut edits: Vec<(usize, String, Option<usize>)> = Vec::new();
        for &p in set {
            let plan = &plans[p];
            edits.push((plan.insert.0, plan.insert.1.clone(), Some(p)));
            for &c in &plan.comments {
                edits.push((c, format!("  {FALLBACK_COMMENT}"), None));
            }
        }
        // At one offset, the `credential:` lines go before a comment.
        edits.sort_by_key(|(at, _, plan)| (*at, plan.is_none()));
        let grown: usize = edits.iter().map(|e| e.1.len()).sum();
        let mut out = String::with_capacity(text.len() + grown);
        let mut inserted = Vec::new();
        let mut from = 0;
        for (at, piece, plan) in &edits {
            out.push_str(&text[from..*at]);
            if let Some(p) = plan {
                inserted.push((out.len()..out.len() + piece.len(), *p));
            }
            out.push_str(piece);
            from = *at;
        }
        out.push_str(&text[from..]);
        Rewrite {
            text: out,
            edits: edits
                .into_iter()
                .map(|(at, piece, _)| (at, piece))
                .collect(),
            inserted,
        }
    }
}

/// `text` with the plans `set` applied, when its data is the original's plus exactly the
/// planned `credential:` entries, each in its block; else why not.
pub(super) fn rewrite(
    file: &str,
    text: &str,
    docs: &[Node],
    plans: &[Plan],
    set: &[usize],
) -> Result<Rewrite, String> {
    let rewritten = Rewrite::of(text, plans, set);
    if set.is_empty() {
        return Ok(rewritten);
    }
    let after = yaml::parse(file, &rewritten.text)
        .map_err(|e| format!("the rewritten file would not parse ({e})"))?;
    if docs.len() != after.len() {
        return Err("the rewritten file would have another number of documents".into());
    }
    let mut check = Check {
        plans,
        inserted: &rewritten.inserted,
        used: vec![false; plans.len()],
    };
    for (o, m) in docs.iter().zip(&after) {
        check.same(o, m).map_err(|at| {
            format!(
                "the rewritten file would not keep the data at line {}, column {}",
                at.line, at.column
            )
        })?;
    }
    if let Some(&p) = set.iter().find(|&&p| !check.used[p]) {
        return Err(format!(
            "the `credential:` lines would not land in block {}",
            plans[p].path
        ));
    }
    Ok(rewritten)
}

/// The data check of a rewrite: the original tree against the rewritten one, where the
/// rewritten one may have, in a planned block, the planned `credential:` entry.
struct Check<'p> {
    plans: &'p [Plan],
    /// Inserted ranges in the rewritten text, sorted, with their plan.
    inserted: &'p [(Range<usize>, usize)],
    used: Vec<bool>,
}

impl Check<'_> {
    /// The plan whose insertion holds offset `at` of the rewritten text.
    fn inserted_at(&self, at: usize) -> Option<usize> {
        let i = self.inserted.partition_point(|(r, _)| r.end <= at);
        self.inserted
            .get(i)
            .filter(|(r, _)| r.contains(&at))
            .map(|&(_, p)| p)
    }

    /// Whether `m` (rewritten) holds `o`'s data; else where (in the original) it differs.
    fn same(&mut self, o: &Node, m: &Node) -> Result<(), Pos> {
        if o.tag != m.tag {
            return Err(o.start);
        }
        match (&o.value, &m.value) {
            (Value::Scalar(a, sa), Value::Scalar(b, sb)) if a == b && sa == sb => Ok(()),
            (Value::Seq(a), Value::Seq(b)) if a.len() == b.len() => {
                a.iter().zip(b).try_for_each(|(x, y)| self.same(x, y))
            }
            (Value::Map(a), Value::Map(b)) => {
                let mut kept = Vec::with_capacity(a.len());
                for (k, v) in b {
                    let Some(p) = self.inserted_at(k.start.offset) else {
                        kept.push((k, v));
                        continue;
                    };
                    let plan = &self.plans[p];
                    if k.as_str() != Some("credential")
                        || (o.start.offset, o.end.offset) != plan.block
                        || !is_planned_ref(v, plan)
                    {
                        return Err(o.start);
                    }
                    self.used[p] = true;
                }
                if kept.len() != a.len() {
                    return Err(o.start);
                }
                for ((ka, va), (kb, vb)) in a.iter().zip(kept) {
                    self.same(ka, kb)?;
                    self.same(va, vb)?;
                }
                Ok(())
            }
            _ => Err(o.start),
        }
    }
}

/// Whether `value` is the `credential:` mapping `plan` writes.
fn is_planned_ref(value: &Node, plan: &Plan) -> bool {
    let Value::Map(entries) = &value.value else {
        return false;
    };
    let mut want = vec![("ref", plan.reference.as_str()), ("scope", "per_user")];
    if let Some(p) = &plan.provider {
        want.push(("provider", p));
    }
    entries.len() == want.len()
        && entries.iter().zip(&want).all(|((k, v), (wk, wv))| {
            k.as_str() == Some(wk) && v.as_str() == Some(wv) && v.tag.is_none()
        })
}
