//! Shared pieces of the fuzz targets: a runtime to drive the library's async entry points,
//! and an [`HttpTransport`] that answers with responses read from the fuzz input.
//!
//! Responses are written in the input as text, so that seeds can be written by hand:
//!
//! ```text
//! 200 application/json          <- status, then an optional Content-Type
//! X-Next-Page: 2                <- any further header lines, `Name: value`
//!                               <- a blank line
//! {"login":"octocat","id":1}    <- the body, up to the separator
//! ==next==                      <- separates responses
//! 404
//!
//! {"message":"404 Not Found"}
//! ```
//!
//! A call that asks for more responses than the input holds gets a transport error.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use strongroom::{Error, HttpTransport, Result};

/// The line that separates two responses in an input.
pub const SEPARATOR: &str = "\n==next==\n";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Runs `future` to completion on this thread's runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}

/// Answers requests with canned responses, in order; counts the requests it saw.
#[derive(Debug)]
pub struct Scripted {
    responses: Mutex<VecDeque<http::Response<Bytes>>>,
    requests: Mutex<Vec<(http::Method, String)>>,
}

impl Scripted {
    /// The responses written in `text` (see the module's documentation).
    pub fn from_text(text: &str) -> Scripted {
        let responses = text
            .split(SEPARATOR)
            .take(16)
            .map(response_from_text)
            .collect();
        Scripted {
            responses: Mutex::new(responses),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Requests sent so far (method and URI).
    pub fn requests(&self) -> Vec<(http::Method, String)> {
        self.requests.lock().expect("requests lock").clone()
    }
}

fn response_from_text(chunk: &str) -> http::Response<Bytes> {
    let (head, body) = chunk.split_once("\n\n").unwrap_or((chunk, ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("");
    let mut words = first.split_whitespace();
    let status = words
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::OK);
    let mut builder = http::Response::builder().status(status);
    if let Some(content_type) = words.next() {
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            builder = builder.header(http::header::CONTENT_TYPE, value);
        }
    }
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                builder = builder.header(name, value);
            }
        }
    }
    builder
        .body(Bytes::copy_from_slice(body.as_bytes()))
        .unwrap_or_else(|_| http::Response::new(Bytes::new()))
}

#[async_trait]
impl HttpTransport for Scripted {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>> {
        self.requests
            .lock()
            .expect("requests lock")
            .push((request.method().clone(), request.uri().to_string()));
        self.responses
            .lock()
            .expect("responses lock")
            .pop_front()
            .ok_or_else(|| Error::transport("fuzz peer", "no more scripted responses"))
    }
}

/// Checks that no `secret` appears in `text` (an error's message, a `Debug` output).
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a secret leaked into an error or Debug output: {text}"
        );
    }
}

/// A checkpoint key for the fuzz targets whose tag is the fixed bytes `fuzz`: it lets an
/// input write checkpoints that pass the tag check, so that what comes after the check
/// (matching them against the chain) is reached. Never a real key.
#[derive(Debug)]
pub struct AcceptingSigner;

/// [`AcceptingSigner`]'s key id.
pub const ACCEPTING_KEY_ID: &str = "fuzz:accepting";

#[async_trait]
impl strongroom::audit::CheckpointSigner for AcceptingSigner {
    fn key_id(&self) -> &str {
        ACCEPTING_KEY_ID
    }

    async fn sign(&self, _message: &[u8]) -> Result<Vec<u8>> {
        Ok(b"fuzz".to_vec())
    }

    async fn verify(&self, _message: &[u8], tag: &[u8]) -> Result<bool> {
        Ok(tag == b"fuzz")
    }
}
