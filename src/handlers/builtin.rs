//! The 19 built-in credential types. Each is a schema plus the type's own rules; the rules
//! are in `rules.rs`, those that parse keys and certificates in `keys.rs`.

use std::sync::Arc;

use super::formats::FieldFormat as F;
use super::rules::{
    aws_rule, azure_rule, basic_auth_rule, connection_string_rule, custom_rule,
    database_fields_rule, file_upload_rule, hmac_rule, mcp_http_rule, mcp_server_rule,
    multi_field_rule, oauth2_rule, pkce_rule,
};
use super::{check_schema, keys, CredentialHandler, ExpiryRule, FieldSpec, Fields};
use crate::error::Result;

type Rule = fn(&Fields) -> Result<()>;
/// `(field, path template)` pairs.
type Injection = fn() -> Vec<(String, String)>;

/// A built-in type: a schema, extra rules, default injection and expiry.
struct Builtin {
    id: &'static str,
    description: &'static str,
    fields: Vec<FieldSpec>,
    open: bool,
    rule: Rule,
    inject: Option<Injection>,
    expiry: ExpiryRule,
}

impl std::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin").field("id", &self.id).finish()
    }
}

impl CredentialHandler for Builtin {
    fn type_id(&self) -> &str {
        self.id
    }
    fn description(&self) -> &str {
        self.description
    }
    fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }
    fn open_schema(&self) -> bool {
        self.open
    }
    fn validate(&self, fields: &Fields) -> Result<()> {
        check_schema(&self.fields, self.open, fields)?;
        (self.rule)(fields)
    }
    fn default_inject(&self) -> Vec<(String, String)> {
        match self.inject {
            Some(f) => f(),
            None => self
                .fields
                .iter()
                .map(|f| (f.name.clone(), format!("{{block}}.config.{}", f.name)))
                .collect(),
        }
    }
    fn expiry(&self) -> ExpiryRule {
        self.expiry.clone()
    }
}

/// A required secret field.
fn secret(name: &str, label: &str, format: F) -> FieldSpec {
    FieldSpec::new(name, label, format, true, true)
}
/// An optional secret field.
fn opt_secret(name: &str, label: &str, format: F) -> FieldSpec {
    FieldSpec::new(name, label, format, false, true)
}
/// A required non-secret field.
fn plain(name: &str, label: &str, format: F) -> FieldSpec {
    FieldSpec::new(name, label, format, true, false)
}
/// An optional non-secret field.
fn opt(name: &str, label: &str, format: F) -> FieldSpec {
    FieldSpec::new(name, label, format, false, false)
}

fn none(_: &Fields) -> Result<()> {
    Ok(())
}

fn refreshable() -> ExpiryRule {
    ExpiryRule::Refreshable {
        expires_at: "expires_at".into(),
        refresh_token: "refresh_token".into(),
    }
}

fn oauth_fields(with_secret: bool) -> Vec<FieldSpec> {
    let mut v = vec![
        secret("access_token", "Access token", F::Token),
        opt_secret("refresh_token", "Refresh token", F::Token),
        opt("token_type", "Token type", F::Token),
        opt("expires_at", "Expires at (Unix seconds)", F::UnixTime),
        opt("scope", "Granted scopes", F::Text),
        opt("client_id", "OAuth client id", F::Token),
    ];
    if with_secret {
        v.push(opt_secret(
            "client_secret",
            "OAuth client secret",
            F::Password,
        ));
    } else {
        v.push(opt_secret("code_verifier", "PKCE code verifier", F::Token));
    }
    v
}

fn mcp_server_inject() -> Vec<(String, String)> {
    vec![
        ("command".into(), "{block}.command".into()),
        ("args".into(), "{block}.args".into()),
        ("env".into(), "{block}.env".into()),
        ("token".into(), "{block}.env.{env_token_var}".into()),
    ]
}

fn mcp_http_inject() -> Vec<(String, String)> {
    vec![
        ("url".into(), "{block}.url".into()),
        ("token".into(), "{block}.headers.Authorization".into()),
    ]
}

