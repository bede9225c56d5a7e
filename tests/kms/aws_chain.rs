//! AWS credentials from the standard chain (issue 16, item 5): web identity through moto's
//! STS, shared profiles, the container credentials endpoint and IMDSv2 (stand-ins in
//! `tests/kms_credential_servers.py`), each then used against moto's KMS; temporary
//! credentials refreshed before they expire; `AWS_ENDPOINT_URL_KMS` and China-partition
//! hosts.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::crypto::kms::AwsKmsKey;
use strongroom::{DataKey, Error, KeyWrapper};

use super::standins::{credential_servers, temp_dir, Recording};
use super::{http, s};

type Vars = BTreeMap<&'static str, String>;

fn key_from(key: &str, vars: &Vars) -> strongroom::Result<AwsKmsKey> {
    AwsKmsKey::from_environment(key, &|n| vars.get(n).cloned(), http())
}

/// The variables every test starts from: the region, moto as the KMS and STS endpoints, and
/// a HOME with no AWS files (the developer's own never leak in).
fn base_vars(a: &serde_json::Value, home: &std::path::Path) -> Vars {
    BTreeMap::from([
        ("AWS_REGION", s(a, "/region")),
        ("AWS_ENDPOINT_URL_KMS", s(a, "/endpoint")),
        ("AWS_ENDPOINT_URL_STS", s(a, "/endpoint")),
        ("HOME", home.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ])
}

async fn wraps_and_unwraps(key: &AwsKmsKey) {
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"record-1").await.expect("wrap");
    let back = key.unwrap(&wrapped, b"record-1").await.expect("unwrap");
    assert_eq!(back.expose_secret(), dek.expose_secret());
}

fn unavailable_with(result: strongroom::Result<impl std::fmt::Debug>, needle: &str) -> String {
    match result {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains(needle), "{reason}");
            assert!(
                !reason.contains("CANARY"),
                "a secret in the reason: {reason}"
            );
            reason
        }
        other => panic!("expected KeyUnavailable ({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn web_identity_from_the_environment_through_sts() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, s(a, "/web_identity_token")).expect("token");
    let mut vars = base_vars(a, home.path());
    vars.insert(
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        token_file.display().to_string(),
    );
    vars.insert("AWS_ROLE_ARN", s(a, "/role_arn"));
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    assert!(format!("{key:?}").contains("WebIdentity"), "{key:?}");
    assert!(!format!("{key:?}").contains("CANARY"));
    wraps_and_unwraps(&key).await;
    // One AssumeRoleWithWebIdentity for both calls: the session is kept.
    assert_eq!(srv.count("sts_web_identity").await, 1);

    // A token STS does not accept: KeyUnavailable with STS's reason, not the token.
    std::fs::write(&token_file, "eyJ-forged-CANARY").expect("token");
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    let dek = DataKey::generate().expect("dek");
    unavailable_with(key.wrap(&dek, b"x").await, "InvalidIdentityToken");
    // A token file without the role is a configuration error, named.
    vars.remove("AWS_ROLE_ARN");
    let err = key_from(&s(a, "/alias"), &vars).expect_err("no role");
    assert!(err.to_string().contains("AWS_ROLE_ARN"), "{err}");
}

#[tokio::test]
async fn shared_profiles_with_static_keys_and_web_identity() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, s(a, "/web_identity_token")).expect("token");
    let credentials = home.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIANOTUSED\naws_secret_access_key = wrong\n\n\
             [ci]\n# the CI user\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s(a, "/access_key_id"),
            s(a, "/secret_access_key")
        ),
    )
    .expect("credentials");
    let config = home.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nregion = {}\n\n[profile irsa]\nregion = {}\nrole_arn = {}\n\
             web_identity_token_file = {}\n\n[profile sso]\nsso_session = corp\n",
            s(a, "/region"),
            s(a, "/region"),
            s(a, "/role_arn"),
            token_file.display()
        ),
    )
    .expect("config");
    let mut vars = base_vars(a, home.path());
    // The region comes from the profile.
    vars.remove("AWS_REGION");
    vars.insert(
        "AWS_SHARED_CREDENTIALS_FILE",
        credentials.display().to_string(),
    );
    vars.insert("AWS_CONFIG_FILE", config.display().to_string());
    vars.insert("AWS_PROFILE", "ci".into());
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    assert!(format!("{key:?}").contains("eu-west-1"), "{key:?}");
    assert!(!format!("{key:?}").contains(&s(a, "/secret_access_key")));
    wraps_and_unwraps(&key).await;

    vars.insert("AWS_PROFILE", "irsa".into());
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    wraps_and_unwraps(&key).await;
    assert_eq!(srv.count("sts_web_identity").await, 1);

    // The default profile's keys are wrong: moto refuses the signature.
    vars.remove("AWS_PROFILE");
    vars.insert("AWS_REGION", s(a, "/region"));
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    let dek = DataKey::generate().expect("dek");
    assert!(matches!(
        key.wrap(&dek, b"x").await,
        Err(Error::KeyUnavailable { .. })
    ));
    for (profile, needle) in [("missing", "neither"), ("sso", "SSO")] {
        vars.insert("AWS_PROFILE", profile.into());
        let err = key_from(&s(a, "/alias"), &vars).expect_err(profile);
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[tokio::test]
async fn the_container_credentials_endpoint_with_its_token() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    let token_file = home.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, s(a, "/container_token")).expect("token");
    let mut vars = base_vars(a, home.path());
    vars.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("{}/pod/v1/credentials", s(&srv.info, "/base")),
    );
    vars.insert(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file.display().to_string(),
    );
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    wraps_and_unwraps(&key).await;
    assert_eq!(srv.count("container").await, 1);

    // The token is read from its file at each fetch (EKS rotates it); a wrong one is refused.
    std::fs::write(&token_file, "stale-CANARY").expect("token");
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    let dek = DataKey::generate().expect("dek");
    unavailable_with(key.wrap(&dek, b"x").await, "401");
    // The token is never sent over plain HTTP to another host.
    vars.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://creds.example.com/v1/credentials".into(),
    );
    let err = key_from(&s(a, "/alias"), &vars).expect_err("plain http elsewhere");
    assert!(
        err.to_string()
            .contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{err}"
    );
}

