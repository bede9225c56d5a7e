//! Google Cloud KMS (issue 16, items 3 and 6), against the stand-ins of
//! `tests/kms_credential_servers.py` (the metadata server, Google STS, IAM Credentials, the
//! OAuth token endpoint) and the Cloud KMS stand-in of `tests/kms_servers.py` run beside
//! them: tokens from the metadata server, from Workload Identity Federation (file- and
//! URL-sourced subject tokens, with and without impersonation) and from user credentials,
//! refreshed before they expire; a disabled or destroyed key version is `KeyUnavailable`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::crypto::kms::GcpKmsKey;
use strongroom::transport::{Bytes, HttpTransport, ReqwestTransport};
use strongroom::{DataKey, Error, KeyWrapper};

use super::standins::{call_json, credential_servers, temp_dir, CredentialServers};
use super::{http, s};

async fn wraps_and_unwraps(key: &dyn KeyWrapper) {
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"record-1").await.expect("wrap");
    let back = key.unwrap(&wrapped, b"record-1").await.expect("unwrap");
    assert_eq!(back.expose_secret(), dek.expose_secret());
    assert!(matches!(
        key.unwrap(&wrapped, b"record-2").await,
        Err(Error::DecryptFailed { .. })
    ));
}

#[tokio::test]
async fn tokens_from_the_metadata_server() {
    let srv = credential_servers();
    let g = &srv.info["gcp"];
    let key =
        GcpKmsKey::with_metadata_server(s(g, "/key"), Some(s(&srv.info, "/metadata_host")), http())
            .expect("key")
            .with_endpoint(s(g, "/endpoint"));
    assert!(format!("{key:?}").contains("metadata server"), "{key:?}");
    wraps_and_unwraps(&key).await;
    assert_eq!(
        srv.count("gcp_metadata").await,
        1,
        "one token for all calls"
    );

    // With nothing else configured, the environment picks the metadata server
    // (GCE_METADATA_HOST), as Application Default Credentials do.
    let home = temp_dir();
    let vars = BTreeMap::from([
        ("STRONGROOM_KMS", "gcp_kms".to_string()),
        ("STRONGROOM_GCP_KMS_KEY", s(g, "/key")),
        ("STRONGROOM_GCP_KMS_ENDPOINT", s(g, "/endpoint")),
        ("GCE_METADATA_HOST", s(&srv.info, "/metadata_host")),
        ("HOME", home.path().display().to_string()),
    ]);
    let key = strongroom::crypto::key_wrapper_from_vars(|n| vars.get(n).cloned()).expect("key");
    wraps_and_unwraps(key.as_ref()).await;
    assert_eq!(srv.count("gcp_metadata").await, 2);

    // Something at that address that does not answer `Metadata-Flavor: Google` is not the
    // metadata server: its token is not taken.
    let fake = format!("{}/not-metadata", s(&srv.info, "/metadata_host"));
    let key = GcpKmsKey::with_metadata_server(s(g, "/key"), Some(fake), http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    let dek = DataKey::generate().expect("dek");
    match key.wrap(&dek, b"x").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("not a metadata server"), "{reason}")
        }
        other => panic!("a fake metadata server must not be trusted: {other:?}"),
    }
}

fn external_account(g: &serde_json::Value, source: serde_json::Value, impersonate: bool) -> String {
    let mut file = serde_json::json!({
        "type": "external_account",
        "audience": s(g, "/audience"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": s(g, "/sts"),
        "credential_source": source,
    });
    if impersonate {
        file["service_account_impersonation_url"] = s(g, "/impersonation_url").into();
    }
    file.to_string()
}

#[tokio::test]
async fn workload_identity_federation_with_a_subject_token_file_and_impersonation() {
    let srv = credential_servers();
    let g = &srv.info["gcp"];
    let dir = temp_dir();
    let token_file = dir.path().join("oidc.json");
    std::fs::write(
        &token_file,
        serde_json::json!({"id_token": s(g, "/subject_token")}).to_string(),
    )
    .expect("token");
    let json = external_account(
        g,
        serde_json::json!({
            "file": token_file.display().to_string(),
            "format": {"type": "json", "subject_token_field_name": "id_token"},
        }),
        true,
    );
    let key = GcpKmsKey::with_credentials_file(s(g, "/key"), &json, http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    wraps_and_unwraps(&key).await;
    assert_eq!(srv.count("gcp_sts").await, 1);
    assert_eq!(srv.count("gcp_impersonate").await, 1);

    // A subject token STS refuses: KeyUnavailable with STS's reason, no token in it.
    std::fs::write(
        &token_file,
        serde_json::json!({"id_token": "eyJ-forged-CANARY"}).to_string(),
    )
    .expect("token");
    let key = GcpKmsKey::with_credentials_file(s(g, "/key"), &json, http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    let dek = DataKey::generate().expect("dek");
    match key.wrap(&dek, b"x").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("invalid_grant"), "{reason}");
            assert!(!reason.contains("CANARY"), "{reason}");
        }
        other => panic!("a refused subject token: {other:?}"),
    }
}

