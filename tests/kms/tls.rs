//! `ReqwestTransport` with a CA bundle: the Vault transit stand-in served over HTTPS with a
//! certificate from a CA made by the test (`tests/kms_tls_server.py`, python
//! `cryptography`), as a self-hosted Vault on an internal CA is. Without the bundle the
//! TLS handshake is refused; with it (`with_ca_bundle`, or `STRONGROOM_CA_BUNDLE` /
//! `SSL_CERT_FILE` through `from_vars`) the key works.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use strongroom::crypto::kms::VaultTransitKey;
use strongroom::transport::ReqwestTransport;
use strongroom::{DataKey, Error, KeyWrapper};

use super::s;

struct TlsServer {
    child: std::process::Child,
    info: serde_json::Value,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("ca.pem");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/kms_tls_server.py"
        ))
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs tests/kms_tls_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let info = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no TLS server: {line:?}"));
    TlsServer {
        child,
        info,
        _dir: dir,
        ca,
    }
}

async fn wrap_with(srv: &TlsServer, http: ReqwestTransport) -> strongroom::Result<Vec<u8>> {
    let v = &srv.info["vault"];
    let key = VaultTransitKey::new(s(v, "/addr"), s(v, "/key"), s(v, "/token"), Arc::new(http))
        .expect("key");
    key.wrap(&DataKey::generate().expect("dek"), b"aad").await
}

#[tokio::test]
async fn a_vault_on_an_internal_ca_needs_its_bundle() {
    let srv = tls_server();
    assert!(s(&srv.info, "/base").starts_with("https://127.0.0.1:"));
    // The built-in roots do not know the CA: the handshake fails, and says where.
    let plain = ReqwestTransport::from_vars(|_| None).expect("transport");
    match wrap_with(&srv, plain).await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("127.0.0.1"), "{reason}");
            assert!(!reason.contains("CANARY"), "{reason}");
        }
        other => panic!("an unknown CA must be refused, got {other:?}"),
    }
    // With the bundle: through the constructor and through each variable.
    let bundled = ReqwestTransport::with_ca_bundle(&srv.ca).expect("bundle");
    wrap_with(&srv, bundled)
        .await
        .expect("trusted with the bundle");
    let path = srv.ca.display().to_string();
    for name in ["STRONGROOM_CA_BUNDLE", "SSL_CERT_FILE"] {
        let http =
            ReqwestTransport::from_vars(|n| (n == name).then(|| path.clone())).expect("transport");
        wrap_with(&srv, http)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A bundle that is not one is refused, naming the file.
    let bogus = srv._dir.path().join("not-a-bundle.pem");
    std::fs::write(&bogus, "just text").expect("write");
    let err = ReqwestTransport::with_ca_bundle(&bogus).expect_err("no certificate");
    assert!(err.to_string().contains("not-a-bundle.pem"), "{err}");
    assert!(ReqwestTransport::with_ca_bundle(srv._dir.path().join("missing.pem")).is_err());
    let named = bogus.display().to_string();
    assert!(
        ReqwestTransport::from_vars(|n| (n == "STRONGROOM_CA_BUNDLE").then(|| named.clone()))
            .is_err()
    );
    // SSL_CERT_FILE, everyone's variable, is passed over when it does not read.
    let plain = ReqwestTransport::from_vars(|n| (n == "SSL_CERT_FILE").then(|| named.clone()))
        .expect("built-in roots");
    assert!(wrap_with(&srv, plain).await.is_err());
}
