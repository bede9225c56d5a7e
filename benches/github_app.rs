//! GitHub App token speed, printed as one JSON object:
//! - minting the App's JWT (RS256 with ring, RSA-2048 test key): p50/p99 over 1,000 mints;
//!   for comparison, the two parts of an RS256 signature with the pure-Rust `rsa` crate
//!   (parsing the key's DER, and signing with a parsed key);
//! - `InstallationTokenCache::get_or_mint` on a cached token, with and without a narrowing:
//!   nanoseconds per call, one caller (the first call mints through an in-process transport
//!   that answers like GitHub, so no network is involved).
//!
//! `cargo bench --bench github_app`  (`STRONGROOM_BENCH_QUICK=1`: a short run)

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use strongroom::integrations::github_app::{GithubApp, InstallationTokenCache, TokenNarrowing};
use strongroom::{Bytes, ExposeSecret, HttpTransport, Result, SecretString, Timestamp};

const KEY: &str = include_str!("../tests/data/github_app/pkcs1.pem");

/// Answers every request like GitHub's token endpoint: 201, an hour-long token.
#[derive(Debug)]
struct GithubLike;

#[async_trait]
impl HttpTransport for GithubLike {
    async fn send(&self, _request: http::Request<Bytes>) -> Result<http::Response<Bytes>> {
        let expires = Timestamp::now()
            .saturating_add(Duration::from_secs(3600))
            .to_rfc3339()
            .unwrap_or_default();
        let body = format!(r#"{{"token":"ghs_bench0123456789abcdef","expires_at":"{expires}"}}"#);
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() = http::StatusCode::CREATED;
        Ok(response)
    }
}

/// p50 and p99 of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::var("STRONGROOM_BENCH_QUICK").is_ok();
    let mints = if quick { 100 } else { 1_000 };
    let lookups = if quick { 100_000 } else { 2_000_000 };

    let app = GithubApp::new("123456", None, 42, SecretString::from(KEY.to_string())).expect("app");
    let now = Timestamp::now();
    // The parts of a mint, alone, for comparison: jsonwebtoken (rust_crypto) parses the
    // key's DER on every signature, then signs with blinding.
    let private = rsa::RsaPrivateKey::from_pkcs1_pem(KEY).expect("key");
    let der = private.to_pkcs1_der().expect("der");
    let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(private);
    let jwt = app.jwt(now).expect("jwt");
    let signed_part = jwt
        .expose_secret()
        .rsplit_once('.')
        .map(|(s, _)| s.to_string())
        .expect("dot");
    let mut rng = rsa::rand_core::OsRng;
    for _ in 0..10 {
        std::hint::black_box(app.jwt(now).expect("jwt"));
    }
    // Interleaved, so that load from elsewhere on the machine falls on all three alike.
    let (mut jwts, mut parses, mut signs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..mints {
        let start = Instant::now();
        std::hint::black_box(app.jwt(now).expect("jwt"));
        jwts.push(start.elapsed());
        let start = Instant::now();
        std::hint::black_box(rsa::RsaPrivateKey::from_pkcs1_der(der.as_bytes()).expect("parse"));
        parses.push(start.elapsed());
        let start = Instant::now();
        std::hint::black_box(
            signer
                .sign_with_rng(&mut rng, signed_part.as_bytes())
                .to_vec(),
        );
        signs.push(start.elapsed());
    }
    let (jwt_p50, jwt_p99) = percentiles(jwts);
    let (parse_p50, _) = percentiles(parses);
    let (sign_p50, sign_p99) = percentiles(signs);

    // Cached lookups.
    let http = GithubLike;
    let cache = InstallationTokenCache::new();
    let base = "https://api.github.com";
    let none = TokenNarrowing::none();
    let mut narrowed = TokenNarrowing {
        repositories: vec!["docs".into(), "site".into()],
        ..TokenNarrowing::default()
    };
    narrowed
        .permissions
        .insert("contents".into(), "read".into());
    let mut per_call = Vec::new();
    for narrow in [&none, &narrowed] {
        cache
            .get_or_mint(&http, base, &app, narrow, Timestamp::now())
            .await
            .expect("mint");
        let at = Timestamp::now();
        let start = Instant::now();
        for _ in 0..lookups {
            let token = cache
                .get_or_mint(&http, base, &app, narrow, at)
                .await
                .expect("cached");
            std::hint::black_box(token);
        }
        per_call.push(start.elapsed().as_secs_f64() * 1e9 / lookups as f64);
    }

    println!(
        "{}",
        serde_json::json!({
            "jwt_mints": mints,
            "jwt_p50_us": round2(jwt_p50),
            "jwt_p99_us": round2(jwt_p99),
            "rsa_key_parse_p50_us": round2(parse_p50),
            "rsa_blinded_sign_parsed_key_p50_us": round2(sign_p50),
            "rsa_blinded_sign_parsed_key_p99_us": round2(sign_p99),
            "cached_lookups": lookups,
            "cached_get_or_mint_ns": per_call[0].round(),
            "cached_get_or_mint_narrowed_ns": per_call[1].round(),
        })
    );
}
