//! Every built-in credential type accepts a good field set and rejects bad ones with an
//! error that names the field, and never the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::handlers::{
    CredentialHandler, ExpiryRule, FieldFormat, FieldSpec, Fields, HandlerRegistry,
};
use strongroom::{Error, SecretString};

fn key(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect()
}

fn with(base: &[(&str, &str)], changes: &[(&str, Option<&str>)]) -> Fields {
    let mut f = fields(base);
    for (k, v) in changes {
        match v {
            Some(v) => {
                f.insert(k.to_string(), SecretString::from(v.to_string()));
            }
            None => {
                f.remove(*k);
            }
        }
    }
    f
}

/// Asserts a rejection naming `field`, without any of the submitted values in the message.
fn rejects(handler: &dyn CredentialHandler, f: &Fields, field: &str) {
    use strongroom::ExposeSecret;
    match handler.validate(f) {
        Err(Error::InvalidInput {
            field: named,
            reason,
        }) => {
            assert_eq!(
                named,
                field,
                "{}: wrong field named (reason: {reason})",
                handler.type_id()
            );
            let message = format!(
                "{}",
                Error::InvalidInput {
                    field: named,
                    reason
                }
            );
            for value in f.values() {
                let v = value.expose_secret();
                if v.len() >= 8 {
                    assert!(
                        !message.contains(v),
                        "{}: the error echoes a value: {message}",
                        handler.type_id()
                    );
                }
            }
        }
        other => panic!(
            "{}: expected a rejection naming `{field}`, got {other:?}",
            handler.type_id()
        ),
    }
}

fn accepts(handler: &dyn CredentialHandler, f: &Fields) {
    if let Err(e) = handler.validate(f) {
        panic!("{}: a good field set was refused: {e}", handler.type_id());
    }
}

