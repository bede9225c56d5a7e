//! AWS credentials, found the way the AWS SDKs find them (the "default credential provider
//! chain" of the AWS SDKs and Tools reference guide), in this order:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! 2. the shared files: the profile `AWS_PROFILE` (else `default`) of
//!    `AWS_SHARED_CREDENTIALS_FILE` (`~/.aws/credentials`) and `AWS_CONFIG_FILE`
//!    (`~/.aws/config`): static keys, or `role_arn` + `web_identity_token_file`;
//! 3. web identity (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`
//!    (`AWS_ROLE_SESSION_NAME`), exchanged with STS `AssumeRoleWithWebIdentity`;
//! 4. the container credentials endpoint (ECS, EKS Pod Identity):
//!    `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `_TOKEN`;
//! 5. EC2 instance metadata (IMDSv2: a session token from `PUT /latest/api/token`, then the
//!    role's credentials), at `AWS_EC2_METADATA_SERVICE_ENDPOINT` (default
//!    `http://169.254.169.254`) unless `AWS_EC2_METADATA_DISABLED=true`.
//!
//! The source is chosen once, from the variables and files (no network call); temporary
//! credentials are fetched on first use and fetched again five minutes before they expire.
//! Every call goes through the host's [`HttpTransport`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use super::super::{redact_error, request_secrets, unavailable, Hidden, Wiped};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// Temporary credentials are fetched again this long before they expire.
pub(crate) const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// One set of AWS credentials.
pub(crate) struct Creds {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Hidden,
    pub(crate) session_token: Option<Hidden>,
    /// When temporary credentials expire (none for long-term keys).
    pub(crate) expires: Option<SystemTime>,
}

/// Where the credentials come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Keys given by the host, the environment or a profile.
    Static(&'static str),
    /// STS `AssumeRoleWithWebIdentity` with the token in `token_file` (read at each fetch:
    /// EKS rotates it).
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: String,
        sts_endpoint: String,
    },
    /// The ECS / EKS container credentials endpoint.
    Container {
        url: String,
        token: Option<Hidden>,
        token_file: Option<String>,
    },
    /// EC2 instance metadata, IMDSv2.
    Imds { endpoint: String },
}

/// Credentials from one source, kept until five minutes before they expire.
pub(crate) struct CredentialProvider {
    source: Source,
    cached: Mutex<Option<Arc<Creds>>>,
    http: Arc<dyn HttpTransport>,
}

