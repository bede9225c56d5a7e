//! Live verification (`test_live_connection`): the provider's `[verify]` call, made through
//! the host's `HttpTransport` with the credential's own fields, moving the credential to
//! `valid` or `invalid` when the answer says so. Audited.

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::{
    effective_state, encode_fields, is_owner, transition_allowed, Action, Principal, Vault,
};
use crate::audit::{AuditEvent, AuditTarget, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{CredentialId, CredentialRecord, LifecycleState, Timestamp};

/// The source prefix of providers compiled into the crate.
const BUNDLED: &str = "bundled:";
use crate::store::{Batch, Mutation, Precondition, ReadStamp};
use crate::transport::{peer_of, Bytes};
use crate::vault::trace;

/// What a live check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerifyResult {
    /// The provider accepted the credential.
    Valid,
    /// The provider rejected it (401 or 403).
    Invalid,
    /// No verdict: a network error, a 5xx, or a status that says neither.
    Inconclusive,
}

/// The outcome of [`Vault::test_live_connection`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// The verdict.
    pub result: VerifyResult,
    /// The HTTP status, when there was an answer.
    pub http_status: Option<u16>,
    /// The credential's state afterwards.
    pub state: LifecycleState,
    /// The credential's version afterwards (it grows when the state changed).
    pub version: u64,
    /// Why the state did not change, when it did not.
    pub reason: Option<String>,
}

impl Vault {
    /// Tests a credential against its provider's API (the `[verify]` section of its catalog
    /// entry): renders the endpoint and auth headers from this credential's fields only,
    /// sends the request through the vault's [`crate::transport::HttpTransport`], and moves
    /// the credential to `valid` on a success code or to `invalid` on 401/403. A network
    /// error or a 5xx leaves it as it was, with the reason returned. Needs the right to
    /// verify it ([`Action::Verify`], held by whoever may move it through its lifecycle).
    ///
    /// Audited twice, never with a field value or the URL: a `step=request` row is
    /// committed before the secret leaves the process (no row, no request), and a
    /// `step=result` row records the verdict with the state change. When the credential
    /// changed while the request was out, the state is left as it is and the result row
    /// says so (`conflict`).
    ///
    /// Only the credential's owner (a principal who may read the secret) is sent to the
    /// catalog as loaded, drop-in overrides included; anyone else (an admin checking a
    /// user's credential) is sent to the bundled provider's endpoint, and is refused for a
    /// provider that exists only in the drop-in folder. The row names the definition used.
    pub async fn test_live_connection(
        &self,
        actor: &Principal,
        id: &CredentialId,
    ) -> Result<Verification> {
        trace::op("test_live_connection")
            .actor(actor)
            .id(id)
            .run(async move {
                let record = self.load_for(actor, Action::Verify, id).await?;
                let target = AuditTarget::credential(&record.id, &record.scope);
                let provider = self.provider(&record.provider)?;
                let overridden = !provider.source.starts_with(BUNDLED);
                let definition = if overridden && !is_owner(actor, &record.scope) {
                    match self.inner.bundled.get(&record.provider) {
                        Some(bundled) => bundled.clone(),
                        None => {
                            let event = AuditEvent::new(actor.to_string(), Action::Verify, target)
                                .outcome(Outcome::Denied)
                                .detail("reason", "provider defined only in the drop-in folder")
                                .detail("provider_source", provider.source.clone());
                            self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                                .await?;
                            return Err(Error::PermissionDenied {
                                actor: actor.to_string(),
                                action: Action::Verify.as_str().into(),
                                target: format!(
                                "{}: provider `{}` comes from the drop-in folder ({}), so only the \
                                 credential's owner may verify it against that endpoint",
                                record.describe(),
                                provider.name,
                                provider.source
                            ),
                            });
                        }
                    }
                } else {
                    provider
                };
                let spec = definition.verify.clone().ok_or_else(|| {
                    Error::invalid(
                        "provider",
                        format!(
                        "`{}` has no [verify] section, so its credentials cannot be tested live",
                        definition.name
                    ),
                    )
                })?;
                let http = self.inner.http.clone().ok_or_else(|| {
                    Error::config(
                        "live verification needs an HTTP client: give the vault one with \
                     VaultBuilder::http (ReqwestTransport with the `reqwest` feature)",
                    )
                })?;
                let request_event = |outcome: Outcome| {
                    let mut event =
                        AuditEvent::new(actor.to_string(), Action::Verify, target.clone())
                            .outcome(outcome)
                            .detail("step", "request")
                            .detail("version", record.version.to_string())
                            .detail("provider_source", definition.source.clone());
                    if overridden {
                        let used = if definition.source.starts_with(BUNDLED) {
                            "ignored (not the owner)"
                        } else {
                            "used"
                        };
                        event = event.detail("override", used);
                    }
                    event
                };
                // The secret leaves the process only once its release is durable.
                let fields = self
                    .release_one(
                        actor,
                        &record,
                        request_event(Outcome::Success),
                        ReadStamp::UNCHECKED,
                    )
                    .await?;
                let lookup = |name: &str| -> Option<Zeroizing<String>> {
                    fields
                        .get(name)
                        .map(|v| Zeroizing::new(v.expose_secret().to_string()))
                };
                let request = build_request(&spec, &lookup)?;
                let peer = peer_of(request.uri());
                let answer = http.send(request).await;
                let (result, status, why) = match &answer {
                    Err(e) => (
                        VerifyResult::Inconclusive,
                        None,
                        Some(format!("no answer from {peer}: {e}")),
                    ),
                    Ok(response) => {
                        let code = response.status().as_u16();
                        let body_ok = spec.success_contains.as_ref().is_none_or(|needle| {
                            response
                                .body()
                                .windows(needle.len().max(1))
                                .any(|w| w == needle.as_bytes())
                        });
                        if spec.success_codes.contains(&code) && body_ok {
                            (VerifyResult::Valid, Some(code), None)
                        } else if code == 401 || code == 403 || (spec.success_codes.contains(&code))
                        {
                            (VerifyResult::Invalid, Some(code), None)
                        } else if code >= 500 {
                            (
                                VerifyResult::Inconclusive,
                                Some(code),
                                Some(format!(
                                    "{peer} answered {code} (a server error); try again later"
                                )),
                            )
                        } else {
                            (
                                VerifyResult::Inconclusive,
                                Some(code),
                                Some(format!(
                                    "{peer} answered {code}, which says neither valid nor invalid"
                                )),
                            )
                        }
                    }
                };
                let from = effective_state(&record, Timestamp::now());
                let to = match result {
                    VerifyResult::Valid => Some(LifecycleState::Valid),
                    VerifyResult::Invalid => Some(LifecycleState::Invalid),
                    VerifyResult::Inconclusive => None,
                };
                let mut reason = why;
                let mut after = record.clone();
                let mut mutations = Vec::new();
                match to {
                    Some(to) if to == from => {}
                    Some(to) if transition_allowed(from, to) => {
                        // The blob is bound to the version: re-seal it for the new one.
                        after.state = to;
                        after.version += 1;
                        after.updated_at = Timestamp::now();
                        let plain = encode_fields(&fields)?;
                        self.seal_into(&mut after, &plain).await?;
                        mutations.push(Mutation::Put {
                            record: after.clone(),
                            precondition: Precondition::IfVersion(record.version),
                        });
                    }
                    Some(to) => {
                        reason = Some(format!(
                        "the provider's answer means {to}, but a credential cannot go from {from} \
                         to {to}; update its fields to start over"
                    ));
                    }
                    None => {}
                }
                let result_event = |after: &CredentialRecord, reason: &Option<String>| {
                    let mut event =
                        AuditEvent::new(actor.to_string(), Action::Verify, target.clone())
                            .outcome(match result {
                                VerifyResult::Valid => Outcome::Success,
                                VerifyResult::Invalid | VerifyResult::Inconclusive => {
                                    Outcome::Failure
                                }
                            })
                            .detail("step", "result")
                            .detail("result", format!("{result:?}").to_lowercase())
                            .detail("from", from.as_str())
                            .detail("to", effective_state(after, Timestamp::now()).as_str())
                            .detail("version", after.version.to_string());
                    if let Some(code) = status {
                        event = event.detail("http_status", code.to_string());
                    }
                    if let Some(reason) = reason {
                        event = event.detail("reason", reason.clone());
                    }
                    event
                };
                let changing = !mutations.is_empty();
                let batch = Batch {
                    mutations,
                    events: vec![result_event(&after, &reason)],
                };
                let committed = self.commit(batch, ReadStamp::UNCHECKED).await;
                match committed {
                    Ok(_) => {}
                    Err(e) if changing && e.kind() == ErrorKind::VersionConflict => {
                        // The credential changed while the request was out: the verdict is about
                        // the version that was sent, so the state stays as the newer version has
                        // it, and the verdict is still recorded.
                        after = match self.inner.store.get(&record.id).await? {
                            Some(current) => current,
                            None => record.clone(),
                        };
                        reason = Some(format!(
                        "the credential changed during the check (now version {}); its state was \
                         left as it is",
                        after.version
                    ));
                        let event = result_event(&after, &reason).detail("conflict", "true");
                        self.commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
                            .await?;
                    }
                    Err(e) => return Err(e),
                }
                Ok(Verification {
                    result,
                    http_status: status,
                    state: effective_state(&after, Timestamp::now()),
                    version: after.version,
                    reason,
                })
            })
            .await
    }
}

