//! What the SQL stores share: bound values, the filters as SQL conditions, and the data
//! moves of old migrations.

use super::{ListFilter, OwnerMatch, RecordFilter, ScopeMatch};

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

/// Where the SQL stores' dialects differ in the conditions the filters need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?1`, `substr`, `length`.
    Sqlite,
    /// `$1`, `left`/`right`, `char_length`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

impl Dialect {
    /// The `n`-th placeholder (from 1).
    pub(crate) fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// `column` starts with the text bound to `param` (compared as text, no pattern
    /// characters: an id may hold `%` or `_`).
    fn starts_with(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("substr({column}, 1, length({param})) = {param}"),
            Dialect::Postgres => format!("left({column}, char_length({param})) = {param}"),
        }
    }

    /// `column` ends with the text bound to `param` (never empty: it starts with `/`).
    fn ends_with(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("substr({column}, -length({param})) = {param}"),
            Dialect::Postgres => format!("right({column}, char_length({param})) = {param}"),
        }
    }
}

/// Conditions AND-ed together, with their values bound in order.
struct Conditions {
    dialect: Dialect,
    clauses: Vec<String>,
    values: Vec<SqlValue>,
}

impl Conditions {
    fn new(dialect: Dialect) -> Conditions {
        Conditions {
            dialect,
            clauses: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Binds `value` and returns its placeholder.
    fn bind(&mut self, value: SqlValue) -> String {
        self.values.push(value);
        self.dialect.placeholder(self.values.len())
    }

    /// `column operator value`.
    fn compare(&mut self, column: &str, operator: &str, value: SqlValue) {
        let p = self.bind(value);
        self.clauses.push(format!("{column} {operator} {p}"));
    }

    /// The `WHERE` condition (`1 = 1` when there is none) and its values.
    fn finish(mut self) -> (String, Vec<SqlValue>) {
        if self.clauses.is_empty() {
            self.clauses.push("1 = 1".into());
        }
        (self.clauses.join(" AND "), self.values)
    }
}

impl ListFilter {
    /// The filter as a SQL `WHERE` condition on the credential columns and its values, every
    /// value bound. [`ListFilter::scopes`] becomes one parenthesised OR group.
    pub(crate) fn sql_where(&self, dialect: Dialect) -> (String, Vec<SqlValue>) {
        use SqlValue::{Int, Text};
        let mut c = Conditions::new(dialect);
        if let Some(scope) = &self.scope {
            c.compare("scope_kind", "=", Text(scope.kind().as_str().to_string()));
            c.compare("owner", "=", Text(scope.owner()));
        }
        if let Some(kind) = self.scope_kind {
            c.compare("scope_kind", "=", Text(kind.as_str().to_string()));
        }
        if let Some(patterns) = &self.scopes {
            let group = scopes_sql(&mut c, patterns);
            c.clauses.push(group);
        }
        if let Some(name) = &self.name {
            c.compare("name", "=", Text(name.clone()));
        }
        if let Some(provider) = &self.provider {
            c.compare("provider", "=", Text(provider.clone()));
        }
        if let Some(handler_type) = &self.handler_type {
            c.compare("handler_type", "=", Text(handler_type.clone()));
        }
        if let Some(before) = self.expires_before {
            // `NULL < x` is not true, so credentials without an expiry never match.
            c.compare("expires_at", "<", Int(before.0));
        }
        if let Some(state) = self.state {
            c.compare("state", "=", Text(state.as_str().to_string()));
        }
        if let Some(key_id) = &self.key_id {
            c.compare("key_id", "=", Text(key_id.clone()));
        }
        if let Some(key_id) = &self.key_id_not {
            c.compare("key_id", "<>", Text(key_id.clone()));
        }
        if let Some(after) = &self.after_id {
            c.compare("id", ">", Text(after.as_str().to_string()));
        }
        c.finish()
    }
}

/// The OR group of scope patterns, as [`ScopeMatch::matches`] defines them: the kind, and
/// the owner equal to, starting with `app/` or ending with `/user`.
fn scopes_sql(c: &mut Conditions, patterns: &[ScopeMatch]) -> String {
    if patterns.is_empty() {
        return "1 = 0".into();
    }
    let mut alternatives = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let kind = c.bind(SqlValue::Text(pattern.kind.as_str().to_string()));
        let owner = match &pattern.owner {
            OwnerMatch::Any => None,
            OwnerMatch::Exactly(owner) => {
                let p = c.bind(SqlValue::Text(owner.clone()));
                Some(format!("owner = {p}"))
            }
            OwnerMatch::App(app) => {
                let p = c.bind(SqlValue::Text(format!("{app}/")));
                Some(c.dialect.starts_with("owner", &p))
            }
            OwnerMatch::User(user) => {
                let p = c.bind(SqlValue::Text(format!("/{user}")));
                Some(c.dialect.ends_with("owner", &p))
            }
        };
        alternatives.push(match owner {
            Some(owner) => format!("(scope_kind = {kind} AND {owner})"),
            None => format!("scope_kind = {kind}"),
        });
    }
    format!("({})", alternatives.join(" OR "))
}

impl RecordFilter {
    /// The filter as a SQL `WHERE` condition on the record columns (`1 = 1` when empty) and
    /// its values.
    pub(crate) fn sql_where(&self, dialect: Dialect) -> (String, Vec<SqlValue>) {
        let mut clauses = Vec::new();
        let mut values = Vec::new();
        let mut bind = |value: SqlValue| {
            values.push(value);
            dialect.placeholder(values.len())
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

impl super::AuditQuery {
    /// The query's filters and cursor as a SQL `WHERE` condition on the audit columns
    /// (`1 = 1` when there is none) and its values, every value bound; the caller adds the
    /// order and the limit.
    pub(crate) fn sql_where(&self, dialect: Dialect) -> (String, Vec<SqlValue>) {
        use SqlValue::{Int, Text};
        let seq = |n: u64| Int(i64::try_from(n).unwrap_or(i64::MAX));
        let mut c = Conditions::new(dialect);
        // Always bounded below: the chain starts at row 1, so a row stored with a sequence
        // number of 0 or less (written behind the vault's back) is no row of the log. It is
        // never verified, so no query may show it (the scan of `audit_query_by_scan` does
        // not either).
        c.compare("seq", ">", seq(self.after.unwrap_or(0)));
        if let Some(before) = self.before {
            c.compare("seq", "<", seq(before));
        }
        if let Some(id) = &self.credential_id {
            c.compare("credential_id", "=", Text(id.as_str().to_string()));
        }
        if let Some(actor) = &self.actor {
            c.compare("actor", "=", Text(actor.clone()));
        }
        if let Some(action) = self.action {
            c.compare("action", "=", Text(action.as_str().to_string()));
        }
        if let Some(outcome) = self.outcome {
            c.compare("outcome", "=", Text(outcome.as_str().to_string()));
        }
        if let Some(since) = self.since {
            c.compare("time", ">=", Int(since.0));
        }
        if let Some(until) = self.until {
            c.compare("time", "<", Int(until.0));
        }
        c.finish()
    }

    /// `ORDER BY … LIMIT …` for the query.
    pub(crate) fn sql_order_limit(&self) -> String {
        format!(
            " ORDER BY seq {} LIMIT {}",
            if self.newest_first { "DESC" } else { "ASC" },
            self.limit.min(i64::MAX as usize)
        )
    }
}
