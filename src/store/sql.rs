//! What the SQL stores share: bound values, the filters as SQL conditions, and the data
//! moves of old migrations.

use super::{ListFilter, RecordFilter};

/// A value bound to a SQL placeholder by the SQL stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    /// Text.
    Text(String),
    /// A 64-bit integer.
    Int(i64),
}

/// The `expires_at` (milliseconds) of a credential's metadata text as stores kept it before
/// it had a column of its own, and the metadata text without it; `None` when the text does
/// not decode or holds no integer `expires_at` (such a row is left as it is).
pub(crate) fn split_old_expiry(metadata: &str) -> Option<(i64, String)> {
    const OLD_KEY: &str = "expires_at";
    let mut map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(metadata).ok()?;
    let at: i64 = map.get(OLD_KEY)?.parse().ok()?;
    map.remove(OLD_KEY);
    Some((at, serde_json::to_string(&map).ok()?))
}

impl ListFilter {
    /// The filter as SQL conditions on the credential columns, `(column and operator,
    /// value)`, for the SQL stores to add their placeholders to.
    pub(crate) fn sql_conditions(&self) -> Vec<(&'static str, SqlValue)> {
        use SqlValue::{Int, Text};
        let mut out = Vec::new();
        if let Some(scope) = &self.scope {
            out.push(("scope_kind =", Text(scope.kind().as_str().to_string())));
            out.push(("owner =", Text(scope.owner())));
        }
        if let Some(kind) = self.scope_kind {
            out.push(("scope_kind =", Text(kind.as_str().to_string())));
        }
        if let Some(name) = &self.name {
            out.push(("name =", Text(name.clone())));
        }
        if let Some(provider) = &self.provider {
            out.push(("provider =", Text(provider.clone())));
        }
        if let Some(handler_type) = &self.handler_type {
            out.push(("handler_type =", Text(handler_type.clone())));
        }
        if let Some(before) = self.expires_before {
            // `NULL < x` is not true, so credentials without an expiry never match.
            out.push(("expires_at <", Int(before.0)));
        }
        if let Some(state) = self.state {
            out.push(("state =", Text(state.as_str().to_string())));
        }
        if let Some(key_id) = &self.key_id {
            out.push(("key_id =", Text(key_id.clone())));
        }
        if let Some(key_id) = &self.key_id_not {
            out.push(("key_id <>", Text(key_id.clone())));
        }
        if let Some(after) = &self.after_id {
            out.push(("id >", Text(after.as_str().to_string())));
        }
        out
    }
}

impl RecordFilter {
    /// The filter as a SQL `WHERE` condition on the record columns (`1 = 1` when empty) and
    /// its values; `placeholder(n)` writes the n-th placeholder (from 1).
    pub(crate) fn sql_where(&self, placeholder: fn(usize) -> String) -> (String, Vec<SqlValue>) {
        let mut clauses = Vec::new();
        let mut values = Vec::new();
        let mut bind = |value: SqlValue| {
            values.push(value);
            placeholder(values.len())
        };
        if let Some(kind) = &self.kind {
            clauses.push(format!("kind = {}", bind(SqlValue::Text(kind.clone()))));
        }
        if let Some(owner) = &self.owner {
            clauses.push(format!("owner = {}", bind(SqlValue::Text(owner.clone()))));
        }
        if let Some(before) = self.expires_before {
            clauses.push(format!("expires_at < {}", bind(SqlValue::Int(before.0))));
        }
        if let Some(after) = &self.after {
            let (k, o, key) = (
                bind(SqlValue::Text(after.kind.clone())),
                bind(SqlValue::Text(after.owner.clone())),
                bind(SqlValue::Text(after.key.clone())),
            );
            clauses.push(format!("(kind, owner, key) > ({k}, {o}, {key})"));
        }
        if clauses.is_empty() {
            clauses.push("1 = 1".into());
        }
        (clauses.join(" AND "), values)
    }
}
