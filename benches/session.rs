//! Session start for an app with 20 credential slots (lookup, decrypt, inject, 20 durable
//! audit rows in one commit) on `SqliteStore` (`synchronous=FULL`, group commit) and
//! `MemoryStore`; and the template migrator over 1,000 YAML files. Prints one JSON object.
//!
//! `cargo bench --bench session`  (`STRONGROOM_BENCH_QUICK=1` for a short smoke run)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::config::migrate::{migrate_file, FileOutcome};
use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::{
    LocalKey, MemoryStore, NewCredential, Principal, Scope, SecretString, SqliteStore, Store, Vault,
};

const SLOTS: usize = 20;
const USERS: usize = 50;

fn quick() -> bool {
    std::env::var_os("STRONGROOM_BENCH_QUICK").is_some()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// An app whose 20 agents each name a user-scoped credential: 10 per_user (granted to the
/// app) and 10 per_app_per_user, so every session decrypts 20 blobs.
fn app_yaml() -> String {
    let mut yaml = String::from("agents:\n");
    for i in 0..SLOTS {
        let scope = if i % 2 == 0 {
            "per_user"
        } else {
            "per_app_per_user"
        };
        yaml.push_str(&format!(
            "  - id: agent{i}\n    brain:\n      provider: openai\n      credential: {{ref: key{i}, scope: {scope}}}\n      config:\n        temperature: 0.{i}\n"
        ));
    }
    yaml
}

async fn setup(store: Arc<dyn Store>) -> strongroom::config::Deployment {
    let vault = Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    for u in 0..USERS {
        let user = format!("user{u}");
        let me = Principal::parse(&format!("app_user:crm:{user}")).expect("p");
        for i in 0..SLOTS {
            let scope = if i % 2 == 0 {
                Scope::per_user(user.clone()).expect("s")
            } else {
                Scope::per_app_per_user("crm", user.clone()).expect("s")
            };
            let fields = BTreeMap::from([(
                "api_key".to_string(),
                SecretString::from(format!("sk-proj-{user}-{i}-0123456789abcdef")),
            )]);
            let info = vault
                .create(
                    &me,
                    NewCredential::new(format!("key{i}"), scope, "openai", "", fields),
                )
                .await
                .expect("create");
            if i % 2 == 0 {
                vault.grant_add(&me, &info.id, "crm").await.expect("grant");
            }
        }
    }
    let slots = Slots::new().declare(
        "brain",
        CredentialSlot::new("brain_credential", "LLM")
            .handler_types(["api_key"])
            .inject("api_key", "{block}.config.api_key"),
    );
    let config = AppConfig::parse("bench.yaml", app_yaml()).expect("yaml");
    let manifest = compile("crm", &config, &slots, &vault.catalog()).expect("compile");
    Deployment::new(&vault, manifest).await.expect("deploy")
}

/// Sequential sessions from one caller: per-session latency.
async fn sequential(deployment: &strongroom::config::Deployment, n: usize) -> serde_json::Value {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for k in 0..n {
        let t = Instant::now();
        let s = deployment
            .start_session(&format!("user{}", k % USERS))
            .await
            .expect("session");
        assert_eq!(s.injected_count(), SLOTS);
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    lat.sort();
    serde_json::json!({
        "sessions": n,
        "sessions_per_s": (n as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": percentile(&lat, 0.5).round(),
        "p99_us": percentile(&lat, 0.99).round(),
    })
}

/// `callers` concurrent callers: throughput and latency under group commit.
async fn concurrent(
    deployment: Arc<strongroom::config::Deployment>,
    callers: usize,
    per_caller: usize,
) -> serde_json::Value {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let d = deployment.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_caller);
            for k in 0..per_caller {
                let t = Instant::now();
                d.start_session(&format!("user{}", (c * 7 + k) % USERS))
                    .await
                    .expect("session");
                lat.push(t.elapsed());
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
        "sessions_per_s": (lat.len() as f64 / elapsed.as_secs_f64()).round(),
        "audit_rows_per_s": (lat.len() as f64 * SLOTS as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": percentile(&lat, 0.5).round(),
        "p99_us": percentile(&lat, 0.99).round(),
    })
}

fn migrate_1000() -> serde_json::Value {
    let legacy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/yaml/legacy_app.yaml"
    ))
    .expect("fixture");
    let runs = if quick() { 1 } else { 5 };
    let files = if quick() { 200 } else { 1000 };
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..files {
            let sub = dir.path().join(format!("team{}", i % 10));
            std::fs::create_dir_all(&sub).expect("mkdir");
            let text = legacy.replace("support-bot", &format!("app-{i}"));
            bytes += text.len();
            std::fs::write(sub.join(format!("app{i}.yaml")), text).expect("write");
        }
        let t = Instant::now();
        let paths = strongroom::config::migrate::yaml_files(dir.path(), true).expect("list files");
        let mut changed = 0;
        for p in &paths {
            if let FileOutcome::Changed(_) = migrate_file(p, true) {
                changed += 1;
            }
        }
        times.push(t.elapsed());
        assert_eq!(changed, files);
    }
    times.sort();
    serde_json::json!({
        "files": files,
        "bytes_per_file": bytes / (runs * files),
        "runs": runs,
        "median_s": times[times.len() / 2].as_secs_f64(),
        "min_s": times[0].as_secs_f64(),
        "max_s": times[times.len() - 1].as_secs_f64(),
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = if quick() { 100 } else { 2000 };
    let report = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("bench.db")).expect("sqlite"));
        let on_sqlite = Arc::new(setup(sqlite).await);
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let on_memory = Arc::new(setup(memory).await);
        // Warm up both (page cache, point cache).
        sequential(&on_sqlite, USERS).await;
        sequential(&on_memory, USERS).await;
        serde_json::json!({
            "slots_per_session": SLOTS,
            "sqlite_full_sync": {
                "one_caller": sequential(&on_sqlite, n).await,
                "sixteen_callers": concurrent(on_sqlite.clone(), 16, n / 16).await,
            },
            "memory": {
                "one_caller": sequential(&on_memory, n).await,
                "sixteen_callers": concurrent(on_memory.clone(), 16, n / 16).await,
            },
        })
    });
    let mut report = report;
    report["migrate"] = migrate_1000();
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
