//! The log scrubber's throughput: the same log text scrubbed with nothing registered and
//! with 10,000 registered secrets (the automaton built, and with 64 of them still pending).
//! One in 500 lines carries a registered secret (raw or encoded). Runs interleave, and each
//! figure is the median of the rounds. Prints one JSON object.
//!
//! `cargo bench --bench scrub`  (`STRONGROOM_BENCH_QUICK=1` for a short smoke run)

use std::hint::black_box;
use std::time::Instant;

use base64::Engine;
use strongroom::scrub::{Scrubber, ScrubberConfig};

/// A small deterministic generator (xorshift), so every run scrubs the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn token(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const SYMBOLS: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*-_=+";

/// 10,000 secrets shaped like real ones: API keys, GitHub and GitLab tokens, JWT-like
/// OAuth tokens, passwords.
fn secrets(rng: &mut Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 5 {
            0 => format!("sk-{}", rng.token(ALNUM, 48)),
            1 => format!("ghs_{}", rng.token(ALNUM, 36)),
            2 => format!("glpat-{}", rng.token(ALNUM, 20)),
            3 => format!(
                "eyJ{}.{}.{}",
                rng.token(ALNUM, 30),
                rng.token(ALNUM, 60),
                rng.token(ALNUM, 43)
            ),
            _ => {
                let len = 12 + (rng.next() % 9) as usize;
                rng.token(SYMBOLS, len)
            }
        })
        .collect()
}

/// About `bytes` of log lines in tracing-subscriber's fmt shape, with request ids, hex
/// digests, paths and numbers; one line in 500 carries one of `secrets` (raw, base64,
/// percent-encoded or JSON-escaped).
fn log_text(rng: &mut Rng, bytes: usize, secrets: &[String]) -> Vec<String> {
    let levels = ["INFO", "DEBUG", "WARN", "TRACE"];
    let ops = [
        "resolve",
        "reveal",
        "inject",
        "create",
        "grant_add",
        "oauth_refresh",
    ];
    let mut lines = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < bytes {
        i += 1;
        let mut line = format!(
            "2026-12-02T01:{:02}:{:02}.{:06}Z  {} vault{{op={} principal=runtime:crm:user{} \
             credential_id={}-{}-7{} scope=per_app_per_user:crm:user{}}}: strongroom::vault: \
             request_id={} path=/v1/credentials/{}/fields status={} elapsed_us={} digest={}",
            (i / 60) % 60,
            i % 60,
            rng.next() % 1_000_000,
            levels[(rng.next() % 4) as usize],
            ops[(rng.next() % 6) as usize],
            rng.next() % 5000,
            rng.token(HEX, 8),
            rng.token(HEX, 4),
            rng.token(HEX, 3),
            rng.next() % 5000,
            rng.token(ALNUM, 22),
            rng.token(HEX, 12),
            [200, 201, 403, 404][(rng.next() % 4) as usize],
            rng.next() % 100_000,
            rng.token(HEX, 40),
        );
        if i.is_multiple_of(500) {
            let secret = &secrets[(rng.next() % secrets.len() as u64) as usize];
            let carried = match i % 2000 {
                500 => secret.clone(),
                1000 => base64::engine::general_purpose::STANDARD.encode(format!("u:{secret}")),
                1500 => serde_json::to_string(secret).expect("json"),
                _ => secret
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect(),
            };
            line.push_str(" token=");
            line.push_str(&carried);
        }
        line.push('\n');
        total += line.len();
        lines.push(line);
    }
    lines
}

/// This thread's CPU time: the figures count time on the CPU only, so that other work on a
/// busy machine does not show up as a slower scrubber (wall-clock figures are printed too).
fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// GB/s (CPU time) of scrubbing every line on its own (as the log writer sees each event),
/// GB/s wall-clock, and the lines redacted.
fn per_line(scrubber: &Scrubber, lines: &[String], bytes: usize) -> (f64, f64, usize) {
    let (wall, cpu) = (Instant::now(), cpu_now());
    let mut redacted = 0;
    for line in lines {
        if let std::borrow::Cow::Owned(_) = black_box(scrubber.scrub(black_box(line))) {
            redacted += 1;
        }
    }
    let gb = bytes as f64 / 1e9;
    (
        gb / (cpu_now() - cpu),
        gb / wall.elapsed().as_secs_f64(),
        redacted,
    )
}

/// GB/s (CPU time) of scrubbing the text in 1 MiB pieces (a file or a batch of events).
fn chunked(scrubber: &Scrubber, chunks: &[String], bytes: usize) -> f64 {
    let cpu = cpu_now();
    for chunk in chunks {
        black_box(scrubber.scrub(black_box(chunk)));
    }
    bytes as f64 / 1e9 / (cpu_now() - cpu)
}

