//! Envelope seal + open of a 64-byte secret against raw AES-256-GCM on the same bytes.
//!
//! `cargo bench --bench envelope`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{criterion_group, criterion_main, Criterion};
use strongroom::{ExposeSecret, KeyRing, LocalKey, RecordIdentity, Scope};

fn bench(c: &mut Criterion) {
    let secret = [0x5au8; 64];
    let mut group = c.benchmark_group("seal_open_64B");

    // Raw AES-256-GCM with an expanded key kept between calls: one seal and one open.
    let key = [7u8; 32];
    let cipher = Aes256Gcm::new(&key.into());
    group.bench_function("raw_aes_gcm_prekeyed", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).expect("random");
            let mut buf = black_box(secret);
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf)
                .expect("seal");
            cipher
                .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf, &tag)
                .expect("open");
            black_box(buf)
        })
    });

    // Raw AES-256-GCM keyed per message (key schedule in both seal and open).
    group.bench_function("raw_aes_gcm_keyed", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).expect("random");
            let mut buf = black_box(secret);
            let tag = Aes256Gcm::new(&black_box(key).into())
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf)
                .expect("seal");
            Aes256Gcm::new(&black_box(key).into())
                .decrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut buf, &tag)
                .expect("open");
            black_box(buf)
        })
    });

    // The envelope: fresh DEK and nonce, DEK wrapped under the local master key with the
    // record's identity, key commitment, payload sealed; then parse, unwrap, check, open.
    let ring = KeyRing::new(Arc::new(LocalKey::generate().expect("key")));
    let scope = Scope::per_user("alice").expect("scope");
    let id = RecordIdentity::new("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", &scope, 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    group.bench_function("envelope_local_key", |b| {
        b.to_async(&rt).iter(|| async {
            let sealed = ring.seal(black_box(&secret), &id).await.expect("seal");
            let plain = ring.open(&sealed.bytes, &id).await.expect("open");
            black_box(plain.expose_secret().len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