#[tokio::test]
async fn ec2_instance_metadata_v2() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    let mut vars = base_vars(a, home.path());
    vars.remove("AWS_EC2_METADATA_DISABLED");
    vars.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT", s(&srv.info, "/base"));
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    assert!(format!("{key:?}").contains("Imds"), "{key:?}");
    wraps_and_unwraps(&key).await;
    assert_eq!(srv.count("imds").await, 1);
    // With instance metadata off and nothing else, the error says what was tried.
    vars.insert("AWS_EC2_METADATA_DISABLED", "true".into());
    let err = key_from(&s(a, "/alias"), &vars).expect_err("nothing configured");
    for needle in [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[tokio::test]
async fn temporary_credentials_are_refreshed_before_they_expire() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    // Credentials that expire in 306 s: within the five-minute margin after 6 s (the
    // stand-in writes whole seconds, so a little less).
    srv.post("/_config", serde_json::json!({"aws_expires_in": 306}))
        .await;
    let token_file = home.path().join("token");
    std::fs::write(&token_file, s(a, "/container_token")).expect("token");
    let mut vars = base_vars(a, home.path());
    vars.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("{}/pod/v1/credentials", s(&srv.info, "/base")),
    );
    vars.insert(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file.display().to_string(),
    );
    let key = key_from(&s(a, "/alias"), &vars).expect("key");
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"r").await.expect("wrap");
    key.unwrap(&wrapped, b"r").await.expect("unwrap");
    assert_eq!(srv.count("container").await, 1, "kept while fresh");
    tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
    key.unwrap(&wrapped, b"r").await.expect("unwrap");
    assert_eq!(
        srv.count("container").await,
        2,
        "fetched again before they expired"
    );
    // The endpoint now refuses (a stale token): the current credentials, still valid for
    // about five minutes, keep serving.
    std::fs::write(&token_file, "stale-CANARY").expect("token");
    tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
    key.unwrap(&wrapped, b"r")
        .await
        .expect("unexpired credentials serve while a refresh fails");
    assert_eq!(srv.count("container").await, 2);
}

#[tokio::test]
async fn china_partition_hosts_and_the_kms_endpoint_variable() {
    let dek = DataKey::generate().expect("dek");
    let recording = Recording::offline();
    let key = AwsKmsKey::new(
        "alias/k",
        "cn-north-1",
        "AKIAEXAMPLE",
        "secret",
        None,
        recording.clone(),
    )
    .expect("key");
    let _ = key.wrap(&dek, b"x").await;
    assert_eq!(
        recording.sent()[0].uri,
        "https://kms.cn-north-1.amazonaws.com.cn/"
    );

    // Web identity in China: STS is in the .com.cn partition too.
    let home = temp_dir();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, "eyJ").expect("token");
    let vars: Vars = BTreeMap::from([
        ("AWS_REGION", "cn-northwest-1".to_string()),
        ("HOME", home.path().display().to_string()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_ROLE_ARN", "arn:aws-cn:iam::1:role/r".into()),
    ]);
    let recording = Recording::offline();
    let key = AwsKmsKey::from_environment("alias/k", &|n| vars.get(n).cloned(), recording.clone())
        .expect("key");
    let _ = key.wrap(&dek, b"x").await;
    assert_eq!(
        recording.sent()[0].uri,
        "https://sts.cn-northwest-1.amazonaws.com.cn/"
    );

    // AWS_ENDPOINT_URL_KMS (a VPC endpoint) replaces the region's host.
    let vars: Vars = BTreeMap::from([
        ("AWS_REGION", "eu-west-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        (
            "AWS_ENDPOINT_URL_KMS",
            "https://vpce-0abc.kms.eu-west-1.vpce.amazonaws.com".into(),
        ),
    ]);
    let recording = Recording::offline();
    let key = AwsKmsKey::from_environment("alias/k", &|n| vars.get(n).cloned(), recording.clone())
        .expect("key");
    let _ = key.wrap(&dek, b"x").await;
    assert_eq!(
        recording.sent()[0].uri,
        "https://vpce-0abc.kms.eu-west-1.vpce.amazonaws.com/"
    );
}

#[tokio::test]
async fn the_vault_selects_the_chain_from_the_environment() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let home = temp_dir();
    let mut vars = base_vars(a, home.path());
    vars.insert("STRONGROOM_KMS", "aws_kms".into());
    vars.insert("STRONGROOM_AWS_KMS_KEY_ID", s(a, "/alias"));
    vars.remove("AWS_EC2_METADATA_DISABLED");
    vars.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT", s(&srv.info, "/base"));
    let key: Arc<dyn KeyWrapper> =
        strongroom::crypto::key_wrapper_from_vars(|n| vars.get(n).cloned()).expect("key");
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"r").await.expect("wrap");
    key.unwrap(&wrapped, b"r").await.expect("unwrap");
    assert_eq!(srv.count("imds").await, 1);
}
