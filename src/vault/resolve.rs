//! Resolving references: scope-strict lookups, the grant of the acting app, the state, and
//! the release; an agent's own secrets.

use super::*;

impl Vault {
    /// Resolves an app reference in a session context: looks the name up in exactly the
    /// scope the reference names (no fallback), checks the provider, the grant of a per-user
    /// credential to the app, and the lifecycle state. Audited.
    ///
    /// The lookups may be answered from the store's cache; the audit row is committed only
    /// if nothing they read has changed since (see [`ReadStamp`]), and the resolve starts
    /// over when something has, so a resolve never returns a value that was already
    /// replaced, revoked or deleted when it was called.
    ///
    /// `ctx` must be the principal's own app and user ([`ResolveContext::of`]): the app
    /// whose grant a per-user credential needs is the acting runtime's, never one a caller
    /// names. A context that disagrees is refused with `PermissionDenied` and audited.
    pub async fn resolve(
        &self,
        actor: &Principal,
        reference: &CredentialRef,
        ctx: &ResolveContext,
    ) -> Result<RevealedCredential> {
        trace::op("resolve")
            .actor(actor)
            .run(async move {
                self.check_context(actor, ctx).await?;
                let scope = ctx.scope_for(reference.scope)?;
                self.resolve_in(actor, reference, &scope, Some(("app", &ctx.app)))
                    .await
            })
            .await
    }

    /// An agent's own per-agent secret, by name: for an [`Principal::Agent`] only, and only
    /// a credential marked agent-accessible (anything else reaches an agent through the
    /// audited credentials path). The same checks and audit as [`Vault::resolve`].
    pub async fn agent_secret(&self, actor: &Principal, name: &str) -> Result<RevealedCredential> {
        trace::op("agent_secret")
            .actor(actor)
            .run(async move {
                actor.validate()?;
                let Some(agent) = actor.agent() else {
                    self.authorize(
                        actor,
                        Action::Resolve,
                        None,
                        AuditTarget::none(),
                        "agent secrets (for agent principals only)",
                    )
                    .await?;
                    // No role may resolve outside a scope, so the line above has returned the
                    // audited denial; should the table ever change, agents only all the same.
                    return Err(Error::PermissionDenied {
                        actor: actor.to_string(),
                        action: Action::Resolve.as_str().into(),
                        target: "agent secrets (for agent principals only)".into(),
                    });
                };
                let scope = Scope::per_agent(agent)?;
                let reference = CredentialRef::explicit(name, ScopeKind::PerAgent, None);
                self.resolve_in(actor, &reference, &scope, None).await
            })
            .await
    }

    /// A resolve of `reference` in `scope`, once the context is settled: the policy (a
    /// denial audited), then lookups and the release, started over while what was read
    /// changes under it.
    pub(super) async fn resolve_in(
        &self,
        actor: &Principal,
        reference: &CredentialRef,
        scope: &Scope,
        detail: Option<(&str, &str)>,
    ) -> Result<RevealedCredential> {
        trace::in_scope(scope);
        let relation = Relation::of(actor, Some(scope));
        if !policy::allows(actor.role(), Action::Resolve, relation) {
            let what = format!("credential `{}` ({scope})", reference.name);
            self.authorize(
                actor,
                Action::Resolve,
                Some(scope),
                AuditTarget::scope(scope),
                &what,
            )
            .await?;
        }
        // The first attempt may read from the store's cache; after that, every read is
        // fresh. An error that writes no audit row (not found, wrong provider, unusable)
        // is never given on a cached read alone: it sends the resolve round again.
        let mut attempts = 0;
        loop {
            let fresh = attempts > 0;
            let attempt = async {
                let (record, stamp) = self
                    .lookup(actor, Action::Resolve, reference, scope, fresh)
                    .await?;
                self.release_revealed(actor, Action::Resolve, record, detail, stamp)
                    .await
            };
            match attempt.await {
                Err(e) if is_stale(&e) && attempts < STALE_RETRIES => attempts += 1,
                other => return other,
            }
        }
    }

