//! One place where every KMS call is sent: bounded retries with backoff on throttling and
//! server errors (honouring `Retry-After`), and the service's answer turned into the vault's
//! errors — [`Error::DecryptFailed`] only when the service says the ciphertext does not
//! authenticate, [`Error::KeyUnavailable`] with the service's (sanitised) reason for
//! everything operational.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Wiped;
use crate::error::{Error, Result};
use crate::transport::{peer_of, Bytes, HttpTransport};

/// Variable: how many times a KMS call is tried in all (default 4; 1 turns retries off).
pub const ENV_KMS_RETRY_ATTEMPTS: &str = "STRONGROOM_KMS_RETRY_ATTEMPTS";
/// Variable: the most seconds a KMS call may spend retrying (default 15).
pub const ENV_KMS_RETRY_SECONDS: &str = "STRONGROOM_KMS_RETRY_SECONDS";

/// How the cloud master keys retry a call the service throttled (429, AWS
/// `ThrottlingException`) or failed (500, 502, 503, 504): exponential backoff with jitter
/// from `base_delay`, each wait at most `max_delay`, a `Retry-After` (seconds, or
/// `retry-after-ms`) honoured, and never more than `max_attempts` tries or `max_total`
/// time in all. A call that gives up says how many attempts it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The most time from the first try to the last retry's start.
    pub max_total: Duration,
    /// The first backoff; it doubles with each retry.
    pub base_delay: Duration,
    /// The longest single wait of the backoff (a `Retry-After` may ask for more, within
    /// `max_total`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            max_total: Duration::from_secs(15),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The default, changed by [`ENV_KMS_RETRY_ATTEMPTS`] and [`ENV_KMS_RETRY_SECONDS`] as
    /// `var` reads them; a value that is not a number is an error naming the variable.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<RetryPolicy> {
        let mut policy = RetryPolicy::default();
        let number = |name: &str| -> Result<Option<u64>> {
            match var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    Error::invalid(name, "must be a whole number (see docs/DEPLOYMENT.md)")
                }),
            }
        };
        if let Some(n) = number(ENV_KMS_RETRY_ATTEMPTS)? {
            policy.max_attempts = u32::try_from(n.clamp(1, 20)).unwrap_or(20);
        }
        if let Some(n) = number(ENV_KMS_RETRY_SECONDS)? {
            policy.max_total = Duration::from_secs(n.min(600));
        }
        Ok(policy)
    }

    /// The process's policy: the environment's, read once (the default when a variable
    /// does not read, with a warning).
    pub(crate) fn current() -> RetryPolicy {
        static POLICY: OnceLock<RetryPolicy> = OnceLock::new();
        *POLICY.get_or_init(|| {
            RetryPolicy::from_vars(&|n| std::env::var(n).ok()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "KMS retry settings ignored");
                RetryPolicy::default()
            })
        })
    }

    /// The backoff before retry number `retry` (1 for the first), with jitter: a random
    /// point in the upper half of `base * 2^(retry-1)`, capped at `max_delay`.
    fn backoff(&self, retry: u32) -> Duration {
        let full = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        let mut byte = [0u8; 1];
        let jitter = if getrandom::fill(&mut byte).is_ok() {
            f64::from(byte[0]) / 255.0
        } else {
            0.5
        };
        full.mul_f64(0.5 + jitter / 2.0)
    }
}

/// A failed answer as a backend's own reading of it sees it ([`call_raw_with`]).
#[derive(Debug)]
pub(crate) struct Failure<'a> {
    /// The HTTP status.
    pub status: u16,
    /// The service's reason, sanitised ([`service_reason`]).
    pub reason: &'a str,
    /// The answer's JSON, when it is JSON.
    #[allow(dead_code)] // for the backends' classifiers that read more than the reason
    pub json: Option<&'a serde_json::Value>,
}

/// A backend's reading of its service's failures: `Some(error)` to answer with instead of
/// the generic one ([`answer_error`]), `None` to keep that.
pub(crate) type Classify<'c> = &'c (dyn Fn(&Failure<'_>) -> Option<Error> + Send + Sync);

/// A key the service cannot use now, though nothing was tampered with: a disabled or
/// destroyed key version, a key that is gone, a ciphertext older than the key's minimum
/// decryption version, an alias that names another key. [`Error::KeyUnavailable`] naming
/// the key, with `reason` (the service's words with the backend's advice, sanitised here:
/// one line, at most [`UNAVAILABLE_CHARS`] characters, long opaque tokens cut out).
pub(crate) fn unavailable(key_id: &str, reason: impl AsRef<str>) -> Error {
    Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: sanitise(reason.as_ref(), UNAVAILABLE_CHARS),
    }
}

/// Request headers whose values are secret (for `Authorization`, the part after the
/// scheme; an AWS Signature V4 one carries no secret).
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-vault-token",
    "x-amz-security-token",
    "x-aws-ec2-metadata-token",
    "x-goog-api-key",
    "cookie",
];

