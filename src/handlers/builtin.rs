//! The 19 built-in credential types. Each is a schema plus the type's own rules; the rules
//! that parse keys and certificates are in `keys.rs`.

use std::sync::Arc;

use super::formats::{self, get, FieldFormat as F};
use super::{check_schema, keys, CredentialHandler, ExpiryRule, FieldSpec, Fields};
use crate::error::{Error, Result};

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

fn token_type(fields: &Fields) -> Result<()> {
    if let Some(t) = get(fields, "token_type") {
        if !["bearer", "mac", "dpop"].contains(&t.to_ascii_lowercase().as_str()) {
            return Err(Error::invalid(
                "token_type",
                "must be Bearer, MAC or DPoP (RFC 6749 section 7.1)",
            ));
        }
    }
    Ok(())
}

fn oauth2_rule(fields: &Fields) -> Result<()> {
    token_type(fields)
}

fn pkce_rule(fields: &Fields) -> Result<()> {
    token_type(fields)?;
    if let Some(v) = get(fields, "code_verifier") {
        let ok = (43..=128).contains(&v.len())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
        if !ok {
            return Err(Error::invalid(
                "code_verifier",
                "must be 43 to 128 characters from A-Z a-z 0-9 - . _ ~ (RFC 7636 section 4.1)",
            ));
        }
    }
    Ok(())
}

fn basic_auth_rule(fields: &Fields) -> Result<()> {
    if get(fields, "username").is_some_and(|u| u.contains(':')) {
        return Err(Error::invalid(
            "username",
            "must not contain `:` (HTTP Basic authentication separates user and password with it)",
        ));
    }
    Ok(())
}

fn multi_field_rule(fields: &Fields) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::invalid(
            "fields",
            "a multi_field credential needs at least one field",
        ));
    }
    Ok(())
}

const CONNECTION_SCHEMES: &[&str] = &[
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "mongodb",
    "mongodb+srv",
    "redis",
    "rediss",
    "amqp",
    "amqps",
    "sqlserver",
    "mssql",
    "clickhouse",
    "cockroachdb",
    "nats",
    "kafka",
];

