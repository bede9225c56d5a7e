//! The credentials path of a GitHub App integration, printed as one JSON object:
//! `Vault::credentials_for` with a cached installation token against `Vault::agent_secret`
//! of an agent-accessible per-agent `api_key`, on fresh in-memory vaults, in alternating
//! rounds (each kind first in turn), single caller; the median of each, and the median of
//! the rounds' paired ratios (`app_cached_vs_agent_secret`). The App is linked against the
//! local GitHub API (tests/common/github_app_server.rs, on 127.0.0.1), and one call before
//! the timing fills the cache: the timed calls read the integration and the key's record and
//! write their audit row, but neither open the key nor reach GitHub.
//!
//! `cargo bench --bench integrations --features reqwest`  (`STRONGROOM_BENCH_QUICK=1`: a
//! short run)

#[path = "../tests/common/github_app_server.rs"]
mod github_app_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use github_app_server::{GithubServer, APP_ID, APP_KEY, CLIENT_ID, INSTALLATION};
use strongroom::integrations::IntegrationProvider;
use strongroom::{
    GithubAppLink, LocalKey, MemoryStore, NewCredential, Principal, ReqwestTransport, Scope,
    SecretString, Vault,
};

const AGENT: &str = "agent7";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn vault(server: &GithubServer) -> Vault {
    Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .http(Arc::new(ReqwestTransport::new().expect("http")))
        .integration_base_url(IntegrationProvider::Github, server.base())
        .build()
        .await
        .expect("vault")
}

/// A vault with the App linked and its token cached.
async fn app_vault(server: &GithubServer, admin: &Principal, agent: &Principal) -> Vault {
    let v = vault(server).await;
    let link = GithubAppLink::new(
        APP_ID.to_string(),
        INSTALLATION,
        SecretString::from(APP_KEY.to_string()),
    )
    .client_id(CLIENT_ID);
    v.link_github_app(admin, AGENT, link).await.expect("link");
    v.credentials_for(agent, AGENT, IntegrationProvider::Github)
        .await
        .expect("first credentials");
    v
}

/// A vault with an agent-accessible per-agent api key.
async fn key_vault(server: &GithubServer, admin: &Principal) -> Vault {
    let v = vault(server).await;
    let mut fields = BTreeMap::new();
    fields.insert(
        "api_key".to_string(),
        SecretString::from("sk-bench-0123456789abcdef"),
    );
    let mut new = NewCredential::new(
        "llm",
        Scope::per_agent(AGENT).expect("scope"),
        "openai",
        "api_key",
        fields,
    );
    new.agent_accessible = true;
    v.create(admin, new).await.expect("create");
    v
}

async fn app_rate(v: &Vault, agent: &Principal, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let c = v
            .credentials_for(agent, AGENT, IntegrationProvider::Github)
            .await
            .expect("credentials");
        std::hint::black_box(c);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn key_rate(v: &Vault, agent: &Principal, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let r = v.agent_secret(agent, "llm").await.expect("agent_secret");
        std::hint::black_box(r);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("STRONGROOM_BENCH_QUICK").is_ok();
    let server = GithubServer::start().await;
    let admin = Principal::parse("system_admin:ops").expect("p");
    let agent = Principal::parse(&format!("agent:{AGENT}")).expect("p");
    let (rounds, per_round) = if quick { (3, 2_000) } else { (11, 20_000) };
    // Warm up.
    app_rate(
        &app_vault(&server, &admin, &agent).await,
        &agent,
        per_round / 10,
    )
    .await;
    key_rate(&key_vault(&server, &admin).await, &agent, per_round / 10).await;
    let (mut app, mut key) = (Vec::new(), Vec::new());
    // Every round on vaults of its own (the in-memory store keeps every audit row).
    for round in 0..rounds {
        let app_v = app_vault(&server, &admin, &agent).await;
        let key_v = key_vault(&server, &admin).await;
        if round % 2 == 0 {
            app.push(app_rate(&app_v, &agent, per_round).await);
            key.push(key_rate(&key_v, &agent, per_round).await);
        } else {
            key.push(key_rate(&key_v, &agent, per_round).await);
            app.push(app_rate(&app_v, &agent, per_round).await);
        }
    }
    let mints = server.mints();
    // Per vault: one mint when linking, one for the first credentials; none while timed.
    assert_eq!(mints, 2 * (rounds + 1), "a timed call minted");
    let paired = median(app.iter().zip(&key).map(|(a, k)| a / k).collect());
    let (app, key) = (median(app), median(key));
    println!(
        "{}",
        serde_json::json!({
            "credentials_for_app_cached_per_sec": app.round(),
            "agent_secret_per_sec": key.round(),
            "app_cached_vs_agent_secret": (paired * 1000.0).round() / 1000.0,
            "rounds": rounds,
            "per_round": per_round,
            "mints": mints,
        })
    );
}
