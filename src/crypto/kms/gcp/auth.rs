//! Google access tokens, from the sources Application Default Credentials know:
//!
//! - a service account key file (`"type": "service_account"`): a signed JWT exchanged at
//!   the file's `token_uri` (RFC 7523);
//! - user credentials (`"type": "authorized_user"`, as `gcloud auth application-default
//!   login` writes them): the refresh token exchanged at `token_uri`;
//! - Workload Identity Federation (`"type": "external_account"`): a subject token read from
//!   a file or a URL, exchanged at Google's STS (`token_url`, RFC 8693), then optionally
//!   for a service account's token (`service_account_impersonation_url`,
//!   `generateAccessToken`);
//! - the metadata server of GCE, GKE (Workload Identity) and Cloud Run
//!   (`/computeMetadata/v1/instance/service-accounts/default/token`, header
//!   `Metadata-Flavor: Google`; host `GCE_METADATA_HOST`, default
//!   `metadata.google.internal`);
//! - an access token given by the host, used as given.
//!
//! A fetched token is kept until a minute before its `expires_in` (or `expireTime`) runs
//! out, then fetched again: it is refreshed before it expires, not used until it fails.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use super::super::unavailable;
use super::super::{call_json, fetch_token, json_request, Hidden};
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// The OAuth scope of Cloud KMS.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
/// The scope Google's STS hands out federated tokens for.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// How long before it expires a fetched token is replaced.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

/// How a key authenticates.
pub(crate) enum Auth {
    /// A token the host gave: used as given.
    Static(Hidden),
    /// A token fetched from `source`, kept until shortly before it expires.
    Fetched {
        source: Box<Source>,
        cached: Mutex<Option<(Hidden, Instant)>>,
    },
}

impl Auth {
    pub(crate) fn fetched(source: Source) -> Auth {
        Auth::Fetched {
            source: Box::new(source),
            cached: Mutex::new(None),
        }
    }

    /// What kind of credential this is, for `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Auth::Static(_) => "access token",
            Auth::Fetched { source, .. } => match **source {
                Source::ServiceAccount { .. } => "service account",
                Source::AuthorizedUser { .. } => "authorized user",
                Source::Metadata { .. } => "metadata server",
                Source::External(_) => "external account",
            },
        }
    }
}

/// Where tokens are fetched from.
pub(crate) enum Source {
    ServiceAccount {
        email: String,
        key_id: String,
        key: Box<jsonwebtoken::EncodingKey>,
        token_uri: String,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: Hidden,
        refresh_token: Hidden,
        token_uri: String,
    },
    Metadata {
        host: String,
    },
    External(ExternalAccount),
}

/// A Workload Identity Federation credential configuration.
pub(crate) struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    token_url: String,
    impersonation_url: Option<String>,
    subject: Subject,
}

/// Where the subject token (the workload's own OIDC or SAML token) is read.
enum Subject {
    File {
        path: String,
        format: Format,
    },
    Url {
        url: String,
        headers: Vec<(String, String)>,
        format: Format,
    },
}

/// How the subject token is stored: the whole text, or one field of a JSON object.
enum Format {
    Text,
    Json(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid("Google credentials file", reason)
}

fn field(v: &serde_json::Value, k: &str) -> Result<String> {
    v.get(k)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("the file has no `{k}`")))
}

/// The token source of a credentials file (`GOOGLE_APPLICATION_CREDENTIALS`), by its
/// `type`.
pub(crate) fn from_file(json: &str) -> Result<Source> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|_| invalid("the file is not JSON"))?;
    let token_uri = || {
        v.get("token_uri")
            .and_then(|u| u.as_str())
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_string()
    };
    match v.get("type").and_then(|t| t.as_str()).unwrap_or("") {
        "service_account" => {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(field(&v, "private_key")?.as_bytes())
                .map_err(|_| invalid("`private_key` is not an RSA PEM key"))?;
            Ok(Source::ServiceAccount {
                email: field(&v, "client_email")?,
                key_id: field(&v, "private_key_id")?,
                key: Box::new(key),
                token_uri: token_uri(),
            })
        }
        "authorized_user" => Ok(Source::AuthorizedUser {
            client_id: field(&v, "client_id")?,
            client_secret: Hidden::new(field(&v, "client_secret")?),
            refresh_token: Hidden::new(field(&v, "refresh_token")?),
            token_uri: token_uri(),
        }),
        "external_account" => external(&v).map(Source::External),
        other => Err(invalid(format!(
            "`type` is `{other}`; strongroom reads service_account, authorized_user and \
             external_account files (docs/DEPLOYMENT.md)"
        ))),
    }
}

