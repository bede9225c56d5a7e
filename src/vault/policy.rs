//! Principals, roles, actions, and the one policy table that decides every action: a row
//! allows a role some actions on credentials standing in some relation to the principal.
//! Anything no row allows is denied.

use std::fmt;

pub use crate::audit::Action;
use crate::error::{Error, Result};
use crate::model::{validate_owner_id, Scope, DEPLOY_USER};

/// Who is acting. Every `Vault` call names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Principal {
    /// Runs the installation: system-wide, app-shared and agent credentials; can see (not
    /// read) users' credentials and remove them or their grants.
    SystemAdmin {
        /// The admin's id.
        id: String,
    },
    /// Manages one app's shared credentials; never reads users' secrets.
    AppAdmin {
        /// The admin's id.
        id: String,
        /// The app.
        app: String,
    },
    /// A user of one app, managing their own credentials and grants.
    AppUser {
        /// The user's id.
        id: String,
        /// The app.
        app: String,
    },
    /// Sees metadata, never secret values.
    Viewer {
        /// The viewer's id.
        id: String,
    },
    /// An app's runtime acting for one user's session: resolves credentials, nothing else.
    AppRuntime {
        /// The app.
        app: String,
        /// The user whose session it serves.
        user: String,
    },
    /// An agent reading its own per-agent secrets: only those marked agent-accessible are
    /// ever released to it; everything else reaches it through the audited credentials
    /// path.
    Agent {
        /// The agent's id.
        id: String,
    },
    /// The vault's own background work (an OAuth refresher, token rotation): keeps
    /// credentials current without being any of their owners.
    Service {
        /// The service's id (`oauth-refresher`, …).
        id: String,
    },
}

impl Principal {
    /// The principal's role.
    pub fn role(&self) -> Role {
        match self {
            Principal::SystemAdmin { .. } => Role::SystemAdmin,
            Principal::AppAdmin { .. } => Role::AppAdmin,
            Principal::AppUser { .. } => Role::AppUser,
            Principal::Viewer { .. } => Role::Viewer,
            Principal::AppRuntime { .. } => Role::AppRuntime,
            Principal::Agent { .. } => Role::Agent,
            Principal::Service { .. } => Role::Service,
        }
    }

    /// The agent whose own per-agent credentials the principal acts on, if any.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Principal::Agent { id } => Some(id),
            _ => None,
        }
    }

    /// The app the principal acts in, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            Principal::AppAdmin { app, .. }
            | Principal::AppUser { app, .. }
            | Principal::AppRuntime { app, .. } => Some(app),
            _ => None,
        }
    }

    /// The user whose own credentials the principal acts on, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::AppUser { id, .. } => Some(id),
            Principal::AppRuntime { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Parses `system_admin:ID`, `app_admin:APP:ID`, `app_user:APP:ID`, `viewer:ID`,
    /// `runtime:APP:USER`, `agent:ID` or `service:ID` (the CLI's `--as` and
    /// `STRONGROOM_ACTOR`).
    pub fn parse(text: &str) -> Result<Principal> {
        let parts: Vec<&str> = text.split(':').collect();
        let p = match parts.as_slice() {
            ["system_admin", id] => Principal::SystemAdmin { id: id.to_string() },
            ["app_admin", app, id] => Principal::AppAdmin {
                id: id.to_string(),
                app: app.to_string(),
            },
            ["app_user", app, id] => Principal::AppUser {
                id: id.to_string(),
                app: app.to_string(),
            },
            ["viewer", id] => Principal::Viewer { id: id.to_string() },
            ["runtime", app, user] => Principal::AppRuntime {
                app: app.to_string(),
                user: user.to_string(),
            },
            ["agent", id] => Principal::Agent { id: id.to_string() },
            ["service", id] => Principal::Service { id: id.to_string() },
            _ => {
                return Err(Error::invalid(
                    "principal",
                    format!(
                        "`{text}` is not a principal; write system_admin:ID, app_admin:APP:ID, \
                         app_user:APP:ID, viewer:ID, runtime:APP:USER, agent:ID or service:ID"
                    ),
                ))
            }
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks every id of the principal ([`validate_owner_id`]: no `/`, `:` or control
    /// characters, not `*`), so that its printed form in audit rows reads one way only. The
    /// one exception is `runtime:APP:*`, an app's deploy (no user in particular). The
    /// variants can be built directly, so the vault checks every principal it is given.
    pub fn validate(&self) -> Result<()> {
        match self {
            Principal::SystemAdmin { id }
            | Principal::Viewer { id }
            | Principal::Agent { id }
            | Principal::Service { id } => validate_owner_id("principal id", id),
            Principal::AppAdmin { id, app } | Principal::AppUser { id, app } => {
                validate_owner_id("principal app", app)?;
                validate_owner_id("principal id", id)
            }
            Principal::AppRuntime { app, user } => {
                validate_owner_id("principal app", app)?;
                if user == DEPLOY_USER {
                    return Ok(());
                }
                validate_owner_id("principal user", user)
            }
        }
    }
}

impl fmt::Display for Principal {
    // Written piece by piece (no format string): an audit row's actor is made from this on
    // every audited call.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, first, second) = self.name_parts();
        f.write_str(kind)?;
        f.write_str(first)?;
        if let Some(second) = second {
            f.write_str(":")?;
            f.write_str(second)?;
        }
        Ok(())
    }
}

impl Principal {
    /// The pieces of the principal's name: `kind:first` or `kind:first:second`.
    fn name_parts(&self) -> (&'static str, &str, Option<&str>) {
        match self {
            Principal::SystemAdmin { id } => ("system_admin:", id, None),
            Principal::AppAdmin { id, app } => ("app_admin:", app, Some(id)),
            Principal::AppUser { id, app } => ("app_user:", app, Some(id)),
            Principal::Viewer { id } => ("viewer:", id, None),
            Principal::AppRuntime { app, user } => ("runtime:", app, Some(user)),
            Principal::Agent { id } => ("agent:", id, None),
            Principal::Service { id } => ("service:", id, None),
        }
    }

    /// The principal's name as `to_string` writes it, in one allocation of the exact size
    /// (an audit row's actor, made on every audited call).
    pub(crate) fn name(&self) -> String {
        let (kind, first, second) = self.name_parts();
        let len = kind.len() + first.len() + second.map_or(0, |s| 1 + s.len());
        let mut out = String::with_capacity(len);
        out.push_str(kind);
        out.push_str(first);
        if let Some(second) = second {
            out.push(':');
            out.push_str(second);
        }
        out
    }
}

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// [`Principal::SystemAdmin`]
    SystemAdmin,
    /// [`Principal::AppAdmin`]
    AppAdmin,
    /// [`Principal::AppUser`]
    AppUser,
    /// [`Principal::Viewer`]
    Viewer,
    /// [`Principal::AppRuntime`]
    AppRuntime,
    /// [`Principal::Agent`]
    Agent,
    /// [`Principal::Service`]
    Service,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 7] = [
        Role::SystemAdmin,
        Role::AppAdmin,
        Role::AppUser,
        Role::Viewer,
        Role::AppRuntime,
        Role::Agent,
        Role::Service,
    ];
}