/// Fields of a request body (JSON or form) whose values are secret: a data key
/// (`Plaintext`, `plaintext`, Azure's `value`), login and token-exchange secrets.
const SECRET_FIELDS: &[&str] = &[
    "Plaintext",
    "plaintext",
    "value",
    "secret_id",
    "role_id",
    "jwt",
    "password",
    "token",
    "client_secret",
    "client_assertion",
    "assertion",
    "subject_token",
    "refresh_token",
    "WebIdentityToken",
];

/// The secret values a request carries ([`SECRET_HEADERS`], [`SECRET_FIELDS`] of a JSON
/// or form body), wiped when dropped: what an error must not repeat if the peer echoes the
/// request ([`redact_error`]).
pub(crate) fn request_secrets(request: &http::Request<Bytes>) -> Vec<zeroize::Zeroizing<String>> {
    let mut secrets = Vec::new();
    for name in SECRET_HEADERS {
        for value in request.headers().get_all(*name) {
            let Ok(v) = value.to_str() else { continue };
            if *name == "authorization" || *name == "proxy-authorization" {
                if v.starts_with("AWS4-") {
                    continue;
                }
                let credential = v.split_once(' ').map_or(v, |(_, c)| c).trim();
                secrets.push(zeroize::Zeroizing::new(credential.to_string()));
            } else {
                secrets.push(zeroize::Zeroizing::new(v.trim().to_string()));
            }
        }
    }
    let body: &[u8] = request.body();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let mut json = json;
        collect_json(&json, &mut secrets);
        wipe_json(&mut json);
    } else {
        for (k, v) in url::form_urlencoded::parse(body) {
            if SECRET_FIELDS.contains(&k.as_ref()) && !v.is_empty() {
                secrets.push(zeroize::Zeroizing::new(v.into_owned()));
            }
        }
    }
    secrets
}

fn collect_json(v: &serde_json::Value, out: &mut Vec<zeroize::Zeroizing<String>>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if SECRET_FIELDS.contains(&k.as_str()) && !s.is_empty() => {
                        out.push(zeroize::Zeroizing::new(s.to_string()));
                    }
                    _ => collect_json(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_json(v, out)),
        _ => {}
    }
}

/// Wipes the strings of a parsed request body before it is dropped.
fn wipe_json(v: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Object(map) => map.values_mut().for_each(wipe_json),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe_json),
        _ => {}
    }
}

/// `error` with every piece of `secrets` (in any of the encodings a peer may echo it in)
/// cut out of its reason ([`crate::redact::redact`]): a service or proxy that echoes the
/// request in its error must not carry a data key, a login secret or a token into the
/// vault's errors and logs.
pub(crate) fn redact_error(error: Error, secrets: &[zeroize::Zeroizing<String>]) -> Error {
    let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    let clean = |text: String| crate::redact::redact(&text, &secrets);
    match error {
        Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
            key_id,
            reason: clean(reason),
        },
        Error::DecryptFailed { what } => Error::DecryptFailed { what: clean(what) },
        other => other,
    }
}

/// The longest reason [`unavailable`] keeps: a service's reason ([`service_reason`], at
/// most 300) and the backend's advice around it.
pub(crate) const UNAVAILABLE_CHARS: usize = 600;

/// The reason a service gave in an error body (an OAuth `error: error_description`,
/// `error.message`, `message`, `Message`, `errors[0]`, `error_description`, `__type`, or the
/// text), sanitised: one line of at most 300 characters, without control characters, and
/// with any run of 48 or more token-like characters (letters, digits, `+=_-.`: a bearer
/// token or ciphertext a service might echo) replaced by `[…]`; key ids, versions and URLs
/// (cut at `/` and `:`) stay. The request's own secrets are cut by [`redact_error`].
pub(crate) fn service_reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let reason: String = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            // An OAuth token endpoint's refusal (RFC 6749 5.2): its code and description.
            if let (Some(code), Some(description)) = (
                v.pointer("/error").and_then(|c| c.as_str()),
                v.pointer("/error_description").and_then(|d| d.as_str()),
            ) {
                return Some(format!("{code}: {description}"));
            }
            [
                "/error/message",
                "/message",
                "/Message",
                "/errors/0",
                "/error_description",
                "/__type",
                "/error",
            ]
            .iter()
            .find_map(|p| v.pointer(p).and_then(|m| m.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| text.chars().take(300).collect());
    sanitise(&reason, 300)
}