fn external(v: &serde_json::Value) -> Result<ExternalAccount> {
    let source = v
        .get("credential_source")
        .ok_or_else(|| invalid("the external_account file has no `credential_source`"))?;
    let format = match source.pointer("/format/type").and_then(|t| t.as_str()) {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json(
            source
                .pointer("/format/subject_token_field_name")
                .and_then(|f| f.as_str())
                .ok_or_else(|| {
                    invalid("a json `credential_source.format` needs `subject_token_field_name`")
                })?
                .to_string(),
        ),
        Some(other) => {
            return Err(invalid(format!(
                "`credential_source.format.type` is `{other}`, not text or json"
            )))
        }
    };
    let subject = if let Some(path) = source.get("file").and_then(|f| f.as_str()) {
        Subject::File {
            path: path.to_string(),
            format,
        }
    } else if let Some(url) = source.get("url").and_then(|f| f.as_str()) {
        let headers = source
            .get("headers")
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Subject::Url {
            url: url.to_string(),
            headers,
            format,
        }
    } else {
        return Err(invalid(
            "`credential_source` must name a `file` or a `url` (executable and AWS sources \
             are not run by strongroom)",
        ));
    };
    let impersonation_url = v
        .get("service_account_impersonation_url")
        .and_then(|u| u.as_str())
        .map(str::to_string);
    Ok(ExternalAccount {
        audience: field(v, "audience")?,
        subject_token_type: field(v, "subject_token_type")?,
        token_url: v
            .get("token_url")
            .and_then(|u| u.as_str())
            .unwrap_or("https://sts.googleapis.com/v1/token")
            .to_string(),
        impersonation_url,
        subject,
    })
}

impl Auth {
    /// A token to call Cloud KMS with: the kept one while it has more than a minute left,
    /// else a fresh one.
    pub(crate) async fn token(&self, http: &dyn HttpTransport, id: &str) -> Result<Hidden> {
        let (source, cached) = match self {
            Auth::Static(t) => return Ok(t.clone()),
            Auth::Fetched { source, cached } => (source, cached),
        };
        let mut slot = cached.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let (token, ttl) = source.fetch(http, id).await?;
        *slot = Some((token.clone(), Instant::now() + ttl));
        Ok(token)
    }
}

impl Source {
    /// A fresh token and how long it may be kept.
    async fn fetch(&self, http: &dyn HttpTransport, id: &str) -> Result<(Hidden, Duration)> {
        match self {
            Source::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
            } => {
                let now = unix_now();
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = Some(key_id.clone());
                let claims = serde_json::json!({
                    "iss": email, "scope": SCOPE, "aud": token_uri,
                    "iat": now, "exp": now + 3600,
                });
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| Error::config(format!("cannot sign the token request: {e}")))?;
                let form = form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", &assertion),
                ]);
                fetch_token(http, id, token_uri, form).await
            }
            Source::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let form = form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose()),
                    ("refresh_token", refresh_token.expose()),
                ]);
                fetch_token(http, id, token_uri, form).await
            }
            Source::Metadata { host } => metadata_token(http, id, host).await,
            Source::External(account) => account.fetch(http, id).await,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// The default service account's token from the metadata server.
async fn metadata_token(
    http: &dyn HttpTransport,
    id: &str,
    host: &str,
) -> Result<(Hidden, Duration)> {
    let url = format!(
        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
        url::form_urlencoded::byte_serialize(SCOPE.as_bytes()).collect::<String>()
    );
    let request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .header("metadata-flavor", "Google")
        .body(Bytes::new())
        .map_err(|_| Error::config(format!("GCE_METADATA_HOST `{host}` is not a host")))?;
    let peer = peer_of(request.uri());
    let response = http.send(request).await.map_err(|e| {
        unavailable(
            id,
            format!("no answer from the metadata server ({peer}): {e}; off Google Cloud, set GOOGLE_APPLICATION_CREDENTIALS"),
        )
    })?;
    let status = response.status().as_u16();
    // The metadata server marks its answers; anything else at that address is not it.
    let genuine = response
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v.as_bytes() == b"Google");
    let body = super::super::Wiped(response.into_body());
    if !(200..300).contains(&status) || !genuine {
        return Err(unavailable(
            id,
            format!(
                "the metadata server ({peer}) gave no token ({status}{}): is a service account \
                 attached to the instance, or the Kubernetes service account bound to one?",
                if genuine {
                    ""
                } else {
                    ", not a metadata server's answer"
                }
            ),
        ));
    }
    token_answer(&body, id, &peer)
}

/// `access_token` and `expires_in` of a token answer.
fn token_answer(body: &[u8], id: &str, peer: &str) -> Result<(Hidden, Duration)> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| unavailable(id, format!("{peer} gave no access_token")))?;
    Ok((
        Hidden::new(answer.access_token),
        Duration::from_secs(answer.expires_in.unwrap_or(3600))
            .saturating_sub(REFRESH_BEFORE_EXPIRY),
    ))
}