/// How a credential's scope stands to the acting principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Relation {
    /// `system_wide`.
    SystemWide,
    /// `per_app_shared` of the principal's app.
    OwnAppShared,
    /// `per_app_shared` of another app (or the principal has no app).
    OtherAppShared,
    /// `per_user` of the principal's user.
    OwnUser,
    /// `per_user` of someone else.
    OtherUser,
    /// `per_app_per_user` of the principal's user in the principal's app.
    OwnUserOwnApp,
    /// `per_app_per_user` of the principal's user in another app.
    OwnUserOtherApp,
    /// `per_app_per_user` of another user in the principal's app.
    OtherUserOwnApp,
    /// `per_app_per_user` of another user in another app.
    OtherUserOtherApp,
    /// `per_agent` of another agent (or the principal is no agent).
    Agent,
    /// `per_agent` of the principal's own agent.
    OwnAgent,
    /// Not about a credential (audit verification, key re-wrapping).
    NoScope,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 12] = [
        Relation::SystemWide,
        Relation::OwnAppShared,
        Relation::OtherAppShared,
        Relation::OwnUser,
        Relation::OtherUser,
        Relation::OwnUserOwnApp,
        Relation::OwnUserOtherApp,
        Relation::OtherUserOwnApp,
        Relation::OtherUserOtherApp,
        Relation::Agent,
        Relation::OwnAgent,
        Relation::NoScope,
    ];

    /// How `scope` stands to `principal` (`None` scope: [`Relation::NoScope`]).
    pub fn of(principal: &Principal, scope: Option<&Scope>) -> Relation {
        let own_app = |a: &str| principal.app() == Some(a);
        let own_user = |u: &str| principal.user() == Some(u);
        match scope {
            None => Relation::NoScope,
            Some(Scope::SystemWide) => Relation::SystemWide,
            Some(Scope::PerAppShared { app }) if own_app(app) => Relation::OwnAppShared,
            Some(Scope::PerAppShared { .. }) => Relation::OtherAppShared,
            Some(Scope::PerUser { user }) if own_user(user) => Relation::OwnUser,
            Some(Scope::PerUser { .. }) => Relation::OtherUser,
            Some(Scope::PerAppPerUser { app, user }) => match (own_user(user), own_app(app)) {
                (true, true) => Relation::OwnUserOwnApp,
                (true, false) => Relation::OwnUserOtherApp,
                (false, true) => Relation::OtherUserOwnApp,
                (false, false) => Relation::OtherUserOtherApp,
            },
            Some(Scope::PerAgent { agent }) if principal.agent() == Some(agent) => {
                Relation::OwnAgent
            }
            Some(Scope::PerAgent { .. }) => Relation::Agent,
        }
    }
}

use Action as A;
use Relation as R;