#[tokio::test]
async fn workload_identity_federation_with_a_url_sourced_subject_token() {
    let srv = credential_servers();
    let g = &srv.info["gcp"];
    let json = external_account(
        g,
        serde_json::json!({
            "url": s(g, "/subject_url"),
            "headers": {"Metadata": "True"},
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        }),
        false,
    );
    let key = GcpKmsKey::with_credentials_file(s(g, "/key"), &json, http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    wraps_and_unwraps(&key).await;
    assert_eq!(srv.count("gcp_sts").await, 1);
    assert_eq!(
        srv.count("gcp_impersonate").await,
        0,
        "the federated token itself"
    );
}

fn authorized_user(g: &serde_json::Value) -> String {
    serde_json::json!({
        "type": "authorized_user",
        "client_id": s(g, "/client_id"),
        "client_secret": s(g, "/client_secret"),
        "refresh_token": s(g, "/refresh_token"),
        "token_uri": s(g, "/token_uri"),
    })
    .to_string()
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let srv = credential_servers();
    let g = &srv.info["gcp"];
    // Tokens that live 64 s: kept for 4 s (a minute's margin), then fetched again.
    srv.post("/_config", serde_json::json!({"gcp_expires_in": 64}))
        .await;
    let key = GcpKmsKey::with_credentials_file(s(g, "/key"), &authorized_user(g), http())
        .expect("key")
        .with_endpoint(s(g, "/endpoint"));
    assert!(!format!("{key:?}").contains("CANARY"));
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"r").await.expect("wrap");
    key.unwrap(&wrapped, b"r").await.expect("unwrap");
    assert_eq!(srv.count("gcp_refresh").await, 1, "kept while fresh");
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    key.unwrap(&wrapped, b"r").await.expect("unwrap");
    assert_eq!(
        srv.count("gcp_refresh").await,
        2,
        "refreshed before it expired"
    );
}

/// An access token for the Cloud KMS stand-in's administrative calls.
async fn admin_token(srv: &CredentialServers) -> String {
    let g = &srv.info["gcp"];
    let form = format!(
        "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
        s(g, "/client_id"),
        s(g, "/client_secret"),
        s(g, "/refresh_token").replace('/', "%2F")
    );
    let request = http::Request::builder()
        .method("POST")
        .uri(s(g, "/token_uri"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Bytes::from(form))
        .expect("request");
    let answer = ReqwestTransport::new()
        .expect("client")
        .send(request)
        .await
        .expect("token");
    let v: serde_json::Value = serde_json::from_slice(answer.body()).expect("json");
    format!("Bearer {}", s(&v, "/access_token"))
}

#[tokio::test]
async fn disabled_and_destroyed_key_versions_are_key_unavailable() {
    let srv = credential_servers();
    let g = &srv.info["gcp"];
    let key: Arc<GcpKmsKey> = Arc::new(
        GcpKmsKey::with_credentials_file(s(g, "/key"), &authorized_user(g), http())
            .expect("key")
            .with_endpoint(s(g, "/endpoint")),
    );
    let dek = DataKey::generate().expect("dek");
    let old = key.wrap(&dek, b"r").await.expect("wrap under version 1");
    let bearer = admin_token(&srv).await;
    let auth = [("authorization", bearer.as_str())];
    let base = format!("{}/v1/{}", s(g, "/endpoint"), s(g, "/key"));
    // Rotate: version 2 becomes primary; version 1 is disabled.
    call_json(
        "POST",
        &format!("{base}/cryptoKeyVersions"),
        &auth,
        Some(serde_json::json!({})),
    )
    .await;
    call_json(
        "POST",
        &format!("{base}:updatePrimaryVersion"),
        &auth,
        Some(serde_json::json!({"cryptoKeyVersionId": "2"})),
    )
    .await;
    let new = key.wrap(&dek, b"r").await.expect("wrap under version 2");
    call_json(
        "PATCH",
        &format!("{base}/cryptoKeyVersions/1?updateMask=state"),
        &auth,
        Some(serde_json::json!({"state": "DISABLED"})),
    )
    .await;
    let expect_unavailable = |result: strongroom::Result<DataKey>, needle: &str| match result {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("FAILED_PRECONDITION"), "{reason}");
            assert!(reason.contains(needle), "{reason}");
        }
        Err(e) => panic!("a {needle} version is not tampering: got {e:?}"),
        Ok(_) => panic!("a {needle} version must not unwrap"),
    };
    expect_unavailable(key.unwrap(&old, b"r").await, "DISABLED");
    // The current version still works, and another record's data is still tampering.
    key.unwrap(&new, b"r").await.expect("version 2");
    assert!(matches!(
        key.unwrap(&old, b"another record").await,
        Err(Error::KeyUnavailable { .. }) | Err(Error::DecryptFailed { .. })
    ));
    assert!(matches!(
        key.unwrap(&new, b"another record").await,
        Err(Error::DecryptFailed { .. })
    ));
    // Scheduled for destruction, then restored and enabled: it opens again.
    call_json(
        "POST",
        &format!("{base}/cryptoKeyVersions/1:destroy"),
        &auth,
        Some(serde_json::json!({})),
    )
    .await;
    expect_unavailable(key.unwrap(&old, b"r").await, "DESTROY_SCHEDULED");
    call_json(
        "POST",
        &format!("{base}/cryptoKeyVersions/1:restore"),
        &auth,
        Some(serde_json::json!({})),
    )
    .await;
    call_json(
        "PATCH",
        &format!("{base}/cryptoKeyVersions/1?updateMask=state"),
        &auth,
        Some(serde_json::json!({"state": "ENABLED"})),
    )
    .await;
    key.unwrap(&old, b"r")
        .await
        .expect("version 1 enabled again");
}
