//! Reading one provider TOML file: the file's shape, every check, and problems reported
//! with file, line and column.

use serde::Deserialize;
use toml::Spanned;

use super::{CatalogProblem, Provider, ProviderField, VerifySpec};
use crate::handlers::{FieldFormat, FieldSpec, HandlerRegistry};

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    provider: Spanned<ProviderToml>,
    #[serde(default)]
    fields: Vec<Spanned<FieldToml>>,
    verify: Option<Spanned<VerifyToml>>,
    oauth: Option<Spanned<super::oauth::OAuthToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderToml {
    name: Spanned<String>,
    display_name: String,
    handler_type: Spanned<String>,
    icon: Option<String>,
    category: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prefixes {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldToml {
    name: Spanned<String>,
    label: Option<String>,
    prefix_check: Option<Spanned<Prefixes>>,
    required: Option<bool>,
    secret: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyToml {
    endpoint: Spanned<String>,
    method: Option<Spanned<String>>,
    auth_template: Option<Spanned<String>>,
    success_codes: Option<Spanned<Vec<u16>>>,
    success_contains: Option<String>,
    secret_in_url: Option<bool>,
}

pub(super) fn parse_provider(
    registry: &HandlerRegistry,
    file: &str,
    text: &str,
) -> std::result::Result<(Provider, std::ops::Range<usize>), CatalogProblem> {
    let at = |span: std::ops::Range<usize>, message: String| {
        let (line, column) = line_col(text, span.start);
        CatalogProblem {
            file: file.to_string(),
            line,
            column,
            message,
        }
    };
    let parsed: FileToml = toml::from_str(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim().replace('\n', " "),
        )
    })?;
    let p = parsed.provider.into_inner();
    let name = p.name.get_ref().clone();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(at(
            p.name.span(),
            "a provider name is 1 to 64 lowercase ASCII letters, digits, `_` or `-` \
             (`my_provider`)"
                .into(),
        ));
    }
    let handler_type = p.handler_type.get_ref().clone();
    let Some(handler) = registry.get(&handler_type) else {
        return Err(at(
            p.handler_type.span(),
            format!(
                "unknown handler type `{handler_type}`; known types are {}",
                registry.type_ids().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let mut fields: Vec<ProviderField> = handler
        .fields()
        .iter()
        .map(|spec| ProviderField {
            spec: spec.clone(),
            prefix_check: Vec::new(),
        })
        .collect();
    // Where each field is in `fields`, so a file with many fields loads in linear time.
    let mut index: std::collections::HashMap<String, usize> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.spec.name.clone(), i))
        .collect();
    let mut named = std::collections::HashSet::new();
    for f in parsed.fields {
        let span = f.span();
        let f = f.into_inner();
        let field_name = f.name.get_ref().clone();
        if !named.insert(field_name.clone()) {
            return Err(at(
                f.name.span(),
                format!("field `{field_name}` is listed twice"),
            ));
        }
        let prefixes = match f.prefix_check.as_ref().map(|p| p.get_ref()) {
            None => Vec::new(),
            Some(Prefixes::One(p)) => vec![p.clone()],
            Some(Prefixes::Many(ps)) => ps.clone(),
        };
        if let Some(p) = &f.prefix_check {
            if prefixes.iter().any(String::is_empty) || prefixes.is_empty() {
                return Err(at(
                    p.span(),
                    "prefix_check must be a non-empty prefix (or a list of them)".into(),
                ));
            }
        }
        let existing = index.get(&field_name).map(|&i| &mut fields[i]);
        match existing {
            Some(field) => {
                if let Some(label) = f.label {
                    field.spec.label = label;
                }
                if let Some(required) = f.required {
                    field.spec.required = required;
                }
                if let Some(secret) = f.secret {
                    field.spec.secret = secret;
                }
                field.prefix_check = prefixes;
            }
            None if handler.open_schema() => {
                crate::model::validate_id("field name", &field_name)
                    .map_err(|e| at(f.name.span(), e.to_string()))?;
                index.insert(field_name.clone(), fields.len());
                fields.push(ProviderField {
                    spec: FieldSpec {
                        label: f.label.unwrap_or_else(|| field_name.clone()),
                        name: field_name,
                        secret: f.secret.unwrap_or(true),
                        required: f.required.unwrap_or(false),
                        format: FieldFormat::MultilineText,
                    },
                    prefix_check: prefixes,
                });
            }
            None => {
                return Err(at(
                    span,
                    format!(
                        "`{field_name}` is not a field of handler type `{handler_type}`; its \
                         fields are {}",
                        handler
                            .fields()
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
    }
    let verify = match parsed.verify {
        None => None,
        Some(v) => {
            let v = v.into_inner();
            let known: Vec<&str> = fields.iter().map(|f| f.spec.name.as_str()).collect();
            let method = match &v.method {
                None => "GET".to_string(),
                Some(m) => {
                    let upper = m.get_ref().to_ascii_uppercase();
                    if !["GET", "POST", "HEAD"].contains(&upper.as_str()) {
                        return Err(at(m.span(), "method must be GET, POST or HEAD".into()));
                    }
                    upper
                }
            };
            check_template(v.endpoint.get_ref(), &known, false)
                .map_err(|m| at(v.endpoint.span(), m))?;
            let secret_in_url = v.secret_in_url.unwrap_or(false);
            if !secret_in_url {
                let placed = super::template::placeholders(v.endpoint.get_ref())
                    .map_err(|m| at(v.endpoint.span(), m))?;
                if let Some(secret) = placed.iter().find(|name| {
                    fields
                        .iter()
                        .any(|f| f.spec.name == **name && f.spec.secret)
                }) {
                    return Err(at(
                        v.endpoint.span(),
                        format!(
                            "the endpoint puts the secret field `{secret}` in the URL, where \
                             proxies and server logs keep it; send it in auth_template \
                             instead, or, if the service takes it only in the URL, say so with \
                             `secret_in_url = true` in [verify]"
                        ),
                    ));
                }
            }
            // A placeholder may stand for the whole base URL (`{base_url}/v1/verify`).
            let filler = if v.endpoint.get_ref().starts_with('{') {
                "https://example.invalid"
            } else {
                "x"
            };
            let sample = super::template::render(v.endpoint.get_ref(), &|_| {
                Some(zeroize::Zeroizing::new(filler.to_string()))
            })
            .map_err(|m| at(v.endpoint.span(), m))?;
            let parsed = url::Url::parse(sample.as_str())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    at(
                        v.endpoint.span(),
                        "endpoint must be an http or https URL".into(),
                    )
                })?;
            // An endpoint that starts with a placeholder is checked once rendered, when
            // the request is made.
            if !v.endpoint.get_ref().starts_with('{')
                && !crate::handlers::formats::secure_endpoint(&parsed)
            {
                return Err(at(
                    v.endpoint.span(),
                    "endpoint must be an https URL (plain http only to this machine: \
                     localhost, 127.0.0.1 or ::1), since the request carries the credential"
                        .into(),
                ));
            }
            let auth_template = match &v.auth_template {
                None => String::new(),
                Some(t) => {
                    check_template(t.get_ref(), &known, true).map_err(|m| at(t.span(), m))?;
                    t.get_ref().clone()
                }
            };
            let success_codes = match &v.success_codes {
                None => vec![200],
                Some(codes) => {
                    if codes.get_ref().is_empty()
                        || codes.get_ref().iter().any(|c| !(100..=599).contains(c))
                    {
                        return Err(at(
                            codes.span(),
                            "success_codes must list HTTP status codes (100-599)".into(),
                        ));
                    }
                    codes.get_ref().clone()
                }
            };
            Some(VerifySpec {
                endpoint: v.endpoint.into_inner(),
                method,
                auth_template,
                success_codes,
                success_contains: v.success_contains,
                secret_in_url,
            })
        }
    };
    let oauth = parsed
        .oauth
        .map(|table| super::oauth::check_oauth(table, &p.handler_type))
        .transpose()
        .map_err(|(span, message)| at(span, message))?;
    let name_span = p.name.span();
    Ok((
        Provider {
            name,
            display_name: p.display_name,
            handler_type,
            icon: p.icon,
            category: p.category,
            fields,
            verify,
            oauth,
            source: file.to_string(),
        },
        name_span,
    ))
}

/// Checks a template's placeholders against the provider's fields, and (for header
/// templates) that every line is `Name: value` with a valid header name.
fn check_template(
    template: &str,
    known: &[&str],
    headers: bool,
) -> std::result::Result<(), String> {
    for name in super::template::placeholders(template)? {
        if !known.contains(&name.as_str()) {
            return Err(format!(
                "placeholder `{{{name}}}` is not a field of this provider; its fields are {}",
                known.join(", ")
            ));
        }
    }
    if headers {
        for line in template.lines().filter(|l| !l.trim().is_empty()) {
            let Some((name, _)) = line.split_once(':') else {
                return Err(format!(
                    "auth_template line `{line}` must be `Header-Name: value`"
                ));
            };
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("`{}` is not a valid HTTP header name", name.trim()))?;
        }
    }
    Ok(())
}