fn sanitise(reason: &str, max: usize) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= 48 {
            out.push_str("[…]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | '_' | '-' | '.') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut run, &mut out);
    out.chars().take(max).collect::<String>().trim().to_string()
}

/// Why a KMS call failed, turned into the vault's errors: a 400/422 on an unwrap (the
/// service refused the ciphertext or its associated data) is [`Error::DecryptFailed`];
/// access denied, a missing key, a throttled or failing service is
/// [`Error::KeyUnavailable`] naming the key and the reason. A backend whose service also
/// answers 400 for operational failures reads them first ([`call_raw_with`]).
pub(crate) fn answer_error(key_id: &str, status: u16, body: &[u8], unwrapping: bool) -> Error {
    let reason = service_reason(body);
    match status {
        400 | 422 if unwrapping => Error::DecryptFailed {
            what: format!("a data key wrapped by {key_id} ({reason})"),
        },
        401 | 403 => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!(
                "access denied ({status}): {reason}; check the credentials and the key's policy"
            ),
        },
        404 => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("the key was not found (404): {reason}"),
        },
        _ => Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!("the service answered {status}: {reason}"),
        },
    }
}

/// Whether an answer asks to be tried again: 429, 500, 502, 503, 504, or a 400 whose error
/// type is a throttling one (AWS `ThrottlingException`, `RequestLimitExceeded`).
fn retryable(status: u16, body: &[u8]) -> bool {
    match status {
        429 | 500 | 502 | 503 | 504 => true,
        400 => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                ["/__type", "/code", "/Code", "/error/code", "/error/status"]
                    .iter()
                    .find_map(|p| v.pointer(p).and_then(|t| t.as_str()).map(str::to_string))
            })
            .is_some_and(|t| {
                t.contains("Throttl") || t.contains("RequestLimitExceeded") || t.contains("TooMany")
            }),
        _ => false,
    }
}

/// The wait an answer asks for: `retry-after-ms` / `x-ms-retry-after-ms` (milliseconds),
/// or `Retry-After` in seconds or as an HTTP date.
fn asked_delay(headers: &http::HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = text(name).and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let now = time::OffsetDateTime::now_utc();
    Some(Duration::try_from(when - now).unwrap_or(Duration::ZERO))
}

/// Another copy of `request` to send again (the body is shared, not copied).
fn again(request: &http::Request<Bytes>) -> http::Request<Bytes> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Sends a request and returns the body of a 2xx answer (wiped when dropped); other
/// answers become errors ([`answer_error`]). Retried as [`RetryPolicy`] says.
pub(crate) async fn call_raw(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
) -> Result<Wiped> {
    call_raw_with(http, key_id, request, unwrapping, &|_| None).await
}

