//! AWS KMS: `Encrypt` / `Decrypt` (JSON protocol, `TrentService`), SigV4-signed with the
//! `aws-sigv4` crate. The record's associated data travels as the encryption context
//! (`{"strongroom-aad": base64}`), which KMS binds to the ciphertext.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::Engine;

use super::{no_derive, parse_secret, secret_json, secret_to_dek, Hidden, SecretText, Wiped, B64};
use crate::crypto::{BackendId, DataKey, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::{peer_of, HttpTransport};

/// A master key in AWS KMS (a key id, ARN or alias).
pub struct AwsKmsKey {
    key: String,
    id: String,
    region: String,
    endpoint: String,
    access_key_id: String,
    secret_access_key: Hidden,
    session_token: Option<Hidden>,
    http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AwsKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKey")
            .field("key", &self.key)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AwsKmsKey {
    /// The KMS key `key` (id, ARN or `alias/...`) in `region`, with these credentials.
    pub fn new(
        key: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AwsKmsKey> {
        let key = key.into();
        let region = region.into();
        if key.is_empty() || key.len() > 240 {
            return Err(Error::invalid("KMS key id", "must be 1 to 240 characters"));
        }
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::invalid(
                "AWS region",
                "must be a region code such as eu-west-1",
            ));
        }
        Ok(AwsKmsKey {
            id: format!("aws_kms:{key}"),
            endpoint: format!("https://kms.{region}.amazonaws.com/"),
            key,
            region,
            access_key_id: access_key_id.into(),
            secret_access_key: Hidden::new(secret_access_key),
            session_token: session_token.filter(|t| !t.is_empty()).map(Hidden::new),
            http,
        })
    }

    /// Sends requests to `endpoint` instead of `https://kms.<region>.amazonaws.com/` (a VPC
    /// endpoint, or a local KMS-compatible server in tests).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> AwsKmsKey {
        let mut endpoint = endpoint.into();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        self.endpoint = endpoint;
        self
    }

    fn context(aad: &[u8]) -> Context {
        Context {
            aad: B64.encode(aad),
        }
    }

    /// Sends one signed call; returns the body of a 2xx answer (wiped when dropped). The
    /// request body is wiped by the caller's [`Wiped`] once this returns.
    async fn call(&self, target: &str, body: &Wiped, unwrapping: bool) -> Result<Wiped> {
        let target = format!("TrentService.{target}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let credentials = aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.expose().to_string(),
            self.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
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
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: format!("no answer from {peer}: {e}"),
            })?;
        let status = response.status().as_u16();
        let answer_body = Wiped(response.into_body());
        if (200..300).contains(&status) {
            return Ok(answer_body);
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
        Err(match kind.as_str() {
            "InvalidCiphertextException" | "IncorrectKeyException" if unwrapping => {
                Error::DecryptFailed {
                    what: format!("a data key wrapped by {} ({kind})", self.id),
                }
            }
            _ => Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: format!(
                    "AWS KMS answered {status}{} {}{}",
                    if status == 401 || status == 403 || kind.starts_with("AccessDenied") {
                        " (access denied; check the credentials and the key policy)"
                    } else {
                        ""
                    },
                    if kind.is_empty() { "an error" } else { &kind },
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                ),
            },
        })
    }
}

/// The encryption context: the record's associated data, which KMS binds to the ciphertext.
#[derive(serde::Serialize)]
struct Context {
    #[serde(rename = "strongroom-aad")]
    aad: String,
}

/// `Encrypt`: the plaintext is the data key.
#[derive(serde::Serialize)]
struct EncryptRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "Plaintext")]
    plaintext: &'a str,
    #[serde(rename = "EncryptionContext")]
    context: Context,
}

#[derive(serde::Serialize)]
struct DecryptRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "CiphertextBlob")]
    ciphertext: String,
    #[serde(rename = "EncryptionContext")]
    context: Context,
}

/// `Decrypt`'s answer: the data key.
#[derive(serde::Deserialize)]
struct DecryptAnswer<'a> {
    #[serde(rename = "Plaintext", borrow)]
    plaintext: SecretText<'a>,
}

#[async_trait]
impl KeyWrapper for AwsKmsKey {
    fn backend_id(&self) -> BackendId {
        BackendId::AwsKms
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(B64.encode(dek.expose_secret()));
        let request = EncryptRequest {
            key_id: &self.key,
            plaintext: plaintext.as_str(),
            context: Self::context(aad),
        };
        let body = secret_json(
            &request,
            self.key.len() + plaintext.len() + request.context.aad.len(),
        )?;
        let answer = self.call("Encrypt", &body, false).await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "AWS KMS answered with a body that is not JSON".into(),
            })?;
        super::b64_field(&answer, "/CiphertextBlob", &self.id)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let request = DecryptRequest {
            key_id: &self.key,
            ciphertext: B64.encode(wrapped),
            context: Self::context(aad),
        };
        let body = secret_json(
            &request,
            self.key.len() + request.ciphertext.len() + request.context.aad.len(),
        )?;
        let answer = self.call("Decrypt", &body, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&answer, &self.id, "base64 `Plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }
}
