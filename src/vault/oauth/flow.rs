//! The authorization-code flow with PKCE (RFC 6749 section 4.1, RFC 7636): `start` keeps
//! the pending flow as a record that lapses after ten minutes (its PKCE verifier sealed),
//! `complete` consumes it in the batch that stores the tokens as the user's credential.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::super::credentials::field_names_text;
use super::super::{info, printable, Action, CredentialInfo, Principal, Vault, FIELD_NAMES};
use super::{is_oauth_type, state_key, token_fields, OAuthEvent, PENDING_KIND, PENDING_TTL};
use crate::audit::{AuditTarget, Outcome};
use crate::error::{Error, Result};
use crate::model::{
    validate_id, CredentialId, CredentialRecord, Grant, LifecycleState, Record, RecordKey, Scope,
    Timestamp,
};
use crate::oauth::{ClientAuth, Pkce, TokenGrant};
use crate::store::{Batch, Mutation, Precondition, ReadStamp};
use crate::vault::trace;

/// What [`Vault::oauth_start`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OAuthStart {
    /// The provider (its file must have an `[oauth]` table).
    pub provider: String,
    /// The name (`ref`) the credential will have in the user's `per_user` scope.
    pub name: String,
    /// Where the provider sends the user back. Default: the client's registered
    /// `redirect_uri`; when one is registered, anything else is refused (exact matching).
    pub redirect_uri: Option<String>,
    /// Scopes to ask for. Default: the provider's.
    pub scopes: Option<Vec<String>>,
}

impl OAuthStart {
    /// A flow for `provider` that will store its tokens as `name`.
    pub fn new(provider: impl Into<String>, name: impl Into<String>) -> OAuthStart {
        OAuthStart {
            provider: provider.into(),
            name: name.into(),
            redirect_uri: None,
            scopes: None,
        }
    }

    /// With this redirect URI.
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> OAuthStart {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// Asking for these scopes.
    pub fn scopes(mut self, scopes: Vec<String>) -> OAuthStart {
        self.scopes = Some(scopes);
        self
    }
}

/// A started flow: send the user to `authorize_url`; the provider comes back to the
/// redirect URI with `code` and `state`, which go to [`Vault::oauth_complete`].
pub struct OAuthStarted {
    /// Where to send the user.
    pub authorize_url: String,
    /// The flow's single-use state (256 random bits), also inside `authorize_url`.
    pub state: SecretString,
    /// When the flow lapses.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for OAuthStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthStarted")
            .field("authorize_url", &"[REDACTED: carries the state]")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The one message for a state that cannot be completed, whatever the reason: unknown,
/// used, lapsed or another user's look the same to the caller (the audit row says which).
fn bad_state() -> Error {
    Error::invalid(
        "oauth state",
        "this OAuth flow is unknown, was already completed, has lapsed (flows last 10 \
         minutes) or belongs to someone else; start the login again",
    )
}

impl Vault {
    /// The user whose credential a flow makes: the actor's own. A principal with no user
    /// (an admin, a viewer, the service) is refused, audited.
    pub(super) async fn oauth_user(
        &self,
        actor: &Principal,
        action: Action,
    ) -> Result<(String, Scope)> {
        actor.validate()?;
        let Some(user) = actor.user() else {
            self.authorize(
                actor,
                action,
                None,
                AuditTarget::none(),
                "OAuth flows (only a user, or an app runtime for its user, logs in)",
            )
            .await?;
            return Err(Error::PermissionDenied {
                actor: actor.to_string(),
                action: action.as_str().into(),
                target: "OAuth flows (only a user, or an app runtime for its user)".into(),
            });
        };
        let scope = Scope::per_user(user)?;
        Ok((user.to_string(), scope))
    }

    /// The checks every login starts with: `oauth.start` on the user's scope (a denial
    /// audited), a usable credential name, the provider's `[oauth]` table and its client.
    pub(super) async fn authorize_login(
        &self,
        actor: &Principal,
        scope: &Scope,
        provider: &str,
        name: &str,
    ) -> Result<(
        std::sync::Arc<crate::catalog::Provider>,
        crate::catalog::OAuthSpec,
        crate::oauth::OAuthClient,
    )> {
        let what = format!("an OAuth login to `{}` ({scope})", printable(provider));
        self.authorize(
            actor,
            Action::OAuthStart,
            Some(scope),
            AuditTarget::scope(scope),
            &what,
        )
        .await?;
        validate_id("credential name", name)?;
        let (provider, spec) = self.oauth_provider(provider)?;
        let client = self.oauth_client(&provider.name)?;
        Ok((provider, spec, client))
    }

