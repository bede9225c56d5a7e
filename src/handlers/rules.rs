//! The rules of the built-in credential types (see `builtin.rs`) beyond their schemas:
//! token types, URLs and schemes, key ids, encodings and sizes. The rules that parse keys
//! and certificates are in `keys.rs`.

use super::formats::{self, get};
use super::Fields;
use crate::error::{Error, Result};

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

pub(super) fn oauth2_rule(fields: &Fields) -> Result<()> {
    token_type(fields)
}

pub(super) fn pkce_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn basic_auth_rule(fields: &Fields) -> Result<()> {
    if get(fields, "username").is_some_and(|u| u.contains(':')) {
        return Err(Error::invalid(
            "username",
            "must not contain `:` (HTTP Basic authentication separates user and password with it)",
        ));
    }
    Ok(())
}

pub(super) fn multi_field_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn connection_string_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn aws_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn azure_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn mcp_server_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn mcp_http_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn hmac_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn database_fields_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn file_upload_rule(fields: &Fields) -> Result<()> {
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

pub(super) fn custom_rule(fields: &Fields) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::invalid(
            "fields",
            "a custom credential needs at least one field",
        ));
    }
    Ok(())
}
