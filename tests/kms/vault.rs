//! HashiCorp Vault transit against the stand-in `tests/kms_vault_server.py` (written from
//! Vault's transit, AppRole, Kubernetes and token API references): a key that is not
//! derived is refused (Vault ignores the context for it); "too old" and "encryption key not
//! found" are `KeyUnavailable`, a ciphertext that does not authenticate `DecryptFailed`;
//! namespaces, AppRole and Kubernetes logins, token files and token renewal; bounded
//! retries on 429/5xx with `Retry-After` honoured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::crypto::kms::{SecretSource, VaultAuth, VaultTransitKey};
use strongroom::transport::{Bytes, HttpTransport};
use strongroom::{DataKey, Error, KeyWrapper};

use super::{http, s, servers};

/// A raw request to the stand-in (key management and its test controls).
pub(crate) async fn poke(
    method: &str,
    url: &str,
    body: serde_json::Value,
    token: Option<&str>,
) -> serde_json::Value {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("x-vault-token", t);
    }
    let request = request
        .body(Bytes::from(serde_json::to_vec(&body).expect("json")))
        .expect("request");
    let answer = http().send(request).await.expect("stand-in answers");
    assert!(answer.status().is_success(), "{url}: {answer:?}");
    serde_json::from_slice(answer.body()).unwrap_or(serde_json::Value::Null)
}

fn root_key(v: &serde_json::Value, name: &str) -> VaultTransitKey {
    VaultTransitKey::new(s(v, "/addr"), name, s(v, "/token"), http()).expect("key")
}

async fn stats(v: &serde_json::Value) -> serde_json::Value {
    poke(
        "GET",
        &format!("{}/test/vault/stats", s(v, "/addr")),
        serde_json::Value::Null,
        None,
    )
    .await
}

fn expect_unavailable(result: strongroom::Result<DataKey>, needle: &str) {
    match result {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains(needle), "{needle}: {reason}")
        }
        other => panic!("expected KeyUnavailable ({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_transit_key_that_is_not_derived_is_refused() {
    let srv = servers();
    let v = &srv.info["vault"];
    let dek = DataKey::generate().expect("dek");
    // The stand-in, like real Vault, ignores the context of a key that is not derived: a
    // key wrapped for one record unwraps for any other. So the wrapper refuses the key.
    let plain = root_key(v, &s(v, "/plain_key"));
    match plain.wrap(&dek, b"record-1").await {
        Err(Error::Config { message }) => {
            for needle in [
                "derived=true",
                "ignores the context",
                "STRONGROOM_VAULT_ACCEPT_UNDERIVED",
            ] {
                assert!(message.contains(needle), "{needle}: {message}");
            }
        }
        other => panic!("a key that is not derived must be refused, got {other:?}"),
    }
    // What the refusal prevents, shown on the stand-in directly: a ciphertext made under
    // one context decrypts under another.
    let addr = s(v, "/addr");
    let token = s(v, "/token");
    let made = poke(
        "POST",
        &format!("{addr}/v1/transit/encrypt/plain"),
        serde_json::json!({"plaintext": "c2VjcmV0", "context": "cmVjb3JkLTE="}),
        Some(&token),
    )
    .await;
    let opened = poke(
        "POST",
        &format!("{addr}/v1/transit/decrypt/plain"),
        serde_json::json!({"ciphertext": made["data"]["ciphertext"], "context": "cmVjb3JkLTI="}),
        Some(&token),
    )
    .await;
    assert_eq!(opened["data"]["plaintext"], "c2VjcmV0");
    // For moving records off such a key, reading may be accepted; wrapping never is.
    let lax = root_key(v, &s(v, "/plain_key")).accept_underived_for_reading();
    assert!(matches!(
        lax.wrap(&dek, b"x").await,
        Err(Error::Config { .. })
    ));
    // A derived key works and its check is made once.
    let derived = root_key(v, &s(v, "/key"));
    for _ in 0..3 {
        let w = derived.wrap(&dek, b"r").await.expect("wrap");
        derived.unwrap(&w, b"r").await.expect("unwrap");
    }
    let st = stats(v).await;
    assert_eq!(st["paths"]["/v1/transit/keys/strongroom"], 1, "{st}");
}