const MANAGE: &[Action] = &[
    A::Create,
    A::Update,
    A::Delete,
    A::ReadMetadata,
    A::Reveal,
    A::SetState,
    A::Verify,
];
const CREDENTIAL_SCOPES: &[Relation] = &[
    R::SystemWide,
    R::OwnAppShared,
    R::OtherAppShared,
    R::OwnUser,
    R::OtherUser,
    R::OwnUserOwnApp,
    R::OwnUserOtherApp,
    R::OtherUserOwnApp,
    R::OtherUserOtherApp,
    R::Agent,
    R::OwnAgent,
];

/// The policy: each row allows a role these actions on credentials in these relations.
/// Nothing else is allowed.
pub const POLICY: &[(Role, &[Action], &[Relation])] = &[
    // System admins run the installation's own credentials…
    (
        Role::SystemAdmin,
        MANAGE,
        &[R::SystemWide, R::OtherAppShared, R::Agent],
    ),
    // …and can see, disable and remove users' credentials and cut their grants, but never
    // read them (a live check sends a user's secret to the bundled provider's endpoint
    // only, never to an override: see `Vault::test_live_connection`).
    (
        Role::SystemAdmin,
        &[
            A::ReadMetadata,
            A::Delete,
            A::SetState,
            A::Verify,
            A::GrantList,
            A::GrantRevoke,
        ],
        &[R::OtherUser, R::OtherUserOtherApp],
    ),
    // …and refresh users' OAuth tokens or revoke them at the provider (neither reads them).
    (Role::SystemAdmin, &[A::Refresh, A::Revoke], &[R::OtherUser]),
    // …and manage agents' integrations (operator-managed), and may fetch an agent's
    // integration credentials through the audited credentials path.
    (
        Role::SystemAdmin,
        &[
            A::IntegrationLink,
            A::IntegrationUnlink,
            A::IntegrationList,
            A::IntegrationCredentials,
        ],
        &[R::Agent],
    ),
    // They verify the audit chain and manage the master keys.
    (
        Role::SystemAdmin,
        &[A::AuditVerify, A::Rewrap, A::Reseal],
        &[R::NoScope],
    ),
    // …and the org-level credential providers (GitLab), whose admin tokens no one reads.
    (
        Role::SystemAdmin,
        &[A::ProviderAdd, A::ProviderRemove, A::ProviderList],
        &[R::NoScope],
    ),
    // App admins manage their app's shared credentials; they may see that system-wide ones
    // and their users' app credentials exist, not read them.
    (Role::AppAdmin, MANAGE, &[R::OwnAppShared]),
    (
        Role::AppAdmin,
        &[A::ReadMetadata],
        &[R::SystemWide, R::OtherUserOwnApp],
    ),
    // Users own their credentials, in any app, and decide which apps get them.
    (
        Role::AppUser,
        &[
            A::Create,
            A::Update,
            A::Delete,
            A::ReadMetadata,
            A::Reveal,
            A::SetState,
            A::Verify,
            A::GrantList,
            A::GrantAdd,
            A::GrantRevoke,
            A::OAuthStart,
            A::OAuthComplete,
            A::Refresh,
            A::Revoke,
        ],
        &[R::OwnUser],
    ),
    (
        Role::AppUser,
        MANAGE,
        &[R::OwnUserOwnApp, R::OwnUserOtherApp],
    ),
    (Role::AppUser, &[A::ReadMetadata], &[R::OwnAppShared]),
    // Viewers see metadata of everything and may verify the audit chain.
    (Role::Viewer, &[A::ReadMetadata], CREDENTIAL_SCOPES),
    (Role::Viewer, &[A::AuditVerify], &[R::NoScope]),
    // An app runtime resolves (and injects into its config) what its app and its session's
    // user may use.
    (
        Role::AppRuntime,
        &[A::Resolve, A::Inject],
        &[R::SystemWide, R::OwnAppShared, R::OwnUser, R::OwnUserOwnApp],
    ),
    // …and runs its user's OAuth logins, whose tokens become that user's credentials.
    (
        Role::AppRuntime,
        &[A::OAuthStart, A::OAuthComplete],
        &[R::OwnUser],
    ),
    // An agent sees and resolves its own per-agent credentials (the vault releases only
    // those marked agent-accessible).
    (Role::Agent, &[A::ReadMetadata, A::Resolve], &[R::OwnAgent]),
    // …and gets its own integrations' credentials through the credentials path (audited
    // every time; not-agent-accessible secrets reach it only this way).
    (Role::Agent, &[A::IntegrationCredentials], &[R::OwnAgent]),
    // The vault's background work keeps every credential current (new fields, state, a
    // live check against the bundled endpoint), without reading secrets through reveal or
    // resolve.
    (
        Role::Service,
        &[
            A::ReadMetadata,
            A::Update,
            A::SetState,
            A::Verify,
            A::Refresh,
        ],
        CREDENTIAL_SCOPES,
    ),
];

/// Does the policy allow `role` to do `action` on a credential in `relation`?
pub fn allows(role: Role, action: Action, relation: Relation) -> bool {
    POLICY.iter().any(|(r, actions, relations)| {
        *r == role && actions.contains(&action) && relations.contains(&relation)
    })
}