/// The verification request: endpoint and header lines rendered from the credential's
/// fields. Header values are marked sensitive.
fn build_request(
    spec: &crate::catalog::VerifySpec,
    lookup: &dyn Fn(&str) -> Option<Zeroizing<String>>,
) -> Result<http::Request<Bytes>> {
    let url = crate::catalog::template::render(&spec.endpoint, lookup)
        .map_err(|m| Error::invalid("verify endpoint", m))?;
    let secure = url::Url::parse(url.as_str())
        .ok()
        .is_some_and(|u| crate::catalog::secure_endpoint(&u));
    if !secure {
        // The URL may hold field values: it is not shown.
        return Err(Error::invalid(
            "verify endpoint",
            "the endpoint rendered from the credential's fields is not an https URL (plain \
             http goes only to this machine: localhost, 127.0.0.1 or ::1), and the request \
             would carry the credential; fix the credential's URL field",
        ));
    }
    let uri: http::Uri = url.as_str().parse().map_err(|_| {
        Error::invalid(
            "verify endpoint",
            "the endpoint rendered from the credential's fields is not a valid URL",
        )
    })?;
    let method = http::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| Error::invalid("verify method", "not an HTTP method"))?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Bytes::new())
        .map_err(|_| Error::invalid("verify endpoint", "cannot build the request"))?;
    let headers = crate::catalog::template::render(&spec.auth_template, lookup)
        .map_err(|m| Error::invalid("auth_template", m))?;
    for line in headers.lines().filter(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::invalid(
                "auth_template",
                "every line must be `Header-Name: value`",
            ));
        };
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| Error::invalid("auth_template", "a header name is not valid"))?;
        let mut value = http::HeaderValue::from_str(value.trim()).map_err(|_| {
            Error::invalid(
                "auth_template",
                format!("the `{name}` header value rendered from the fields is not a valid header value"),
            )
        })?;
        value.set_sensitive(true);
        request.headers_mut().append(name, value);
    }
    Ok(request)
}
