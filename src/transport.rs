//! The host's HTTP client, as a small trait: provider verification, OAuth, KMS calls and the
//! GitHub/GitLab APIs all go through it. `ReqwestTransport` (feature `reqwest`) is a ready
//! implementation; a host can supply its own (with its proxy, TLS roots and timeouts).

use std::fmt;

use async_trait::async_trait;
pub use bytes::Bytes;

use crate::error::Result;

/// Sends one HTTP request and returns the response, whatever its status. A failure to get
/// any response (connection refused, timeout, TLS) is an [`crate::Error::Transport`].
#[async_trait]
pub trait HttpTransport: Send + Sync + fmt::Debug + 'static {
    /// Sends `request`; returns the response with its whole body.
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>>;
}

/// The host (and port) of a URL, for error messages: never the path or query, which may
/// carry a token (`/bot<token>/getMe`).
pub(crate) fn peer_of(uri: &http::Uri) -> String {
    match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "the peer".to_string(),
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_impl {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::error::Error;

    /// An [`HttpTransport`] on reqwest with rustls. Redirects are not followed (a redirect
    /// must not carry credentials to another host); requests time out after 30 s by default.
    #[derive(Debug, Clone)]
    pub struct ReqwestTransport {
        client: reqwest::Client,
    }

    /// Variable: a PEM file of CA certificates to trust besides the built-in roots (a
    /// self-hosted Vault or a proxy on an internal CA); one that does not read is an error.
    /// `SSL_CERT_FILE` is read when it is not set (and passed over, with a warning, when
    /// it does not read).
    pub const ENV_CA_BUNDLE: &str = "STRONGROOM_CA_BUNDLE";

    impl ReqwestTransport {
        /// A transport with a 30 s timeout, trusting the CA bundle named by
        /// `STRONGROOM_CA_BUNDLE` (or `SSL_CERT_FILE`) besides the built-in roots.
        pub fn new() -> Result<ReqwestTransport> {
            ReqwestTransport::from_vars(|name| std::env::var(name).ok())
        }

        /// [`ReqwestTransport::new`], with the variables `var` returns.
        pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ReqwestTransport> {
            let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
            if let Some(path) = set(ENV_CA_BUNDLE) {
                return ReqwestTransport::with_ca_bundle(path);
            }
            // SSL_CERT_FILE is everyone's variable (OpenSSL's): a file of it that does not
            // read here is passed over with a warning rather than stopping the process.
            if let Some(path) = set("SSL_CERT_FILE") {
                match ReqwestTransport::with_ca_bundle(&path) {
                    Ok(transport) => return Ok(transport),
                    Err(e) => tracing::warn!(error = %e, "SSL_CERT_FILE not used"),
                }
            }
            ReqwestTransport::with_timeout(Duration::from_secs(30))
        }

        /// A transport with this request timeout (built-in roots only).
        pub fn with_timeout(timeout: Duration) -> Result<ReqwestTransport> {
            ReqwestTransport::build(timeout, Vec::new())
        }

        /// A transport with a 30 s timeout that also trusts every CA certificate in the PEM
        /// file at `path`. A file that does not read or holds no certificate is an error
        /// naming it.
        pub fn with_ca_bundle(path: impl AsRef<Path>) -> Result<ReqwestTransport> {
            let path = path.as_ref();
            let pem = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("the CA bundle {}", path.display()),
                        "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    )
                })?;
            ReqwestTransport::build(Duration::from_secs(30), roots)
        }

        fn build(timeout: Duration, roots: Vec<reqwest::Certificate>) -> Result<ReqwestTransport> {
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("strongroom/", env!("CARGO_PKG_VERSION")));
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
            let client = builder
                .build()
                .map_err(|e| Error::config(format!("cannot build the HTTP client: {e}")))?;
            Ok(ReqwestTransport { client })
        }
    }

    #[async_trait]
    impl HttpTransport for ReqwestTransport {
        async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>> {
            let peer = peer_of(request.uri());
            let request = reqwest::Request::try_from(request).map_err(|e| Error::Transport {
                peer: peer.clone(),
                message: format!("cannot build the request: {}", without_url(&e)),
            })?;
            let response = self
                .client
                .execute(request)
                .await
                .map_err(|e| Error::Transport {
                    peer: peer.clone(),
                    message: without_url(&e),
                })?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| Error::Transport {
                peer: peer.clone(),
                message: format!("reading the response body: {}", without_url(&e)),
            })?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        }
    }

    /// reqwest's message without the URL it embeds (the URL may hold a token).
    fn without_url(e: &reqwest::Error) -> String {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_request() {
            "the request failed"
        } else if e.is_body() || e.is_decode() {
            "the response body could not be read"
        } else {
            "the HTTP exchange failed"
        };
        // The source chain (io errors, TLS alerts) names no URL.
        let mut detail = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        if detail.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}: {detail}")
        }
    }
}

#[cfg(feature = "reqwest")]
pub use reqwest_impl::{ReqwestTransport, ENV_CA_BUNDLE};
