//! AWS KMS: `Encrypt` / `Decrypt` (JSON protocol, `TrentService`), SigV4-signed with the
//! `aws-sigv4` crate. The record's associated data travels as the encryption context
//! (`{"strongroom-aad": base64}`), which KMS binds to the ciphertext. Audit checkpoints are
//! authenticated with `GenerateMac` / `VerifyMac` under an HMAC key of the same account
//! ([`AwsKmsKey::with_mac_key`]).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::Engine;

use super::{no_derive, parse_secret, secret_json, secret_to_dek, Hidden, SecretText, Wiped, B64};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::{peer_of, HttpTransport};

/// Where and as whom AWS KMS is called: shared by a key and its MAC key.
#[derive(Clone)]
struct AwsClient {
    region: String,
    endpoint: String,
    access_key_id: String,
    secret_access_key: Hidden,
    session_token: Option<Hidden>,
    http: Arc<dyn HttpTransport>,
}

/// An error answer of AWS KMS: its status, the exception's short name
/// (`InvalidCiphertextException`, …) and its message.
struct Fault {
    status: u16,
    kind: String,
    message: String,
}

/// A master key in AWS KMS (a key id, ARN or alias).
pub struct AwsKmsKey {
    key: String,
    id: String,
    client: Arc<AwsClient>,
    mac_key: Option<String>,
}

impl fmt::Debug for AwsKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKey")
            .field("key", &self.key)
            .field("region", &self.client.region)
            .field("endpoint", &self.client.endpoint)
            .field("mac_key", &self.mac_key)
            .finish_non_exhaustive()
    }
}

fn check_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() || key.len() > 240 {
        return Err(Error::invalid(what, "must be 1 to 240 characters"));
    }
    Ok(())
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
        check_key(&key, "KMS key id")?;
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
            key,
            client: Arc::new(AwsClient {
                endpoint: format!("https://kms.{region}.amazonaws.com/"),
                region,
                access_key_id: access_key_id.into(),
                secret_access_key: Hidden::new(secret_access_key),
                session_token: session_token.filter(|t| !t.is_empty()).map(Hidden::new),
                http,
            }),
            mac_key: None,
        })
    }

    /// Sends requests to `endpoint` instead of `https://kms.<region>.amazonaws.com/` (a VPC
    /// endpoint, or a local KMS-compatible server in tests).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> AwsKmsKey {
        let mut endpoint = endpoint.into();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        let mut client = (*self.client).clone();
        client.endpoint = endpoint;
        self.client = Arc::new(client);
        self
    }

    /// Authenticates audit checkpoints with the HMAC KMS key `mac_key` (id, ARN or alias of a
    /// key with key spec `HMAC_256` and key usage `GENERATE_VERIFY_MAC`), called with the same
    /// credentials: `GenerateMac` / `VerifyMac` with `HMAC_SHA_256` (`docs/AUDIT.md`). An
    /// encryption key makes no MACs, so without one this key offers no checkpoint key.
    pub fn with_mac_key(mut self, mac_key: impl Into<String>) -> Result<AwsKmsKey> {
        let mac_key = mac_key.into();
        check_key(&mac_key, "KMS HMAC key id")?;
        self.mac_key = Some(mac_key);
        Ok(self)
    }

    fn context(aad: &[u8]) -> Context {
        Context {
            aad: B64.encode(aad),
        }
    }
}

impl AwsClient {
    /// Sends one signed call; returns the body of a 2xx answer (wiped when dropped), or the
    /// service's error answer. The request body is wiped by the caller's [`Wiped`] once this
    /// returns.
    async fn send(
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
        Ok(Err(Fault {
            status,
            kind,
            message,
        }))
    }

    /// [`AwsClient::send`], with an error answer turned into the vault's error: a ciphertext
    /// that is not this key's (when `unwrapping`) is [`Error::DecryptFailed`], anything else
    /// [`Error::KeyUnavailable`] naming the key and the reason.
    async fn call(
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
    fn into_error(self, key_id: &str, unwrapping: bool) -> Error {
        let Fault {
            status,
            kind,
            message,
        } = self;
        match kind.as_str() {
            "InvalidCiphertextException" | "IncorrectKeyException" if unwrapping => {
                Error::DecryptFailed {
                    what: format!("a data key wrapped by {key_id} ({kind})"),
                }
            }
            _ => Error::KeyUnavailable {
                key_id: key_id.to_string(),
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
        }
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
        let answer = self.client.call(&self.id, "Encrypt", &body, false).await?;
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
        let answer = self.client.call(&self.id, "Decrypt", &body, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&answer, &self.id, "base64 `Plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        match &self.mac_key {
            Some(key) => Ok(Arc::new(AwsKmsMacKey {
                id: format!("aws_kms_mac:{key}"),
                key: key.clone(),
                client: self.client.clone(),
            })),
            None => Err(Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "an AWS KMS encryption key makes no MACs, so it offers no audit \
                         checkpoint key: give it an HMAC key (STRONGROOM_AWS_KMS_MAC_KEY_ID, \
                         AwsKmsKey::with_mac_key) or give the vault an audit key of its own \
                         (STRONGROOM_AUDIT_KEY, VaultBuilder::checkpoint_key)"
                    .into(),
            }),
        }
    }
}

/// The MAC algorithm of checkpoint tags: HMAC-SHA256 (an `HMAC_256` key).
const MAC_ALGORITHM: &str = "HMAC_SHA_256";

/// An HMAC key in AWS KMS that authenticates audit checkpoints: `GenerateMac` makes the
/// tag, `VerifyMac` checks it (`docs/AUDIT.md`). Made by [`AwsKmsKey::with_mac_key`].
struct AwsKmsMacKey {
    key: String,
    id: String,
    client: Arc<AwsClient>,
}

impl fmt::Debug for AwsKmsMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsMacKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// `GenerateMac`.
#[derive(serde::Serialize)]
struct GenerateMacRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "MacAlgorithm")]
    algorithm: &'a str,
    #[serde(rename = "Message")]
    message: String,
}

/// `VerifyMac`.
#[derive(serde::Serialize)]
struct VerifyMacRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "MacAlgorithm")]
    algorithm: &'a str,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Mac")]
    mac: String,
}

#[async_trait]
impl CheckpointSigner for AwsKmsMacKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let request = GenerateMacRequest {
            key_id: &self.key,
            algorithm: MAC_ALGORITHM,
            message: B64.encode(message),
        };
        let body = secret_json(&request, self.key.len() + request.message.len())?;
        let answer = self
            .client
            .call(&self.id, "GenerateMac", &body, false)
            .await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "AWS KMS answered with a body that is not JSON".into(),
            })?;
        super::b64_field(&answer, "/Mac", &self.id)
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        // HMAC-SHA256 tags are 32 bytes; any other was not made with this algorithm.
        if tag.len() != 32 {
            return Ok(false);
        }
        let request = VerifyMacRequest {
            key_id: &self.key,
            algorithm: MAC_ALGORITHM,
            message: B64.encode(message),
            mac: B64.encode(tag),
        };
        let body = secret_json(
            &request,
            self.key.len() + request.message.len() + request.mac.len(),
        )?;
        match self.client.send(&self.id, "VerifyMac", &body).await? {
            Ok(answer) => {
                let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                Ok(answer.get("MacValid").and_then(|v| v.as_bool()) == Some(true))
            }
            // KMS answers a tag that does not verify with this exception (400).
            Err(fault) if fault.kind == "KMSInvalidMacException" => Ok(false),
            Err(fault) => Err(fault.into_error(&self.id, false)),
        }
    }
}
