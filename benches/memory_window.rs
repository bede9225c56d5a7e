//! Issue 14, item 6: audited resolves on `MemoryStore` over a long run, measured in slices,
//! with the unbounded audit log and with `MemoryStore::with_audit_window`. Prints one JSON
//! object per store: the rate of every slice, the median of the first and the last five
//! slices and their ratio, the audit rows kept at the end, and the process's resident
//! memory.
//!
//! `cargo bench --bench memory_window`
//!
//! Environment: `STRONGROOM_BENCH_SECS` (run length, default 60), `STRONGROOM_BENCH_SLICE_MS`
//! (slice length, default 1000), `STRONGROOM_BENCH_WINDOW` (rows kept, default 100000),
//! `STRONGROOM_BENCH_ONLY=window|unbounded` (one store only; run each in its own process for
//! figures that do not share a heap).
//!
//! Setup as in `benches/resolve.rs`: 64 callers, 1,000 `per_app_per_user` credentials, each
//! resolve as `runtime:crm:userN` for a random N (policy, scope-strict lookup, decrypt, an
//! audit row).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::{
    Batch, CredentialId, CredentialRecord, CredentialRef, KeyRing, LifecycleState, LocalKey,
    MemoryStore, Mutation, Precondition, Principal, ResolveContext, Scope, ScopeKind, Store,
    Timestamp, Vault,
};

const CALLERS: usize = 64;
const USERS: u64 = 1_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("rate"));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Stores `openai_main` for (crm, user{i}), i < `USERS` (as `benches/resolve.rs` does).
async fn seed(store: &MemoryStore, keys: &KeyRing) {
    let now = Timestamp::now();
    let mut mutations = Vec::new();
    for u in 0..USERS {
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
}

async fn run(store: Arc<MemoryStore>, total: Duration, slice: Duration) -> serde_json::Value {
    let key = Arc::new(LocalKey::generate().expect("key"));
    seed(&store, &KeyRing::new(key.clone())).await;
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(key)
        .build()
        .await
        .expect("vault");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (vault, done, stop) = (vault.clone(), done.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut x = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let reference = CredentialRef::explicit(
                "openai_main",
                ScopeKind::PerAppPerUser,
                Some("openai".into()),
            );
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user = format!("user{}", x % USERS);
                let actor = Principal::AppRuntime {
                    app: "crm".into(),
                    user: user.clone(),
                };
                let ctx = ResolveContext {
                    app: "crm".into(),
                    user,
                };
                let got = vault
                    .resolve(&actor, &reference, &ctx)
                    .await
                    .expect("resolve");
                std::hint::black_box(got.fields.len());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The slices are taken by a thread of their own: a caller on the in-memory store never
    // waits, so the runtime's timers would not fire until the run ends.
    let start = Instant::now();
    let sampler = {
        let (done, stop) = (done.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut slices = Vec::new();
            let mut last = (start, 0u64);
            while start.elapsed() < total {
                std::thread::sleep(slice);
                let now = Instant::now();
                let n = done.load(Ordering::Relaxed);
                slices.push(((n - last.1) as f64 / (now - last.0).as_secs_f64()).round());
                last = (now, n);
            }
            stop.store(true, Ordering::Relaxed);
            slices
        })
    };
    for c in callers {
        c.await.expect("caller");
    }
    let slices = sampler.join().expect("sampler");
    let k = slices.len().min(5);
    let first = median(&slices[..k]);
    let tail = median(&slices[slices.len() - k..]);
    // The same run in 5-slice steps (5 s with the default slice), each the mean of its
    // slices.
    let fives: Vec<f64> = slices
        .chunks(5)
        .filter(|c| c.len() == 5)
        .map(|c| (c.iter().sum::<f64>() / 5.0).round())
        .collect();
    let window = store.audit_window();
    serde_json::json!({
        "seconds": start.elapsed().as_secs_f64().round(),
        "resolves": done.load(Ordering::Relaxed),
        "slice_ms": slice.as_millis() as u64,
        "per_s_slices": slices,
        "per_s_five_slices": fives,
        "median_first_5": first,
        "median_last_5": tail,
        "last_over_first": ((tail / first.max(1.0)) * 100.0).round() / 100.0,
        "median_all": median(&slices),
        "audit_rows_kept": window.kept,
        "audit_rows_dropped": window.dropped,
        "rss_mb_at_end": rss_mb(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = Duration::from_secs(env_u64("STRONGROOM_BENCH_SECS", 60));
    let slice = Duration::from_millis(env_u64("STRONGROOM_BENCH_SLICE_MS", 1000).max(10));
    let rows = env_u64("STRONGROOM_BENCH_WINDOW", 100_000) as usize;
    let only = std::env::var("STRONGROOM_BENCH_ONLY").ok();
    let mut report = serde_json::Map::new();
    if only.as_deref().is_none_or(|o| o == "window") {
        let store = Arc::new(MemoryStore::with_audit_window(rows));
        let mut r = run(store, total, slice).await;
        r["window_rows"] = rows.into();
        report.insert("window".into(), r);
    }
    if only.as_deref().is_none_or(|o| o == "unbounded") {
        let store = Arc::new(MemoryStore::new());
        report.insert("unbounded".into(), run(store, total, slice).await);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(report)).expect("json")
    );
}
