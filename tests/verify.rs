//! Live verification against a real HTTP server on 127.0.0.1 that speaks the mock provider's
//! documented API (`GET {base_url}/v1/verify` with `Authorization: Bearer <key>`): success,
//! 401, 403, 500, a closed port, and proof that a request carries only the verified
//! credential's own fields; the release row committed before anything is sent (and nothing
//! sent without it), a late conflict recorded, and a non-owner held to the bundled endpoint.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use strongroom::audit::Outcome;
use strongroom::model::LifecycleState;
use strongroom::transport::ReqwestTransport;
use strongroom::{
    CredentialId, CredentialUpdate, Error, LocalKey, MemoryStore, NewCredential, Principal, Scope,
    SecretString, Vault, VerifyResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The key the mock API accepts.
const GOOD_KEY: &str = "mock-good-4f1a9c";
/// A key it rejects.
const BAD_KEY: &str = "mock-revoked-77d0e2";
/// A second credential's key, which must never reach the server when the first is verified.
const OTHER_CANARY: &str = "mock-OTHER-CANARY-b3e8a1";

/// A minimal HTTP/1.1 server for the mock provider's verify API. Paths:
/// `/v1/verify` checks the bearer key (200 or 401); `/forbidden/v1/verify` answers 403;
/// `/down/v1/verify` answers 500; `/teapot/v1/verify` answers 418. Every request's head is
/// recorded.
struct MockApi {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl MockApi {
    async fn start() -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    log.lock().expect("log").push(text.clone());
                    let path = text
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("")
                        .to_string();
                    let auth = text
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("authorization")
                                .then(|| value.trim().to_string())
                        })
                        .unwrap_or_default();
                    let (status, body) = match path.as_str() {
                        "/v1/verify" if auth == format!("Bearer {GOOD_KEY}") => {
                            ("200 OK", r#"{"ok":true}"#)
                        }
                        "/v1/verify" => ("401 Unauthorized", r#"{"error":"bad key"}"#),
                        "/forbidden/v1/verify" => ("403 Forbidden", r#"{"error":"no"}"#),
                        "/down/v1/verify" => ("500 Internal Server Error", "oops"),
                        "/teapot/v1/verify" => ("418 I'm a teapot", ""),
                        _ => ("404 Not Found", ""),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        MockApi {
            base: format!("http://{addr}"),
            seen,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("log").clone()
    }
}

fn admin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}

async fn vault_with(providers: Option<&std::path::Path>) -> Vault {
    let mut builder = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("client")));
    if let Some(dir) = providers {
        builder = builder.providers_dir(dir);
    }
    builder.build().await.expect("vault")
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect()
}

async fn mock_credential(vault: &Vault, name: &str, key: &str, base_url: &str) -> CredentialId {
    vault
        .create(
            &admin(),
            NewCredential::new(
                name,
                Scope::SystemWide,
                "mockprovider",
                "",
                fields(&[("api_key", key), ("base_url", base_url)]),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .id
}

async fn last_verify_event(vault: &Vault) -> strongroom::audit::AuditEvent {
    let events = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit rows");
    events
        .into_iter()
        .rev()
        .find(|e| e.event.action == strongroom::Action::Verify)
        .expect("a credential.verify row")
        .event
}

#[tokio::test]
async fn a_success_code_makes_the_credential_valid_and_is_audited() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    let id = mock_credential(&vault, "good", GOOD_KEY, &api.base).await;
    let before = vault.get(&admin(), &id).await.expect("get");
    assert_eq!(before.state, LifecycleState::Filled);

    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(v.result, VerifyResult::Valid);
    assert_eq!(v.http_status, Some(200));
    assert_eq!(v.state, LifecycleState::Valid);
    assert_eq!(v.version, before.version + 1);
    assert_eq!(v.reason, None);
    let after = vault.get(&admin(), &id).await.expect("get");
    assert_eq!(after.state, LifecycleState::Valid);

    // The server saw exactly one request, on the documented path, with the bearer key.
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("GET /v1/verify HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains(&format!("Bearer {GOOD_KEY}")));

    let event = last_verify_event(&vault).await;
    assert_eq!(event.outcome, Outcome::Success);
    assert_eq!(
        event.details.get("result").map(String::as_str),
        Some("valid")
    );
    assert_eq!(event.details.get("to").map(String::as_str), Some("valid"));
    assert_eq!(
        event.details.get("http_status").map(String::as_str),
        Some("200")
    );
    let row = format!("{event:?}");
    assert!(!row.contains(GOOD_KEY), "the audit row holds the key");
    assert!(!row.contains(&api.base), "the audit row holds the URL");

    // The credential still resolves and decrypts after the re-seal for the new version.
    let revealed = vault.reveal(&admin(), &id).await.expect("reveal");
    use strongroom::ExposeSecret;
    assert_eq!(revealed.fields["api_key"].expose_secret(), GOOD_KEY);
}

#[tokio::test]
async fn a_401_makes_the_credential_invalid() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    let id = mock_credential(&vault, "bad", BAD_KEY, &api.base).await;
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(v.result, VerifyResult::Invalid);
    assert_eq!(v.http_status, Some(401));
    assert_eq!(v.state, LifecycleState::Invalid);
    assert_eq!(
        vault.get(&admin(), &id).await.expect("get").state,
        LifecycleState::Invalid
    );
    let event = last_verify_event(&vault).await;
    assert_eq!(event.outcome, Outcome::Failure);
    assert_eq!(event.details.get("to").map(String::as_str), Some("invalid"));
}

#[tokio::test]
async fn a_403_makes_the_credential_invalid() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    let base = format!("{}/forbidden", api.base);
    let id = mock_credential(&vault, "forbidden", GOOD_KEY, &base).await;
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(v.result, VerifyResult::Invalid);
    assert_eq!(v.http_status, Some(403));
    assert_eq!(v.state, LifecycleState::Invalid);
}

#[tokio::test]
async fn a_500_leaves_the_credential_as_it_was_with_the_reason() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    // First make it valid, so "unchanged" is visible as staying valid.
    let id = mock_credential(&vault, "flaky", GOOD_KEY, &api.base).await;
    let valid = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(valid.state, LifecycleState::Valid);
    let down = format!("{}/down", api.base);
    let version = vault.get(&admin(), &id).await.expect("get").version;
    let updated = vault
        .update(
            &admin(),
            &id,
            version,
            CredentialUpdate {
                fields: Some(fields(&[("api_key", GOOD_KEY), ("base_url", &down)])),
                ..CredentialUpdate::default()
            },
        )
        .await
        .expect("update");
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(v.result, VerifyResult::Inconclusive);
    assert_eq!(v.http_status, Some(500));
    assert_eq!(v.state, updated.state, "state unchanged");
    assert_eq!(v.version, updated.version, "no new version");
    let reason = v.reason.expect("a reason");
    assert!(reason.contains("500"), "{reason}");
    assert!(reason.contains("127.0.0.1"), "names the peer: {reason}");
    assert!(!reason.contains("/down"), "no path in the reason: {reason}");
    let event = last_verify_event(&vault).await;
    assert_eq!(event.outcome, Outcome::Failure);
    assert_eq!(
        event.details.get("result").map(String::as_str),
        Some("inconclusive")
    );
}