    /// Starts an authorization-code flow for the actor's user (PKCE S256 unless the
    /// provider turns it off; always for a public client). The pending flow is stored —
    /// its verifier sealed — and audited (`oauth.start`).
    pub async fn oauth_start(&self, actor: &Principal, start: OAuthStart) -> Result<OAuthStarted> {
        trace::op("oauth_start")
            .actor(actor)
            .run(async move {
                let (user, scope) = self.oauth_user(actor, Action::OAuthStart).await?;
                let (provider, spec, client) = self
                    .authorize_login(actor, &scope, &start.provider, &start.name)
                    .await?;
                self.login_target(&scope, &provider.name, &start.name)
                    .await?;
                if spec.authorize_url.is_none() {
                    return Err(Error::config(format!(
                    "provider `{}` has no authorize_url in its [oauth] table; use the device flow",
                    provider.name
                )));
                }
                let redirect_uri = match (&start.redirect_uri, &client.redirect_uri) {
                    (Some(asked), Some(registered)) if asked != registered => {
                        return Err(Error::invalid(
                            "redirect_uri",
                            format!(
                            "`{}` is not the redirect URI registered for `{}` (redirect URIs must \
                             match exactly); use the registered one or change the registration",
                            printable(asked),
                            provider.name
                        ),
                        ))
                    }
                    (Some(uri), None) => {
                        // Nothing registered to match: the URI must at least be one a browser may
                        // be sent to with a code (https, or http to this machine), with no fragment.
                        let ok = url::Url::parse(uri).is_ok_and(|u| {
                            crate::handlers::formats::secure_endpoint(&u) && u.fragment().is_none()
                        });
                        if !ok {
                            return Err(Error::invalid(
                            "redirect_uri",
                            "must be an https URL (or http to 127.0.0.1 or localhost) without a \
                             fragment; register the client's redirect_uri in oauth_providers.toml",
                        ));
                        }
                        uri.clone()
                    }
                    (Some(uri), Some(_)) | (None, Some(uri)) => uri.clone(),
                    (None, None) => {
                        return Err(Error::invalid(
                            "redirect_uri",
                            format!(
                            "no redirect URI: pass one, or register `redirect_uri` for `{}` in \
                             oauth_providers.toml",
                            provider.name
                        ),
                        ))
                    }
                };
                let scopes = start.scopes.clone().unwrap_or_else(|| spec.scopes.clone());
                let public =
                    client.client_secret.is_none() || provider.handler_type == "oauth2_pkce";
                let pkce = if spec.pkce || public {
                    Some(Pkce::generate()?)
                } else {
                    None
                };
                let state = crate::oauth::random_state()?;
                let url = crate::oauth::authorize_url(
                    &spec,
                    &client.client_id,
                    &redirect_uri,
                    &scopes,
                    &state,
                    pkce.as_ref().map(Pkce::challenge),
                )?;
                let now = Timestamp::now();
                let expires_at = now.saturating_add(PENDING_TTL);
                let key = RecordKey::new(PENDING_KIND, user.clone(), state_key(&state))?;
                let mut record = Record::new(
                    key,
                    serde_json::json!({
                        "flow": "code",
                        "provider": provider.name,
                        "name": start.name,
                        "app": actor.app(),
                        "redirect_uri": redirect_uri,
                        "scopes": scopes,
                    }),
                    now,
                );
                record.expires_at = Some(expires_at);
                if let Some(pkce) = &pkce {
                    let secret =
                        serde_json::json!({ "code_verifier": pkce.verifier().expose_secret() });
                    let plain = zeroize::Zeroizing::new(
                        serde_json::to_vec(&secret)
                            .map_err(|e| Error::invalid("pkce", e.to_string()))?,
                    );
                    let sealed = self
                        .inner
                        .keys
                        .seal_record(&plain, &record.aad_in(&self.inner.namespace))
                        .await?;
                    record.sealed = Some(sealed.bytes);
                }
                let event = Vault::event(actor, Action::OAuthStart, AuditTarget::scope(&scope))
                    .detail("flow", "code")
                    .detail("provider", provider.name.clone())
                    .detail("name", start.name.clone())
                    .detail("pkce", if pkce.is_some() { "s256" } else { "off" });
                self.commit(
                    Batch {
                        mutations: vec![Mutation::create_record(record)],
                        events: vec![event],
                    },
                    ReadStamp::UNCHECKED,
                )
                .await?;
                Ok(OAuthStarted {
                    authorize_url: url.to_string(),
                    state: SecretString::from(state),
                    expires_at,
                })
            })
            .await
    }

