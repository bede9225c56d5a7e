//! Named secrets: an org-level (system-wide) secret with a per-agent override, for the
//! names listed in [`NAMED_SECRETS`] only (see docs/INTEGRATIONS.md, "Named secrets").
//! Everywhere else a lookup stays strict: one name, one scope, no fallback.

use super::*;

/// The org-level LLM API key the LLM proxy uses (`llmproxy:llm.api_key`).
pub const LLMPROXY_API_KEY: &str = "llmproxy:llm.api_key";

/// The names [`Vault::named_secret`] answers for: each an org-level (system-wide) secret an
/// agent may override with its own. A name not listed here has no fallback.
pub const NAMED_SECRETS: &[&str] = &[LLMPROXY_API_KEY];

/// The prefix of a per-agent override's name.
const OVERRIDE_PREFIX: &str = "agent:";

/// The name of the per-agent credential that overrides the org-level secret `name`: the
/// first `:` becomes `.` and `agent:` is put in front — `llmproxy:llm.api_key` →
/// `agent:llmproxy.llm.api_key` (the naming table of docs/INTEGRATIONS.md). `None` for a
/// name that is not `service:key` (both parts non-empty) or that is itself an override.
pub fn agent_override_name(name: &str) -> Option<String> {
    let (service, key) = name.split_once(':')?;
    if service.is_empty() || key.is_empty() || service == "agent" {
        return None;
    }
    Some(format!("{OVERRIDE_PREFIX}{service}.{key}"))
}

/// Which credential answered a [`Vault::named_secret`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamedSource {
    /// The agent's own override (`agent:<service>.<key>`, per-agent scope).
    Agent,
    /// The org-level secret (the name itself, system-wide scope).
    Org,
}

impl NamedSource {
    /// The stable name, as the audit row's `source` detail writes it (`agent`, `org`).
    pub fn as_str(self) -> &'static str {
        match self {
            NamedSource::Agent => "agent",
            NamedSource::Org => "org",
        }
    }
}

impl fmt::Display for NamedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What [`Vault::named_secret`] returns: the credential that won and where it came from.
/// Its `Debug` shows no secret.
#[derive(Debug)]
#[non_exhaustive]
pub struct NamedSecret {
    /// The agent's override or the org-level secret.
    pub source: NamedSource,
    /// The credential, with its secret fields.
    pub secret: RevealedCredential,
}

impl Vault {
    /// A named secret for `agent` (`name` one of [`NAMED_SECRETS`], e.g.
    /// `llmproxy:llm.api_key`): the agent's own per-agent credential named
    /// [`agent_override_name`]`(name)` (`agent:llmproxy.llm.api_key`) when it exists, else
    /// the system-wide credential named `name`. An override that exists always wins — also
    /// when it cannot be released (not agent-accessible, unusable): that is an error, never
    /// a quiet fall back to the org's secret.
    ///
    /// Who: the agent itself (`Principal::Agent` with that id; audited as `credential.resolve`)
    /// and system admins (audited as `credential.reveal`); anyone else, another agent
    /// included, is refused and audited. An agent is released only credentials marked
    /// agent-accessible — the override and the org-level secret alike (the vault's one
    /// decryption door checks it). The system-wide fallback is the one place an agent reads
    /// outside its own scope, and only for these names. The audit row of the release
    /// carries `source` = `agent` or `org`.
    pub async fn named_secret(
        &self,
        actor: &Principal,
        agent: &str,
        name: &str,
    ) -> Result<NamedSecret> {
        trace::op("named_secret")
            .actor(actor)
            .run(async move {
                actor.validate()?;
                let raw = Scope::PerAgent {
                    agent: agent.to_string(),
                };
                let valid = raw.validate();
                let target = match valid {
                    Ok(()) => AuditTarget::scope(&raw),
                    Err(_) => AuditTarget::none(),
                };
                // A system admin reads it as it reads any credential it manages; the agent resolves
                // its own. The table decides both (another agent: `Agent`, no resolve).
                let action = if actor.role() == Role::SystemAdmin {
                    Action::Reveal
                } else {
                    Action::Resolve
                };
                let what = format!(
                    "named secret `{}` of agent `{}`",
                    printable(name),
                    printable(agent)
                );
                self.authorize(actor, action, Some(&raw), target, &what)
                    .await?;
                valid?;
                let override_name = match agent_override_name(name) {
                    Some(o) if NAMED_SECRETS.contains(&name) => o,
                    _ => {
                        return Err(Error::invalid(
                            "name",
                            format!(
                                "`{}` is not a named secret (these are: {}); other names have no \
                             org-level fallback and are looked up in one scope only \
                             (Vault::agent_secret, Vault::resolve)",
                                printable(name),
                                NAMED_SECRETS.join(", ")
                            ),
                        ))
                    }
                };
                let mut attempts = 0;
                loop {
                    match self
                        .named_once(actor, action, &raw, name, &override_name, attempts > 0)
                        .await
                    {
                        Err(e) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                        Err(Error::NotFound { .. }) => {
                            return Err(Error::NotFound {
                                what: format!(
                                    "named secret `{name}` for agent `{}`",
                                    printable(agent)
                                ),
                                hint: Some(format!(
                                "neither the agent's override `{override_name}` (per-agent) nor \
                                 the org-level `{name}` (system-wide) exists; create one"
                            )),
                            })
                        }
                        other => return other,
                    }
                }
            })
            .await
    }

    /// One attempt of [`Vault::named_secret`]: is there an override (its absence is part of
    /// what the release's commit is checked against)? Then the scope-strict checks and the
    /// release of the one that wins.
    async fn named_once(
        &self,
        actor: &Principal,
        action: Action,
        agent_scope: &Scope,
        name: &str,
        override_name: &str,
        fresh: bool,
    ) -> Result<NamedSecret> {
        let store = &self.inner.store;
        let (present, agent_stamp) = if fresh {
            let (_, before) = store.find_named(agent_scope, override_name).await?;
            let found = store
                .list(&ListFilter {
                    scope: Some(agent_scope.clone()),
                    name: Some(override_name.to_string()),
                    limit: Some(1),
                    ..ListFilter::default()
                })
                .await?;
            (!found.is_empty(), before)
        } else {
            let (found, stamp) = store.find_named(agent_scope, override_name).await?;
            (found.is_some(), stamp)
        };
        let (source, scope, reference) = if present {
            (
                NamedSource::Agent,
                agent_scope.clone(),
                CredentialRef::explicit(override_name, ScopeKind::PerAgent, None),
            )
        } else {
            (
                NamedSource::Org,
                Scope::SystemWide,
                CredentialRef::explicit(name, ScopeKind::SystemWide, None),
            )
        };
        let (record, stamp) = self
            .lookup(actor, action, &reference, &scope, fresh)
            .await?;
        let stamp = if present {
            stamp
        } else {
            stamp.and(agent_stamp)
        };
        let secret = self
            .release_revealed(
                actor,
                action,
                record,
                Some(("source", source.as_str())),
                stamp,
            )
            .await?;
        Ok(NamedSecret { source, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_name_follows_the_naming_table() {
        assert_eq!(
            agent_override_name(LLMPROXY_API_KEY).as_deref(),
            Some("agent:llmproxy.llm.api_key")
        );
        assert_eq!(agent_override_name("a:b:c").as_deref(), Some("agent:a.b:c"));
        assert_eq!(agent_override_name("plain"), None);
        assert_eq!(agent_override_name(":x"), None);
        assert_eq!(agent_override_name("x:"), None);
        assert_eq!(agent_override_name("agent:llmproxy.llm.api_key"), None);
    }
}