#[tokio::test]
async fn a_status_that_says_neither_changes_nothing() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    let base = format!("{}/teapot", api.base);
    let id = mock_credential(&vault, "teapot", GOOD_KEY, &base).await;
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    assert_eq!(v.result, VerifyResult::Inconclusive);
    assert_eq!(v.http_status, Some(418));
    assert_eq!(v.state, LifecycleState::Filled);
    assert!(v.reason.expect("reason").contains("418"));
}

#[tokio::test]
async fn a_closed_port_leaves_the_credential_as_it_was() {
    // Bind, note the port, and close it: nothing listens there any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let vault = vault_with(None).await;
    let base = format!("http://127.0.0.1:{port}");
    let id = mock_credential(&vault, "nobody", GOOD_KEY, &base).await;
    let before = vault.get(&admin(), &id).await.expect("get");
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify returns a verdict, not an error");
    assert_eq!(v.result, VerifyResult::Inconclusive);
    assert_eq!(v.http_status, None);
    assert_eq!(v.state, before.state);
    assert_eq!(v.version, before.version);
    let reason = v.reason.expect("a reason");
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
    assert!(!reason.contains(GOOD_KEY), "{reason}");
    let event = last_verify_event(&vault).await;
    assert_eq!(
        event.details.get("result").map(String::as_str),
        Some("inconclusive")
    );
}