fn connection_string_rule(fields: &Fields) -> Result<()> {
    let Some(value) = get(fields, "url") else {
        return Ok(());
    };
    // Never echo the URL or url's error text verbatim: both can hold the password.
    let url = url::Url::parse(value).map_err(|_| {
        Error::invalid(
            "url",
            "must be a connection URL such as postgres://user:password@host:5432/db",
        )
    })?;
    let scheme = url.scheme();
    if !CONNECTION_SCHEMES.contains(&scheme) {
        return Err(Error::invalid(
            "url",
            format!(
                "the scheme is not a supported database or broker; use one of {}",
                CONNECTION_SCHEMES.join(", ")
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(
            "url",
            format!("a {scheme} URL needs a host (scheme://user:password@host:port/...)"),
        ));
    }
    if scheme == "mongodb+srv" && url.port().is_some() {
        return Err(Error::invalid(
            "url",
            "a mongodb+srv URL takes no port (the SRV record gives it)",
        ));
    }
    Ok(())
}

const AKID_PREFIXES: &[&str] = &[
    "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA", "AROA", "ASCA",
];

fn aws_rule(fields: &Fields) -> Result<()> {
    if let Some(id) = get(fields, "access_key_id") {
        let shape = (16..=128).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && AKID_PREFIXES.iter().any(|p| id.starts_with(p));
        if !shape {
            return Err(Error::invalid(
                "access_key_id",
                "must look like an AWS access key id: upper-case letters and digits starting \
                 with AKIA (long-term) or ASIA (temporary)",
            ));
        }
        if id.starts_with("ASIA") && !fields.contains_key("session_token") {
            return Err(Error::invalid(
                "session_token",
                "is required with a temporary (ASIA...) access key id",
            ));
        }
    }
    if let Some(secret) = get(fields, "secret_access_key") {
        let shape = (30..=128).contains(&secret.len())
            && secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/+=".contains(c));
        if !shape {
            return Err(Error::invalid(
                "secret_access_key",
                "must look like an AWS secret access key (40 characters of A-Z a-z 0-9 / +)",
            ));
        }
    }
    if let Some(region) = get(fields, "region") {
        if !aws_region(region) {
            return Err(Error::invalid(
                "region",
                "must be an AWS region code such as us-east-1 or eu-west-3",
            ));
        }
    }
    Ok(())
}

fn aws_region(region: &str) -> bool {
    // partition-direction-number, with optional -gov / -iso* parts: us-gov-west-1.
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.len() <= 4
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

fn azure_rule(fields: &Fields) -> Result<()> {
    if let Some(tenant) = get(fields, "tenant_id") {
        let guid = uuid::Uuid::try_parse(tenant).is_ok();
        let domain = tenant.contains('.') && formats::host(tenant).is_ok();
        if !guid && !domain {
            return Err(Error::invalid(
                "tenant_id",
                "must be a directory (tenant) GUID or a verified domain such as \
                 contoso.onmicrosoft.com",
            ));
        }
    }
    Ok(())
}

fn mcp_server_rule(fields: &Fields) -> Result<()> {
    if let Some(command) = get(fields, "command") {
        if command.trim().is_empty() {
            return Err(Error::invalid("command", "must name the program to start"));
        }
    }
    if let Some(args) = get(fields, "args") {
        let parsed: std::result::Result<Vec<String>, _> = serde_json::from_str(args);
        if parsed.is_err() {
            return Err(Error::invalid(
                "args",
                r#"must be a JSON array of strings, such as ["--port", "8080"]"#,
            ));
        }
    }
    if let Some(env) = get(fields, "env") {
        let parsed: std::result::Result<std::collections::BTreeMap<String, String>, _> =
            serde_json::from_str(env);
        match parsed {
            Err(_) => {
                return Err(Error::invalid(
                    "env",
                    r#"must be a JSON object of strings, such as {"LOG_LEVEL": "info"}"#,
                ))
            }
            Ok(map) => {
                for name in map.keys() {
                    formats::env_var_name(name).map_err(|rule| {
                        Error::invalid("env", format!("variable `{name}`: {rule}"))
                    })?;
                }
            }
        }
    }
    if fields.contains_key("token") && !fields.contains_key("env_token_var") {
        return Err(Error::invalid(
            "env_token_var",
            "is required with a token: it names the environment variable the server reads \
             the token from",
        ));
    }
    Ok(())
}

fn mcp_server_inject() -> Vec<(String, String)> {
    vec![
        ("command".into(), "{block}.command".into()),
        ("args".into(), "{block}.args".into()),
        ("env".into(), "{block}.env".into()),
        ("token".into(), "{block}.env.{env_token_var}".into()),
    ]
}

fn mcp_http_rule(fields: &Fields) -> Result<()> {
    if let Some(value) = get(fields, "url") {
        let url = formats::http_url(value).map_err(|rule| Error::invalid("url", rule))?;
        if url.scheme() == "http" && !formats::is_loopback(&url) {
            return Err(Error::invalid(
                "url",
                "must use https (plain http is accepted only for localhost)",
            ));
        }
    }
    let auth = get(fields, "auth_type").unwrap_or(if fields.contains_key("token") {
        "bearer"
    } else {
        "none"
    });
    match auth {
        "none" => {
            if fields.contains_key("token") {
                return Err(Error::invalid(
                    "token",
                    "is given but auth_type is none; set auth_type to bearer or header",
                ));
            }
        }
        "bearer" | "header" => {
            if !fields.contains_key("token") {
                return Err(Error::invalid(
                    "token",
                    format!("is required with auth_type {auth}"),
                ));
            }
            if auth == "header" {
                let name = get(fields, "header_name").ok_or_else(|| {
                    Error::invalid("header_name", "is required with auth_type header")
                })?;
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Error::invalid("header_name", "must be a valid HTTP header name")
                })?;
            }
        }
        _ => {
            return Err(Error::invalid(
                "auth_type",
                "must be none, bearer or header",
            ))
        }
    }
    Ok(())
}

fn mcp_http_inject() -> Vec<(String, String)> {
    vec![
        ("url".into(), "{block}.url".into()),
        ("token".into(), "{block}.headers.Authorization".into()),
    ]
}

fn hmac_rule(fields: &Fields) -> Result<()> {
    let Some(secret) = get(fields, "secret") else {
        return Ok(());
    };
    let bytes = match get(fields, "encoding").unwrap_or("raw") {
        "raw" => secret.len(),
        "hex" => hex::decode(secret)
            .map_err(|_| Error::invalid("secret", "must be hex (encoding is hex)"))?
            .len(),
        "base64" => formats::base64_decode(secret)
            .map_err(|_| Error::invalid("secret", "must be base64 (encoding is base64)"))?
            .len(),
        _ => return Err(Error::invalid("encoding", "must be raw, hex or base64")),
    };
    if bytes < 16 {
        return Err(Error::invalid(
            "secret",
            "must be at least 16 bytes once decoded (a shorter signing secret can be guessed)",
        ));
    }
    if let Some(algorithm) = get(fields, "algorithm") {
        if !["sha1", "sha256", "sha384", "sha512"].contains(&algorithm) {
            return Err(Error::invalid(
                "algorithm",
                "must be sha1, sha256, sha384 or sha512",
            ));
        }
    }
    Ok(())
}

fn database_fields_rule(fields: &Fields) -> Result<()> {
    if let Some(mode) = get(fields, "sslmode") {
        if ![
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ]
        .contains(&mode)
        {
            return Err(Error::invalid(
                "sslmode",
                "must be disable, allow, prefer, require, verify-ca or verify-full",
            ));
        }
    }
    Ok(())
}

/// Largest file a `file_upload` credential holds.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;

fn file_upload_rule(fields: &Fields) -> Result<()> {
    if let Some(content) = get(fields, "content") {
        // The schema check has decoded it once (and refused far oversized text before
        // decoding); the decoded size follows from the base64 length without a second pass.
        if formats::base64_decoded_len(content) > MAX_FILE_BYTES {
            return Err(Error::invalid("content", "the file must be at most 10 MB"));
        }
    }
    if let Some(name) = get(fields, "filename") {
        if name.len() > 255
            || name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err(Error::invalid(
                "filename",
                "must be a plain file name (no path separators, at most 255 bytes)",
            ));
        }
    }
    if let Some(ct) = get(fields, "content_type") {
        let token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let ok = matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s));
        if !ok {
            return Err(Error::invalid(
                "content_type",
                "must be a media type such as application/pdf",
            ));
        }
    }
    Ok(())
}

fn custom_rule(fields: &Fields) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::invalid(
            "fields",
            "a custom credential needs at least one field",
        ));
    }
    Ok(())
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
