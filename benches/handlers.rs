//! Catalog load of every bundled provider, and validation of typical credentials by their
//! handler and provider (the check `Vault::create` runs before anything is stored).
//!
//! `cargo bench --bench handlers`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use strongroom::catalog::Catalog;
use strongroom::handlers::{Fields, HandlerRegistry};
use strongroom::SecretString;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fields(pairs: &[(&str, String)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.clone())))
        .collect()
}

fn bench(c: &mut Criterion) {
    let registry = HandlerRegistry::builtin();

    let mut group = c.benchmark_group("catalog");
    group.bench_function("load_bundled", |b| {
        b.iter(|| {
            let catalog = Catalog::bundled(black_box(&registry));
            assert!(catalog.problems().is_empty());
            black_box(catalog.providers().count())
        })
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
    group.bench_function("load_bundled_plus_folder", |b| {
        b.iter(|| {
            let catalog = Catalog::load(&registry, Some(&dir)).expect("load");
            black_box(catalog.providers().count())
        })
    });
    group.finish();

    // (provider, handler type, fields): what `create` checks.
    let cases: Vec<(&str, &str, &str, Fields)> = vec![
        (
            "api_key",
            "openai",
            "api_key",
            fields(&[("api_key", "sk-proj-4f1a9c0e7d2b".into())]),
        ),
        (
            "connection_string",
            "redis",
            "connection_string",
            fields(&[("url", "rediss://app:s3cr3t@cache.internal:6380/0".into())]),
        ),
        (
            "database_fields",
            "postgres",
            "database_fields",
            fields(&[
                ("host", "db.internal".into()),
                ("port", "5432".into()),
                ("user", "app".into()),
                ("password", "s3cr3t pass".into()),
                ("database", "app".into()),
            ]),
        ),
        (
            "aws_access_key",
            "aws",
            "aws_access_key",
            fields(&[
                ("access_key_id", "AKIAIOSFODNN7EXAMPLE".into()),
                (
                    "secret_access_key",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                ),
                ("region", "eu-west-1".into()),
            ]),
        ),
        (
            "gcp_service_account",
            "gcp",
            "gcp_service_account",
            fields(&[("service_account_json", fixture("gcp_service_account.json"))]),
        ),
        (
            "client_certificate_rsa",
            "",
            "client_certificate",
            fields(&[
                ("certificate", fixture("rsa_cert.pem")),
                ("private_key", fixture("rsa_pkcs8.pem")),
            ]),
        ),
        (
            "client_certificate_ec",
            "",
            "client_certificate",
            fields(&[
                ("certificate", fixture("ec_cert.pem")),
                ("private_key", fixture("ec_pkcs8.pem")),
            ]),
        ),
        (
            "ssh_key_ed25519",
            "",
            "ssh_key",
            fields(&[("private_key", fixture("ssh_ed25519"))]),
        ),
    ];
    let catalog = Catalog::bundled(&registry);
    let mut group = c.benchmark_group("validate");
    for (label, provider, handler_type, f) in &cases {
        let handler = registry.require(handler_type).expect("handler");
        let provider = (!provider.is_empty()).then(|| catalog.require(provider).expect("p"));
        handler.validate(f).expect("a good field set");
        if let Some(p) = provider {
            p.check_fields(f)
                .expect("a good field set for the provider");
        }
        group.bench_function(*label, |b| {
            b.iter(|| {
                handler.validate(black_box(f)).expect("valid");
                if let Some(p) = provider {
                    p.check_fields(black_box(f)).expect("valid");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