#[tokio::test]
async fn the_request_carries_only_the_verified_credentials_own_fields() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    // Two credentials of the same provider, one of them holding the canary.
    let _other = mock_credential(&vault, "other", OTHER_CANARY, &api.base).await;
    let id = mock_credential(&vault, "mine", GOOD_KEY, &api.base).await;
    vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("verify");
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].contains(OTHER_CANARY),
        "another credential's key was sent"
    );
    assert!(
        !seen[0].contains("OTHER"),
        "another credential's key was sent"
    );
    // The key appears once, in the Authorization header the template names.
    assert_eq!(seen[0].matches(GOOD_KEY).count(), 1, "{}", seen[0]);
    assert!(seen[0]
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {GOOD_KEY}"))));
}

#[tokio::test]
async fn a_template_naming_a_field_the_credential_lacks_is_refused_not_filled_in() {
    let api = MockApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A drop-in provider whose template also asks for `organization`, which the credential
    // below does not have (while another credential of the same provider does).
    std::fs::write(
        dir.path().join("orgapi.toml"),
        r#"
[provider]
name = "orgapi"
display_name = "Org API"
handler_type = "api_key"

[[fields]]
name = "api_key"
label = "Key"
prefix_check = "mock-"
required = true

[verify]
endpoint = "{base_url}/v1/verify"
auth_template = """
Authorization: Bearer {api_key}
X-Org: {organization}
"""
success_codes = [200]
"#,
    )
    .expect("write provider");
    let vault = vault_with(Some(dir.path())).await;
    assert!(
        vault.catalog().problems().is_empty(),
        "{:?}",
        vault.catalog().problems()
    );
    vault
        .create(
            &admin(),
            NewCredential::new(
                "with-org",
                Scope::SystemWide,
                "orgapi",
                "",
                fields(&[
                    ("api_key", OTHER_CANARY),
                    ("organization", "org-OTHER-CANARY"),
                    ("base_url", &api.base),
                ]),
            ),
        )
        .await
        .expect("create with org");
    let id = vault
        .create(
            &admin(),
            NewCredential::new(
                "without-org",
                Scope::SystemWide,
                "orgapi",
                "",
                fields(&[("api_key", GOOD_KEY), ("base_url", &api.base)]),
            ),
        )
        .await
        .expect("create without org")
        .id;
    let err = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect_err("a template field the credential lacks");
    let message = err.to_string();
    assert!(message.contains("organization"), "{message}");
    assert!(!message.contains("OTHER"), "{message}");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(api.requests().is_empty(), "nothing may be sent");
}

#[tokio::test]
async fn verification_needs_the_right_to_change_state_and_a_transport() {
    let api = MockApi::start().await;
    let vault = vault_with(None).await;
    let id = mock_credential(&vault, "guarded", GOOD_KEY, &api.base).await;
    let viewer = Principal::parse("viewer:v").expect("principal");
    let err = vault
        .test_live_connection(&viewer, &id)
        .await
        .expect_err("a viewer cannot verify");
    assert_eq!(err.kind(), strongroom::ErrorKind::PermissionDenied, "{err}");
    assert!(api.requests().is_empty());
    // The policy decided it as a live check, and the refusal is audited under that name.
    assert!(err.to_string().contains("credential.verify"), "{err}");
    let denial = last_verify_event(&vault).await;
    assert_eq!(
        (denial.actor.as_str(), denial.outcome),
        ("viewer:v", Outcome::Denied)
    );

    // A vault without an HTTP client says how to give it one.
    let plain = Vault::in_memory().await.expect("vault");
    let id = mock_credential(&plain, "no-http", GOOD_KEY, &api.base).await;
    let err = plain
        .test_live_connection(&admin(), &id)
        .await
        .expect_err("no transport");
    assert!(err.to_string().contains("VaultBuilder::http"), "{err}");
}

/// A transport that, while the request is out, lets the same admin move the credential on
/// (as a second console would), after checking that the release row is already durable.
#[derive(Debug)]
struct Meddling {
    inner: ReqwestTransport,
    vault: OnceLock<Vault>,
    id: OnceLock<CredentialId>,
    release_row_seen: Mutex<Option<bool>>,
}