/// Every built-in handler.
pub(crate) fn all() -> Vec<Arc<dyn CredentialHandler>> {
    let b = |id, description, fields, rule: Rule| Builtin {
        id,
        description,
        fields,
        open: false,
        rule,
        inject: None,
        expiry: ExpiryRule::Never,
    };
    let handlers = vec![
        b(
            "api_key",
            "A single secret key (most LLM providers).",
            vec![
                secret("api_key", "API key", F::Token),
                opt("organization", "Organization", F::Text),
                opt("project", "Project", F::Text),
                opt("base_url", "Base URL", F::Url),
            ],
            none,
        ),
        Builtin {
            expiry: ExpiryRule::AtField {
                field: "expires_at".into(),
            },
            ..b(
                "bearer_token",
                "A bearer token (GitHub PAT, MCP, bots).",
                vec![
                    secret("token", "Token", F::Token),
                    opt("expires_at", "Expires at (Unix seconds)", F::UnixTime),
                ],
                none,
            )
        },
        b(
            "basic_auth",
            "A user name and password (HTTP Basic).",
            vec![
                plain("username", "User name", F::Text),
                secret("password", "Password", F::Password),
            ],
            basic_auth_rule,
        ),
        Builtin {
            expiry: refreshable(),
            ..b(
                "oauth2",
                "OAuth 2.0 authorization-code tokens (Google, Slack, Notion, ...).",
                oauth_fields(true),
                oauth2_rule,
            )
        },
        Builtin {
            expiry: refreshable(),
            ..b(
                "oauth2_pkce",
                "OAuth 2.0 tokens of a public client using PKCE (mobile, CLI).",
                oauth_fields(false),
                pkce_rule,
            )
        },
        Builtin {
            expiry: refreshable(),
            ..b(
                "device_code",
                "OAuth 2.0 device-authorization tokens (TVs, CLIs, IoT).",
                vec![
                    plain("client_id", "OAuth client id", F::Token),
                    secret("access_token", "Access token", F::Token),
                    opt_secret("refresh_token", "Refresh token", F::Token),
                    opt("token_type", "Token type", F::Token),
                    opt("expires_at", "Expires at (Unix seconds)", F::UnixTime),
                    opt("scope", "Granted scopes", F::Text),
                ],
                oauth2_rule,
            )
        },
        Builtin {
            open: true,
            ..b(
                "multi_field",
                "A generic bag of named fields (its provider names them).",
                vec![],
                multi_field_rule,
            )
        },
        b(
            "connection_string",
            "A database or broker URL (postgres, mysql, mongodb, redis, amqp, ...).",
            vec![secret("url", "Connection URL", F::Password)],
            connection_string_rule,
        ),
        b(
            "aws_access_key",
            "An AWS access key id, secret access key and region.",
            vec![
                plain("access_key_id", "Access key id", F::Token),
                secret("secret_access_key", "Secret access key", F::Token),
                plain("region", "Region", F::Token),
                opt_secret("session_token", "Session token", F::Token),
            ],
            aws_rule,
        ),
        b(
            "gcp_service_account",
            "A Google Cloud service-account key (the JSON file).",
            vec![secret(
                "service_account_json",
                "Service-account JSON",
                F::Json,
            )],
            keys::gcp_service_account,
        ),
        b(
            "azure_ad",
            "A Microsoft Entra ID (Azure AD) app: tenant, client id and secret.",
            vec![
                plain("tenant_id", "Tenant id", F::Token),
                plain("client_id", "Client (application) id", F::Uuid),
                secret("client_secret", "Client secret", F::Password),
                opt("authority_host", "Authority host", F::Url),
            ],
            azure_rule,
        ),
        b(
            "ssh_key",
            "An SSH private key (OpenSSH or PEM), with its passphrase if encrypted.",
            vec![
                secret("private_key", "Private key", F::Pem),
                opt_secret("passphrase", "Passphrase", F::Password),
                opt("public_key", "Public key", F::Text),
            ],
            keys::ssh_key,
        ),
        b(
            "client_certificate",
            "A TLS client certificate and its private key (mTLS).",
            vec![
                plain("certificate", "Certificate (PEM)", F::Pem),
                secret("private_key", "Private key (PEM)", F::Pem),
                opt_secret("passphrase", "Key passphrase", F::Password),
                opt("ca_certificate", "CA certificate (PEM)", F::Pem),
            ],
            keys::client_certificate,
        ),
        Builtin {
            inject: Some(mcp_server_inject),
            ..b(
                "mcp_server",
                "A stdio MCP server: command, arguments, environment and token variable.",
                vec![
                    plain("command", "Command", F::Text),
                    opt("args", "Arguments (JSON array)", F::Json),
                    opt_secret("env", "Environment (JSON object)", F::Json),
                    opt("env_token_var", "Token environment variable", F::EnvVarName),
                    opt_secret("token", "Token", F::Token),
                ],
                mcp_server_rule,
            )
        },
        Builtin {
            inject: Some(mcp_http_inject),
            ..b(
                "mcp_http",
                "An HTTP MCP server: URL and authentication.",
                vec![
                    plain("url", "Server URL", F::Url),
                    opt(
                        "auth_type",
                        "Authentication (none, bearer, header)",
                        F::Token,
                    ),
                    opt_secret("token", "Token", F::Token),
                    opt("header_name", "Header name", F::Token),
                ],
                mcp_http_rule,
            )
        },
        b(
            "hmac_signing_secret",
            "A webhook signing secret.",
            vec![
                secret("secret", "Signing secret", F::Password),
                opt("encoding", "Encoding (raw, hex, base64)", F::Token),
                opt("algorithm", "Algorithm (sha256, ...)", F::Token),
            ],
            hmac_rule,
        ),
        b(
            "database_fields",
            "Database connection details as separate fields.",
            vec![
                plain("host", "Host", F::Host),
                plain("port", "Port", F::Port),
                plain("user", "User", F::Text),
                secret("password", "Password", F::Password),
                plain("database", "Database", F::Text),
                opt("sslmode", "SSL mode", F::Token),
            ],
            database_fields_rule,
        ),
        b(
            "file_upload",
            "A file of up to 10 MB (base64), with its name and content type.",
            vec![
                secret("content", "Content (base64)", F::Base64),
                plain("filename", "File name", F::Text),
                plain("content_type", "Content type", F::Text),
            ],
            file_upload_rule,
        ),
        Builtin {
            open: true,
            ..b(
                "custom",
                "Any fields, no schema (the escape hatch).",
                vec![],
                custom_rule,
            )
        },
    ];
    handlers
        .into_iter()
        .map(|h| Arc::new(h) as Arc<dyn CredentialHandler>)
        .collect()
}
