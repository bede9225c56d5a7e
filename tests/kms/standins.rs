//! The credential stand-ins (`tests/kms_credential_servers.py`: IMDSv2, the container
//! credentials endpoint, moto's STS and KMS with the documented key states, the Google
//! metadata server, STS and IAM Credentials, and the Google Cloud KMS stand-in), and a
//! transport that records what is sent.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use strongroom::transport::{Bytes, HttpTransport, ReqwestTransport};

pub(crate) struct CredentialServers {
    child: Child,
    pub(crate) info: serde_json::Value,
}

impl Drop for CredentialServers {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn credential_servers() -> CredentialServers {
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/kms_credential_servers.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs tests/kms_credential_servers.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the servers' first line");
    let info: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("tests/kms_credential_servers.py did not start: {line:?}"));
    if let Some(e) = info.get("aws_error") {
        panic!("AWS stand-in: {e}");
    }
    CredentialServers { child, info }
}

/// Sends one request through the crate's own transport and reads the JSON answer; panics
/// unless it is a 2xx.
pub(crate) async fn call_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Bytes::from(body.unwrap_or_default()))
        .expect("request");
    let answer = ReqwestTransport::new()
        .expect("client")
        .send(request)
        .await
        .expect("the stand-in answers");
    assert!(
        answer.status().is_success(),
        "{method} {url}: {} {}",
        answer.status(),
        String::from_utf8_lossy(answer.body())
    );
    serde_json::from_slice(answer.body()).expect("json")
}

impl CredentialServers {
    /// How many times each endpoint handed out credentials.
    pub(crate) async fn count(&self, what: &str) -> u64 {
        let url = format!("{}/_stats", super::s(&self.info, "/base"));
        let stats = call_json("GET", &url, &[], None).await;
        stats.get(what).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// POSTs JSON to a control endpoint of the stand-in.
    pub(crate) async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}{path}", super::s(&self.info, "/base"));
        call_json("POST", &url, &[], Some(body)).await
    }
}

/// One request as sent.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) uri: String,
    pub(crate) body: Vec<u8>,
}

/// Records every request; sends it on through reqwest, or (`offline`) answers each with a
/// 400 `RecordedOnly` error without sending anything.
#[derive(Debug)]
pub(crate) struct Recording {
    inner: Option<ReqwestTransport>,
    pub(crate) sent: Mutex<Vec<Sent>>,
}

impl Recording {
    pub(crate) fn online() -> Arc<Recording> {
        Arc::new(Recording {
            inner: Some(ReqwestTransport::new().expect("client")),
            sent: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn offline() -> Arc<Recording> {
        Arc::new(Recording {
            inner: None,
            sent: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("lock").clone()
    }
}

#[async_trait]
impl HttpTransport for Recording {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> strongroom::Result<http::Response<Bytes>> {
        self.sent.lock().expect("lock").push(Sent {
            uri: request.uri().to_string(),
            body: request.body().to_vec(),
        });
        match &self.inner {
            Some(t) => t.send(request).await,
            None => Ok(http::Response::builder()
                .status(400)
                .body(Bytes::from_static(
                    br#"{"__type":"RecordedOnly","message":"not sent"}"#,
                ))
                .expect("response")),
        }
    }
}

/// A temporary directory for token and profile files.
pub(crate) fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