/// Changes to the first good set (`None` removes a field), and the field the error must name.
type BadCase = (Vec<(&'static str, Option<String>)>, &'static str);

struct Case {
    good: Vec<Vec<(&'static str, String)>>,
    bad: Vec<BadCase>,
}

fn s(v: &str) -> String {
    v.to_string()
}

fn cases() -> BTreeMap<&'static str, Case> {
    let gcp = key("gcp_service_account.json");
    let sa: serde_json::Value = serde_json::from_str(&gcp).expect("json");
    let sa_with = |k: &str, v: serde_json::Value| {
        let mut o = sa.clone();
        o[k] = v;
        o.to_string()
    };
    let rsa_key = key("rsa_pkcs8.pem");
    let mut m = BTreeMap::new();
    m.insert(
        "api_key",
        Case {
            good: vec![
                vec![("api_key", s("sk-proj-abc123"))],
                vec![
                    ("api_key", s("sk-abc")),
                    ("organization", s("Acme Corp")),
                    ("base_url", s("https://api.example.com/v1")),
                ],
            ],
            bad: vec![
                (vec![("api_key", None)], "api_key"),
                (vec![("api_key", Some(s("sk-abc123\n")))], "api_key"),
                (vec![("base_url", Some(s("ftp://x")))], "base_url"),
                (vec![("colour", Some(s("blue")))], "colour"),
            ],
        },
    );
    m.insert(
        "bearer_token",
        Case {
            good: vec![vec![
                ("token", s("ghp_0123456789")),
                ("expires_at", s("1893456000")),
            ]],
            bad: vec![
                (vec![("token", Some(s("two words here")))], "token"),
                (vec![("expires_at", Some(s("next tuesday")))], "expires_at"),
            ],
        },
    );
    m.insert(
        "basic_auth",
        Case {
            good: vec![vec![
                ("username", s("alice")),
                ("password", s("correct horse battery")),
            ]],
            bad: vec![
                (vec![("username", Some(s("ali:ce")))], "username"),
                (vec![("password", None)], "password"),
            ],
        },
    );
    m.insert(
        "oauth2",
        Case {
            good: vec![vec![
                ("access_token", s("ya29.a0AfH6SM")),
                ("refresh_token", s("1//0gLxyz")),
                ("token_type", s("Bearer")),
                ("expires_at", s("1893456000")),
                ("client_secret", s("GOCSPX-secret")),
            ]],
            bad: vec![
                (vec![("token_type", Some(s("Cookie")))], "token_type"),
                (vec![("access_token", None)], "access_token"),
            ],
        },
    );
    m.insert(
        "oauth2_pkce",
        Case {
            good: vec![vec![
                ("access_token", s("at-123")),
                (
                    "code_verifier",
                    s("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
                ),
            ]],
            bad: vec![
                (vec![("code_verifier", Some(s("short")))], "code_verifier"),
                (
                    vec![("client_secret", Some(s("not-for-public-clients")))],
                    "client_secret",
                ),
            ],
        },
    );
    m.insert(
        "device_code",
        Case {
            good: vec![vec![
                ("client_id", s("Iv1.abc")),
                ("access_token", s("gho_abc")),
            ]],
            bad: vec![
                (vec![("client_id", None)], "client_id"),
                (vec![("expires_at", Some(s("-5")))], "expires_at"),
            ],
        },
    );
    m.insert(
        "multi_field",
        Case {
            good: vec![vec![
                ("secret_key", s("sk_live_abc")),
                ("account", s("acct_1")),
            ]],
            bad: vec![(vec![("secret_key", Some(s("bad\u{1}value")))], "secret_key")],
        },
    );
    m.insert(
        "connection_string",
        Case {
            good: vec![
                vec![(
                    "url",
                    s("postgres://app:s3cr3t-pass@db.internal:5432/app?sslmode=require"),
                )],
                vec![(
                    "url",
                    s("mongodb+srv://app:s3cr3t-pass@cluster0.example.net/app"),
                )],
                vec![("url", s("rediss://:s3cr3t-pass@cache.internal:6380/0"))],
                vec![("url", s("amqp://guest:guest@mq.internal:5672/%2f"))],
            ],
            bad: vec![
                (
                    vec![("url", Some(s("http://user:s3cr3t-pass@example.com")))],
                    "url",
                ),
                (
                    vec![("url", Some(s("postgres://user:s3cr3t-pass@:5432/db")))],
                    "url",
                ),
                (vec![("url", Some(s("not a url s3cr3t-pass")))], "url"),
                (
                    vec![(
                        "url",
                        Some(s("mongodb+srv://u:s3cr3t-pass@c.example.net:27017/x")),
                    )],
                    "url",
                ),
            ],
        },
    );
    m.insert(
        "aws_access_key",
        Case {
            good: vec![vec![
                ("access_key_id", s("AKIAIOSFODNN7EXAMPLE")),
                (
                    "secret_access_key",
                    s("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                ),
                ("region", s("eu-west-3")),
            ]],
            bad: vec![
                (
                    vec![("access_key_id", Some(s("akiaiosfodnn7example")))],
                    "access_key_id",
                ),
                (
                    vec![("access_key_id", Some(s("ASIAIOSFODNN7EXAMPLE")))],
                    "session_token",
                ),
                (vec![("region", Some(s("Europe")))], "region"),
                (
                    vec![("secret_access_key", Some(s("short")))],
                    "secret_access_key",
                ),
            ],
        },
    );
    m.insert(
        "gcp_service_account",
        Case {
            good: vec![vec![("service_account_json", gcp.clone())]],
            bad: vec![
                (
                    vec![(
                        "service_account_json",
                        Some(sa_with("type", "authorized_user".into())),
                    )],
                    "service_account_json",
                ),
                (
                    vec![(
                        "service_account_json",
                        Some(sa_with(
                            "private_key",
                            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                        )),
                    )],
                    "service_account_json",
                ),
                (
                    vec![(
                        "service_account_json",
                        Some(sa_with("client_email", "someone@example.com".into())),
                    )],
                    "service_account_json",
                ),
                (
                    vec![("service_account_json", Some(s("{not json")))],
                    "service_account_json",
                ),
            ],
        },
    );
    m.insert(
        "azure_ad",
        Case {
            good: vec![
                vec![
                    ("tenant_id", s("72f988bf-86f1-41af-91ab-2d7cd011db47")),
                    ("client_id", s("0f2c8f3e-5e0b-4c53-9c0a-1f1f6a1e2b3c")),
                    ("client_secret", s("abc~secret.value")),
                ],
                vec![
                    ("tenant_id", s("contoso.onmicrosoft.com")),
                    ("client_id", s("0f2c8f3e-5e0b-4c53-9c0a-1f1f6a1e2b3c")),
                    ("client_secret", s("abc~secret.value")),
                ],
            ],
            bad: vec![
                (vec![("tenant_id", Some(s("contoso")))], "tenant_id"),
                (vec![("client_id", Some(s("my-app")))], "client_id"),
            ],
        },
    );
    m.insert(
        "ssh_key",
        Case {
            good: vec![
                vec![("private_key", key("ssh_ed25519"))],
                vec![("private_key", key("ssh_keygen_ed25519"))],
                vec![("private_key", key("ssh_keygen_ecdsa_encrypted")), ("passphrase", s("correct horse"))],
                vec![("private_key", key("ssh_rsa"))],
                vec![("private_key", key("ssh_ed25519_encrypted")), ("passphrase", s("correct horse"))],
                vec![("private_key", key("rsa_pkcs1.pem"))],
                vec![("private_key", key("ec_sec1.pem"))],
                vec![("private_key", key("rsa_pkcs8_encrypted.pem")), ("passphrase", s("correct horse"))],
            ],
            bad: vec![
                (vec![("private_key", Some(key("ssh_ed25519_encrypted")))], "passphrase"),
                (
                    vec![("private_key", Some(key("ssh_ed25519_encrypted"))), ("passphrase", Some(s("wrong horse")))],
                    "passphrase",
                ),
                (vec![("passphrase", Some(s("unneeded pass")))], "passphrase"),
                (vec![("private_key", Some(key("rsa_cert.pem")))], "private_key"),
                (
                    vec![("private_key", Some(s("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")))],
                    "private_key",
                ),
            ],
        },
    );
    m.insert(
        "client_certificate",
        Case {
            good: vec![
                vec![
                    ("certificate", key("rsa_cert.pem")),
                    ("private_key", rsa_key.clone()),
                ],
                vec![
                    ("certificate", key("rsa_cert.pem")),
                    ("private_key", key("rsa_pkcs1.pem")),
                ],
                vec![
                    ("certificate", key("ec_cert.pem")),
                    ("private_key", key("ec_sec1.pem")),
                ],
                vec![
                    ("certificate", key("ec_cert.pem")),
                    ("private_key", key("ec_pkcs8.pem")),
                ],
                // A SEC1 key without its public point: the point is derived from the scalar.
                vec![
                    ("certificate", key("ec_cert.pem")),
                    ("private_key", key("ec_sec1_nopub.pem")),
                ],
                vec![
                    ("certificate", key("ed25519_cert.pem")),
                    ("private_key", key("ed25519_pkcs8.pem")),
                ],
                vec![
                    ("certificate", key("rsa_cert.pem")),
                    ("private_key", key("rsa_pkcs8_encrypted.pem")),
                    ("passphrase", s("correct horse")),
                    ("ca_certificate", key("ec_cert.pem")),
                ],
            ],
            bad: vec![
                (
                    vec![("private_key", Some(key("rsa2_pkcs8.pem")))],
                    "private_key",
                ),
                (
                    vec![("private_key", Some(key("ec_pkcs8.pem")))],
                    "private_key",
                ),
                // Another P-256 key against the P-256 certificate.
                (
                    vec![
                        ("certificate", Some(key("ec_cert.pem"))),
                        ("private_key", Some(key("ec2_pkcs8.pem"))),
                    ],
                    "private_key",
                ),
                (
                    vec![
                        ("certificate", Some(key("rsa_cert.pem"))),
                        ("private_key", Some(key("ec_sec1_nopub.pem"))),
                    ],
                    "private_key",
                ),
                (
                    vec![("certificate", Some(key("rsa_pkcs8.pem")))],
                    "certificate",
                ),
                (
                    vec![(
                        "certificate",
                        Some(s(
                            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                        )),
                    )],
                    "certificate",
                ),
                (
                    vec![("private_key", Some(key("rsa_pkcs8_encrypted.pem")))],
                    "passphrase",
                ),
            ],
        },
    );
    m.insert(
        "mcp_server",
        Case {
            good: vec![vec![
                ("command", s("npx")),
                (
                    "args",
                    s(r#"["-y", "@modelcontextprotocol/server-github"]"#),
                ),
                ("env", s(r#"{"LOG_LEVEL": "info"}"#)),
                ("env_token_var", s("GITHUB_PERSONAL_ACCESS_TOKEN")),
                ("token", s("ghp_abcdef")),
            ]],
            bad: vec![
                (vec![("args", Some(s(r#"["-y", 3]"#)))], "args"),
                (vec![("env", Some(s(r#"{"BAD-NAME": "x"}"#)))], "env"),
                (vec![("env_token_var", None)], "env_token_var"),
                (vec![("env_token_var", Some(s("1TOKEN")))], "env_token_var"),
            ],
        },
    );
    m.insert(
        "mcp_http",
        Case {
            good: vec![
                vec![
                    ("url", s("https://mcp.example.com/mcp")),
                    ("token", s("tok_abc")),
                ],
                vec![
                    ("url", s("http://127.0.0.1:8080/mcp")),
                    ("auth_type", s("none")),
                ],
                vec![
                    ("url", s("https://mcp.example.com/mcp")),
                    ("auth_type", s("header")),
                    ("header_name", s("X-Api-Key")),
                    ("token", s("tok_abc")),
                ],
            ],
            bad: vec![
                (vec![("url", Some(s("http://mcp.example.com/mcp")))], "url"),
                (
                    vec![("auth_type", Some(s("bearer"))), ("token", None)],
                    "token",
                ),
                (vec![("auth_type", Some(s("header")))], "header_name"),
                (vec![("auth_type", Some(s("magic")))], "auth_type"),
            ],
        },
    );
    m.insert(
        "hmac_signing_secret",
        Case {
            good: vec![
                vec![("secret", s("whsec_0123456789abcdef"))],
                vec![
                    ("secret", s("00112233445566778899aabbccddeeff")),
                    ("encoding", s("hex")),
                ],
            ],
            bad: vec![
                (vec![("secret", Some(s("short")))], "secret"),
                (vec![("encoding", Some(s("hex")))], "secret"),
                (vec![("encoding", Some(s("rot13")))], "encoding"),
                (vec![("algorithm", Some(s("md5")))], "algorithm"),
            ],
        },
    );
    m.insert(
        "database_fields",
        Case {
            good: vec![vec![
                ("host", s("db.internal")),
                ("port", s("5432")),
                ("user", s("app")),
                ("password", s("s3cr3t pass")),
                ("database", s("app")),
                ("sslmode", s("verify-full")),
            ]],
            bad: vec![
                (vec![("port", Some(s("99999")))], "port"),
                (vec![("host", Some(s("db internal")))], "host"),
                (vec![("sslmode", Some(s("sometimes")))], "sslmode"),
                (vec![("database", None)], "database"),
            ],
        },
    );
    m.insert(
        "file_upload",
        Case {
            good: vec![vec![
                ("content", s("JVBERi0xLjQK")),
                ("filename", s("contract.pdf")),
                ("content_type", s("application/pdf")),
            ]],
            bad: vec![
                (vec![("content", Some(s("%%%not base64%%%")))], "content"),
                (vec![("filename", Some(s("../etc/passwd")))], "filename"),
                (vec![("content_type", Some(s("pdf")))], "content_type"),
            ],
        },
    );
    m.insert(
        "custom",
        Case {
            good: vec![vec![("anything", s("goes")), ("here", s("too"))]],
            bad: vec![(vec![("anything", Some(s("no\u{0}nul")))], "anything")],
        },
    );
    m
}

#[test]
fn every_builtin_type_accepts_good_fields_and_names_the_field_it_refuses() {
    let registry = HandlerRegistry::builtin();
    let cases = cases();
    let ids: Vec<&str> = registry.type_ids().collect();
    assert_eq!(ids.len(), 19);
    for id in ids {
        let case = cases
            .get(id)
            .unwrap_or_else(|| panic!("no test cases for built-in type {id}"));
        let handler = registry.get(id).expect("handler");
        assert!(!case.good.is_empty() && !case.bad.is_empty(), "{id}");
        for good in &case.good {
            let f: Fields = good
                .iter()
                .map(|(k, v)| (k.to_string(), SecretString::from(v.clone())))
                .collect();
            accepts(handler.as_ref(), &f);
        }
        let base: Vec<(&str, &str)> = case.good[0].iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (changes, field) in &case.bad {
            let changes: Vec<(&str, Option<&str>)> =
                changes.iter().map(|(k, v)| (*k, v.as_deref())).collect();
            rejects(handler.as_ref(), &with(&base, &changes), field);
        }
    }
}

#[test]
fn a_file_upload_over_10_mb_is_refused() {
    use base64::Engine;
    let registry = HandlerRegistry::builtin();
    let handler = registry.get("file_upload").expect("handler");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 10 * 1024 * 1024 + 1]);
    let f = fields(&[
        ("content", &big),
        ("filename", "big.bin"),
        ("content_type", "application/octet-stream"),
    ]);
    rejects(handler.as_ref(), &f, "content");
    let ok = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 10 * 1024 * 1024]);
    accepts(
        handler.as_ref(),
        &fields(&[
            ("content", &ok),
            ("filename", "max.bin"),
            ("content_type", "application/octet-stream"),
        ]),
    );
}

#[test]
fn handlers_declare_injection_and_expiry() {
    let registry = HandlerRegistry::builtin();
    let inject = registry
        .get("mcp_server")
        .expect("mcp_server")
        .default_inject();
    assert!(inject.contains(&(
        "token".to_string(),
        "{block}.env.{env_token_var}".to_string()
    )));
    let inject = registry.get("api_key").expect("api_key").default_inject();
    assert!(inject.contains(&("api_key".to_string(), "{block}.config.api_key".to_string())));
    assert_eq!(
        registry.get("oauth2").expect("oauth2").expiry(),
        ExpiryRule::Refreshable {
            expires_at: "expires_at".into(),
            refresh_token: "refresh_token".into()
        }
    );
    assert_eq!(
        registry.get("api_key").expect("api_key").expiry(),
        ExpiryRule::Never
    );
}

/// A host's own type, next to the built-ins.
#[derive(Debug)]
struct TotpSeed {
    fields: Vec<FieldSpec>,
}

impl CredentialHandler for TotpSeed {
    fn type_id(&self) -> &str {
        "totp_seed"
    }
    fn description(&self) -> &str {
        "A TOTP seed (base32)."
    }
    fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }
    fn validate(&self, fields: &Fields) -> strongroom::Result<()> {
        strongroom::handlers::check_schema(&self.fields, false, fields)?;
        use strongroom::ExposeSecret;
        let seed = fields["seed"].expose_secret();
        if !seed
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        {
            return Err(Error::InvalidInput {
                field: "seed".into(),
                reason: "must be base32 (A-Z, 2-7)".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn a_host_registers_its_own_type_and_cannot_shadow_a_builtin_by_accident() {
    let mut registry = HandlerRegistry::builtin();
    let totp = Arc::new(TotpSeed {
        fields: vec![FieldSpec::new(
            "seed",
            "Seed",
            FieldFormat::Token,
            true,
            true,
        )],
    });
    registry.register(totp).expect("register");
    let handler = registry.get("totp_seed").expect("registered");
    accepts(handler.as_ref(), &fields(&[("seed", "JBSWY3DPEHPK3PXP")]));
    rejects(
        handler.as_ref(),
        &fields(&[("seed", "not-base32!")]),
        "seed",
    );
    #[derive(Debug)]
    struct Fake;
    impl CredentialHandler for Fake {
        fn type_id(&self) -> &str {
            "api_key"
        }
        fn description(&self) -> &str {
            ""
        }
        fn fields(&self) -> &[FieldSpec] {
            &[]
        }
    }
    let err = registry.register(Arc::new(Fake)).expect_err("duplicate");
    assert_eq!(err.kind(), strongroom::ErrorKind::AlreadyExists);
    assert!(registry.require("nope").is_err());
}

/// The table of built-in types in docs/HANDLERS.md, as the registry describes them.
fn handler_table() -> String {
    let registry = HandlerRegistry::builtin();
    let mut out = String::from(
        "| type | fields (`*` required, `🔒` secret) | expiry | what for |\n|---|---|---|---|\n",
    );
    for id in registry.type_ids() {
        let h = registry.get(id).expect("registered");
        let mut fields: Vec<String> = h
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "`{}`{}{}",
                    f.name,
                    if f.required { "*" } else { "" },
                    if f.secret { " 🔒" } else { "" }
                )
            })
            .collect();
        if h.open_schema() {
            fields.push("any others".into());
        }
        let expiry = match h.expiry() {
            ExpiryRule::Never => "—".to_string(),
            ExpiryRule::AtField { field } => format!("at `{field}`"),
            ExpiryRule::Refreshable {
                expires_at,
                refresh_token,
            } => format!("at `{expires_at}`, renewed with `{refresh_token}`"),
            _ => "other".to_string(),
        };
        out.push_str(&format!(
            "| `{id}` | {} | {expiry} | {} |\n",
            if fields.is_empty() {
                "any".to_string()
            } else {
                fields.join(", ")
            },
            h.description()
        ));
    }
    out
}

#[test]
fn the_handler_table_in_the_docs_matches_the_registry() {
    let table = handler_table();
    if std::env::var_os("STRONGROOM_PRINT_HANDLER_TABLE").is_some() {
        println!("{table}");
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/HANDLERS.md"))
        .expect("docs/HANDLERS.md");
    assert!(
        doc.contains(&table),
        "docs/HANDLERS.md is out of step with the registry; its table should be:\n{table}\n\
         (STRONGROOM_PRINT_HANDLER_TABLE=1 cargo test --test handlers -- --nocapture the_handler_table prints it)"
    );
}