/// [`call_raw`], with the backend's own reading of its service's failures first
/// (`classify`: a disabled key version, a key too old to decrypt with, … become
/// [`unavailable`] rather than [`Error::DecryptFailed`]).
pub(crate) async fn call_raw_with(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
    classify: Classify<'_>,
) -> Result<Wiped> {
    let policy = RetryPolicy::current();
    let peer = peer_of(request.uri());
    let started = Instant::now();
    let mut attempt = 1u32;
    loop {
        let response = http
            .send(again(&request))
            .await
            .map_err(|e| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: format!("no answer from {peer}: {e}"),
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = Wiped(response.into_body());
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if retryable(status, &body) {
            // Wait as asked (or back off), unless that would break the bounds.
            let wait = asked_delay(&headers).unwrap_or_else(|| policy.backoff(attempt));
            let spent = started.elapsed();
            if attempt < policy.max_attempts && spent + wait <= policy.max_total {
                tracing::debug!(key = %key_id, status, attempt, ?wait, "KMS call retried");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            let error = failure_error(key_id, status, &body, unwrapping, classify);
            tracing::warn!(key = %key_id, status, attempts = attempt, "KMS call gave up");
            let error = gave_up(error, attempt, started.elapsed());
            return Err(redact_error(error, &request_secrets(&request)));
        }
        let error = failure_error(key_id, status, &body, unwrapping, classify);
        return Err(redact_error(error, &request_secrets(&request)));
    }
}

fn failure_error(
    key_id: &str,
    status: u16,
    body: &[u8],
    unwrapping: bool,
    classify: Classify<'_>,
) -> Error {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let reason = service_reason(body);
    let failure = Failure {
        status,
        reason: &reason,
        json: json.as_ref(),
    };
    classify(&failure).unwrap_or_else(|| answer_error(key_id, status, body, unwrapping))
}

/// The error of a call that was retried until its bounds, saying so.
fn gave_up(error: Error, attempts: u32, spent: Duration) -> Error {
    let note = format!(
        " (gave up after {attempts} attempt{} over {:.1} s; {ENV_KMS_RETRY_ATTEMPTS} and \
         {ENV_KMS_RETRY_SECONDS} bound the retries)",
        if attempts == 1 { "" } else { "s" },
        spent.as_secs_f64()
    );
    match error {
        Error::KeyUnavailable { key_id, reason } => Error::KeyUnavailable {
            key_id,
            reason: reason + &note,
        },
        Error::DecryptFailed { what } => Error::DecryptFailed { what: what + &note },
        other => other,
    }
}

/// Sends a JSON request and returns the JSON answer of a 2xx; other answers become errors.
/// For answers without key material (an answer that holds some is read from
/// [`call_raw`] with [`super::parse_secret`]).
pub(crate) async fn call_json(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
) -> Result<serde_json::Value> {
    call_json_with(http, key_id, request, unwrapping, &|_| None).await
}

/// [`call_json`] with the backend's own reading of failures ([`call_raw_with`]).
pub(crate) async fn call_json_with(
    http: &dyn HttpTransport,
    key_id: &str,
    request: http::Request<Bytes>,
    unwrapping: bool,
    classify: Classify<'_>,
) -> Result<serde_json::Value> {
    let peer = peer_of(request.uri());
    let body = call_raw_with(http, key_id, request, unwrapping, classify).await?;
    serde_json::from_slice(&body).map_err(|_| Error::KeyUnavailable {
        key_id: key_id.to_string(),
        reason: format!("{peer} answered with a body that is not JSON"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_short_line_without_tokens() {
        let body = br#"{"error":{"message":"bad token eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.sig\nnext"}}"#;
        let reason = service_reason(body);
        assert_eq!(reason, "bad token […] next");
        let kept =
            "key arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(service_reason(kept.as_bytes()), kept);
        assert_eq!(
            service_reason(br#"{"errors":["encryption key not found"]}"#),
            "encryption key not found"
        );
        assert!(service_reason(&[b'x'; 1000]).len() <= 300);
        assert_eq!(
            service_reason(br#"{"error":"invalid_grant","error_description":"expired"}"#),
            "invalid_grant: expired"
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried_nothing_else() {
        for status in [429, 500, 502, 503, 504] {
            assert!(retryable(status, b""), "{status}");
        }
        assert!(retryable(400, br#"{"__type":"ThrottlingException"}"#));
        assert!(!retryable(
            400,
            br#"{"__type":"InvalidCiphertextException"}"#
        ));
        for status in [400, 401, 403, 404, 409, 501] {
            assert!(!retryable(status, b"{}"), "{status}");
        }
    }

    #[test]
    fn retry_settings_read_and_refuse_nonsense() {
        let vars = |n: &str| match n {
            ENV_KMS_RETRY_ATTEMPTS => Some("2".to_string()),
            ENV_KMS_RETRY_SECONDS => Some("3".to_string()),
            _ => None,
        };
        let p = RetryPolicy::from_vars(&vars).expect("policy");
        assert_eq!((p.max_attempts, p.max_total), (2, Duration::from_secs(3)));
        let bad = |n: &str| (n == ENV_KMS_RETRY_ATTEMPTS).then(|| "many".to_string());
        let err = RetryPolicy::from_vars(&bad).expect_err("not a number");
        assert!(err.to_string().contains(ENV_KMS_RETRY_ATTEMPTS), "{err}");
    }

    #[test]
    fn retry_after_is_read_in_its_forms() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", http::HeaderValue::from_static("2"));
        assert_eq!(asked_delay(&h), Some(Duration::from_secs(2)));
        h.insert("x-ms-retry-after-ms", http::HeaderValue::from_static("150"));
        assert_eq!(asked_delay(&h), Some(Duration::from_millis(150)));
        let mut h = http::HeaderMap::new();
        h.insert(
            "retry-after",
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(asked_delay(&h), Some(Duration::ZERO));
    }
}