impl fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source's paths and URLs only: a container token is Hidden.
        f.debug_struct("CredentialProvider")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CredentialProvider {
    /// Long-term (or host-managed) keys, used as given.
    pub(crate) fn fixed(
        what: &'static str,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> CredentialProvider {
        let creds = Creds {
            access_key_id,
            secret_access_key: Hidden::new(secret_access_key),
            session_token: session_token.filter(|t| !t.is_empty()).map(Hidden::new),
            expires: None,
        };
        CredentialProvider {
            source: Source::Static(what),
            cached: Mutex::new(Some(Arc::new(creds))),
            http,
        }
    }

    pub(crate) fn fetching(source: Source, http: Arc<dyn HttpTransport>) -> CredentialProvider {
        CredentialProvider {
            source,
            cached: Mutex::new(None),
            http,
        }
    }

    /// Which source this is, for `Debug` and errors.
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    /// Credentials to sign with: the kept ones while they have more than five minutes left,
    /// else fresh ones (the kept ones still serve, with a warning, if fetching fails before
    /// they expire).
    pub(crate) async fn get(&self, key_id: &str) -> Result<Arc<Creds>> {
        let mut slot = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(creds) = slot.as_ref() {
            match creds.expires {
                None => return Ok(creds.clone()),
                Some(at) if now + REFRESH_BEFORE_EXPIRY < at => return Ok(creds.clone()),
                _ => {}
            }
        }
        match self.fetch(key_id).await {
            Ok(creds) => {
                let creds = Arc::new(creds);
                *slot = Some(creds.clone());
                Ok(creds)
            }
            Err(e) => match slot.as_ref() {
                Some(old) if old.expires.is_some_and(|at| now < at) => {
                    tracing::warn!(
                        key = key_id,
                        error = %e,
                        "refreshing AWS credentials failed; using the current ones until they expire"
                    );
                    Ok(old.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, key_id: &str) -> Result<Creds> {
        match &self.source {
            Source::Static(what) => Err(unavailable(
                key_id,
                format!("the {what} AWS credentials are gone"),
            )),
            Source::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts_endpoint,
            } => {
                let token = read_token_file(token_file, key_id)?;
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("Action", "AssumeRoleWithWebIdentity")
                    .append_pair("Version", "2011-06-15")
                    .append_pair("RoleArn", role_arn)
                    .append_pair("RoleSessionName", session_name)
                    .append_pair("WebIdentityToken", token.expose())
                    .finish();
                let form = zeroize::Zeroizing::new(form);
                let request = http::Request::builder()
                    .method("POST")
                    .uri(sts_endpoint.as_str())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Bytes::from(form.as_bytes().to_vec()))
                    .map_err(|_| {
                        Error::config(format!("the STS endpoint `{sts_endpoint}` is not a URL"))
                    })?;
                let answer = self.send(key_id, request, "STS").await?;
                answer.read(|status, body| {
                    let text = String::from_utf8_lossy(body);
                    if !(200..300).contains(&status) {
                        let code = xml_tag(&text, "Code").unwrap_or_default();
                        let message = xml_tag(&text, "Message").unwrap_or_default();
                        return Err(unavailable(
                            key_id,
                            format!(
                                "STS AssumeRoleWithWebIdentity for {role_arn} answered {status} \
                                 {code}: {}",
                                clean(&message)
                            ),
                        ));
                    }
                    let field = |tag: &str| {
                        xml_tag(&text, tag).ok_or_else(|| {
                            unavailable(
                                key_id,
                                format!("STS AssumeRoleWithWebIdentity gave no {tag}"),
                            )
                        })
                    };
                    Ok(Creds {
                        access_key_id: field("AccessKeyId")?,
                        secret_access_key: Hidden::new(field("SecretAccessKey")?),
                        session_token: Some(Hidden::new(field("SessionToken")?)),
                        expires: Some(parse_time(&field("Expiration")?, key_id)?),
                    })
                })
            }
            Source::Container {
                url,
                token,
                token_file,
            } => {
                let token = match (token_file, token) {
                    (Some(path), _) => Some(read_token_file(path, key_id)?),
                    (None, Some(t)) => Some(t.clone()),
                    (None, None) => None,
                };
                let mut builder = http::Request::builder().method("GET").uri(url.as_str());
                if let Some(token) = &token {
                    builder = builder.header("authorization", token.expose());
                }
                let mut request = builder.body(Bytes::new()).map_err(|_| {
                    Error::config(format!(
                        "the container credentials URL `{url}` is not a URL"
                    ))
                })?;
                hide_headers(&mut request);
                let what = "the container credentials endpoint";
                let answer = self.send(key_id, request, what).await?;
                answer.read(|status, body| {
                    if !(200..300).contains(&status) {
                        return Err(unavailable(
                            key_id,
                            format!("{what} answered {status}: {}", error_text(body)),
                        ));
                    }
                    json_creds(body, key_id, what)
                })
            }
            Source::Imds { endpoint } => self.imds(endpoint, key_id).await,
        }
    }

    /// IMDSv2: a session token, the role's name, then its credentials.
    async fn imds(&self, endpoint: &str, key_id: &str) -> Result<Creds> {
        let what = "EC2 instance metadata";
        let request = http::Request::builder()
            .method("PUT")
            .uri(format!("{endpoint}/latest/api/token"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            .body(Bytes::new())
            .map_err(|_| Error::config(format!("the IMDS endpoint `{endpoint}` is not a URL")))?;
        let answer = self.send(key_id, request, what).await?;
        let session = answer.read(|status, body| {
            if !(200..300).contains(&status) {
                return Err(unavailable(
                    key_id,
                    format!(
                        "{what} refused a session token ({status}): {}",
                        error_text(body)
                    ),
                ));
            }
            Ok(Hidden::new(
                String::from_utf8_lossy(body).trim().to_string(),
            ))
        })?;
        let get = |path: String| -> Result<http::Request<Bytes>> {
            let mut request = http::Request::builder()
                .method("GET")
                .uri(format!(
                    "{endpoint}/latest/meta-data/iam/security-credentials/{path}"
                ))
                .header("x-aws-ec2-metadata-token", session.expose())
                .body(Bytes::new())
                .map_err(|_| {
                    Error::config(format!("the IMDS endpoint `{endpoint}` is not a URL"))
                })?;
            hide_headers(&mut request);
            Ok(request)
        };
        let answer = self.send(key_id, get(String::new())?, what).await?;
        let role = answer.read(|status, body| {
            let listing = String::from_utf8_lossy(body);
            let role = listing.lines().next().unwrap_or("").trim().to_string();
            if !(200..300).contains(&status) || role.is_empty() {
                return Err(unavailable(
                    key_id,
                    format!(
                        "{what} names no IAM role ({status}): attach an instance profile to the instance"
                    ),
                ));
            }
            if !role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
            {
                return Err(unavailable(key_id, format!("{what} named an odd role")));
            }
            Ok(role)
        })?;
        let answer = self.send(key_id, get(role.clone())?, what).await?;
        answer.read(|status, body| {
            if !(200..300).contains(&status) {
                return Err(unavailable(
                    key_id,
                    format!("{what} gave no credentials for role {role} ({status})"),
                ));
            }
            let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(code) = answer.get("Code").and_then(|c| c.as_str()) {
                if code != "Success" {
                    return Err(unavailable(
                        key_id,
                        format!("{what} answered Code {}", clean(code)),
                    ));
                }
            }
            json_creds(body, key_id, what)
        })
    }

    /// Sends `request` to `what`; the answer keeps the request's secrets, to cut out of the
    /// errors made from it ([`Answer::read`]).
    async fn send(
        &self,
        key_id: &str,
        request: http::Request<Bytes>,
        what: &str,
    ) -> Result<Answer> {
        let peer = peer_of(request.uri());
        let sent = request_secrets(&request);
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| unavailable(key_id, format!("no answer from {what} ({peer}): {e}")))?;
        let status = response.status().as_u16();
        Ok(Answer {
            status,
            body: Wiped(response.into_body()),
            sent,
        })
    }
}

/// A credential endpoint's answer, with the secrets its request carried (the web identity
/// token, the container authorization token, the IMDS session token: [`request_secrets`]).
struct Answer {
    status: u16,
    body: Wiped,
    sent: Vec<zeroize::Zeroizing<String>>,
}

impl Answer {
    /// What `read` makes of the status and body; its error with every piece of the
    /// request's secrets cut out of the reason ([`redact_error`]), as the KMS calls' errors
    /// are: an endpoint or proxy that echoes the request in its error must not carry a
    /// token into the vault's errors and logs.
    fn read<T>(&self, read: impl FnOnce(u16, &[u8]) -> Result<T>) -> Result<T> {
        read(self.status, &self.body).map_err(|e| redact_error(e, &self.sent))
    }
}

fn hide_headers(request: &mut http::Request<Bytes>) {
    for v in request.headers_mut().values_mut() {
        v.set_sensitive(true);
    }
}

/// A line of a service's text, without control characters, at most 200 characters.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The `message` (or `Message`) of a JSON error answer, else nothing: never the body itself,
/// which might echo what was sent.
fn error_text(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(|m| m.as_str())
        .map(clean)
        .unwrap_or_else(|| "no reason given".into())
}

fn read_token_file(path: &str, key_id: &str) -> Result<Hidden> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| unavailable(key_id, format!("cannot read the token file {path}: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(unavailable(
            key_id,
            format!("the token file {path} is empty"),
        ));
    }
    Ok(Hidden::new(token))
}

/// The text of the first `<tag>…</tag>`, with XML's five entities decoded.
pub(crate) fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(
        text[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn parse_time(text: &str, key_id: &str) -> Result<SystemTime> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| unavailable(key_id, format!("`{}` is not an expiry time", clean(text))))?;
    let secs = at.unix_timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Credentials in the JSON form of the container endpoint and IMDS.
fn json_creds(body: &[u8], key_id: &str, what: &str) -> Result<Creds> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "AccessKeyId")]
        access_key_id: String,
        #[serde(rename = "SecretAccessKey")]
        secret_access_key: String,
        #[serde(rename = "Token")]
        token: Option<String>,
        #[serde(rename = "Expiration")]
        expiration: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| unavailable(key_id, format!("{what} gave no credentials")))?;
    Ok(Creds {
        access_key_id: answer.access_key_id,
        secret_access_key: Hidden::new(answer.secret_access_key),
        session_token: answer.token.filter(|t| !t.is_empty()).map(Hidden::new),
        expires: answer
            .expiration
            .map(|t| parse_time(&t, key_id))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_fields_are_unescaped() {
        let text = "<R><Credentials><SessionToken>a&amp;b&lt;</SessionToken></Credentials></R>";
        assert_eq!(xml_tag(text, "SessionToken").as_deref(), Some("a&b<"));
        assert_eq!(xml_tag(text, "AccessKeyId"), None);
    }
}
