//! The canary leak test (issue 15, item 4). Unique canary secrets go through every public
//! path of the vault, the failing ones included: a wrong master key, store errors (commits
//! refused), transport errors (a 127.0.0.1 server whose error answers echo the whole request
//! back — headers, body and `Authorization` — and a closed port), OAuth errors from that
//! server (code exchange, refresh, revocation, device flow), input the vault refuses, and a
//! panic in each kind of host callback (a checkpoint sink, an `HttpTransport`, a `Store`).
//! Everything `tracing` emits is captured at TRACE (spans included). No canary may appear —
//! in plaintext, base64/base64url with or without padding (at any alignment), URL- or
//! form-encoded, JSON- or Debug-escaped, or hex — in the logs, any `Debug` output, any
//! error's `Display` or `Debug`, any panic message, the audit rows, or the SQLite database,
//! WAL and shared-memory files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use common::canary::{assert_no_leak, canary, check_the_encodings, plain_canary};
use common::log_capture::capture_all;
use common::FaultStore;
use strongroom::audit::{CheckpointSink, Outcome};
use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::integrations::IntegrationProvider;
use strongroom::oauth::{ClientSecret, OAuthClient};
use strongroom::store::AuditQuery;
use strongroom::transport::ReqwestTransport;
use strongroom::vault::{DeviceStart, OAuthStart};
use strongroom::{
    Bytes, Checkpoint, CredentialRef, CredentialUpdate, Error, ExposeSecret, HttpTransport,
    LocalKey, NewCredential, Principal, ResolveContext, Scope, ScopeKind, SecretString,
    SqliteStore, Store, Vault,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn p(text: &str) -> Principal {
    Principal::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect()
}

/// Everything the test saw come out of the vault: `Debug` of results, `Display` and
/// `Debug` of errors, panic messages. Scanned at the end.
#[derive(Default)]
struct Seen(Mutex<Vec<u8>>);

impl Seen {
    fn add(&self, what: &str, text: String) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(format!("--- {what}\n{text}\n").as_bytes());
    }

    fn result<T: std::fmt::Debug>(&self, what: &str, r: &Result<T, Error>) {
        match r {
            Ok(v) => self.add(what, format!("{v:?}")),
            Err(e) => self.add(what, format!("{e}\n{e:?}\n{}", sources(e))),
        }
    }

    fn err<T: std::fmt::Debug>(&self, what: &str, r: Result<T, Error>) -> Error {
        self.result(what, &r);
        match r {
            Ok(v) => panic!("{what}: expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    fn ok<T: std::fmt::Debug>(&self, what: &str, r: Result<T, Error>) -> T {
        self.result(what, &r);
        r.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// The whole source chain of an error, each cause's `Display` and `Debug`.
fn sources(e: &Error) -> String {
    let mut out = String::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!("caused by: {c} / {c:?}\n"));
        cause = c.source();
    }
    out
}

/// Panic messages (with their location), recorded by a hook that then calls the previous
/// one.
fn panics() -> &'static Mutex<Vec<u8>> {
    static PANICS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(buf) = PANICS.get() {
                buf.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(format!("{info}\n").as_bytes());
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

/// A 127.0.0.1 server that answers every request with an error echoing all of it (request
/// line, headers, body): OAuth errors (`error_description` = the request) on `/token`,
/// `/revoke` and `/device/code`, 401 on `/v1/verify` and 500 elsewhere (the request as the
/// body). The `Authorization` header also comes back in `WWW-Authenticate`.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&data[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let length: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while data.len() < head_end + length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&data).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let auth = header("authorization").unwrap_or_default();
                let (status, content_type, body) = if path.starts_with("/token")
                    || path.starts_with("/revoke")
                    || path.starts_with("/device/code")
                {
                    (
                        "400 Bad Request",
                        "application/json",
                        serde_json::json!({
                            "error": "invalid_grant",
                            "error_description": request,
                            "error_uri": format!("http://{addr}/why?{request}"),
                        })
                        .to_string(),
                    )
                } else if path.ends_with("/v1/verify") {
                    ("401 Unauthorized", "text/plain", request.clone())
                } else {
                    ("500 Internal Server Error", "text/plain", request.clone())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
                     WWW-Authenticate: Bearer error=\"invalid_token\", echo=\"{}\"\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    auth.replace(['"', '\r', '\n'], ""),
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A drop-in OAuth provider whose every endpoint is the echo server.
fn echo_provider(base: &str) -> String {
    format!(
        "[provider]\nname = \"echo\"\ndisplay_name = \"Echo\"\nhandler_type = \"oauth2\"\n\
         [oauth]\nauthorize_url = \"{base}/authorize\"\ntoken_url = \"{base}/token\"\n\
         device_authorization_url = \"{base}/device/code\"\nrevocation_url = \"{base}/revoke\"\n\
         scopes = [\"read\"]\nclient_auth = \"basic\"\npkce = true\n\
         [verify]\nendpoint = \"{base}/userinfo\"\nmethod = \"GET\"\n\
         auth_template = \"Authorization: Bearer {{access_token}}\"\nsuccess_codes = [200]\n"
    )
}

/// A checkpoint sink that records what it is given and panics on demand.
#[derive(Default)]
struct RecordingSink {
    seen: Mutex<Vec<Checkpoint>>,
    panic: AtomicBool,
}

impl CheckpointSink for RecordingSink {
    fn publish(&self, checkpoint: &Checkpoint) {
        if self.panic.load(Ordering::SeqCst) {
            panic!("host checkpoint sink failed");
        }
        self.seen.lock().expect("sink").push(checkpoint.clone());
    }
}

/// An `HttpTransport` that panics.
#[derive(Debug)]
struct PanickingTransport;

#[async_trait]
impl HttpTransport for PanickingTransport {
    async fn send(
        &self,
        _request: http::Request<Bytes>,
    ) -> strongroom::Result<http::Response<Bytes>> {
        panic!("host transport failed");
    }
}

/// A `Store` whose commits panic while `panic` is set.
#[derive(Debug)]
struct PanickingStore {
    inner: Arc<dyn Store>,
    panic: AtomicBool,
}

#[async_trait]
impl Store for PanickingStore {
    async fn get(
        &self,
        id: &strongroom::CredentialId,
    ) -> strongroom::Result<Option<strongroom::CredentialRecord>> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        filter: &strongroom::ListFilter,
    ) -> strongroom::Result<Vec<strongroom::CredentialRecord>> {
        self.inner.list(filter).await
    }
    async fn grants(
        &self,
        id: &strongroom::CredentialId,
    ) -> strongroom::Result<Vec<strongroom::Grant>> {
        self.inner.grants(id).await
    }
    async fn audit_range(
        &self,
        from: u64,
        limit: usize,
    ) -> strongroom::Result<Vec<strongroom::AuditRecord>> {
        self.inner.audit_range(from, limit).await
    }
    async fn chain_head(&self) -> strongroom::Result<Option<strongroom::ChainHead>> {
        self.inner.chain_head().await
    }
    async fn commit(
        &self,
        batch: strongroom::Batch,
    ) -> strongroom::Result<strongroom::CommitReceipt> {
        if self.panic.load(Ordering::SeqCst) {
            panic!("host store failed");
        }
        self.inner.commit(batch).await
    }
    async fn record(
        &self,
        key: &strongroom::RecordKey,
    ) -> strongroom::Result<Option<strongroom::Record>> {
        self.inner.record(key).await
    }
    async fn records(
        &self,
        filter: &strongroom::RecordFilter,
    ) -> strongroom::Result<Vec<strongroom::Record>> {
        self.inner.records(filter).await
    }
}

/// Runs `f` on its own task and expects it to panic; records the panic's message.
async fn expect_panic<T: Send + 'static>(
    seen: &Seen,
    what: &str,
    f: impl std::future::Future<Output = T> + Send + 'static,
) {
    match tokio::spawn(f).await {
        Ok(_) => panic!("{what}: the host callback's panic did not reach the caller"),
        Err(e) => {
            assert!(e.is_panic(), "{what}: {e}");
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            seen.add(what, text);
        }
    }
}

const APP: &str = "
agents:
  - id: assistant
    brain:
      provider: openai
      credential: openai_main
";

fn scan_files(dir: &Path, secrets: &[String], when: &str) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if name.starts_with("vault.db") {
            let bytes = std::fs::read(&path).expect("read");
            assert_no_leak(&format!("{name} ({when})"), &bytes, secrets);
        }
    }
}

