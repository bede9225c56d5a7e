//! One signed AWS KMS call (JSON protocol, `TrentService`, SigV4 with `aws-sigv4`) and the
//! service's error answers turned into the vault's errors.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use super::super::{request_secrets, unavailable, Wiped};
use super::credentials::CredentialProvider;
use crate::error::{Error, Result};
use crate::transport::{peer_of, HttpTransport};

/// Where and as whom AWS KMS is called: shared by a key and its MAC key.
pub(crate) struct AwsClient {
    pub(crate) region: String,
    pub(crate) endpoint: String,
    pub(crate) credentials: CredentialProvider,
    pub(crate) http: Arc<dyn HttpTransport>,
}

/// An error answer of AWS KMS: its status, the exception's short name
/// (`InvalidCiphertextException`, …) and its message.
pub(crate) struct Fault {
    pub(crate) status: u16,
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl AwsClient {
    /// Sends one signed call; returns the body of a 2xx answer (wiped when dropped), or the
    /// service's error answer. The request body is wiped by the caller's [`Wiped`] once this
    /// returns.
    pub(crate) async fn send(
        &self,
        key_id: &str,
        target: &str,
        body: &Wiped,
    ) -> Result<std::result::Result<Wiped, Fault>> {
        let target = format!("TrentService.{target}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let creds = self.credentials.get(key_id).await?;
        let credentials = aws_credential_types::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose().to_string(),
            creds.session_token.as_ref().map(|t| t.expose().to_string()),
            creds.expires,
            "strongroom",
        );
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Error::config(format!("cannot sign the KMS request: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| Error::config(format!("cannot sign the KMS request: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::config(format!("cannot sign the KMS request: {e}")))?
            .into_parts();
        let mut builder = http::Request::builder().method("POST").uri(&self.endpoint);
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        let mut request = builder
            .body(body.share())
            .map_err(|_| Error::config(format!("`{}` is not a usable endpoint", self.endpoint)))?;
        instructions.apply_to_request_http1x(&mut request);
        for v in request.headers_mut().values_mut() {
            v.set_sensitive(true);
        }
        let peer = peer_of(request.uri());
        let secrets = request_secrets(&request);
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: format!("no answer from {peer}: {e}"),
            })?;
        let status = response.status().as_u16();
        let answer_body = Wiped(response.into_body());
        if (200..300).contains(&status) {
            return Ok(Ok(answer_body));
        }
        // KMS names the error in `__type` (`...#InvalidCiphertextException`); the
        // authentication layer in front of it may answer in XML (`<Code>`, `<Message>`).
        let answer: serde_json::Value = serde_json::from_slice(&answer_body).unwrap_or_default();
        let text = String::from_utf8_lossy(&answer_body);
        let xml = |tag: &str| -> Option<String> {
            let open = format!("<{tag}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&format!("</{tag}>"))? + start;
            Some(text[start..end].to_string())
        };
        let kind = answer
            .get("__type")
            .and_then(|t| t.as_str())
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .or_else(|| xml("Code"))
            .unwrap_or_default();
        let message = answer
            .get("message")
            .or_else(|| answer.get("Message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .or_else(|| xml("Message"))
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect::<String>();
        // An endpoint or proxy that echoes the request must not carry its secrets (the
        // data key of an Encrypt, the session token) into the error.
        let exposed: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        let message = crate::redact::redact(&message, &exposed);
        let kind = crate::redact::redact(&kind, &exposed);
        Ok(Err(Fault {
            status,
            kind,
            message,
        }))
    }

    /// [`AwsClient::send`], with an error answer turned into the vault's error: a ciphertext
    /// that is not this key's (when `unwrapping`) is [`Error::DecryptFailed`], anything else
    /// [`Error::KeyUnavailable`] naming the key and the reason.
    pub(crate) async fn call(
        &self,
        key_id: &str,
        target: &str,
        body: &Wiped,
        unwrapping: bool,
    ) -> Result<Wiped> {
        match self.send(key_id, target, body).await? {
            Ok(answer) => Ok(answer),
            Err(fault) => Err(fault.into_error(key_id, unwrapping)),
        }
    }
}

impl Fault {
    /// The vault's error for this answer. Only a ciphertext that does not authenticate
    /// (`InvalidCiphertextException`: another record's context, a changed blob) is
    /// [`Error::DecryptFailed`]; everything operational is [`Error::KeyUnavailable`] with
    /// the service's reason — `IncorrectKeyException` (the key id or alias now names another
    /// key than the one that wrapped the data key: an alias re-pointed),
    /// `DisabledException`, `KMSInvalidStateException` (pending deletion, pending import),
    /// `NotFoundException`, `KeyUnavailableException`, access denied, throttling.
    pub(crate) fn into_error(self, key_id: &str, unwrapping: bool) -> Error {
        let Fault {
            status,
            kind,
            message,
        } = self;
        if kind == "InvalidCiphertextException" && unwrapping {
            return Error::DecryptFailed {
                what: format!("a data key wrapped by {key_id} ({kind})"),
            };
        }
        let advice = match kind.as_str() {
            "IncorrectKeyException" => {
                " (the key id or alias now names another KMS key than the one that wrapped \
                 this data key: point the alias back, or configure the original key's ARN)"
            }
            "DisabledException" => " (the KMS key is disabled: enable it with EnableKey)",
            "KMSInvalidStateException" => {
                " (the KMS key is not usable in its current state, for instance pending \
                 deletion: CancelKeyDeletion and EnableKey)"
            }
            "NotFoundException" => " (no such KMS key or alias in this account and region)",
            _ if status == 401 || status == 403 || kind.starts_with("AccessDenied") => {
                " (access denied; check the credentials and the key policy)"
            }
            _ => "",
        };
        unavailable(
            key_id,
            format!(
                "AWS KMS answered {status} {}{}{advice}",
                if kind.is_empty() { "an error" } else { &kind },
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            ),
        )
    }
}