#[async_trait::async_trait]
impl strongroom::transport::HttpTransport for Meddling {
    async fn send(
        &self,
        request: http::Request<strongroom::transport::Bytes>,
    ) -> strongroom::Result<http::Response<strongroom::transport::Bytes>> {
        let vault = self.vault.get().expect("vault set");
        let id = self.id.get().expect("id set");
        let last = vault.store().audit_range(1, usize::MAX).await?.pop();
        let durable = last.is_some_and(|r| {
            r.event.action == strongroom::Action::Verify
                && r.event.details.get("step").map(String::as_str) == Some("request")
        });
        *self.release_row_seen.lock().expect("lock") = Some(durable);
        let info = vault.get(&admin(), id).await?;
        vault
            .set_state(
                &admin(),
                id,
                info.version,
                LifecycleState::Expired,
                "meanwhile",
            )
            .await?;
        self.inner.send(request).await
    }
}

#[tokio::test]
async fn the_release_row_is_durable_before_the_request_and_a_late_conflict_is_recorded() {
    let api = MockApi::start().await;
    let transport = Arc::new(Meddling {
        inner: ReqwestTransport::new().expect("client"),
        vault: OnceLock::new(),
        id: OnceLock::new(),
        release_row_seen: Mutex::new(None),
    });
    let vault = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .http(transport.clone())
        .build()
        .await
        .expect("vault");
    let id = mock_credential(&vault, "raced", GOOD_KEY, &api.base).await;
    transport.vault.set(vault.clone()).expect("once");
    transport.id.set(id.clone()).expect("once");

    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("the verdict comes back");
    assert_eq!(
        *transport.release_row_seen.lock().expect("lock"),
        Some(true),
        "the release row was committed before the request went out"
    );
    assert_eq!(v.result, VerifyResult::Valid);
    assert_eq!(
        v.state,
        LifecycleState::Expired,
        "the newer version's state stands"
    );
    assert_eq!(v.version, 2);
    assert!(
        v.reason.as_deref().is_some_and(|r| r.contains("changed")),
        "{v:?}"
    );
    assert_eq!(api.requests().len(), 1);

    // Both rows are there: the release, then the verdict marked as a conflict.
    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("rows");
    let verify: Vec<_> = rows
        .iter()
        .filter(|r| r.event.action == strongroom::Action::Verify)
        .collect();
    assert_eq!(verify.len(), 2, "{verify:?}");
    assert_eq!(verify[0].event.details["step"], "request");
    assert_eq!(verify[0].event.details["version"], "1");
    assert_eq!(verify[1].event.details["step"], "result");
    assert_eq!(verify[1].event.details["result"], "valid");
    assert_eq!(verify[1].event.details["conflict"], "true");
    assert!(verify[0].seq < verify[1].seq);
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn nothing_is_sent_when_the_release_row_cannot_commit() {
    let api = MockApi::start().await;
    let faults = common::FaultStore::new(Arc::new(MemoryStore::new()));
    let vault = Vault::builder()
        .store(faults.clone())
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("client")))
        .build()
        .await
        .expect("vault");
    let id = mock_credential(&vault, "closed", GOOD_KEY, &api.base).await;
    faults.fail_commits(true);
    let err = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect_err("no row, no request");
    assert!(err.to_string().contains(common::INJECTED), "{err}");
    assert!(api.requests().is_empty(), "the secret never left");
    // With the first row durable and the verdict's row failing, the caller hears of it.
    faults.fail_after(1);
    let err = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect_err("the verdict's row failed");
    assert!(err.to_string().contains(common::INJECTED), "{err}");
    assert_eq!(api.requests().len(), 1);
}

/// A drop-in that re-points `mockprovider`'s check, and a provider that exists only there.
fn overriding_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mockprovider.toml"),
        r#"
[provider]
name = "mockprovider"
display_name = "Mock provider (re-pointed)"
handler_type = "api_key"

[[fields]]
name = "api_key"
label = "Key"
prefix_check = "mock-"
required = true

[[fields]]
name = "base_url"
label = "Base"

