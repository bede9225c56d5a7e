//! The one door to secret material: every decryption of a credential's sealed fields in the
//! crate happens in this file. Fields opened for a caller are handed back only once their
//! audit rows are durable (fail-closed); a blob opened to be sealed again for a new version
//! never leaves the vault (the change's own audit row records it).

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::{Action, Principal, Role, Vault};
use crate::audit::{AuditEvent, Outcome};
use crate::error::{Error, Result};
use crate::handlers::Fields;
use crate::model::CredentialRecord;
use crate::store::{Batch, ReadStamp};
use crate::vault::trace;

/// One record to release and the audit event that records its release.
pub(crate) struct Release<'a> {
    /// The record read.
    pub record: &'a CredentialRecord,
    /// Its audit event (`Success`; turned into a `Failure` when the blob does not open).
    pub event: AuditEvent,
    /// Fields the caller already holds for exactly this id and version (a deployment's
    /// shared credential): released again without opening the blob.
    pub held: Option<Arc<Fields>>,
}

/// What [`Vault::check_blobs`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BlobCheck {
    /// Credentials looked at.
    pub checked: u64,
    /// Credentials whose blob did not open.
    pub unopenable: u64,
    /// The first of those, with why.
    pub first: Vec<(crate::model::CredentialId, Error)>,
}

fn decode_fields(plain: &[u8], record: &CredentialRecord) -> Result<Fields> {
    let corrupt = || {
        Error::corrupt(
            record.describe(),
            "the sealed fields are not a JSON object of strings",
        )
    };
    // One UTF-8 check of the whole text rather than one per string, then straight into the
    // secret strings: no intermediate map of plain `String`s.
    let text = std::str::from_utf8(plain).map_err(|_| corrupt())?;
    serde_json::from_str::<Fields>(text).map_err(|_| corrupt())
}

impl Vault {
    /// Opens and decodes one record's fields: the only call of the key ring's `open` on a
    /// credential blob.
    async fn open_fields(&self, record: &CredentialRecord) -> Result<Fields> {
        let plain = self
            .inner
            .keys
            .open(&record.sealed, &self.identity_of(record))
            .await?;
        let fields = decode_fields(plain.expose_secret(), record)?;
        self.unsealed(&fields);
        Ok(fields)
    }

    /// Sees every value decrypted for a caller, before anyone else does: where the log
    /// scrubber learns the values it must mask.
    fn unsealed(&self, fields: &Fields) {
        for value in fields.values() {
            self.inner.scrubber.register_secret(value);
        }
    }

    /// Registers a value the vault has obtained in plaintext other than by unsealing (a
    /// token minted or refreshed by a provider) with the log scrubber, before it is used.
    pub(crate) fn minted(&self, value: &secrecy::SecretString) {
        self.inner.scrubber.register_secret(value);
    }

    /// [`Vault::minted`] of every value of a field set (the fields an OAuth token response
    /// became).
    pub(crate) fn minted_fields(&self, fields: &Fields) {
        self.unsealed(fields);
    }

