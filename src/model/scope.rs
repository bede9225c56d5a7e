//! Scopes and the identifiers inside them: what an id, a namespace and an owner may hold,
//! the five scope kinds, and how a scope is written and parsed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest identifier (app, user, agent id, credential name) accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Checks an identifier used inside a scope or as a credential name: non-empty, at most
/// [`MAX_ID_LEN`] bytes, no `/` (the owner separator) and no control characters.
pub fn validate_id(field: &str, value: &str) -> Result<()> {
    check_id(field, value, false)
}

/// [`validate_id`], with `/` allowed or not.
pub(super) fn check_id(field: &str, value: &str, slash_allowed: bool) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes long; at most {MAX_ID_LEN} are allowed",
                value.len()
            ),
        ));
    }
    let bytes = value.as_bytes();
    // Printable ASCII throughout (the usual id): only a `/` can be wrong. A branch-free
    // pass the compiler vectorises; anything else takes the byte loop below.
    let printable = bytes.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (slash_allowed | (b != b'/'))
    });
    if printable {
        return Ok(());
    }
    // One pass over the bytes: `/`, C0 controls and DEL are single bytes; C1 controls
    // (U+0080..=U+009F) are encoded as 0xC2 0x80..=0x9F.
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' && !slash_allowed {
            return Err(Error::invalid(field, "must not contain `/`"));
        }
        if b < 0x20 || b == 0x7f || (b == 0xc2 && matches!(bytes.get(i + 1), Some(0x80..=0x9f))) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
    }
    Ok(())
}

/// The vault namespace a [`RecordIdentity`](super::RecordIdentity) or [`RecordAad`](super::RecordAad) is in unless it says otherwise
/// (and a vault's unless `VaultBuilder::namespace` sets another). Two vaults that share a
/// master key must use distinct namespaces: the namespace is what keeps a blob from one
/// opening in the other.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest vault namespace accepted, in bytes (room for a home folder's path).
pub const MAX_NAMESPACE_LEN: usize = 1024;

/// Checks a vault namespace: 1 to [`MAX_NAMESPACE_LEN`] bytes of UTF-8 without control
/// characters (`/`, `:` and spaces are allowed, so a path or a URL can serve as one).
pub fn validate_namespace(value: &str) -> Result<()> {
    let field = "vault namespace";
    if value.is_empty() {
        return Err(Error::invalid(
            field,
            format!(
                "must not be empty; leave it unset for `{DEFAULT_NAMESPACE}`, or name the vault \
                 (two vaults sharing a master key need distinct namespaces)"
            ),
        ));
    }
    if value.len() > MAX_NAMESPACE_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes long; at most {MAX_NAMESPACE_LEN} are allowed",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// The id `runtime:APP:*` uses for "no user in particular" (an app's deploy); no user, app
/// or agent may be called this.
pub const DEPLOY_USER: &str = "*";

/// Checks an owner id (app, user, agent) or a principal's id: [`validate_id`], and no `:`
/// (the separator of printed principals such as `app_user:APP:ID`, which must read one way
/// only) and not `*` (reserved for the deploy principal `runtime:APP:*`).
pub fn validate_owner_id(field: &str, value: &str) -> Result<()> {
    validate_id(field, value)?;
    if value.contains(':') {
        return Err(Error::invalid(
            field,
            format!("`{value}` must not contain `:` (it separates the parts of a principal)"),
        ));
    }
    if value == DEPLOY_USER {
        return Err(Error::invalid(
            field,
            "`*` is reserved (it names an app's deploy, `runtime:APP:*`)",
        ));
    }
    Ok(())
}

/// Where a credential lives and who owns it. Lookup is scope-strict: a reference names one
/// scope and is resolved in that scope only.
///
/// Deserialising checks the stored form (every id as [`validate_id`] does: no `/`, no control
/// characters), so whatever deserialises can be stored and read back; the constructors and
/// [`Scope::validate`] check the stricter rules of [`validate_owner_id`] that the vault
/// applies to everything it writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "ScopeWire")]
#[non_exhaustive]
pub enum Scope {
    /// One credential for the whole installation.
    SystemWide,
    /// Shared by every user of one app.
    PerAppShared {
        /// The app id.
        app: String,
    },
    /// Owned by one user, usable in apps the user has granted.
    PerUser {
        /// The user id.
        user: String,
    },
    /// Owned by one user for one app only.
    PerAppPerUser {
        /// The app id.
        app: String,
        /// The user id.
        user: String,
    },
    /// Owned by one agent (per-agent integrations and secrets).
    PerAgent {
        /// The agent id.
        agent: String,
    },
}

/// [`Scope`] as it arrives from serde, before its ids are checked.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ScopeWire {
    SystemWide,
    PerAppShared { app: String },
    PerUser { user: String },
    PerAppPerUser { app: String, user: String },
    PerAgent { agent: String },
}

impl TryFrom<ScopeWire> for Scope {
    type Error = Error;

