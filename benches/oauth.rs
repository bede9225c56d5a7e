//! OAuth speed, printed as one JSON object:
//! - resolving a valid OAuth token against resolving a plain `api_key`, same vault, same run
//!   (alternating rounds; the median of each), single caller on the in-memory store;
//! - one refresher pass over 10,000 due credentials on SQLite against the local token server
//!   (tests/common/oauth_server.rs, on 127.0.0.1) with bounded concurrency.
//!
//! `cargo bench --bench oauth --features reqwest`  (`STRONGROOM_BENCH_QUICK=1`: a short run)

#[path = "../tests/common/oauth_server.rs"]
mod oauth_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_server::{OAuthServer, CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET};
use strongroom::oauth::{ClientSecret, OAuthClient};
use strongroom::transport::ReqwestTransport;
use strongroom::vault::RefresherConfig;
use strongroom::{
    CredentialRef, LocalKey, MemoryStore, NewCredential, Principal, ResolveContext, Scope,
    SecretString, SqliteStore, Store, Timestamp, Vault,
};

async fn vault(server: &OAuthServer, store: Arc<dyn Store>, dir: &std::path::Path) -> Vault {
    let providers = dir.join("providers");
    std::fs::create_dir_all(&providers).expect("dir");
    std::fs::write(
        providers.join("local.toml"),
        server.provider_toml("local", "oauth2"),
    )
    .expect("provider");
    Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .providers_dir(&providers)
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .oauth_client(
            "local",
            OAuthClient {
                client_id: CONFIDENTIAL_CLIENT.into(),
                client_secret: Some(ClientSecret::Inline(SecretString::from(
                    CONFIDENTIAL_SECRET,
                ))),
                redirect_uri: None,
            },
        )
        .build()
        .await
        .expect("vault")
}

fn oauth_fields(server: &OAuthServer, expires_at: Timestamp) -> BTreeMap<String, SecretString> {
    let (access, refresh) = server.mint(CONFIDENTIAL_CLIENT, "read");
    let mut fields = BTreeMap::new();
    fields.insert("access_token".into(), SecretString::from(access));
    fields.insert("refresh_token".into(), SecretString::from(refresh));
    fields.insert("token_type".into(), SecretString::from("Bearer"));
    fields.insert(
        "expires_at".into(),
        SecretString::from((expires_at.0 / 1000).to_string()),
    );
    fields
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn rate(vault: &Vault, actor: &Principal, name: &str, n: usize) -> f64 {
    let ctx = ResolveContext::of(actor).expect("ctx");
    let reference = CredentialRef::compact(name);
    let start = Instant::now();
    for _ in 0..n {
        let r = vault
            .resolve(actor, &reference, &ctx)
            .await
            .expect("resolve");
        std::hint::black_box(r);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("STRONGROOM_BENCH_QUICK").is_ok();
    let server = OAuthServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let user = Principal::parse("app_user:crm:alice").expect("p");
    let runtime = Principal::parse("runtime:crm:alice").expect("p");
    let scope = Scope::per_user("alice").expect("scope");

    // Resolve: an OAuth token (valid for an hour, outside the refresh window) against an
    // api_key, in alternating rounds on one vault.
    let memory = vault(&server, Arc::new(MemoryStore::new()), dir.path()).await;
    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    for (name, provider, kind, fields) in [
        ("token", "local", "oauth2", oauth_fields(&server, later)),
        ("key", "openai", "api_key", {
            let mut f = BTreeMap::new();
            f.insert(
                "api_key".to_string(),
                SecretString::from("sk-bench-0123456789abcdef"),
            );
            f
        }),
    ] {
        let info = memory
            .create(
                &user,
                NewCredential::new(name, scope.clone(), provider, kind, fields),
            )
            .await
            .expect("create");
        memory
            .grant_add(&user, &info.id, "crm")
            .await
            .expect("grant");
    }
    let (rounds, per_round) = if quick { (3, 2_000) } else { (9, 50_000) };
    let (mut oauth, mut api_key) = (Vec::new(), Vec::new());
    rate(&memory, &runtime, "token", per_round / 10).await; // warm up
    rate(&memory, &runtime, "key", per_round / 10).await;
    for _ in 0..rounds {
        oauth.push(rate(&memory, &runtime, "token", per_round).await);
        api_key.push(rate(&memory, &runtime, "key", per_round).await);
    }
    let (oauth, api_key) = (median(oauth), median(api_key));

    // One refresher pass over `due` credentials on SQLite, each expiring in a minute.
    let due = if quick { 500 } else { 10_000 };
    let sqlite: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("refresh.db")).expect("open"));
    let refresher_vault = vault(&server, sqlite, dir.path()).await;
    let soon = Timestamp::now().saturating_add(Duration::from_secs(60));
    let mut creating = tokio::task::JoinSet::new();
    for chunk in 0..64 {
        let vault = refresher_vault.clone();
        let user = user.clone();
        let scope = scope.clone();
        let batch: Vec<_> = (0..due)
            .filter(|i| i % 64 == chunk)
            .map(|i| (i, oauth_fields(&server, soon)))
            .collect();
        creating.spawn(async move {
            for (i, fields) in batch {
                vault
                    .create(
                        &user,
                        NewCredential::new(
                            format!("t{i}"),
                            scope.clone(),
                            "local",
                            "oauth2",
                            fields,
                        ),
                    )
                    .await
                    .expect("create");
            }
        });
    }
    while let Some(done) = creating.join_next().await {
        done.expect("create task");
    }
    let concurrency = 32;
    let start = Instant::now();
    let pass = refresher_vault
        .refresh_due_now(&RefresherConfig::default().concurrency(concurrency))
        .await
        .expect("pass");
    let pass_secs = start.elapsed().as_secs_f64();
    assert_eq!(pass.refreshed, due as u64, "{pass:?}");
    assert_eq!(server.refresh_count(), due as u64);

    println!(
        "{}",
        serde_json::json!({
            "resolve_oauth_per_sec": oauth.round(),
            "resolve_api_key_per_sec": api_key.round(),
            "oauth_vs_api_key": (oauth / api_key * 1000.0).round() / 1000.0,
            "rounds": rounds,
            "per_round": per_round,
            "refresher_due": due,
            "refresher_concurrency": concurrency,
            "refresher_pass_secs": (pass_secs * 1000.0).round() / 1000.0,
            "refresher_refreshed": pass.refreshed,
        })
    );
}