    /// Releases `items`: opens each record's fields (or takes the ones held), then commits
    /// one audit event per item in one batch, checked against `stamp` (see
    /// [`ReadStamp`]), and only then hands the fields back. A blob that does not open has its
    /// event committed as a failure (with the error's kind) and the error is returned with
    /// that item's index; a failed commit returns its error (index 0) and no fields.
    ///
    /// An [`Principal::Agent`] is never released a credential that is not marked
    /// agent-accessible, whatever the scope and the policy: the refusal is audited.
    pub(crate) async fn release(
        &self,
        actor: &Principal,
        items: Vec<Release<'_>>,
        stamp: ReadStamp,
    ) -> std::result::Result<Vec<Arc<Fields>>, (usize, Error)> {
        let mut out = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if actor.role() == Role::Agent && !item.record.agent_accessible {
                return Err((i, self.refuse_agent(actor, item.record, item.event).await));
            }
            let fields = match item.held {
                Some(fields) => fields,
                None => match self.open_fields(item.record).await {
                    Ok(fields) => Arc::new(fields),
                    Err(e) => {
                        return Err((i, self.unopened(item.event, e, stamp).await));
                    }
                },
            };
            events.push(item.event);
            out.push(fields);
        }
        self.commit(Batch::events(events), stamp)
            .await
            .map_err(|e| (0, e))?;
        Ok(out)
    }

    /// [`Vault::release`] of one record, without the lists and shared fields a batch needs.
    pub(crate) async fn release_one(
        &self,
        actor: &Principal,
        record: &CredentialRecord,
        event: AuditEvent,
        stamp: ReadStamp,
    ) -> Result<Fields> {
        if actor.role() == Role::Agent && !record.agent_accessible {
            return Err(self.refuse_agent(actor, record, event).await);
        }
        let fields = match self.open_fields(record).await {
            Ok(fields) => fields,
            Err(e) => return Err(self.unopened(event, e, stamp).await),
        };
        self.commit(Batch::events(vec![event]), stamp).await?;
        Ok(fields)
    }

    /// Audits the refusal of a credential not marked agent-accessible to an agent: the
    /// error to return (the commit's, if the refusal could not be audited).
    async fn refuse_agent(
        &self,
        actor: &Principal,
        record: &CredentialRecord,
        event: AuditEvent,
    ) -> Error {
        let event = event
            .outcome(Outcome::Denied)
            .detail("reason", "not agent-accessible");
        if let Err(e) = self
            .commit(Batch::events(vec![event]), ReadStamp::UNCHECKED)
            .await
        {
            return e;
        }
        Error::PermissionDenied {
            actor: actor.to_string(),
            action: Action::Resolve.as_str().into(),
            target: format!(
                "{}: it is not marked agent-accessible, so an agent reaches it only through \
                 the credentials path",
                record.describe()
            ),
        }
    }

    /// Audits a blob that did not open as a failure (checked against `stamp`): the error
    /// to return (the commit's, if the failure could not be audited).
    async fn unopened(&self, event: AuditEvent, error: Error, stamp: ReadStamp) -> Error {
        let event = event
            .outcome(Outcome::Failure)
            .detail("error", format!("{:?}", error.kind()));
        match self.commit(Batch::events(vec![event]), stamp).await {
            Ok(_) => error,
            Err(e) => e,
        }
    }

    /// Opens every credential's blob with the vault's keys and drops each plaintext at
    /// once: how many were looked at, how many do not open, and the first `limit` of those
    /// with their errors. Nothing is released, so nothing is audited but a
    /// refusal; for whoever may reseal (a check that a master key opens a backup before it
    /// is restored, or before a key is retired).
    pub async fn check_blobs(&self, actor: &Principal, limit: usize) -> Result<BlobCheck> {
        trace::op("check_blobs")
            .actor(actor)
            .run(async move {
                self.authorize_unscoped(actor, Action::Reseal).await?;
                let mut after = None;
                let mut check = BlobCheck::default();
                loop {
                    let page = self
                        .inner
                        .store
                        .list(&crate::store::ListFilter {
                            after_id: after.clone(),
                            limit: Some(500),
                            ..crate::store::ListFilter::default()
                        })
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    for record in &page {
                        check.checked += 1;
                        let opened = self
                            .inner
                            .keys
                            .open(&record.sealed, &self.identity_of(record))
                            .await;
                        if let Err(e) = opened {
                            check.unopenable += 1;
                            if check.first.len() < limit {
                                check.first.push((record.id.clone(), e));
                            }
                        }
                    }
                }
                Ok(check)
            })
            .await
    }

    /// Opens a credential's fields for a change the vault makes itself (a refresh, a
    /// revocation, a device-flow poll): the values go only to the provider or into the new
    /// version, never to a caller, and the change's own audit row records the use.
    pub(crate) async fn open_for_change(&self, record: &CredentialRecord) -> Result<Fields> {
        self.open_fields(record).await
    }

    /// Releases an agent's integration credentials through the credentials path
    /// (`Vault::credentials_for`): the caller has authorised the actor for its own agent's
    /// integration (or as a system admin), so the agent-accessible flag — which keeps these
    /// secrets off the secrets path — is not asked here. Opens each record's fields, commits
    /// their events (one per record) checked against `stamp`, and only then hands the fields
    /// back; a blob that does not open has its event committed as a failure.
    pub(crate) async fn release_integration(
        &self,
        items: Vec<(&CredentialRecord, AuditEvent)>,
        stamp: ReadStamp,
    ) -> Result<Vec<Fields>> {
        let mut out = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        for (record, event) in items {
            match self.open_fields(record).await {
                Ok(fields) => {
                    out.push(fields);
                    events.push(event);
                }
                Err(e) => {
                    let event = event
                        .outcome(Outcome::Failure)
                        .detail("error", format!("{:?}", e.kind()));
                    self.commit(Batch::events(vec![event]), stamp).await?;
                    return Err(e);
                }
            }
        }
        self.commit(Batch::events(events), stamp).await?;
        Ok(out)
    }

    /// Opens the sealed PKCE verifier of a pending OAuth flow.
    pub(crate) async fn open_pending_verifier(
        &self,
        record: &crate::model::Record,
    ) -> Result<secrecy::SecretString> {
        self.open_record_field(record, "code_verifier", "PKCE verifier")
            .await
    }

    /// Opens the sealed admin token of a credential provider record (kind
    /// `credential_provider`): passed only to the provider's GitLab calls.
    pub(crate) async fn open_provider_token(
        &self,
        record: &crate::model::Record,
    ) -> Result<secrecy::SecretString> {
        self.open_record_field(record, "admin_token", "admin token")
            .await
    }

    /// Opens a record's sealed body (a JSON object of secret strings) and takes its field
    /// `field`; `what` names it in errors (never its value).
    async fn open_record_field(
        &self,
        record: &crate::model::Record,
        field: &str,
        what: &str,
    ) -> Result<secrecy::SecretString> {
        let sealed = record
            .sealed
            .as_ref()
            .ok_or_else(|| Error::corrupt(record.describe(), format!("it has no sealed {what}")))?;
        let plain = self
            .inner
            .keys
            .open_record(sealed, &record.aad_in(&self.inner.namespace))
            .await?;
        let mut opened: Fields = serde_json::from_slice(plain.expose_secret()).map_err(|_| {
            Error::corrupt(
                record.describe(),
                format!("its sealed body is not a {what}"),
            )
        })?;
        self.unsealed(&opened);
        opened.remove(field).ok_or_else(|| {
            Error::corrupt(record.describe(), format!("its sealed body has no {what}"))
        })
    }

    /// Reads an OAuth client secret kept as a vault credential: released to the vault's
    /// OAuth service alone, and audited as its resolve of that credential.
    pub(crate) async fn open_client_secret(
        &self,
        id: &crate::model::CredentialId,
    ) -> Result<Fields> {
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("credential {id}, named as an OAuth client secret"),
                hint: Some("create it, or fix client_secret_credential".into()),
            })?;
        let service = Vault::oauth_service();
        let event = Vault::event(
            &service,
            Action::Resolve,
            crate::audit::AuditTarget::credential(&record.id, &record.scope),
        )
        .detail("purpose", "oauth client secret");
        self.release_one(&service, &record, event, ReadStamp::UNCHECKED)
            .await
    }

    /// Seals `from`'s secret fields again into `into` (the same credential at a new
    /// version, to which the blob is bound), with a fresh data key. The plaintext never
    /// leaves this function.
    pub(crate) async fn reseal(
        &self,
        from: &CredentialRecord,
        into: &mut CredentialRecord,
    ) -> Result<()> {
        let plain = self
            .inner
            .keys
            .open(&from.sealed, &self.identity_of(from))
            .await?;
        self.seal_into(into, plain.expose_secret()).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `dir`, with its text.
    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read file");
                out.push((path.display().to_string(), text));
            }
        }
    }

    /// A second path that decrypts credential blobs (the key ring's `open`, or decoding
    /// sealed fields) outside this file fails this test: the crypto layer defines `open`,
    /// and only this file calls it.
    #[test]
    fn this_file_is_the_only_door_to_secret_material() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(files.len() > 20, "found the sources");
        let this = Path::new("vault").join("unseal.rs");
        let crypto = root.join("crypto");
        for (path, text) in files {
            if path.ends_with(&*this.to_string_lossy())
                || path.starts_with(&*crypto.to_string_lossy())
            {
                continue;
            }
            let flat: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            for needle in [
                ".keys.open(",
                ".keys().open(",
                "keyring.open(",
                "decode_fields(",
            ] {
                assert!(
                    !flat.contains(needle),
                    "{path} calls `{needle}`: decrypt through vault/unseal.rs instead"
                );
            }
        }
    }
}