    fn try_from(wire: ScopeWire) -> Result<Scope> {
        let scope = match wire {
            ScopeWire::SystemWide => Scope::SystemWide,
            ScopeWire::PerAppShared { app } => Scope::PerAppShared { app },
            ScopeWire::PerUser { user } => Scope::PerUser { user },
            ScopeWire::PerAppPerUser { app, user } => Scope::PerAppPerUser { app, user },
            ScopeWire::PerAgent { agent } => Scope::PerAgent { agent },
        };
        scope.check_stored_form()?;
        Ok(scope)
    }
}

/// The kind of a [`Scope`], without its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScopeKind {
    /// [`Scope::SystemWide`]
    SystemWide,
    /// [`Scope::PerAppShared`]
    PerAppShared,
    /// [`Scope::PerUser`]
    PerUser,
    /// [`Scope::PerAppPerUser`]
    PerAppPerUser,
    /// [`Scope::PerAgent`]
    PerAgent,
}

impl ScopeKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ScopeKind; 5] = [
        ScopeKind::SystemWide,
        ScopeKind::PerAppShared,
        ScopeKind::PerUser,
        ScopeKind::PerAppPerUser,
        ScopeKind::PerAgent,
    ];

    /// The stable text form (`system_wide`, `per_app_shared`, …) used in storage, the
    /// canonical encodings and configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::SystemWide => "system_wide",
            ScopeKind::PerAppShared => "per_app_shared",
            ScopeKind::PerUser => "per_user",
            ScopeKind::PerAppPerUser => "per_app_per_user",
            ScopeKind::PerAgent => "per_agent",
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<ScopeKind> {
        ScopeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    "scope",
                    format!(
                        "unknown scope `{text}`; use one of system_wide, per_app_shared, per_user, per_app_per_user, per_agent"
                    ),
                )
            })
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Scope {
    /// A per-app-shared scope, checking the app id ([`validate_owner_id`]).
    pub fn per_app_shared(app: impl Into<String>) -> Result<Scope> {
        let app = app.into();
        validate_owner_id("app id", &app)?;
        Ok(Scope::PerAppShared { app })
    }

    /// A per-user scope, checking the user id ([`validate_owner_id`]).
    pub fn per_user(user: impl Into<String>) -> Result<Scope> {
        let user = user.into();
        validate_owner_id("user id", &user)?;
        Ok(Scope::PerUser { user })
    }

    /// A per-app-per-user scope, checking both ids ([`validate_owner_id`]).
    pub fn per_app_per_user(app: impl Into<String>, user: impl Into<String>) -> Result<Scope> {
        let (app, user) = (app.into(), user.into());
        validate_owner_id("app id", &app)?;
        validate_owner_id("user id", &user)?;
        Ok(Scope::PerAppPerUser { app, user })
    }

    /// A per-agent scope, checking the agent id ([`validate_owner_id`]).
    pub fn per_agent(agent: impl Into<String>) -> Result<Scope> {
        let agent = agent.into();
        validate_owner_id("agent id", &agent)?;
        Ok(Scope::PerAgent { agent })
    }

    /// Checks every id of the scope as the constructors do ([`validate_owner_id`]). The
    /// variants can be built directly, so the vault calls this on every scope it is given
    /// before anything (a refusal's audit row included) is written.
    pub fn validate(&self) -> Result<()> {
        match self {
            Scope::SystemWide => Ok(()),
            Scope::PerAppShared { app } => validate_owner_id("app id", app),
            Scope::PerUser { user } => validate_owner_id("user id", user),
            Scope::PerAppPerUser { app, user } => {
                validate_owner_id("app id", app)?;
                validate_owner_id("user id", user)
            }
            Scope::PerAgent { agent } => validate_owner_id("agent id", agent),
        }
    }

    /// Checks the stored form: what [`Scope::from_parts`] can rebuild from
    /// [`Scope::owner`] ([`validate_id`] on every id).
    fn check_stored_form(&self) -> Result<()> {
        match self {
            Scope::SystemWide => Ok(()),
            Scope::PerAppShared { app } => validate_id("app id", app),
            Scope::PerUser { user } => validate_id("user id", user),
            Scope::PerAppPerUser { app, user } => {
                validate_id("app id", app)?;
                validate_id("user id", user)
            }
            Scope::PerAgent { agent } => validate_id("agent id", agent),
        }
    }

    /// The scope's kind.
    pub fn kind(&self) -> ScopeKind {
        match self {
            Scope::SystemWide => ScopeKind::SystemWide,
            Scope::PerAppShared { .. } => ScopeKind::PerAppShared,
            Scope::PerUser { .. } => ScopeKind::PerUser,
            Scope::PerAppPerUser { .. } => ScopeKind::PerAppPerUser,
            Scope::PerAgent { .. } => ScopeKind::PerAgent,
        }
    }

    /// [`Scope::owner`], borrowed from the scope where it holds the owner as one string.
    pub(crate) fn owner_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Scope::SystemWide => std::borrow::Cow::Borrowed(""),
            Scope::PerAppShared { app } => std::borrow::Cow::Borrowed(app),
            Scope::PerUser { user } => std::borrow::Cow::Borrowed(user),
            Scope::PerAppPerUser { .. } => std::borrow::Cow::Owned(self.owner()),
            Scope::PerAgent { agent } => std::borrow::Cow::Borrowed(agent),
        }
    }

    /// The owner in its stored text form: empty for system-wide, the app, user or agent id,
    /// or `app/user` for per-app-per-user (ids never contain `/`).
    pub fn owner(&self) -> String {
        match self {
            Scope::SystemWide => String::new(),
            Scope::PerAppShared { app } => app.clone(),
            Scope::PerUser { user } => user.clone(),
            Scope::PerAppPerUser { app, user } => {
                let mut owner = String::with_capacity(app.len() + 1 + user.len());
                owner.push_str(app);
                owner.push('/');
                owner.push_str(user);
                owner
            }
            Scope::PerAgent { agent } => agent.clone(),
        }
    }

    /// The owner's parts without allocating: `(app, Some(user))` for per-app-per-user,
    /// `(id, None)` otherwise (`("", None)` for system-wide).
    pub fn owner_parts(&self) -> (&str, Option<&str>) {
        match self {
            Scope::SystemWide => ("", None),
            Scope::PerAppShared { app } => (app, None),
            Scope::PerUser { user } => (user, None),
            Scope::PerAppPerUser { app, user } => (app, Some(user)),
            Scope::PerAgent { agent } => (agent, None),
        }
    }

    /// Rebuilds a scope from its stored kind and owner text (the stored form: every id as
    /// [`validate_id`] checks it).
    pub fn from_parts(kind: ScopeKind, owner: &str) -> Result<Scope> {
        let scope = match kind {
            ScopeKind::SystemWide if owner.is_empty() => Scope::SystemWide,
            ScopeKind::SystemWide => {
                return Err(Error::invalid(
                    "scope owner",
                    "a system_wide scope has no owner",
                ))
            }
            ScopeKind::PerAppShared => Scope::PerAppShared { app: owner.into() },
            ScopeKind::PerUser => Scope::PerUser { user: owner.into() },
            ScopeKind::PerAgent => Scope::PerAgent {
                agent: owner.into(),
            },
            ScopeKind::PerAppPerUser => match owner.split_once('/') {
                Some((app, user)) => Scope::PerAppPerUser {
                    app: app.into(),
                    user: user.into(),
                },
                None => {
                    return Err(Error::invalid(
                        "scope owner",
                        "a per_app_per_user owner is written `app/user`",
                    ))
                }
            },
        };
        scope.check_stored_form()?;
        Ok(scope)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::SystemWide => f.write_str("system_wide"),
            Scope::PerAppShared { app } => write!(f, "per_app_shared, app {app}"),
            Scope::PerUser { user } => write!(f, "per_user, user {user}"),
            Scope::PerAppPerUser { app, user } => {
                write!(f, "per_app_per_user, app {app}, user {user}")
            }
            Scope::PerAgent { agent } => write!(f, "per_agent, agent {agent}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use std::time::Duration;

    #[test]
    fn validate_id_rejects_exactly_slashes_and_control_characters() {
        for c in (0u32..0x250).filter_map(char::from_u32) {
            let id = format!("a{c}b");
            let expected_ok = c != '/' && !c.is_control();
            assert_eq!(
                validate_id("id", &id).is_ok(),
                expected_ok,
                "U+{:04X}",
                c as u32
            );
        }
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_id("id", "bob@example.com").is_ok());
    }

    #[test]
    fn timestamps_print_and_parse_as_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_900_000_000_123).to_string(),
            "2030-03-17T17:46:40.123Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
        for ms in [0, 1, 999, 1_000, 1_900_000_000_123, -1, -62_167_219_200_000] {
            let text = Timestamp(ms).to_string();
            assert_eq!(
                text.parse::<Timestamp>().expect(&text),
                Timestamp(ms),
                "{text}"
            );
        }
        let parse = |t: &str| Timestamp::parse_rfc3339(t).map(|t| t.0);
        assert_eq!(
            parse("2030-03-17T19:46:40.123+02:00").ok(),
            Some(1_900_000_000_123)
        );
        assert_eq!(
            parse("2030-03-17T17:46:40.1239Z").ok(),
            Some(1_900_000_000_123)
        );
        assert_eq!(parse("1969-12-31T23:59:59.9999Z").ok(), Some(-1));
        for bad in [
            "",
            "2030-03-17",
            "2030-03-17T17:46:40",
            "1900000000",
            "+30d",
            "2030-13-01T00:00:00Z",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains("RFC 3339"), "{err}");
        }
        // Outside what RFC 3339 can write, the number is printed instead.
        assert_eq!(
            Timestamp(i64::MAX).to_string(),
            format!("{} ms since the Unix epoch", i64::MAX)
        );
        assert_eq!(Timestamp(i64::MAX).to_rfc3339(), None);
        assert_eq!(
            Timestamp(5).saturating_add(Duration::from_secs(2)),
            Timestamp(2_005)
        );
        assert_eq!(
            Timestamp(i64::MAX - 1).saturating_add(Duration::from_secs(2)),
            Timestamp(i64::MAX)
        );
    }
}
