//! Issue 6 figures, printed as one JSON object:
//!
//! - audited resolves on `PostgresStore` (the local server) with 64 concurrent callers
//!   spread over 2 vault instances;
//! - resolves with a remote master key (HashiCorp Vault transit, served by
//!   `tests/kms_servers.py` on 127.0.0.1) with every unwrap remote (no cache) and with the
//!   data-key cache, against a local key;
//! - re-wrapping (key rotation) with a local key, on `MemoryStore` and `SqliteStore`.
//!
//! `cargo bench --bench keys --features postgres,kms,reqwest`
//! (`STRONGROOM_BENCH_QUICK=1` for a short smoke run; `STRONGROOM_TEST_POSTGRES` for another
//! server)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::crypto::kms::VaultTransitKey;
use strongroom::transport::ReqwestTransport;
use strongroom::{
    CredentialRef, KeyRing, KeyWrapper, LocalKey, MemoryStore, NewCredential, PostgresOptions,
    PostgresStore, Principal, ResolveContext, RewrapOptions, Scope, ScopeKind, SecretString,
    SqliteStore, Store, Vault,
};

fn quick() -> bool {
    std::env::var_os("STRONGROOM_BENCH_QUICK").is_some()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

const N_CREDS: usize = 1_000;

async fn seed(vault: &Vault) {
    let admin = Principal::parse("system_admin:root").expect("p");
    for i in 0..N_CREDS {
        vault
            .create(
                &admin,
                NewCredential::new(
                    format!("key{i}"),
                    Scope::SystemWide,
                    "openai",
                    "",
                    BTreeMap::from([(
                        "api_key".to_string(),
                        SecretString::from(format!("sk-proj-{i}-0123456789abcdef")),
                    )]),
                ),
            )
            .await
            .expect("create");
    }
}

/// `callers` tasks resolving for `duration`, spread round-robin over `vaults`.
async fn resolve_load(vaults: &[Vault], callers: usize, duration: Duration) -> serde_json::Value {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let vault = vaults[c % vaults.len()].clone();
        tasks.push(tokio::spawn(async move {
            let runtime = Principal::parse(&format!("runtime:crm:user{c}")).expect("p");
            let ctx = ResolveContext {
                app: "crm".into(),
                user: format!("user{c}"),
            };
            let mut lat = Vec::new();
            let mut k = c;
            while start.elapsed() < duration {
                let r = CredentialRef::explicit(
                    format!("key{}", k % N_CREDS),
                    ScopeKind::SystemWide,
                    None,
                );
                let t = Instant::now();
                vault.resolve(&runtime, &r, &ctx).await.expect("resolve");
                lat.push(t.elapsed());
                k += 7;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    lat.sort();
    serde_json::json!({
        "callers": callers,
        "instances": vaults.len(),
        "resolves": lat.len(),
        "per_s": (lat.len() as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": pct(&lat, 0.5).round(),
        "p99_us": pct(&lat, 0.99).round(),
    })
}

async fn postgres(duration: Duration) -> serde_json::Value {
    let url = std::env::var("STRONGROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let schema = format!("bench_{}", hex::encode(bytes));
    let key = Arc::new(LocalKey::generate().expect("key"));
    let mut vaults = Vec::new();
    for _ in 0..2 {
        let store = PostgresStore::connect_with(
            &url,
            PostgresOptions::default().schema(&schema).pool_size(32),
        )
        .await
        .expect("PostgreSQL must be running for this benchmark");
        vaults.push(
            Vault::builder()
                .store(Arc::new(store))
                .key_wrapper(key.clone())
                .build()
                .await
                .expect("vault"),
        );
    }
    seed(&vaults[0]).await;
    resolve_load(&vaults, 64, Duration::from_millis(500)).await; // warm up
    let report = resolve_load(&vaults, 64, duration).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop");
    report
}

/// Resolves on a memory store through `key`, 8 callers.
async fn with_key(key: Arc<dyn KeyWrapper>, cache: bool, duration: Duration) -> serde_json::Value {
    let mut builder = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(key);
    builder = if cache {
        builder.dek_cache(strongroom::crypto::DekCacheConfig::default())
    } else {
        builder.no_dek_cache()
    };
    let vault = builder.build().await.expect("vault");
    seed(&vault).await;
    vault.keys().clear_dek_cache();
    // Warm up: resolve every credential once (this fills the cache when there is one).
    let runtime = Principal::parse("runtime:crm:warm").expect("p");
    let ctx = ResolveContext {
        app: "crm".into(),
        user: "warm".into(),
    };
    for i in 0..N_CREDS {
        let r = CredentialRef::explicit(format!("key{i}"), ScopeKind::SystemWide, None);
        vault.resolve(&runtime, &r, &ctx).await.expect("resolve");
    }
    let vaults = [vault];
    let mut report = resolve_load(&vaults, 8, duration).await;
    if let Some(stats) = vaults[0].keys().dek_cache_stats() {
        report["cache_hits"] = stats.hits.into();
        report["cache_misses"] = stats.misses.into();
    }
    report
}

async fn kms(duration: Duration) -> serde_json::Value {
    let mut child = std::process::Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_servers.py"),
            "--no-aws",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 tests/kms_servers.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("servers");
    let info: serde_json::Value = serde_json::from_str(&line).expect("servers started");
    let v = &info["vault"];
    let http = Arc::new(ReqwestTransport::new().expect("client"));
    let remote: Arc<dyn KeyWrapper> = Arc::new(
        VaultTransitKey::new(
            v["addr"].as_str().expect("addr"),
            v["key"].as_str().expect("key"),
            v["token"].as_str().expect("token"),
            http,
        )
        .expect("key"),
    );
    let local: Arc<dyn KeyWrapper> = Arc::new(LocalKey::generate().expect("key"));
    let report = serde_json::json!({
        "local_key": with_key(local, false, duration).await,
        "remote_key_every_unwrap_remote": with_key(remote.clone(), false, duration).await,
        "remote_key_with_dek_cache": with_key(remote, true, duration).await,
    });
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    report
}

async fn rewrap(store: Arc<dyn Store>, n: usize) -> serde_json::Value {
    let old: Arc<dyn KeyWrapper> = Arc::new(LocalKey::generate().expect("key"));
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(old.clone())
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    for i in 0..n {
        vault
            .create(
                &admin,
                NewCredential::new(
                    format!("k{i}"),
                    Scope::SystemWide,
                    "openai",
                    "",
                    BTreeMap::from([(
                        "api_key".to_string(),
                        SecretString::from(format!("sk-{i}")),
                    )]),
                ),
            )
            .await
            .expect("create");
    }
    let new = Arc::new(LocalKey::generate().expect("key"));
    let ring = KeyRing::new(new).with_retired(old);
    let t = Instant::now();
    let report = vault
        .rewrap_keys(&admin, &ring, RewrapOptions::default())
        .await
        .expect("rewrap");
    let elapsed = t.elapsed();
    assert!(report.complete);
    serde_json::json!({
        "records": report.rewrapped,
        "batches": report.batches,
        "seconds": elapsed.as_secs_f64(),
        "records_per_s": (report.rewrapped as f64 / elapsed.as_secs_f64()).round(),
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let duration = if quick() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let n_rewrap = if quick() { 2_000 } else { 50_000 };
    let report = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("rewrap.db")).expect("sqlite"));
        serde_json::json!({
            "postgres_resolve": postgres(duration).await,
            "kms_resolve_memory_store": kms(duration).await,
            "rewrap_memory": rewrap(Arc::new(MemoryStore::new()), n_rewrap).await,
            "rewrap_sqlite": rewrap(sqlite, n_rewrap).await,
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
