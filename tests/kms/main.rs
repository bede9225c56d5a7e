//! The cloud master keys against local servers on 127.0.0.1 (`tests/kms_servers.py`):
//! moto's AWS KMS, and stand-ins that speak the documented Google Cloud KMS, Azure Key Vault
//! and HashiCorp Vault transit APIs. Round trips, a wrapped key moved to another record
//! (wrong context), access denied, a vault on each backend, and no secret in Debug output;
//! audit checkpoints made with each service's MAC or signature (`checkpoints.rs`); Azure Key
//! Vault's signed data keys, and records forged with its public key alone (`azure.rs`).

mod aws_chain;
mod aws_context;
mod azure;
mod azure_identity;
mod checkpoints;
mod echoed_credentials;
mod echoed_secrets;
mod gcp_credentials;
mod standins;
mod tls;
mod vault;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use strongroom::crypto::kms::{AwsKmsKey, AzureKeyVaultKey, GcpKmsKey, VaultTransitKey};
use strongroom::transport::ReqwestTransport;
use strongroom::{
    CredentialRef, Error, ExposeSecret, KeyRing, KeyWrapper, NewCredential, Principal,
    RecordIdentity, ResolveContext, Scope, ScopeKind, SecretString, Vault,
};

pub(crate) struct Servers {
    child: Child,
    pub(crate) info: serde_json::Value,
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn servers() -> Servers {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_servers.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs tests/kms_servers.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the servers' first line");
    let info: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("tests/kms_servers.py did not start: {line:?}"));
    Servers { child, info }
}

pub(crate) fn http() -> Arc<ReqwestTransport> {
    Arc::new(ReqwestTransport::new().expect("client"))
}

pub(crate) fn s(v: &serde_json::Value, p: &str) -> String {
    v.pointer(p)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("no {p} in {v}"))
        .to_string()
}

/// Seals and opens through the key, and checks that a blob moved to another record does
/// not open (the backend rejects the context).
async fn round_trip(key: Arc<dyn KeyWrapper>) {
    let ring = KeyRing::new(key.clone());
    let scope = Scope::per_user("alice").expect("scope");
    let id = RecordIdentity::new("cred-1", &scope, 1).in_namespace("kms-tests");
    let sealed = ring
        .seal(b"{\"api_key\":\"sk-kms\"}", &id)
        .await
        .expect("seal");
    let opened = ring.open(&sealed.bytes, &id).await.expect("open");
    assert_eq!(opened.expose_secret(), b"{\"api_key\":\"sk-kms\"}");
    let bob = Scope::per_user("bob").expect("scope");
    for other in [
        id.at_version(2),
        RecordIdentity::new("cred-2", &scope, 1).in_namespace("kms-tests"),
        RecordIdentity::new("cred-1", &bob, 1).in_namespace("kms-tests"),
        id.in_namespace("another-vault"),
    ] {
        match ring.open(&sealed.bytes, &other).await {
            Err(Error::DecryptFailed { .. }) => {}
            other => panic!(
                "{}: a moved blob must fail to decrypt, got {other:?}",
                key.key_id()
            ),
        }
    }
    // The key's wrap itself refuses another record's associated data.
    let dek = strongroom::DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"aad-of-record-1").await.expect("wrap");
    let back = key
        .unwrap(&wrapped, b"aad-of-record-1")
        .await
        .expect("unwrap");
    assert_eq!(back.expose_secret(), dek.expose_secret());
    match key.unwrap(&wrapped, b"aad-of-record-2").await {
        Err(Error::DecryptFailed { .. }) => {}
        other => panic!(
            "{}: wrong context must be DecryptFailed, got {other:?}",
            key.key_id()
        ),
    }
}

