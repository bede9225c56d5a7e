//! The credential sources' own requests, echoed back in an error by the endpoint (or a
//! proxy in front of it), must not carry their secrets into the vault's errors either: the
//! signed JWT assertion of a GCP service account's token exchange, the web identity token
//! of an STS `AssumeRoleWithWebIdentity`, the authorization token of the container
//! credentials endpoint and the IMDSv2 session token. The echoing server is the one of
//! `echoed_secrets.rs`; the canaries are short enough, or folded, that no run of them is
//! cut for its length alone: only the redaction of the request's secrets removes them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use strongroom::crypto::kms::{AwsKmsKey, GcpKmsKey};
use strongroom::{DataKey, KeyWrapper};

use super::echoed_secrets::{clean, echo_server, Shape};
use super::http;
use super::standins::temp_dir;

type Vars = BTreeMap<&'static str, String>;

/// A form-encoded copy of `secret`, as the request carried it.
fn form(secret: &str) -> String {
    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect()
}

/// The AWS variables of a test: a region, a HOME with no AWS files, and `more`.
fn aws_vars(home: &std::path::Path, more: &[(&'static str, String)]) -> Vars {
    let mut vars = BTreeMap::from([
        ("AWS_REGION", "eu-west-1".to_string()),
        ("HOME", home.display().to_string()),
    ]);
    vars.extend(more.iter().cloned());
    vars
}

async fn aws_wrap(vars: &Vars, kms: &str) -> strongroom::Result<Vec<u8>> {
    let key = AwsKmsKey::from_environment("alias/k", &|n| vars.get(n).cloned(), http())
        .expect("key")
        .with_endpoint(kms.to_string());
    let dek = DataKey::generate().expect("dek");
    key.wrap(&dek, b"aad").await
}

#[tokio::test]
async fn gcp_service_account_token_exchange_echoing_the_assertion_holds_no_secret() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keys/gcp_service_account.json"
    ))
    .expect("key file");
    for shape in [Shape::Json, Shape::Folded, Shape::Xml] {
        let echo = echo_server(400, shape, Box::new(|_, _| None));
        let mut sa: serde_json::Value = serde_json::from_str(&file).expect("json");
        sa["token_uri"] = format!("{}/token", echo.url).into();
        let key = GcpKmsKey::with_service_account(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k",
            &sa.to_string(),
            http(),
        )
        .expect("key")
        .with_endpoint(echo.url.clone());
        let dek = DataKey::generate().expect("dek");
        let result = key.wrap(&dek, b"aad").await;
        // The assertion the key signed, as the token endpoint received it.
        let body = echo.bodies.lock().expect("bodies")[0].clone();
        let assertion = url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "assertion")
            .map(|(_, v)| v.into_owned())
            .expect("an assertion was sent");
        let signature = assertion.rsplit('.').next().expect("a JWT").to_string();
        clean(
            &format!("GCP service account token exchange ({shape:?})"),
            result,
            &[assertion, signature],
            &echo,
        );
    }
}

#[tokio::test]
async fn aws_sts_web_identity_echoing_the_token_holds_no_secret() {
    // An OIDC token with `~` in it: form-encoded as `%7E`, which no run crosses.
    let token = "eyJraWQiOiJ3aSJ9~WebIdCanary0123~456789abcdefGHIJ~klmnOPQRst".to_string();
    // STS answers errors in XML: its `<Message>` is what the error quotes.
    for status in [400, 403] {
        let echo = echo_server(status, Shape::Xml, Box::new(|_, _| None));
        let home = temp_dir();
        let token_file = home.path().join("token");
        std::fs::write(&token_file, &token).expect("token file");
        let vars = aws_vars(
            home.path(),
            &[
                (
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    token_file.display().to_string(),
                ),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r".into()),
                ("AWS_ROLE_SESSION_NAME", "s".into()),
                ("AWS_ENDPOINT_URL_STS", echo.url.clone()),
            ],
        );
        clean(
            &format!("STS AssumeRoleWithWebIdentity ({status})"),
            aws_wrap(&vars, &echo.url).await,
            &[token.clone(), form(&token)],
            &echo,
        );
    }
}

#[tokio::test]
async fn aws_container_endpoint_echoing_the_authorization_token_holds_no_secret() {
    let token = "CtrAuthCanary0123456789abcdefGHIJklmn".to_string();
    for status in [400, 403] {
        let echo = echo_server(status, Shape::Json, Box::new(|_, _| None));
        let home = temp_dir();
        // From the variable, then from a token file (EKS Pod Identity).
        let token_file = home.path().join("token");
        std::fs::write(&token_file, &token).expect("token file");
        let full_uri = format!("{}/v2/credentials", echo.url);
        for (name, value) in [
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token.clone()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ] {
            let vars = aws_vars(
                home.path(),
                &[
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.clone()),
                    (name, value),
                ],
            );
            let before = echo.echoed.load(Ordering::SeqCst);
            let result = aws_wrap(&vars, &echo.url).await;
            assert!(echo.echoed.load(Ordering::SeqCst) > before, "{name}");
            clean(
                &format!("the container credentials endpoint ({name}, {status})"),
                result,
                std::slice::from_ref(&token),
                &echo,
            );
        }
    }
}

#[tokio::test]
async fn aws_instance_metadata_echoing_the_session_token_holds_no_secret() {
    let session = "AQAEAImdsSessionCanary0123456789abcd==".to_string();
    let answer = session.clone();
    // The session token and the role are given; the role's credentials answer is a `Code`
    // that echoes the request, session token header and all.
    let echo = echo_server(
        200,
        Shape::Code,
        Box::new(move |m, p| match (m, p) {
            ("PUT", "/latest/api/token") => Some((200, answer.clone())),
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                Some((200, "role-x".to_string()))
            }
            _ => None,
        }),
    );
    let home = temp_dir();
    let vars = aws_vars(
        home.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", echo.url.clone())],
    );
    clean(
        "EC2 instance metadata credentials",
        aws_wrap(&vars, &echo.url).await,
        std::slice::from_ref(&session),
        &echo,
    );
}