    /// Refuses (and audits) a resolve whose context is not the principal's own app and user.
    pub(crate) async fn check_context(
        &self,
        actor: &Principal,
        ctx: &ResolveContext,
    ) -> Result<()> {
        actor.validate()?;
        if ctx.belongs_to(actor) {
            return Ok(());
        }
        let mut event = Vault::event(actor, Action::Resolve, AuditTarget::none())
            .outcome(Outcome::Denied)
            .detail("reason", "the context is not the principal's own")
            .detail("context_app", printable(&ctx.app))
            .detail("context_user", printable(&ctx.user));
        if let Some(app) = actor.app() {
            event = event.detail("app", app);
        }
        if let Some(user) = actor.user() {
            event = event.detail("user", user);
        }
        self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await?;
        Err(Error::PermissionDenied {
            actor: actor.to_string(),
            action: Action::Resolve.as_str().into(),
            target: format!(
                "credentials of app `{}`, user `{}`: a principal resolves only for its own app \
                 and user (pass ResolveContext::of(principal))",
                printable(&ctx.app),
                printable(&ctx.user)
            ),
        })
    }

    /// The checks of a resolve (scope-strict lookup, provider, grant, state) without the
    /// release: the record and the stamp of what was read. A missing grant is audited here,
    /// as a denied `action` (a resolve or an injection).
    /// On a cached read (`fresh` false), errors that write no audit row come back as stale
    /// reads, so the caller confirms them with fresh reads.
    pub(crate) async fn lookup(
        &self,
        actor: &Principal,
        action: Action,
        reference: &CredentialRef,
        scope: &Scope,
        fresh: bool,
    ) -> Result<(Arc<CredentialRecord>, ReadStamp)> {
        let store = &self.inner.store;
        // A fresh read decides from exact reads, stamped by a stamped read taken just
        // before: the checked commit then lands only if nothing changed since that stamp,
        // so nothing changed between the exact read and the commit either.
        let (found, mut stamp) = if fresh {
            let (_, before) = store.find_named(scope, &reference.name).await?;
            let found = store
                .list(&ListFilter {
                    scope: Some(scope.clone()),
                    name: Some(reference.name.clone()),
                    limit: Some(1),
                    ..ListFilter::default()
                })
                .await?;
            (found.into_iter().next().map(Arc::new), before)
        } else {
            store.find_named(scope, &reference.name).await?
        };
        // Errors below that write no audit row are confirmed by a fresh read first.
        let unconfirmed = |e: Error| if fresh { e } else { stale_read() };
        let Some(record) = found else {
            return Err(unconfirmed(Error::NotFound {
                what: format!("credential `{}` ({scope})", reference.name),
                hint: Some(format!(
                    "scopes are strict — create it in {} or change the ref's scope",
                    reference.scope
                )),
            }));
        };
        if let Some(provider) = &reference.provider {
            if *provider != record.provider {
                return Err(unconfirmed(Error::invalid(
                    "provider",
                    format!(
                        "the ref asks for provider `{provider}` but {} is a `{}` credential",
                        record.describe(),
                        record.provider
                    ),
                )));
            }
        }
        if matches!(record.scope, Scope::PerUser { .. }) {
            let (grants, grants_stamp) = if fresh {
                let (_, before) = store.grants_stamped(&record.id).await?;
                (store.grants(&record.id).await?, before)
            } else {
                store.grants_stamped(&record.id).await?
            };
            stamp = stamp.and(grants_stamp);
            // The grant must be the acting principal's app's (the caller checked that `ctx`
            // is the principal's own; this does not rest on it).
            let app = actor.app().unwrap_or_default();
            if !grants.iter().any(|g| g.app == app && g.is_active()) {
                let event = Vault::event(
                    actor,
                    action,
                    AuditTarget::credential(&record.id, &record.scope),
                )
                .outcome(Outcome::Denied)
                .detail("reason", "no grant");
                self.commit(Batch::events(vec![event]), stamp).await?;
                return Err(Error::PermissionDenied {
                    actor: actor.to_string(),
                    action: action.as_str().into(),
                    target: format!(
                        "{}: app `{}` holds no grant (the user adds one with grant-add)",
                        record.describe(),
                        app
                    ),
                });
            }
        }
        let now = Timestamp::now();
        // An OAuth token inside the refresh window is refreshed first (once across every
        // instance); the resolve then starts over and reads the new version.
        if self.refresh_due(&record, now) && self.refresh_for_resolve(&record).await {
            return Err(stale_read());
        }
        let state = effective_state(&record, now);
        if !matches!(state, LifecycleState::Filled | LifecycleState::Valid) {
            return Err(unconfirmed(Error::Unusable {
                what: record.describe(),
                state: state.as_str().into(),
            }));
        }
        Ok((record, stamp))
    }
}
