//! Audited resolves by reference (scope-strict lookup, decrypt, a durable audit row) with 64
//! concurrent callers, on `SqliteStore` (`synchronous=FULL`) and `MemoryStore`, with 1,000
//! and 1,000,000 stored credentials. Prints one JSON object.
//!
//! `cargo bench --bench resolve`  (`STRONGROOM_BENCH_QUICK=1` for a short smoke run)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{
    Batch, CredentialId, CredentialRecord, CredentialRef, KeyRing, LifecycleState, LocalKey,
    MemoryStore, Mutation, Precondition, Principal, ResolveContext, Scope, SqliteStore, Store,
    Timestamp, Vault,
};

const CALLERS: usize = 64;

/// Stores `n` credentials named `openai_main`, one per (crm, user{i}) scope.
async fn seed(store: &Arc<dyn Store>, keys: &KeyRing, n: usize) {
    let now = Timestamp::now();
    let mut i = 0;
    while i < n {
        let end = (i + 5_000).min(n);
        let mut mutations = Vec::with_capacity(end - i);
        for u in i..end {
            let mut record = CredentialRecord {
                id: CredentialId::generate(),
                name: "openai_main".into(),
                scope: Scope::per_app_per_user("crm", format!("user{u}")).expect("scope"),
                provider: "openai".into(),
                handler_type: "api_key".into(),
                state: LifecycleState::Valid,
                metadata: BTreeMap::new(),
                agent_accessible: false,
                version: 1,
                created_at: now,
                updated_at: now,
                expires_at: None,
                key_id: String::new(),
                sealed: Vec::new(),
            };
            let sealed = keys
                .seal(
                    br#"{"api_key":"sk-proj-0123456789abcdefghijklmnopqrstuvwxyz"}"#,
                    &record.identity(),
                )
                .await
                .expect("seal");
            record.key_id = sealed.key_id;
            record.sealed = sealed.bytes;
            mutations.push(Mutation::Put {
                record,
                precondition: Precondition::CreateOnly,
            });
        }
        store
            .commit(Batch {
                mutations,
                events: vec![],
            })
            .await
            .expect("seed");
        i = end;
    }
}

/// Resident memory of this process, in MiB (Linux).
fn rss_mb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<i64>().ok())
            })
        })
        .map_or(0, |kb| kb / 1024)
}

/// Batches per transaction and per sync since `before`.
fn per_sync(store: &SqliteStore, before: strongroom::store::WriterStats) -> serde_json::Value {
    let after = store.writer_stats();
    let batches = (after.batches - before.batches) as f64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    serde_json::json!({
        "per_transaction": round(batches / (after.transactions - before.transactions).max(1) as f64),
        "per_sync": round(batches / (after.syncs - before.syncs).max(1) as f64),
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i].as_secs_f64() * 1e6 * 10.0).round() / 10.0
}