#[test]
fn the_encodings_helper_finds_every_encoding() {
    check_the_encodings();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_leaks_from_any_path_failing_or_not() {
    let logs = capture_all();
    let panic_log = panics();
    tracing::info!("canary test: capture is on");
    let seen = Seen::default();
    let dir = tempfile::tempdir().expect("dir");
    let echo = echo_server().await;
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).expect("providers");
    std::fs::write(providers.join("echo.toml"), echo_provider(&echo)).expect("provider");
    std::fs::write(
        providers.join("leakybasic.toml"),
        "[provider]\nname = \"leakybasic\"\ndisplay_name = \"Basic\"\nhandler_type = \"basic_auth\"\n",
    )
    .expect("provider");

    // The canaries: one per secret the vault is given or receives.
    let api_key = format!("sk-{}", plain_canary("apikey"));
    let api_key_v2 = format!("sk-{}", plain_canary("apikey-v2"));
    let password = canary("password");
    let mock_key = format!("mock-{}", plain_canary("mock"));
    let access_token = plain_canary("access");
    let refresh_token = plain_canary("refresh");
    let client_secret = plain_canary("clientsecret");
    let oauth_code = plain_canary("code");
    let github_token = format!("ghp_{}", plain_canary("gh").replace('-', "_"));
    let gitlab_token = format!("glpat-{}", plain_canary("gl"));
    let telegram_token = format!("123456789:AA{}", plain_canary("tg").replace('-', "_"));
    let refused_value = plain_canary("refused");
    let master = [0x42u8; 32];
    let secrets: Vec<String> = vec![
        api_key.clone(),
        api_key_v2.clone(),
        password.clone(),
        mock_key.clone(),
        access_token.clone(),
        refresh_token.clone(),
        client_secret.clone(),
        oauth_code.clone(),
        refused_value.clone(),
        github_token.clone(),
        gitlab_token.clone(),
        telegram_token.clone(),
    ];
    // The master key too, as bytes (hex and base64 of it are covered by the encodings of
    // its base64url text, and its raw bytes are checked in the files below).
    let master_b64 =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, master);
    let mut all_secrets = secrets.clone();
    all_secrets.push(master_b64);

    // A key file the vault creates (its one log line proves the crate's logs are captured).
    let key_path = dir.path().join("home").join("master.key");
    let file_key = LocalKey::load_or_create_file(&key_path).expect("key file");
    drop(file_key);

    let db = dir.path().join("vault.db");
    let sqlite = SqliteStore::open(&db).expect("open");
    let faults = FaultStore::new(Arc::new(sqlite.clone()));
    let panicking_store = Arc::new(PanickingStore {
        inner: faults.clone(),
        panic: AtomicBool::new(false),
    });
    let sink = Arc::new(RecordingSink::default());
    let vault = Vault::builder()
        .store(panicking_store.clone())
        .key_wrapper(Arc::new(LocalKey::from_bytes(&master, "canary master key")))
        .providers_dir(&providers)
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .checkpoints(sink.clone(), 3)
        .integration_base_url(IntegrationProvider::Github, echo.clone())
        .integration_base_url(IntegrationProvider::Gitlab, echo.clone())
        .integration_base_url(IntegrationProvider::Telegram, echo.clone())
        .oauth_client(
            "echo",
            OAuthClient {
                client_id: "echo-client".into(),
                client_secret: Some(ClientSecret::Inline(SecretString::from(
                    client_secret.clone(),
                ))),
                redirect_uri: Some("http://127.0.0.1:9/callback".into()),
            },
        )
        .build()
        .await
        .expect("vault");
    seen.add("vault", format!("{vault:?}"));

    let admin = p("system_admin:root");
    let alice = p("app_user:crm:alice");
    let bob = p("app_user:crm:bob");
    let runtime = p("runtime:crm:alice");
    let ctx = ResolveContext::of(&runtime).expect("ctx");
    let alice_scope = Scope::per_user("alice").expect("scope");

    // --- The paths that work.
    let new = NewCredential::new(
        "openai_main",
        alice_scope.clone(),
        "openai",
        "",
        fields(&[("api_key", &api_key)]),
    );
    seen.add("new credential", format!("{new:?}"));
    let info = seen.ok("create", vault.create(&alice, new).await);
    seen.ok("grant", vault.grant_add(&alice, &info.id, "crm").await);
    let basic = seen.ok(
        "create basic",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "basic_main",
                    alice_scope.clone(),
                    "leakybasic",
                    "",
                    fields(&[("username", "alice"), ("password", &password)]),
                ),
            )
            .await,
    );
    let mock = seen.ok(
        "create mock",
        vault
            .create(
                &admin,
                NewCredential::new(
                    "mock_main",
                    Scope::SystemWide,
                    "mockprovider",
                    "",
                    fields(&[("api_key", &mock_key), ("base_url", &echo)]),
                ),
            )
            .await,
    );
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let mock_closed = seen.ok(
        "create mock (closed port)",
        vault
            .create(
                &admin,
                NewCredential::new(
                    "mock_closed",
                    Scope::SystemWide,
                    "mockprovider",
                    "",
                    fields(&[("api_key", &mock_key), ("base_url", &closed_port)]),
                ),
            )
            .await,
    );
    let oauth = seen.ok(
        "create oauth",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "echo_token",
                    alice_scope.clone(),
                    "echo",
                    "",
                    fields(&[
                        ("access_token", &access_token),
                        ("refresh_token", &refresh_token),
                        ("token_type", "Bearer"),
                    ]),
                ),
            )
            .await,
    );
    let revealed = seen.ok("reveal", vault.reveal(&alice, &info.id).await);
    assert_eq!(revealed.fields["api_key"].expose_secret(), api_key);
    seen.ok("reveal basic", vault.reveal(&alice, &basic.id).await);
    let resolved = seen.ok(
        "resolve",
        vault
            .resolve(&runtime, &CredentialRef::compact("openai_main"), &ctx)
            .await,
    );
    assert_eq!(resolved.fields["api_key"].expose_secret(), api_key);
    let slots = Slots::new().declare(
        "brain",
        CredentialSlot::new("brain_credential", "LLM provider credential")
            .handler_types(["api_key"])
            .providers(["openai"])
            .scopes_preferred([ScopeKind::PerUser])
            .inject("api_key", "{block}.config.api_key"),
    );
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let manifest = compile("crm", &config, &slots, &vault.catalog()).expect("compile");
    let deployment = seen.ok("deployment", Deployment::new(&vault, manifest).await);
    let session = seen.ok("session", deployment.start_session("alice").await);
    assert!(serde_json::to_string(session.expose())
        .expect("json")
        .contains(&api_key));
    seen.add("session masked", format!("{:?}", session.masked()));
    seen.ok(
        "slot",
        deployment
            .resolve_slot("alice", "agents[assistant].brain", "brain_credential")
            .await,
    );
    let update = CredentialUpdate {
        fields: Some(fields(&[("api_key", &api_key_v2)])),
        ..CredentialUpdate::default()
    };
    seen.add("update", format!("{update:?}"));
    seen.ok(
        "update",
        vault.update(&alice, &info.id, info.version, update).await,
    );
    seen.ok("get", vault.get(&alice, &info.id).await);
    seen.ok("list", vault.list(&admin, &Default::default()).await);
    seen.ok("history", vault.history(&alice, &info.id).await);
    seen.ok(
        "audit log",
        vault.audit_log(&admin, &AuditQuery::default()).await,
    );

    // --- Refused input that carries a secret.
    let refused = seen.err(
        "a key the provider refuses",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "bad_prefix",
                    alice_scope.clone(),
                    "openai",
                    "",
                    fields(&[("api_key", &refused_value)]),
                ),
            )
            .await,
    );
    assert_eq!(
        refused.kind(),
        strongroom::ErrorKind::InvalidInput,
        "{refused}"
    );
    seen.err(
        "an unknown field",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "bad_field",
                    alice_scope.clone(),
                    "openai",
                    "",
                    fields(&[("api_key", &api_key), ("extra", &refused_value)]),
                ),
            )
            .await,
    );
    seen.err(
        "a name taken",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "openai_main",
                    alice_scope.clone(),
                    "openai",
                    "",
                    fields(&[("api_key", &api_key)]),
                ),
            )
            .await,
    );
    seen.err("denied reveal", vault.reveal(&bob, &info.id).await);

    // --- Transport errors: the server echoes the request; a closed port.
    seen.result(
        "verify against an echoing 401",
        &vault.test_live_connection(&admin, &mock.id).await,
    );
    seen.result(
        "verify against a closed port",
        &vault.test_live_connection(&admin, &mock_closed.id).await,
    );
    seen.result(
        "verify an OAuth token at an echoing 500",
        &vault.test_live_connection(&alice, &oauth.id).await,
    );

    // --- OAuth errors that echo the request (client secret, refresh token, code).
    seen.result("refresh", &vault.oauth_refresh(&alice, &oauth.id).await);
    seen.result("revoke", &vault.oauth_revoke(&alice, &oauth.id).await);
    let started = seen.ok(
        "oauth start",
        vault
            .oauth_start(&runtime, OAuthStart::new("echo", "echo_login"))
            .await,
    );
    seen.result(
        "oauth complete",
        &vault
            .oauth_complete(
                &runtime,
                &started.state,
                &SecretString::from(oauth_code.clone()),
            )
            .await,
    );
    seen.result(
        "device start",
        &vault
            .oauth_device_start(&runtime, DeviceStart::new("echo", "echo_device"))
            .await,
    );

    // --- Integrations whose API (the echo server) fails, echoing the token back.
    seen.result(
        "link GitHub",
        &vault
            .link_github_token(&admin, "bot1", SecretString::from(github_token.clone()))
            .await,
    );
    seen.result(
        "link GitLab",
        &vault
            .link_gitlab_token(&admin, "bot1", SecretString::from(gitlab_token.clone()))
            .await,
    );
    seen.result(
        "link Telegram",
        &vault
            .link_telegram(
                &admin,
                "bot1",
                SecretString::from(telegram_token.clone()),
                "12345",
            )
            .await,
    );

    // --- Store errors.
    faults.fail_commits(true);
    seen.err(
        "reveal, commits failing",
        vault.reveal(&alice, &info.id).await,
    );
    seen.err(
        "resolve, commits failing",
        vault
            .resolve(&runtime, &CredentialRef::compact("openai_main"), &ctx)
            .await,
    );
    seen.err(
        "session, commits failing",
        deployment.start_session("alice").await,
    );
    seen.err(
        "create, commits failing",
        vault
            .create(
                &alice,
                NewCredential::new(
                    "not_written",
                    alice_scope.clone(),
                    "openai",
                    "",
                    fields(&[("api_key", &api_key)]),
                ),
            )
            .await,
    );
    faults.fail_commits(false);

    // --- A wrong master key on the same database.
    let wrong = Vault::builder()
        .store(Arc::new(sqlite.clone()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    let e = seen.err(
        "reveal with a wrong key",
        wrong.reveal(&alice, &info.id).await,
    );
    assert!(
        matches!(
            e.kind(),
            strongroom::ErrorKind::KeyUnavailable | strongroom::ErrorKind::DecryptFailed
        ),
        "{e}"
    );
    seen.err(
        "resolve with a wrong key",
        wrong
            .resolve(&runtime, &CredentialRef::compact("openai_main"), &ctx)
            .await,
    );
    seen.result(
        "blob check with a wrong key",
        &wrong.check_blobs(&admin, 10).await,
    );

    // --- A panic in each kind of host callback; the vault works afterwards.
    sink.panic.store(true, Ordering::SeqCst);
    for i in 0..4 {
        let (vault, alice, id) = (vault.clone(), alice.clone(), info.id.clone());
        let r = tokio::spawn(async move { vault.reveal(&alice, &id).await }).await;
        match r {
            Ok(r) => seen.result("reveal, sink panicking", &r),
            Err(e) => {
                assert!(e.is_panic());
                seen.add("sink panic", format!("{i}: {e}"));
            }
        }
    }
    sink.panic.store(false, Ordering::SeqCst);
    let panicky_http = Vault::builder()
        .store(Arc::new(sqlite.clone()))
        .key_wrapper(Arc::new(LocalKey::from_bytes(&master, "canary master key")))
        .http(Arc::new(PanickingTransport))
        .build()
        .await
        .expect("vault");
    expect_panic(&seen, "transport panic", {
        let (v, admin, id) = (panicky_http.clone(), admin.clone(), mock.id.clone());
        async move { v.test_live_connection(&admin, &id).await }
    })
    .await;
    panicking_store.panic.store(true, Ordering::SeqCst);
    expect_panic(&seen, "store panic", {
        let (v, alice, id) = (vault.clone(), alice.clone(), info.id.clone());
        async move { v.reveal(&alice, &id).await }
    })
    .await;
    panicking_store.panic.store(false, Ordering::SeqCst);
    let after = seen.ok(
        "reveal after the panics",
        vault.reveal(&alice, &info.id).await,
    );
    assert_eq!(after.fields["api_key"].expose_secret(), api_key_v2);

    // --- Everything that came out.
    let rows = faults.audit_range(1, usize::MAX).await.expect("rows");
    assert!(rows.iter().any(|r| r.event.outcome == Outcome::Failure));
    for row in &rows {
        assert_no_leak(
            &format!("audit row {}", row.seq),
            format!("{row:?}").as_bytes(),
            &all_secrets,
        );
        assert_no_leak(
            &format!("audit row {}", row.seq),
            serde_json::to_string(&row.event.details)
                .expect("json")
                .as_bytes(),
            &all_secrets,
        );
    }
    let checkpoints = sink.seen.lock().expect("sink").clone();
    assert!(!checkpoints.is_empty(), "the sink was given checkpoints");
    for cp in &checkpoints {
        assert_no_leak(
            "a checkpoint",
            serde_json::to_string(cp).expect("json").as_bytes(),
            &all_secrets,
        );
    }
    let seen_bytes = seen.0.lock().expect("seen").clone();
    assert!(seen_bytes.len() > 2_000, "results and errors were recorded");
    assert_no_leak("results, errors and panics", &seen_bytes, &all_secrets);
    let panic_bytes = panic_log.lock().expect("panics").clone();
    assert!(
        String::from_utf8_lossy(&panic_bytes).contains("host transport failed"),
        "the panic hook saw the callbacks' panics"
    );
    assert_no_leak("panic messages", &panic_bytes, &all_secrets);
    scan_files(dir.path(), &all_secrets, "open");
    let master_raw = master.to_vec();
    for name in ["vault.db", "vault.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            assert!(
                !bytes.windows(32).any(|w| w == master_raw.as_slice()),
                "{name} holds the master key"
            );
        }
    }
    sqlite.close().await.expect("close");
    scan_files(dir.path(), &all_secrets, "closed");

    let log_bytes = logs.bytes();
    let log_text = String::from_utf8_lossy(&log_bytes);
    assert!(
        log_text.contains("canary test: capture is on"),
        "{log_text}"
    );
    assert!(
        log_text.contains("created a new master key file"),
        "the crate's own events are captured: {log_text}"
    );
    assert_no_leak("the TRACE log", &log_bytes, &all_secrets);
}