    /// Completes a flow: the provider's `code` for the `state` [`Vault::oauth_start`] gave.
    /// The state must be the actor's own, unused and not lapsed; the code is exchanged (with
    /// the sealed PKCE verifier and the exact redirect URI), and one batch stores the tokens
    /// as a `valid` per-user credential, grants it to the app that started the flow, and
    /// consumes the pending flow. Audited (`oauth.complete`), refusals too.
    pub async fn oauth_complete(
        &self,
        actor: &Principal,
        state: &SecretString,
        code: &SecretString,
    ) -> Result<CredentialInfo> {
        trace::op("oauth_complete").actor(actor).run(async move {
            let (user, scope) = self.oauth_user(actor, Action::OAuthComplete).await?;
            self.authorize(
                actor,
                Action::OAuthComplete,
                Some(&scope),
                AuditTarget::scope(&scope),
                "an OAuth login",
            )
            .await?;
            let refuse = |reason: &'static str| {
                Vault::event(actor, Action::OAuthComplete, AuditTarget::scope(&scope))
                    .outcome(Outcome::Denied)
                    .detail("reason", reason)
            };
            let key = RecordKey::new(PENDING_KIND, user.clone(), state_key(state.expose_secret()))?;
            let pending = self.inner.store.record(&key).await?;
            let Some(pending) = pending else {
                self.commit(
                    Batch::events(vec![refuse("unknown state")]),
                    ReadStamp::UNCHECKED,
                )
                .await?;
                return Err(bad_state());
            };
            let now = Timestamp::now();
            if pending.is_expired_at(now) {
                // A lapsed flow is consumed with its refusal.
                self.commit(
                    Batch {
                        mutations: vec![Mutation::delete_record(&pending)],
                        events: vec![refuse("lapsed state")],
                    },
                    ReadStamp::UNCHECKED,
                )
                .await?;
                return Err(bad_state());
            }
            let body = PendingFlow::read(&pending)?;
            let (provider, spec) = self.oauth_provider(&body.provider)?;
            let client = self.oauth_client(&provider.name)?;
            let verifier = match &pending.sealed {
                Some(_) => Some(self.open_pending_verifier(&pending).await?),
                None => None,
            };
            let secret = self.client_secret(&client, &provider.handler_type).await?;
            let http = self.http_for("completing an OAuth login")?;
            // A name taken meanwhile by something a login may not replace is refused before the
            // code is spent (the flow stays; another name can be tried after deleting).
            self.login_target(&scope, &provider.name, &body.name)
                .await?;
            // Claim the flow before its code goes to the provider: of two completions racing on
            // one state, exactly one sends the code (a code presented twice makes a provider
            // revoke what it issued for it). A claimed flow is not completed again.
            if pending.body.get("completing").is_some() {
                self.commit(
                    Batch::events(vec![refuse("state in use")]),
                    ReadStamp::UNCHECKED,
                )
                .await?;
                return Err(bad_state());
            }
            let mut claimed = pending.next_version(now);
            claimed.body["completing"] = serde_json::Value::Bool(true);
            let claim = Batch {
                mutations: vec![Mutation::update_record(claimed.clone())],
                events: vec![],
            };
            match self.commit(claim, ReadStamp::UNCHECKED).await {
                Ok(_) => {}
                Err(e) if crate::store::lease::Lease::lost_race(&e) => {
                    self.commit(
                        Batch::events(vec![refuse("state in use")]),
                        ReadStamp::UNCHECKED,
                    )
                    .await?;
                    return Err(bad_state());
                }
                Err(e) => return Err(e),
            }
            let pending = claimed;
            let exchanged = crate::oauth::request_token(
                http.as_ref(),
                &spec,
                &ClientAuth {
                    client_id: &client.client_id,
                    client_secret: secret.as_ref(),
                },
                &TokenGrant::AuthorizationCode {
                    code,
                    redirect_uri: &body.redirect_uri,
                    code_verifier: verifier.as_ref(),
                },
            )
            .await;
            let tokens = match exchanged {
                Ok(tokens) => tokens,
                Err(e) => {
                    // The code is spent either way: the flow is consumed with its failure.
                    let event = Vault::event(actor, Action::OAuthComplete, AuditTarget::scope(&scope))
                        .outcome(Outcome::Failure)
                        .detail("provider", provider.name.clone())
                        .detail("reason", super::reason_of(&e));
                    self.commit(
                        Batch {
                            mutations: vec![Mutation::delete_record(&pending)],
                            events: vec![event],
                        },
                        ReadStamp::UNCHECKED,
                    )
                    .await?;
                    return Err(e.into());
                }
            };
            let no_expiry = tokens.expires_in.is_none();
            let stored = token_fields(None, tokens, &client.client_id, now);
            self.minted_fields(&stored.fields);
            let (fields, expires_at) = (stored.fields.clone(), stored.expires_at);
            let stored_at = self
                .store_login(
                    actor, &scope, &provider, &body, &pending, &stored, now, no_expiry,
                )
                .await;
            let record = match stored_at {
                Ok(record) => record,
                Err(e) => {
                    // The provider issued tokens that will not be kept: revoke them (best
                    // effort) and say so in the audit log.
                    let event = Vault::event(actor, Action::OAuthComplete, AuditTarget::scope(&scope))
                        .outcome(Outcome::Failure)
                        .detail("provider", provider.name.clone())
                        .detail("reason", "not stored")
                        .detail("error", format!("{:?}", e.kind()));
                    if let Err(audit) = self
                        .commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                        .await
                    {
                        tracing::warn!(error = %audit, "failed login not audited");
                    }
                    let unkept = CredentialRecord {
                        id: CredentialId::generate(),
                        name: body.name.clone(),
                        scope: scope.clone(),
                        provider: provider.name.clone(),
                        handler_type: provider.handler_type.clone(),
                        state: LifecycleState::Invalid,
                        metadata: BTreeMap::new(),
                        agent_accessible: false,
                        version: 1,
                        created_at: now,
                        updated_at: now,
                        expires_at,
                        key_id: String::new(),
                        sealed: Vec::new(),
                    };
                    self.revoke_at_provider(actor, &unkept, &fields).await;
                    return Err(e);
                }
            };
            if no_expiry {
                tracing::warn!(
                    credential = %record.id,
                    provider = %provider.name,
                    "the provider gave an access token without expires_in; it cannot be refreshed \
                     ahead of time"
                );
                self.emit(OAuthEvent::NoExpiry {
                    id: record.id.clone(),
                });
            }
            let names = fields.keys().cloned().collect();
            Ok(info(&record, names))
        })
        .await
    }
}

impl Vault {
    /// What a login of `provider` named `name` would write over: nothing (a new
    /// credential), or the user's own OAuth credential of that provider under that name (a
    /// login again replaces its tokens as its next version). Anything else under the name
    /// is refused before any code is spent, and so is a credential an admin disabled.
    pub(super) async fn login_target(
        &self,
        scope: &Scope,
        provider: &str,
        name: &str,
    ) -> Result<Option<CredentialRecord>> {
        let (found, _) = self.inner.store.find_named(scope, name).await?;
        let Some(found) = found else { return Ok(None) };
        if found.provider != provider || !is_oauth_type(&found.handler_type) {
            return Err(Error::AlreadyExists {
                what: format!(
                    "credential `{}` ({scope}, a `{}` credential of provider `{}`); log in \
                     under another name, or delete it first",
                    printable(name),
                    found.handler_type,
                    found.provider
                ),
            });
        }
        if found.metadata.contains_key(super::super::DISABLED_BY) {
            return Err(Error::Unusable {
                what: found.describe(),
                state: "disabled by an admin".into(),
            });
        }
        Ok(Some((*found).clone()))
    }