fn main() {
    let quick = std::env::var_os("STRONGROOM_BENCH_QUICK").is_some();
    let (size, rounds) = if quick { (8 << 20, 3) } else { (64 << 20, 7) };
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let all = secrets(&mut rng, 10_064);
    let (registered, late) = all.split_at(10_000);
    let lines = log_text(&mut rng, size, registered);
    let bytes: usize = lines.iter().map(String::len).sum();
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    for line in &lines {
        chunk.push_str(line);
        if chunk.len() >= 1 << 20 {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    chunks.push(chunk);

    // No background rebuilds: the "pending" scrubber keeps its 64 pending values, and no
    // build runs beside the measurements.
    let config = ScrubberConfig::default()
        .max_values(20_000)
        .background(false);
    let empty = Scrubber::new(config.clone());
    let full = Scrubber::new(config.clone());
    let started = Instant::now();
    for s in registered {
        full.register(s);
    }
    let register_10k = started.elapsed();
    let started = Instant::now();
    full.rebuild();
    let build_10k = started.elapsed();
    // The same 10,000 plus 64 registered after the build: searched linearly until the next.
    let pending = Scrubber::new(config);
    for s in registered {
        pending.register(s);
    }
    pending.rebuild();
    for s in late {
        pending.register(s);
    }
    let stats = full.stats();
    let pending_stats = pending.stats();

    let names = ["empty", "10k", "10k+64 pending"];
    let scrubbers = [&empty, &full, &pending];
    let mut line_rates = vec![Vec::new(); 3];
    let mut wall_rates = vec![Vec::new(); 3];
    let mut chunk_rates = vec![Vec::new(); 3];
    let mut ratio_lines = Vec::new();
    let mut ratio_chunks = Vec::new();
    let mut redacted_lines = [0usize; 3];
    for _ in 0..rounds {
        let mut round_lines = [0.0; 3];
        let mut round_chunks = [0.0; 3];
        for (k, s) in scrubbers.iter().enumerate() {
            let (rate, wall, redacted) = per_line(s, &lines, bytes);
            wall_rates[k].push(wall);
            round_lines[k] = rate;
            redacted_lines[k] = redacted;
            round_chunks[k] = chunked(s, &chunks, bytes);
            line_rates[k].push(rate);
            chunk_rates[k].push(round_chunks[k]);
        }
        ratio_lines.push(round_lines[0] / round_lines[1]);
        ratio_chunks.push(round_chunks[0] / round_chunks[1]);
    }
    // Every line that carries a registered secret was redacted, and no other.
    let carrying = lines.iter().filter(|l| l.contains(" token=")).count();
    assert_eq!(redacted_lines[0], 0, "nothing registered redacts nothing");
    assert_eq!(redacted_lines[1], carrying, "every carried secret redacted");
    assert_eq!(redacted_lines[2], carrying, "every carried secret redacted");

    let mut out = serde_json::Map::new();
    out.insert("text_bytes".into(), bytes.into());
    out.insert("lines".into(), lines.len().into());
    out.insert("lines_with_a_secret".into(), carrying.into());
    out.insert("rounds".into(), rounds.into());
    for (k, name) in names.iter().enumerate() {
        out.insert(
            format!("{name}: GB/s per line (CPU time)"),
            serde_json::json!((median(line_rates[k].clone()) * 1000.0).round() / 1000.0),
        );
        out.insert(
            format!("{name}: GB/s per line (wall clock)"),
            serde_json::json!((median(wall_rates[k].clone()) * 1000.0).round() / 1000.0),
        );
        out.insert(
            format!("{name}: GB/s in 1 MiB chunks (CPU time)"),
            serde_json::json!((median(chunk_rates[k].clone()) * 1000.0).round() / 1000.0),
        );
    }
    out.insert(
        "slowdown 10k vs empty, per line (median of paired rounds)".into(),
        serde_json::json!((median(ratio_lines) * 1000.0).round() / 1000.0),
    );
    out.insert(
        "slowdown 10k vs empty, chunks (median of paired rounds)".into(),
        serde_json::json!((median(ratio_chunks) * 1000.0).round() / 1000.0),
    );
    out.insert(
        "register 10k (ms)".into(),
        serde_json::json!(register_10k.as_secs_f64() * 1e3),
    );
    out.insert(
        "build 10k (ms)".into(),
        serde_json::json!(build_10k.as_secs_f64() * 1e3),
    );
    out.insert("10k form_bytes".into(), stats.form_bytes.into());
    out.insert("10k filter_bytes".into(), stats.filter_bytes.into());
    out.insert("10k automaton_bytes".into(), stats.automaton_bytes.into());
    out.insert("pending after 64 late".into(), pending_stats.pending.into());
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