#[tokio::test]
async fn a_key_version_too_old_or_a_deleted_key_is_unavailable_not_tampering() {
    let srv = servers();
    let v = &srv.info["vault"];
    let addr = s(v, "/addr");
    let token = s(v, "/token");
    let key = root_key(v, "strongroom");
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"record").await.expect("wrap");
    // A changed ciphertext is tampering.
    let mut bad = wrapped.clone();
    let at = bad.len() - 5;
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    assert!(matches!(
        key.unwrap(&bad, b"record").await,
        Err(Error::DecryptFailed { .. })
    ));
    // Rotated twice and min_decryption_version raised past the data key's version.
    for _ in 0..2 {
        poke(
            "POST",
            &format!("{addr}/v1/transit/keys/strongroom/rotate"),
            serde_json::json!({}),
            Some(&token),
        )
        .await;
    }
    poke(
        "POST",
        &format!("{addr}/v1/transit/keys/strongroom/config"),
        serde_json::json!({"min_decryption_version": 2}),
        Some(&token),
    )
    .await;
    expect_unavailable(key.unwrap(&wrapped, b"record").await, "too old");
    expect_unavailable(
        key.unwrap(&wrapped, b"record").await,
        "min_decryption_version",
    );
    // The key deleted.
    poke(
        "DELETE",
        &format!("{addr}/v1/transit/keys/strongroom"),
        serde_json::Value::Null,
        Some(&token),
    )
    .await;
    expect_unavailable(
        key.unwrap(&wrapped, b"record").await,
        "encryption key not found",
    );
}