/// `CALLERS` tasks resolve random users' references for `secs`; (resolves/s, p50 µs, p99 µs).
async fn run(vault: &Vault, users: usize, secs: f64) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..CALLERS {
        let vault = vault.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let reference = CredentialRef::explicit(
                "openai_main",
                strongroom::ScopeKind::PerAppPerUser,
                Some("openai".into()),
            );
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user = format!("user{}", x % users as u64);
                let actor = Principal::AppRuntime {
                    app: "crm".into(),
                    user: user.clone(),
                };
                let ctx = ResolveContext {
                    app: "crm".into(),
                    user,
                };
                let t = Instant::now();
                let got = vault
                    .resolve(&actor, &reference, &ctx)
                    .await
                    .expect("resolve");
                lat.push(t.elapsed());
                std::hint::black_box(got.fields.len());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("caller"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    (
        (lat.len() as f64 / elapsed).round(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("STRONGROOM_BENCH_QUICK").is_ok();
    // STRONGROOM_BENCH_SIZES=1000,1000000 picks the store sizes.
    let sizes: Vec<usize> = match std::env::var("STRONGROOM_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().expect("STRONGROOM_BENCH_SIZES: numbers"))
            .collect(),
        Err(_) if quick => vec![1_000, 10_000],
        Err(_) => vec![1_000, 1_000_000],
    };
    let secs = if quick { 1.0 } else { 5.0 };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut results = serde_json::Map::new();
    for &n in &sizes {
        for kind in ["sqlite_full", "memory"] {
            // STRONGROOM_BENCH_ONLY=sqlite (or memory) runs one store only.
            if std::env::var("STRONGROOM_BENCH_ONLY").is_ok_and(|only| !kind.starts_with(&only)) {
                continue;
            }
            let key = Arc::new(LocalKey::generate().expect("key"));
            let keys = KeyRing::new(key.clone());
            let sqlite = (kind == "sqlite_full")
                .then(|| SqliteStore::open(dir.path().join(format!("r{n}.db"))).expect("open"));
            let store: Arc<dyn Store> = match &sqlite {
                Some(sqlite) => Arc::new(sqlite.clone()),
                None => Arc::new(MemoryStore::new()),
            };
            let seeding = Instant::now();
            seed(&store, &keys, n).await;
            let seeded_s = seeding.elapsed().as_secs_f64();
            let vault = Vault::builder()
                .store(store)
                .key_wrapper(key.clone())
                .build()
                .await
                .expect("vault");
            run(&vault, n, 0.5).await; // warm up
            let rss_before = rss_mb();
            let before = sqlite.as_ref().map(|s| s.writer_stats());
            let (rate, p50, p99) = run(&vault, n, secs).await;
            let rss_growth = rss_mb() - rss_before;
            let batches_per_sync = match (&sqlite, before) {
                (Some(s), Some(b)) => per_sync(s, b),
                _ => serde_json::Value::Null,
            };
            if kind == "sqlite_full"
                && n >= 100_000
                && std::env::var_os("STRONGROOM_BENCH_NO_WARM").is_none()
            {
                // The same store, default options, after every credential has been looked up
                // once (as a long-running service's cache would be): the steady state.
                let sqlite = sqlite.as_ref().expect("sqlite");
                let rss_before = rss_mb();
                let loading = Instant::now();
                let store: Arc<dyn Store> = Arc::new(sqlite.clone());
                let mut tasks = Vec::new();
                for t in 0..8usize {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        for u in (t..n).step_by(8) {
                            let scope =
                                Scope::per_app_per_user("crm", format!("user{u}")).expect("scope");
                            store.find_named(&scope, "openai_main").await.expect("load");
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("loader");
                }
                let loaded_s = loading.elapsed().as_secs_f64();
                let rss_after = rss_mb();
                let before = sqlite.writer_stats();
                let (rate, p50, p99) = run(&vault, n, secs).await;
                results.insert(
                    format!("{kind}_{n}_every_credential_looked_up_once"),
                    serde_json::json!({
                        "credentials": n,
                        "resolves_per_s": rate,
                        "p50_us": p50,
                        "p99_us": p99,
                        "batches_per_sync": per_sync(sqlite, before),
                        "load_s": (loaded_s * 10.0).round() / 10.0,
                        "load_rss_growth_mb": rss_after - rss_before,
                    }),
                );
            }
            results.insert(
                format!("{kind}_{n}"),
                serde_json::json!({
                    "credentials": n,
                    "resolves_per_s": rate,
                    "p50_us": p50,
                    "p99_us": p99,
                    "seed_s": (seeded_s * 10.0).round() / 10.0,
                    "batches_per_sync": batches_per_sync,
                    "run_rss_growth_mb": rss_growth,
                }),
            );
        }
    }
    results.insert("callers".into(), CALLERS.into());
    println!("{}", serde_json::to_string_pretty(&results).expect("json"));
}