impl ExternalAccount {
    async fn fetch(&self, http: &dyn HttpTransport, id: &str) -> Result<(Hidden, Duration)> {
        let subject = self.subject_token(http, id).await?;
        // STS hands out federated tokens for cloud-platform (used directly, or to
        // impersonate a service account, whose token is then asked for Cloud KMS only).
        let scope = CLOUD_PLATFORM;
        let form = form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("audience", &self.audience),
            ("scope", scope),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token", subject.expose()),
            ("subject_token_type", &self.subject_token_type),
        ]);
        let (federated, ttl) = fetch_token(http, id, &self.token_url, form).await?;
        let Some(url) = &self.impersonation_url else {
            return Ok((federated, ttl));
        };
        let bearer = zeroize::Zeroizing::new(format!("Bearer {}", federated.expose()));
        let request = json_request(
            http::Method::POST,
            url,
            &serde_json::json!({ "scope": [SCOPE], "lifetime": "3600s" }),
            &[("authorization", &bearer)],
        )?;
        let answer = call_json(http, id, request, false)
            .await
            .map_err(|e| match e {
                Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
                    key_id,
                    reason: format!("impersonating the service account: {reason}"),
                },
                other => other,
            })?;
        let token = answer
            .get("accessToken")
            .and_then(|t| t.as_str())
            .ok_or_else(|| unavailable(id, "generateAccessToken gave no accessToken"))?;
        let expires = answer
            .get("expireTime")
            .and_then(|t| t.as_str())
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .ok_or_else(|| unavailable(id, "generateAccessToken gave no expireTime"))?;
        let left = u64::try_from(expires.unix_timestamp())
            .unwrap_or(0)
            .saturating_sub(unix_now());
        Ok((
            Hidden::new(token),
            Duration::from_secs(left).saturating_sub(REFRESH_BEFORE_EXPIRY),
        ))
    }

    /// The workload's own token, read afresh each time (it is rotated by its issuer).
    async fn subject_token(&self, http: &dyn HttpTransport, id: &str) -> Result<Hidden> {
        let (text, format) = match &self.subject {
            Subject::File { path, format } => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    unavailable(
                        id,
                        format!("cannot read the subject token file {path}: {e}"),
                    )
                })?);
                (text, format)
            }
            Subject::Url {
                url,
                headers,
                format,
            } => {
                let mut builder = http::Request::builder().method("GET").uri(url.as_str());
                for (k, v) in headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                let mut request = builder.body(Bytes::new()).map_err(|_| {
                    invalid(format!("`credential_source.url` `{url}` is not a URL"))
                })?;
                request
                    .headers_mut()
                    .values_mut()
                    .for_each(|v| v.set_sensitive(true));
                let peer = peer_of(request.uri());
                let response = http.send(request).await.map_err(|e| {
                    unavailable(
                        id,
                        format!("no answer from the subject token URL ({peer}): {e}"),
                    )
                })?;
                let status = response.status().as_u16();
                let body = super::super::Wiped(response.into_body());
                if !(200..300).contains(&status) {
                    return Err(unavailable(
                        id,
                        format!("the subject token URL ({peer}) answered {status}"),
                    ));
                }
                (
                    zeroize::Zeroizing::new(String::from_utf8_lossy(&body).into_owned()),
                    format,
                )
            }
        };
        let token = match format {
            Format::Text => text.trim().to_string(),
            Format::Json(name) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get(name).and_then(|t| t.as_str()).map(str::to_string))
                .ok_or_else(|| {
                    unavailable(id, format!("the subject token has no JSON field `{name}`"))
                })?,
        };
        if token.is_empty() {
            return Err(unavailable(id, "the subject token is empty"));
        }
        Ok(Hidden::new(token))
    }
}

/// The metadata server's host: `GCE_METADATA_HOST`, else `metadata.google.internal`.
pub(crate) fn metadata_source(host: Option<String>) -> Source {
    Source::Metadata {
        host: host
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| "metadata.google.internal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_by_type() {
        let ext = r#"{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
            "subject_token_type":"urn:ietf:params:oauth:token-type:jwt",
            "credential_source":{"file":"/var/run/token","format":{"type":"json","subject_token_field_name":"id_token"}}}"#;
        match from_file(ext).expect("external") {
            Source::External(a) => {
                assert_eq!(a.token_url, "https://sts.googleapis.com/v1/token");
                assert!(a.impersonation_url.is_none());
                assert!(
                    matches!(a.subject, Subject::File { format: Format::Json(ref f), .. } if f == "id_token")
                );
            }
            _ => panic!("not external"),
        }
        let user =
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}"#;
        assert!(matches!(
            from_file(user).expect("user"),
            Source::AuthorizedUser { .. }
        ));
        for (bad, needle) in [
            (
                r#"{"type":"impersonated_service_account"}"#,
                "impersonated_service_account",
            ),
            (
                r#"{"type":"authorized_user","client_id":"c"}"#,
                "client_secret",
            ),
            (
                r#"{"type":"external_account","audience":"a","subject_token_type":"t","credential_source":{"executable":{"command":"x"}}}"#,
                "executable",
            ),
            ("not json", "not JSON"),
        ] {
            let err = from_file(bad).err().expect("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