#[tokio::test]
async fn approle_in_a_namespace_renews_its_token_and_logs_in_again_when_it_cannot() {
    let srv = servers();
    let v = &srv.info["vault"];
    let addr = s(v, "/addr");
    // Tokens live 3 s: renewed after 2 s.
    poke(
        "POST",
        &format!("{addr}/test/vault/ttl"),
        serde_json::json!({"ttl": 3}),
        None,
    )
    .await;
    let approle = |role_id: String| VaultAuth::AppRole {
        mount: "approle".into(),
        role_id: SecretSource::value(role_id),
        secret_id: SecretSource::value(s(v, "/secret_id")),
    };
    let key = VaultTransitKey::new(addr.clone(), "strongroom", "", http())
        .expect("key")
        .with_auth(approle(s(v, "/role_id")))
        .with_namespace(s(v, "/namespace"));
    assert!(!format!("{key:?}").contains("CANARY"));
    let dek = DataKey::generate().expect("dek");
    let w = key.wrap(&dek, b"r").await.expect("wrap in the namespace");
    assert_eq!(
        key.unwrap(&w, b"r").await.expect("unwrap").expose_secret(),
        dek.expose_secret()
    );
    // The namespace's key is not the root namespace's: the root token there cannot open it.
    let other = root_key(v, "strongroom");
    assert!(other.unwrap(&w, b"r").await.is_err());
    assert_eq!(stats(v).await["logins"], 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    key.wrap(&dek, b"r").await.expect("wrap after renewal");
    let st = stats(v).await;
    assert_eq!(
        (st["logins"].as_u64(), st["renewals"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );

    // A role whose tokens are not renewable: a new login instead.
    let once = VaultTransitKey::new(addr.clone(), "strongroom", "", http())
        .expect("key")
        .with_auth(approle("role-id-once".into()));
    once.wrap(&dek, b"r").await.expect("wrap");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    once.wrap(&dek, b"r").await.expect("wrap after a new login");
    let st = stats(v).await;
    assert_eq!(
        (st["logins"].as_u64(), st["renewals"].as_u64()),
        (Some(3), Some(1)),
        "{st}"
    );

    // A wrong secret id: the login's refusal, named, without the secret.
    let wrong = VaultTransitKey::new(addr, "strongroom", "", http())
        .expect("key")
        .with_auth(VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretSource::value(s(v, "/role_id")),
            secret_id: SecretSource::value("not-the-secret-CANARY"),
        });
    match wrong.wrap(&dek, b"r").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("logging in to Vault"), "{reason}");
            assert!(!reason.contains("CANARY"), "{reason}");
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn kubernetes_login_and_a_token_file_that_changes() {
    let srv = servers();
    let v = &srv.info["vault"];
    let addr = s(v, "/addr");
    let dir = tempfile::tempdir().expect("dir");
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, format!("{}\n", s(v, "/k8s_jwt"))).expect("write");
    let dek = DataKey::generate().expect("dek");
    let k8s = VaultTransitKey::new(addr.clone(), "strongroom", "", http())
        .expect("key")
        .with_auth(VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "strongroom".into(),
            jwt: SecretSource::file(&jwt),
        });
    let w = k8s
        .wrap(&dek, b"r")
        .await
        .expect("wrap after a Kubernetes login");
    assert_eq!(stats(v).await["logins"], 1);

    // A token file as Vault Agent writes it, read again when it changes.
    let file = dir.path().join("vault-token");
    std::fs::write(&file, format!("{}\n", s(v, "/token"))).expect("write");
    let agent = VaultTransitKey::new(addr, "strongroom", "", http())
        .expect("key")
        .with_auth(VaultAuth::Token(SecretSource::file(&file)));
    agent
        .unwrap(&w, b"r")
        .await
        .expect("unwrap with the file's token");
    std::fs::write(&file, "hvs.revoked").expect("write");
    expect_unavailable(agent.unwrap(&w, b"r").await, "access denied (403)");
    std::fs::write(&file, s(v, "/token")).expect("write");
    agent
        .unwrap(&w, b"r")
        .await
        .expect("the new token is picked up");

    // The environment selects the token file (and a namespace) the same way.
    let vars = std::collections::BTreeMap::from([
        ("STRONGROOM_KMS", "vault".to_string()),
        ("VAULT_ADDR", s(v, "/addr")),
        ("STRONGROOM_VAULT_TOKEN_FILE", file.display().to_string()),
        ("STRONGROOM_VAULT_TRANSIT_KEY", "strongroom".into()),
    ]);
    let key = strongroom::crypto::key_wrapper_from_vars(|n| vars.get(n).cloned()).expect("key");
    key.unwrap(&w, b"r").await.expect("from the environment");
    let none = std::collections::BTreeMap::from([
        ("STRONGROOM_KMS", "vault".to_string()),
        ("VAULT_ADDR", s(v, "/addr")),
        ("STRONGROOM_VAULT_TRANSIT_KEY", "strongroom".into()),
    ]);
    let err = strongroom::crypto::key_wrapper_from_vars(|n| none.get(n).cloned())
        .expect_err("no token source");
    assert!(err.to_string().contains("VAULT_ROLE_ID"), "{err}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_within_bounds() {
    let srv = servers();
    let v = &srv.info["vault"];
    let addr = s(v, "/addr");
    let key: Arc<dyn KeyWrapper> = Arc::new(root_key(v, "strongroom"));
    let dek = DataKey::generate().expect("dek");
    let fail = |status: u16, times: u32, retry_after: Option<u64>| {
        let addr = addr.clone();
        async move {
            poke(
                "POST",
                &format!("{addr}/test/vault/fail"),
                serde_json::json!({"path": "/v1/transit/encrypt/strongroom", "status": status,
                                   "times": times, "retry_after": retry_after}),
                None,
            )
            .await;
        }
    };
    let count = || async {
        stats(v).await["paths"]["/v1/transit/encrypt/strongroom"]
            .as_u64()
            .unwrap_or(0)
    };
    // Two server errors, then an answer: the wrap succeeds on the third try.
    fail(503, 2, None).await;
    key.wrap(&dek, b"r").await.expect("retried past two 503s");
    assert_eq!(count().await, 3);
    // A 429 asking for a second: waited for.
    fail(429, 1, Some(1)).await;
    let started = Instant::now();
    key.wrap(&dek, b"r")
        .await
        .expect("retried after Retry-After");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count().await, 5);
    // Failing on: four attempts, then an error that says so.
    fail(502, 100, None).await;
    match key.wrap(&dek, b"r").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("502"), "{reason}");
            assert!(reason.contains("gave up after 4 attempts"), "{reason}");
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
    assert_eq!(count().await, 9);
    // A Retry-After beyond the bounds is not waited for.
    fail(429, 100, Some(3600)).await;
    let started = Instant::now();
    assert!(key.wrap(&dek, b"r").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(count().await, 10);
    // A 400 is not retried.
    let before = stats(v).await["paths"]["/v1/transit/decrypt/strongroom"]
        .as_u64()
        .unwrap_or(0);
    assert!(key.unwrap(b"vault:v1:AAAA", b"r").await.is_err());
    let after = stats(v).await["paths"]["/v1/transit/decrypt/strongroom"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(after - before, 1);
}

#[tokio::test]
async fn a_read_whose_kms_calls_give_up_is_audited_as_a_failure() {
    use std::collections::BTreeMap;
    use strongroom::{AuditQuery, NewCredential, Outcome, Principal, Scope, SecretString, Vault};
    let srv = servers();
    let v = &srv.info["vault"];
    let vault = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(Arc::new(root_key(v, "strongroom")))
        .no_dek_cache()
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("principal");
    let fields = BTreeMap::from([(
        "api_key".to_string(),
        SecretString::from("sk-x".to_string()),
    )]);
    let info = vault
        .create(
            &admin,
            NewCredential::new("k", Scope::SystemWide, "openai", "", fields),
        )
        .await
        .expect("create");
    poke(
        "POST",
        &format!("{}/test/vault/fail", s(v, "/addr")),
        serde_json::json!({"path": "/v1/transit/decrypt/strongroom", "status": 503, "times": 100}),
        None,
    )
    .await;
    match vault.reveal(&admin, &info.id).await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("gave up after 4 attempts"), "{reason}")
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
    let rows = vault
        .audit_log(
            &admin,
            &AuditQuery {
                credential_id: Some(info.id.clone()),
                outcome: Some(Outcome::Failure),
                ..AuditQuery::default()
            },
        )
        .await
        .expect("audit");
    let row = rows.last().expect("the failed read is audited");
    assert_eq!(
        row.event.details.get("error").map(String::as_str),
        Some("KeyUnavailable"),
        "{row:?}"
    );
}
