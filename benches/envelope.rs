//! Envelope seal + open against raw AES-256-GCM on the same bytes, at 64 bytes and 4 KiB.
//!
//! `cargo bench --bench envelope` (`-- --quick --noplot` for shorter runs)
//!
//! Baselines (each one seal and one open of the same message):
//! - `ring_prekeyed`: ring's AES-256-GCM, key schedule built once and kept;
//! - `ring_fresh_key`: ring, a key schedule built for the seal and another for the open;
//! - `rustcrypto_prekeyed`, `rustcrypto_keyed`: the same two with `aes-gcm` 0.10 (what the
//!   envelope used before issue 14).
//!
//! The raw baselines take their nonces from a counter (no system call), so that the ratios
//! show what the envelope adds on top of the cipher.
//!
//! The envelope: `KeyRing::seal` + `KeyRing::open` with a local master key, without a
//! data-key cache (`envelope_no_cache`: the open unwraps and derives) and with the cache a
//! vault has by default (`envelope_cached`: the seal keeps the payload key it made, so the
//! open finds it).
//!
//! Open only (`open_64B`, `open_4KiB`): ring's raw open against `KeyRing::open` of a blob
//! whose payload key is cached.
//!
//! The clock is the benchmarking thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, user and
//! system time: the envelope's system calls count), not wall time: on a machine shared with
//! other builds, wall time also counts the time the thread waited for a core.
//! `STRONGROOM_BENCH_CLOCK=wall` measures wall time instead.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion};
use ring::aead::{Aad, LessSafeKey, UnboundKey, AES_256_GCM};
use strongroom::crypto::DekCacheConfig;
use strongroom::{ExposeSecret, KeyRing, LocalKey, RecordIdentity, Scope};

const KEY: [u8; 32] = [7u8; 32];

/// This thread's CPU time (or wall time, with `STRONGROOM_BENCH_CLOCK=wall`), in ns.
struct Clock {
    wall: bool,
    formatter: WallTime,
}

impl Clock {
    fn now(&self) -> f64 {
        if self.wall {
            return std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as f64;
        }
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
    }
}

impl Measurement for Clock {
    type Intermediate = f64;
    type Value = f64;
    fn start(&self) -> f64 {
        self.now()
    }
    fn end(&self, start: f64) -> f64 {
        self.now() - start
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, as criterion's wall clock formats them.
        self.formatter.formatter()
    }
}

/// A distinct nonce per message without a system call.
struct Counter(u64);

impl Counter {
    fn next(&mut self) -> [u8; 12] {
        self.0 += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.0.to_be_bytes());
        n
    }
}

fn ring_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &black_box(KEY)).expect("key"))
}

fn ring_seal_open(seal: &LessSafeKey, open: &LessSafeKey, nonce: [u8; 12], buf: &mut [u8]) {
    let tag = seal
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            buf,
        )
        .expect("seal");
    open.open_in_place_separate_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        tag,
        buf,
        0..,
    )
    .expect("open");
}

fn seal_open(c: &mut Criterion<Clock>, size: usize, label: &str) {
    let secret = vec![0x5au8; size];
    let mut group = c.benchmark_group(format!("seal_open_{label}"));

    let prekeyed = ring_key();
    let mut nonces = Counter(0);
    group.bench_function("ring_prekeyed", |b| {
        b.iter(|| {
            let mut buf = black_box(secret.clone());
            ring_seal_open(&prekeyed, &prekeyed, nonces.next(), &mut buf);
            black_box(buf)
        })
    });
    group.bench_function("ring_fresh_key", |b| {
        b.iter(|| {
            let mut buf = black_box(secret.clone());
            ring_seal_open(&ring_key(), &ring_key(), nonces.next(), &mut buf);
            black_box(buf)
        })
    });

    let cipher = Aes256Gcm::new(&KEY.into());
    group.bench_function("rustcrypto_prekeyed", |b| {
        b.iter(|| {
            let nonce = nonces.next();
            let mut buf = black_box(secret.clone());
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf)
                .expect("seal");
            cipher
                .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf, &tag)
                .expect("open");
            black_box(buf)
        })
    });
    group.bench_function("rustcrypto_keyed", |b| {
        b.iter(|| {
            let nonce = nonces.next();
            let mut buf = black_box(secret.clone());
            let tag = Aes256Gcm::new(&black_box(KEY).into())
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf)
                .expect("seal");
            Aes256Gcm::new(&black_box(KEY).into())
                .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf, &tag)
                .expect("open");
            black_box(buf)
        })
    });

    // The envelope: fresh data key and nonce, the data key wrapped under the local master
    // key with the record's identity, the payload key and commitment derived, the payload
    // sealed; then parse, unwrap (or find the cached payload key), check, open.
    let scope = Scope::per_user("alice").expect("scope");
    let id = RecordIdentity::new("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", &scope, 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let master = Arc::new(LocalKey::generate().expect("key"));
    for (name, ring) in [
        ("envelope_no_cache", KeyRing::new(master.clone())),
        (
            "envelope_cached",
            KeyRing::new(master.clone()).with_dek_cache(DekCacheConfig::default()),
        ),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let sealed = ring.seal(black_box(&secret), &id).await.expect("seal");
                let plain = ring.open(&sealed.bytes, &id).await.expect("open");
                black_box(plain.expose_secret().len())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("open_{label}"));
    let nonce = [9u8; 12];
    let mut sealed_raw = secret.clone();
    let tag = prekeyed
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed_raw,
        )
        .expect("seal");
    group.bench_function("ring_prekeyed", |b| {
        b.iter(|| {
            let mut buf = black_box(sealed_raw.clone());
            prekeyed
                .open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    tag,
                    &mut buf,
                    0..,
                )
                .expect("open");
            black_box(buf)
        })
    });
    let ring = KeyRing::new(master.clone()).with_dek_cache(DekCacheConfig {
        max_uses: u64::MAX,
        max_age: Duration::from_secs(3600),
        ..DekCacheConfig::default()
    });
    let blob = rt.block_on(ring.seal(&secret, &id)).expect("seal").bytes;
    group.bench_function("envelope_cached", |b| {
        b.to_async(&rt).iter(|| async {
            let plain = ring.open(black_box(&blob), &id).await.expect("open");
            black_box(plain.expose_secret().len())
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion<Clock>) {
    seal_open(c, 64, "64B");
    seal_open(c, 4096, "4KiB");
}

fn clock() -> Criterion<Clock> {
    Criterion::default().with_measurement(Clock {
        wall: std::env::var("STRONGROOM_BENCH_CLOCK").is_ok_and(|v| v == "wall"),
        formatter: WallTime,
    })
}

criterion_group! {
    name = benches;
    config = clock();
    targets = bench
}
criterion_main!(benches);