    /// Stores a completed login in one batch: the tokens as a new `valid` credential (or
    /// as the next version of the user's own credential of that name and provider), the
    /// grant to the app that started the flow, the pending flow consumed, and the rows.
    #[allow(clippy::too_many_arguments)]
    async fn store_login(
        &self,
        actor: &Principal,
        scope: &Scope,
        provider: &crate::catalog::Provider,
        body: &PendingFlow,
        pending: &Record,
        stored: &super::StoredTokens,
        now: Timestamp,
        no_expiry: bool,
    ) -> Result<CredentialRecord> {
        let fields = &stored.fields;
        self.check_against_catalog(&provider.name, &provider.handler_type, fields)?;
        let existing = self.login_target(scope, &provider.name, &body.name).await?;
        let mut metadata: BTreeMap<String, String> = match &existing {
            Some(old) => old.metadata.clone(),
            None => BTreeMap::new(),
        };
        for (key, value) in &stored.metadata {
            metadata.insert(key.to_string(), value.clone());
        }
        metadata.insert(FIELD_NAMES.to_string(), field_names_text(fields));
        let (id, version, created_at, precondition) = match &existing {
            Some(old) => (
                old.id.clone(),
                old.version + 1,
                old.created_at,
                Precondition::IfVersion(old.version),
            ),
            None => (CredentialId::generate(), 1, now, Precondition::CreateOnly),
        };
        let mut record = CredentialRecord {
            id,
            name: body.name.clone(),
            scope: scope.clone(),
            provider: provider.name.clone(),
            handler_type: existing
                .as_ref()
                .map_or_else(|| provider.handler_type.clone(), |o| o.handler_type.clone()),
            state: LifecycleState::Valid,
            metadata,
            agent_accessible: existing.as_ref().is_some_and(|o| o.agent_accessible),
            version,
            created_at,
            updated_at: now,
            expires_at: stored.expires_at,
            key_id: String::new(),
            sealed: Vec::new(),
        };
        let plain = super::super::encode_fields(fields)?;
        self.seal_into(&mut record, &plain).await?;
        let target = AuditTarget::credential(&record.id, &record.scope);
        let mut event = Vault::event(actor, Action::OAuthComplete, target.clone())
            .detail("flow", "code")
            .detail("provider", provider.name.clone())
            .detail("name", record.name.clone())
            .detail("version", record.version.to_string());
        if no_expiry {
            event = event.detail("expiry", "not reported");
        }
        let mut mutations = vec![
            Mutation::Put {
                record: record.clone(),
                precondition,
            },
            Mutation::delete_record(pending),
        ];
        let mut events = vec![event];
        if let Some(app) = &body.app {
            mutations.push(Mutation::PutGrant {
                grant: Grant {
                    credential_id: record.id.clone(),
                    app: app.clone(),
                    granted_by: actor.to_string(),
                    granted_at: now,
                    revoked_at: None,
                    revoked_by: None,
                },
            });
            events.push(
                Vault::event(actor, Action::GrantAdd, target)
                    .detail("app", app.clone())
                    .detail("via", "oauth"),
            );
        }
        self.commit(Batch { mutations, events }, ReadStamp::UNCHECKED)
            .await?;
        Ok(record)
    }
}

/// The non-secret part of a pending flow, as stored in its record's body.
pub(super) struct PendingFlow {
    pub provider: String,
    pub name: String,
    pub app: Option<String>,
    pub redirect_uri: String,
}

impl PendingFlow {
    fn read(record: &Record) -> Result<PendingFlow> {
        let text = |key: &str| {
            record
                .body
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::corrupt(record.describe(), format!("its body has no `{key}`"))
                })
        };
        Ok(PendingFlow {
            provider: text("provider")?,
            name: text("name")?,
            app: record
                .body
                .get("app")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            redirect_uri: text("redirect_uri")?,
        })
    }
}