[verify]
endpoint = "{base_url}/stolen/v1/verify"
auth_template = "Authorization: Bearer {api_key}"
success_codes = [200]
"#,
    )
    .expect("write override");
    std::fs::write(
        dir.path().join("onlyhere.toml"),
        r#"
[provider]
name = "onlyhere"
display_name = "Drop-in only"
handler_type = "api_key"

[[fields]]
name = "api_key"
label = "Key"
required = true

[[fields]]
name = "base_url"
label = "Base"

[verify]
endpoint = "{base_url}/v1/verify"
auth_template = "Authorization: Bearer {api_key}"
success_codes = [200]
"#,
    )
    .expect("write drop-in");
    dir
}

#[tokio::test]
async fn a_non_owner_is_sent_to_the_bundled_endpoint_never_an_override() {
    let api = MockApi::start().await;
    let dir = overriding_folder();
    let vault = vault_with(Some(dir.path())).await;
    assert!(
        vault.catalog().problems().is_empty(),
        "{:?}",
        vault.catalog().problems()
    );
    let owner = Principal::parse("app_user:crm:u1").expect("principal");
    let create = |provider: &'static str| {
        let vault = vault.clone();
        let owner = owner.clone();
        let base = api.base.clone();
        async move {
            vault
                .create(
                    &owner,
                    NewCredential::new(
                        provider,
                        Scope::per_user("u1").expect("scope"),
                        provider,
                        "",
                        fields(&[("api_key", GOOD_KEY), ("base_url", &base)]),
                    ),
                )
                .await
                .expect("create")
                .id
        }
    };
    let id = create("mockprovider").await;

    // The admin may check a user's credential, but only where the bundled file points.
    let v = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect("admin verifies");
    assert_eq!(v.result, VerifyResult::Valid);
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("GET /v1/verify "), "{}", seen[0]);
    let release = |vault: &Vault| {
        let vault = vault.clone();
        async move {
            vault
                .store()
                .audit_range(1, usize::MAX)
                .await
                .expect("rows")
                .into_iter()
                .rev()
                .find(|r| r.event.details.get("step").map(String::as_str) == Some("request"))
                .expect("a release row")
                .event
        }
    };
    let row = release(&vault).await;
    assert_eq!(row.details["provider_source"], "bundled:mockprovider.toml");
    assert_eq!(row.details["override"], "ignored (not the owner)");

    // The owner's own check follows the folder (its secret, its choice), and says so.
    vault
        .test_live_connection(&owner, &id)
        .await
        .expect("owner verifies");
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].starts_with("GET /stolen/v1/verify "), "{}", seen[1]);
    let row = release(&vault).await;
    assert_eq!(row.details["override"], "used");
    assert!(row.details["provider_source"].ends_with("mockprovider.toml"));
    assert!(!row.details["provider_source"].starts_with("bundled:"));

    // A provider only the folder defines: the admin is refused, nothing is sent.
    let only = create("onlyhere").await;
    let err = vault
        .test_live_connection(&admin(), &only)
        .await
        .expect_err("no bundled endpoint to fall back on");
    assert_eq!(err.kind(), strongroom::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("drop-in"), "{err}");
    assert_eq!(api.requests().len(), 2);
    let last = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("rows")
        .pop()
        .expect("row");
    assert_eq!(last.event.outcome, Outcome::Denied);
    assert_eq!(last.event.action, strongroom::Action::Verify);
}

#[tokio::test]
async fn a_credential_is_never_sent_over_plain_http_to_another_machine() {
    let vault = vault_with(None).await;
    // A base URL on another host, over plain http: refused before anything is sent (the
    // port is closed anyway, so a request would show as a network error instead).
    let id = mock_credential(&vault, "remote", GOOD_KEY, "http://192.0.2.1:9").await;
    let err = vault
        .test_live_connection(&admin(), &id)
        .await
        .expect_err("plain http to another machine");
    let msg = err.to_string();
    assert!(msg.contains("not an https URL"), "{msg}");
    assert!(
        !msg.contains(GOOD_KEY) && !msg.contains("192.0.2.1"),
        "{msg}"
    );
    // Loopback http is how the mock API is reached, and stays allowed.
    let api = MockApi::start().await;
    let local = mock_credential(&vault, "local", GOOD_KEY, &api.base).await;
    let v = vault
        .test_live_connection(&admin(), &local)
        .await
        .expect("loopback");
    assert_eq!(v.result, VerifyResult::Valid);
}