fn denied(result: strongroom::Result<impl std::fmt::Debug>, needle: &str) {
    match result {
        Err(Error::KeyUnavailable { key_id, reason }) => {
            assert!(!key_id.is_empty());
            assert!(reason.contains(needle), "{reason}");
            assert!(!reason.contains("CANARY"), "{reason}");
        }
        other => panic!("expected KeyUnavailable ({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn aws_kms_against_moto() {
    let srv = servers();
    if let Some(e) = srv.info.get("aws_error") {
        panic!("AWS KMS test server: {e}");
    }
    let a = &srv.info["aws"];
    let make = |key: String, id: &str, secret: &str| {
        AwsKmsKey::new(key, s(a, "/region"), s(a, id), s(a, secret), None, http())
            .expect("key")
            .with_endpoint(s(a, "/endpoint"))
    };
    let key = Arc::new(make(s(a, "/key"), "/access_key_id", "/secret_access_key"));
    assert!(!format!("{key:?}").contains(&s(a, "/secret_access_key")));
    round_trip(key).await;
    let dek = strongroom::DataKey::generate().expect("dek");
    // A user without a policy: KMS denies the call.
    let nobody = make(
        s(a, "/key"),
        "/denied_access_key_id",
        "/denied_secret_access_key",
    );
    denied(nobody.wrap(&dek, b"x").await, "AccessDenied");
    // A wrong secret: the signature does not verify.
    let forged = AwsKmsKey::new(
        s(a, "/key"),
        s(a, "/region"),
        s(a, "/access_key_id"),
        "not-the-secret",
        None,
        http(),
    )
    .expect("key")
    .with_endpoint(s(a, "/endpoint"));
    match forged.wrap(&dek, b"x").await {
        Err(Error::KeyUnavailable { reason, .. }) => assert!(
            reason.contains("403") || reason.contains("Signature"),
            "{reason}"
        ),
        other => panic!("a forged signature must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn gcp_kms_with_a_service_account() {
    let srv = servers();
    let g = &srv.info["gcp"];
    let sa = g["service_account"].to_string();
    let key = Arc::new(
        GcpKmsKey::with_service_account(s(g, "/key"), &sa, http())
            .expect("key")
            .with_endpoint(s(g, "/endpoint")),
    );
    assert!(!format!("{key:?}").contains("PRIVATE KEY"));
    round_trip(key).await;
    let dek = strongroom::DataKey::generate().expect("dek");
    let denied_key = GcpKmsKey::with_service_account(s(g, "/denied_key"), &sa, http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    denied(denied_key.wrap(&dek, b"x").await, "access denied (403)");
    let bad_token = GcpKmsKey::with_access_token(s(g, "/key"), "ya29.forged", http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    denied(bad_token.wrap(&dek, b"x").await, "access denied (401)");
    assert!(GcpKmsKey::with_access_token("not/a/key", "t", http()).is_err());
}

#[tokio::test]
async fn azure_key_vault_with_client_credentials() {
    let srv = servers();
    let z = &srv.info["azure"];
    let make = |url: String, secret: String| {
        AzureKeyVaultKey::new(&url, s(z, "/tenant"), s(z, "/client_id"), secret, http())
            .expect("key")
            .with_authority(s(z, "/authority"))
    };
    let key = Arc::new(make(s(z, "/key_url"), s(z, "/client_secret")));
    assert!(!format!("{key:?}").contains("CANARY"));
    round_trip(key).await;
    let dek = strongroom::DataKey::generate().expect("dek");
    denied(
        make(s(z, "/forbidden_key_url"), s(z, "/client_secret"))
            .wrap(&dek, b"x")
            .await,
        "access denied (403)",
    );
    denied(
        make(s(z, "/key_url"), "wrong-secret".into())
            .wrap(&dek, b"x")
            .await,
        "access token",
    );
}

#[tokio::test]
async fn vault_transit_with_a_derived_key() {
    let srv = servers();
    let v = &srv.info["vault"];
    let key = Arc::new(
        VaultTransitKey::new(s(v, "/addr"), s(v, "/key"), s(v, "/token"), http()).expect("key"),
    );
    assert!(!format!("{key:?}").contains("CANARY"));
    round_trip(key).await;
    let dek = strongroom::DataKey::generate().expect("dek");
    denied(
        VaultTransitKey::new(s(v, "/addr"), s(v, "/key"), "bad-token", http())
            .expect("key")
            .wrap(&dek, b"x")
            .await,
        "access denied (403)",
    );
}

#[tokio::test]
async fn an_unreachable_service_is_key_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let key = VaultTransitKey::new(format!("http://127.0.0.1:{port}"), "k", "t-CANARY", http())
        .expect("key");
    let dek = strongroom::DataKey::generate().expect("dek");
    denied(key.wrap(&dek, b"x").await, &format!("127.0.0.1:{port}"));
}

#[tokio::test]
async fn the_environment_selects_a_cloud_key_and_a_vault_runs_on_it() {
    let srv = servers();
    let v = &srv.info["vault"];
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("STRONGROOM_KMS", "vault".to_string()),
        ("VAULT_ADDR", s(v, "/addr")),
        ("VAULT_TOKEN", s(v, "/token")),
        ("STRONGROOM_VAULT_TRANSIT_KEY", s(v, "/key")),
    ]);
    let key = strongroom::crypto::key_wrapper_from_vars(|n| vars.get(n).cloned()).expect("key");
    assert_eq!(key.backend_id(), strongroom::crypto::BackendId::Vault);
    let missing = BTreeMap::from([("STRONGROOM_KMS", "gcp_kms".to_string())]);
    let err = strongroom::crypto::key_wrapper_from_vars(|n| missing.get(n).cloned())
        .expect_err("incomplete");
    assert!(err.to_string().contains("STRONGROOM_GCP_KMS_KEY"), "{err}");

    let vault = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(key)
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    vault
        .create(
            &admin,
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "",
                BTreeMap::from([(
                    "api_key".into(),
                    SecretString::from("sk-on-vault".to_string()),
                )]),
            ),
        )
        .await
        .expect("create");
    let runtime = Principal::parse("runtime:crm:alice").expect("p");
    for _ in 0..3 {
        let got = vault
            .resolve(
                &runtime,
                &CredentialRef::explicit("openai_main", ScopeKind::SystemWide, None),
                &ResolveContext {
                    app: "crm".into(),
                    user: "alice".into(),
                },
            )
            .await
            .expect("resolve");
        assert_eq!(got.fields["api_key"].expose_secret(), "sk-on-vault");
    }
    // A remote key gets the data-key cache by default: no unwrap call after the create.
    let stats = vault
        .keys()
        .dek_cache_stats()
        .expect("cache on for a remote key");
    assert_eq!(stats.hits, 3);
}
