//! Issue 14, item 4: audited resolves on `PostgresStore` (the local server), 64 concurrent
//! callers spread over 2 vault instances that share one database and one audit chain.
//! Prints one JSON object: every run, the median, and what the server did per run (group
//! transactions, audit rows per transaction) from `pg_stat_database`.
//!
//! `cargo bench --bench postgres --features postgres`
//!
//! Environment: `STRONGROOM_TEST_POSTGRES` (server URL, default
//! `postgres://postgres@127.0.0.1:5432/test`), `STRONGROOM_BENCH_RUNS` (default 3),
//! `STRONGROOM_BENCH_SECS` (seconds per run, default 5), `STRONGROOM_BENCH_INSTANCES`
//! (default 2), `STRONGROOM_BENCH_CALLERS` (default 64).
//!
//! Each resolve is the full path: policy, scope-strict lookup (stamped), decrypt, and a
//! durable audit row committed (checked against the read's stamp) before the value is
//! returned. After the runs the bench verifies that the chain is one gap-free chain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{
    CredentialRef, LocalKey, NewCredential, PostgresOptions, PostgresStore, Principal,
    ResolveContext, Scope, ScopeKind, SecretString, Vault,
};

const N_CREDS: usize = 1_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

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
async fn resolve_load(
    vaults: &[Vault],
    callers: usize,
    duration: Duration,
) -> (usize, f64, Vec<Duration>) {
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
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    (lat.len(), elapsed, lat)
}

async fn xact_commits(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database")
        .get(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let runs = env_usize("STRONGROOM_BENCH_RUNS", 3).max(1);
    let secs = env_usize("STRONGROOM_BENCH_SECS", 5).max(1);
    let instances = env_usize("STRONGROOM_BENCH_INSTANCES", 2).max(1);
    let callers = env_usize("STRONGROOM_BENCH_CALLERS", 64).max(1);
    let report = rt.block_on(async {
        let url = std::env::var("STRONGROOM_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).expect("random");
        let schema = format!("bench_{}", hex::encode(bytes));
        let key = Arc::new(LocalKey::generate().expect("key"));
        let mut vaults = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..instances {
            let store = Arc::new(
                PostgresStore::connect_with(
                    &url,
                    PostgresOptions::default().schema(&schema).pool_size(32),
                )
                .await
                .expect("PostgreSQL must be running for this benchmark"),
            );
            stores.push(store.clone());
            vaults.push(
                Vault::builder()
                    .store(store)
                    .key_wrapper(key.clone())
                    .build()
                    .await
                    .expect("vault"),
            );
        }
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        seed(&vaults[0]).await;
        resolve_load(&vaults, callers, Duration::from_millis(500)).await; // warm up
        let mut results = Vec::new();
        for _ in 0..runs {
            let before: Vec<_> = stores.iter().map(|s| s.writer_stats()).collect();
            let xacts = xact_commits(&client).await;
            let (n, elapsed, lat) =
                resolve_load(&vaults, callers, Duration::from_secs(secs as u64)).await;
            let xacts = xact_commits(&client).await - xacts;
            let (mut groups, mut events, mut wait, mut locked, mut flush) = (0, 0, 0, 0, 0);
            for (s, b) in stores.iter().zip(&before) {
                let a = s.writer_stats();
                groups += a.groups - b.groups;
                events += a.events - b.events;
                wait += a.lock_wait_us - b.lock_wait_us;
                locked += a.locked_us - b.locked_us;
                flush += a.flush_wait_us - b.flush_wait_us;
            }
            let per_group = |us: u64| (us as f64 / groups.max(1) as f64).round();
            results.push(serde_json::json!({
                "resolves": n,
                "per_s": (n as f64 / elapsed).round(),
                "p50_us": pct(&lat, 0.5).round(),
                "p99_us": pct(&lat, 0.99).round(),
                "groups": groups,
                "events_per_group": ((events as f64 / groups.max(1) as f64) * 10.0).round() / 10.0,
                "lock_wait_us_per_group": per_group(wait),
                "locked_us_per_group": per_group(locked),
                "flush_wait_us_per_group": per_group(flush),
                // Every server transaction (reads included), from pg_stat_database; the
                // collector lags, so this is approximate.
                "server_xacts_per_resolve": ((xacts as f64 / n.max(1) as f64) * 100.0).round() / 100.0,
            }));
        }
        let mut rates: Vec<f64> = results
            .iter()
            .map(|r| r["per_s"].as_f64().expect("rate"))
            .collect();
        rates.sort_by(|a, b| a.partial_cmp(b).expect("rate"));
        let median = rates[rates.len() / 2];
        // One gap-free chain: every row from 1 to the head, each chained to the one before.
        let admin = Principal::parse("system_admin:root").expect("p");
        let verified = vaults[0].verify_audit(&admin).await.expect("verify");
        let gaps: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) - coalesce(max(seq), 0) FROM {schema}.audit"
                ),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("drop");
        serde_json::json!({
            "instances": instances,
            "callers": callers,
            "seconds_per_run": secs,
            "runs": results,
            "median_per_s": median,
            "chain_rows_verified": verified.rows,
            "chain_ok": verified.is_ok() && gaps == 0,
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
