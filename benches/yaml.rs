//! The YAML layer at scale: `yaml check` (parse and compile) and `yaml migrate-credentials`
//! (migrate, with the data check, and the diff) of one mapping with N templated keys, for
//! N doubling from 12,500 to 100,000. Time in proportion to N shows as a constant time per
//! key. Prints one JSON object.
//!
//! `cargo bench --bench yaml`  (`STRONGROOM_BENCH_QUICK=1` for a short smoke run)

use std::time::{Duration, Instant};

use strongroom::config::migrate::migrate_text;
use strongroom::config::{compile, AppConfig, Slots};

fn quick() -> bool {
    std::env::var_os("STRONGROOM_BENCH_QUICK").is_some()
}

/// One mapping (the document's root, a block: it names a provider) with `n` templated keys.
fn app(n: usize) -> String {
    let mut yaml = String::with_capacity(n * 32);
    yaml.push_str("provider: openai\n");
    for i in 0..n {
        yaml.push_str(&format!("key_{i}: '{{{{env.KEY_{i}}}}}'\n"));
    }
    yaml
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let catalog =
        strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin());
    let slots = Slots::new();
    let (sizes, runs): (&[usize], usize) = if quick() {
        (&[1_000, 2_000], 1)
    } else {
        (&[12_500, 25_000, 50_000, 100_000], 3)
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let text = app(n);
        let check = median(runs, || {
            let config = AppConfig::parse("app.yaml", text.as_str()).expect("parse");
            let m = compile("app", &config, &slots, &catalog).expect("compiles");
            assert_eq!(m.warnings.len(), 1);
        });
        let migrate = median(runs, || {
            let m = migrate_text("app.yaml", &text).expect("migrate");
            assert_eq!(m.blocks.len(), 1);
            assert!(m.diff().len() > text.len());
        });
        rows.push(serde_json::json!({
            "keys": n,
            "bytes": text.len(),
            "check_s": check.as_secs_f64(),
            "migrate_s": migrate.as_secs_f64(),
            "check_us_per_key": check.as_secs_f64() * 1e6 / n as f64,
            "migrate_us_per_key": migrate.as_secs_f64() * 1e6 / n as f64,
        }));
    }
    let report = serde_json::json!({ "runs_per_size": runs, "sizes": rows });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
