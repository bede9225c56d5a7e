//! OAuth speed, printed as one JSON object:
//! - resolving a valid OAuth token against resolving a plain `api_key` in one run: rounds of
//!   both on fresh in-memory vaults, in turns first, single caller; the median of each, and
//!   the median of the rounds' ratios (`oauth_vs_api_key`);
//! - one refresher pass over 10,000 due credentials on SQLite against the local token server
//!   (tests/common/oauth_server.rs, on 127.0.0.1) with bounded concurrency.
//!
//! `cargo bench --bench oauth --features reqwest`  (`STRONGROOM_BENCH_QUICK=1`: a short run)

#[path = "../tests/common/oauth_server.rs"]
mod oauth_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth_server::{OAuthServer, CONFIDENTIAL_CLIENT};
use strongroom::vault::RefresherConfig;
use strongroom::{
    CredentialRef, LocalKey, MemoryStore, NewCredential, Principal, ResolveContext, Scope,
    SecretString, SqliteStore, Store, Timestamp, Vault,
};

async fn vault(server: &OAuthServer, store: Arc<dyn Store>, dir: &std::path::Path) -> Vault {
    let key = Arc::new(LocalKey::generate().expect("key"));
    oauth_server::local_vault(server, store, key, dir, None).await
}

/// A token as the vault stores one it obtained: the two tokens sealed, the expiry in the
/// credential's `expires_at` (the token type, scope and client id are metadata).
fn oauth_token(
    server: &OAuthServer,
    name: &str,
    scope: &Scope,
    expires_at: Timestamp,
) -> NewCredential {
    let (access, refresh) = server.mint(CONFIDENTIAL_CLIENT, "read");
    let mut fields = BTreeMap::new();
    fields.insert("access_token".into(), SecretString::from(access));
    fields.insert("refresh_token".into(), SecretString::from(refresh));
    let mut new = NewCredential::new(name, scope.clone(), "local", "oauth2", fields);
    new.expires_at = Some(expires_at);
    new
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
    // Every measurement runs on a vault of its own, made the same way, so that both meet an
    // in-memory store of the same size (it keeps every audit row, and its growth would
    // otherwise land on whichever runs later).
    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    let fresh = |kind: &'static str| {
        let (server, user, scope, dir) = (&server, &user, &scope, dir.path());
        async move {
            let vault = vault(server, Arc::new(MemoryStore::new()), dir).await;
            let new = if kind == "token" {
                oauth_token(server, kind, scope, later)
            } else {
                let mut key = BTreeMap::new();
                key.insert(
                    "api_key".to_string(),
                    SecretString::from("sk-bench-0123456789abcdef"),
                );
                NewCredential::new(kind, scope.clone(), "openai", "api_key", key)
            };
            let info = vault.create(user, new).await.expect("create");
            vault.grant_add(user, &info.id, "crm").await.expect("grant");
            vault
        }
    };
    let (rounds, per_round) = if quick { (3, 2_000) } else { (11, 50_000) };
    let (mut oauth, mut api_key) = (Vec::new(), Vec::new());
    rate(&fresh("token").await, &runtime, "token", per_round / 10).await; // warm up
    rate(&fresh("key").await, &runtime, "key", per_round / 10).await;
    // Each round runs both, in turns first.
    for round in 0..rounds {
        let (token_vault, key_vault) = (fresh("token").await, fresh("key").await);
        if round % 2 == 0 {
            oauth.push(rate(&token_vault, &runtime, "token", per_round).await);
            api_key.push(rate(&key_vault, &runtime, "key", per_round).await);
        } else {
            api_key.push(rate(&key_vault, &runtime, "key", per_round).await);
            oauth.push(rate(&token_vault, &runtime, "token", per_round).await);
        }
    }
    // The median of each round's ratio: both halves of a round see the same machine.
    let paired = median(oauth.iter().zip(&api_key).map(|(o, k)| o / k).collect());
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
        let batch: Vec<_> = (0..due)
            .filter(|i| i % 64 == chunk)
            .map(|i| oauth_token(&server, &format!("t{i}"), &scope, soon))
            .collect();
        creating.spawn(async move {
            for new in batch {
                vault.create(&user, new).await.expect("create");
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
            "oauth_vs_api_key": (paired * 1000.0).round() / 1000.0,
            "rounds": rounds,
            "per_round": per_round,
            "refresher_due": due,
            "refresher_concurrency": concurrency,
            "refresher_pass_secs": (pass_secs * 1000.0).round() / 1000.0,
            "refresher_refreshed": pass.refreshed,
        })
    );
}
