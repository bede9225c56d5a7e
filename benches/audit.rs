//! Audited-commit throughput (SQLite `synchronous=FULL` with group commit, and memory) with
//! 64 concurrent writers, the one-commit-at-a-time baseline, and chain verification speed.
//! Prints one JSON object; every figure is the median of `RUNS` runs made in this one process.
//!
//! `cargo bench --bench audit`  (set `STRONGROOM_BENCH_QUICK=1` for a short smoke run)

use std::sync::Arc;
use std::time::{Duration, Instant};

use strongroom::audit::verify_chain;
use strongroom::{
    AuditEvent, AuditTarget, Batch, CredentialId, MemoryStore, Scope, SqliteStore, Store,
};

const WRITERS: usize = 64;

fn event(i: u64) -> AuditEvent {
    let id = CredentialId::new(format!("cred-{}", i % 1000)).expect("id");
    let scope = Scope::per_user(format!("user{}", i % 50)).expect("scope");
    AuditEvent::new(
        "app:crm",
        strongroom::Action::Resolve,
        AuditTarget::credential(&id, &scope),
    )
    .detail("slot", "brain.api_key")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// `WRITERS` tasks each commit `per_writer` one-event batches; returns (events/s, p50 µs, p99 µs).
async fn concurrent(store: Arc<dyn Store>, per_writer: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                store
                    .commit(Batch::events(vec![event((w * per_writer + i) as u64)]))
                    .await
                    .expect("commit");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("writer"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    (
        (WRITERS * per_writer) as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    )
}

async fn sequential(store: Arc<dyn Store>, n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        store
            .commit(Batch::events(vec![event(i as u64)]))
            .await
            .expect("commit");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("STRONGROOM_BENCH_QUICK").is_ok();
    let runs = if quick { 1 } else { 5 };
    let per_writer = if quick { 200 } else { 2_000 };
    let verify_rows: u64 = if quick { 50_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().expect("tempdir");

    // `STRONGROOM_BENCH_ONLY=sqlite_group_commit`: the SQLite group commit alone, `runs`
    // times, for quick A/B comparisons of two builds.
    if std::env::var("STRONGROOM_BENCH_ONLY").as_deref() == Ok("sqlite_group_commit") {
        let mut rates = Vec::new();
        for run in 0..runs {
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(dir.path().join(format!("g{run}.db"))).expect("open"));
            rates.push(concurrent(store, per_writer).await.0);
        }
        let json = serde_json::json!({
            "sqlite_full_group_commit_events_per_s": median(rates).round(),
            "runs": runs,
        });
        println!("{json}");
        return;
    }

    // `STRONGROOM_BENCH_ONLY=verify`: chain verification alone.
    let only_verify = std::env::var("STRONGROOM_BENCH_ONLY").as_deref() == Ok("verify");
    let runs = if only_verify { 0 } else { runs };
    let mut sqlite = (Vec::new(), Vec::new(), Vec::new());
    let mut memory = (Vec::new(), Vec::new(), Vec::new());
    let mut baseline = Vec::new();
    for run in 0..runs {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join(format!("c{run}.db"))).expect("open"));
        let (rate, p50, p99) = concurrent(store, per_writer).await;
        sqlite.0.push(rate);
        sqlite.1.push(p50);
        sqlite.2.push(p99);
        let (rate, p50, p99) = concurrent(Arc::new(MemoryStore::new()), per_writer * 4).await;
        memory.0.push(rate);
        memory.1.push(p50);
        memory.2.push(p99);
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join(format!("s{run}.db"))).expect("open"));
        baseline.push(sequential(store, if quick { 500 } else { 3_000 }).await);
    }

    // Chain verification: build a chain of `verify_rows` rows, then time full verifications.
    let store = SqliteStore::open(dir.path().join("verify.db")).expect("open");
    let mut next = 0u64;
    while next < verify_rows {
        let end = (next + 5_000).min(verify_rows);
        store
            .commit(Batch::events((next..end).map(event).collect()))
            .await
            .expect("commit");
        next = end;
    }
    let mut verify = Vec::new();
    for _ in 0..runs.max(5) {
        let start = Instant::now();
        let report = verify_chain(&store).await.expect("verify");
        assert!(report.is_ok() && report.rows == verify_rows);
        verify.push(verify_rows as f64 / start.elapsed().as_secs_f64());
    }

    if only_verify {
        let json = serde_json::json!({
            "verify_sqlite": { "rows": verify_rows, "rows_per_s": median(verify).round() },
        });
        println!("{json}");
        return;
    }
    let json = serde_json::json!({
        "writers": WRITERS,
        "runs": runs,
        "sqlite_full_group_commit": {
            "events_per_s": median(sqlite.0).round(),
            "p50_us": median(sqlite.1).round(),
            "p99_us": median(sqlite.2).round(),
            "events_per_run": WRITERS * per_writer,
        },
        "sqlite_full_one_writer_baseline_events_per_s": median(baseline).round(),
        "memory": {
            "events_per_s": median(memory.0).round(),
            "p50_us": median(memory.1),
            "p99_us": median(memory.2),
            "events_per_run": WRITERS * per_writer * 4,
        },
        "verify_sqlite": {
            "rows": verify_rows,
            "rows_per_s": median(verify).round(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&json).expect("json"));
}
