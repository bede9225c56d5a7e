//! Value formats a field can require. A failed check returns the rule that was broken, in
//! words a person can act on, and never the value.

/// A field's value, if the field is there (for the rules that check fields).
pub(crate) fn get<'a>(fields: &'a super::Fields, name: &str) -> Option<&'a str> {
    secrecy::ExposeSecret::expose_secret(fields.get(name)?).into()
}

/// The shape a field's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldFormat {
    /// Printable text (tabs allowed), up to 64 KiB.
    Text,
    /// Printable text over any number of lines (line breaks and tabs allowed), up to
    /// 64 KiB: what `multi_field` and `custom` accept for the fields they do not define, so
    /// that a PEM key or a JSON document fits.
    MultilineText,
    /// A password or passphrase: anything but NUL, up to 4 KiB.
    Password,
    /// A token or key: no whitespace or control characters, up to 16 KiB.
    Token,
    /// An `http` or `https` URL.
    Url,
    /// A TCP port, 1–65535.
    Port,
    /// A time as Unix seconds.
    UnixTime,
    /// A JSON document.
    Json,
    /// One or more PEM blocks (`-----BEGIN ...-----`).
    Pem,
    /// Base64 (standard or URL-safe alphabet, padding optional).
    Base64,
    /// A host name or an IP address.
    Host,
    /// A UUID (`8-4-4-4-12` hex digits).
    Uuid,
    /// An environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
    EnvVarName,
}

const KIB: usize = 1024;

impl FieldFormat {
    /// Checks `value`; `Err` holds the rule it broke.
    pub fn check(self, value: &str) -> std::result::Result<(), String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        match self {
            FieldFormat::Text => {
                max_len(value, 64 * KIB)?;
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    return Err("must be printable text without control characters".into());
                }
                Ok(())
            }
            FieldFormat::MultilineText => {
                max_len(value, 64 * KIB)?;
                if value
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                {
                    return Err(
                        "must be printable text (line breaks and tabs allowed) without \
                                other control characters"
                            .into(),
                    );
                }
                Ok(())
            }
            FieldFormat::Password => {
                max_len(value, 4 * KIB)?;
                if value.contains('\0') {
                    return Err("must not contain NUL characters".into());
                }
                Ok(())
            }
            FieldFormat::Token => token(value, 16 * KIB),
            FieldFormat::Url => http_url(value).map(drop),
            FieldFormat::Port => match value.parse::<u16>() {
                Ok(p) if p > 0 => Ok(()),
                _ => Err("must be a port number from 1 to 65535".into()),
            },
            FieldFormat::UnixTime => match value.parse::<i64>() {
                Ok(t) if t >= 0 => Ok(()),
                _ => Err("must be a time in Unix seconds (a non-negative integer)".into()),
            },
            FieldFormat::Json => {
                max_len(value, 1024 * KIB)?;
                serde_json::from_str::<serde_json::Value>(value)
                    .map(drop)
                    .map_err(|e| {
                        format!(
                            "must be JSON (it does not parse at line {}, column {})",
                            e.line(),
                            e.column()
                        )
                    })
            }
            FieldFormat::Pem => {
                max_len(value, 1024 * KIB)?;
                if value.trim_start().starts_with("-----BEGIN ") {
                    Ok(())
                } else {
                    Err("must be PEM text starting with a `-----BEGIN ...-----` line".into())
                }
            }
            FieldFormat::Base64 => {
                // 16 MiB of text: over 12 MB once decoded, above any base64 field's limit.
                max_len(value, 16 * KIB * KIB)?;
                base64_decode(value).map(drop)
            }
            FieldFormat::Host => host(value),
            FieldFormat::Uuid => uuid::Uuid::try_parse(value)
                .map(drop)
                .map_err(|_| "must be a UUID (8-4-4-4-12 hex digits)".into()),
            FieldFormat::EnvVarName => env_var_name(value),
        }
    }
}

pub(crate) fn max_len(value: &str, max: usize) -> std::result::Result<(), String> {
    if value.len() > max {
        Err(format!("must be at most {max} bytes"))
    } else {
        Ok(())
    }
}

pub(crate) fn token(value: &str, max: usize) -> std::result::Result<(), String> {
    max_len(value, max)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "must not contain spaces, line breaks or control characters (was it pasted with \
             a trailing newline?)"
                .into(),
        );
    }
    Ok(())
}

pub(crate) fn http_url(value: &str) -> std::result::Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("must be a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err("must be a URL with a host".into()),
        _ => Err("must be an http or https URL".into()),
    }
}

/// May a request carrying a secret go to `url`? An https URL, or plain http to a loopback
/// address (a local test server).
pub(crate) fn secure_endpoint(url: &url::Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url))
}

pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub(crate) fn base64_decode(value: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(&compact) {
            return Ok(bytes);
        }
    }
    Err("must be base64 (standard or URL-safe alphabet)".into())
}

/// The number of bytes valid base64 text decodes to (whitespace and padding ignored).
pub(crate) fn base64_decoded_len(value: &str) -> usize {
    let symbols = value
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .count();
    symbols / 4 * 3 + (symbols % 4).saturating_sub(1)
}

pub(crate) fn host(value: &str) -> std::result::Result<(), String> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err("must be a host name (letters, digits, `-`, dot-separated) or an IP address".into())
    }
}

pub(crate) fn env_var_name(value: &str) -> std::result::Result<(), String> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && value.len() <= 256 {
        Ok(())
    } else {
        Err("must be an environment variable name (letters, digits and `_`, not starting with a digit)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoded_length_is_exact_for_every_padding() {
        use base64::Engine;
        for n in 0..40usize {
            let bytes = vec![0xa5u8; n];
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                let text = engine.encode(&bytes);
                assert_eq!(base64_decoded_len(&text), n, "{text}");
                let wrapped: String = text
                    .as_bytes()
                    .chunks(7)
                    .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
                    .collect();
                assert_eq!(base64_decoded_len(&wrapped), n, "{wrapped}");
            }
        }
    }

    #[test]
    fn formats_accept_and_reject() {
        let cases: &[(FieldFormat, &str, bool)] = &[
            (FieldFormat::Token, "sk-abc", true),
            (FieldFormat::Token, "sk-abc\n", false),
            (FieldFormat::Token, "sk abc", false),
            (FieldFormat::Text, "Acme Corp", true),
            (FieldFormat::Text, "a\u{7}b", false),
            (FieldFormat::Text, "a\nb", false),
            (
                FieldFormat::MultilineText,
                "-----BEGIN X-----\r\nMII=\n\tz\n",
                true,
            ),
            (FieldFormat::MultilineText, "a\u{1b}[2Jb", false),
            (FieldFormat::Password, "pa ss wörd!", true),
            (FieldFormat::Password, "a\0b", false),
            (FieldFormat::Url, "https://api.example.com/v1", true),
            (FieldFormat::Url, "ftp://example.com", false),
            (FieldFormat::Url, "not a url", false),
            (FieldFormat::Port, "5432", true),
            (FieldFormat::Port, "0", false),
            (FieldFormat::Port, "70000", false),
            (FieldFormat::UnixTime, "1767225600", true),
            (FieldFormat::UnixTime, "tomorrow", false),
            (FieldFormat::Json, r#"{"a": 1}"#, true),
            (FieldFormat::Json, "{a: 1}", false),
            (
                FieldFormat::Pem,
                "-----BEGIN CERTIFICATE-----\nMII=\n",
                true,
            ),
            (FieldFormat::Pem, "MIIB", false),
            (FieldFormat::Base64, "aGVsbG8=", true),
            (FieldFormat::Base64, "aGVsbG8", true),
            (FieldFormat::Base64, "aGVsbG8", true),
            (FieldFormat::Base64, "!!!", false),
            (FieldFormat::Host, "db.internal", true),
            (FieldFormat::Host, "10.0.0.7", true),
            (FieldFormat::Host, "::1", true),
            (FieldFormat::Host, "bad host", false),
            (FieldFormat::Host, "-x.example", false),
            (
                FieldFormat::Uuid,
                "6f1c1b1e-6a53-4b8e-9d57-3f0f3c0c9e11",
                true,
            ),
            (FieldFormat::Uuid, "6f1c1b1e", false),
            (FieldFormat::EnvVarName, "GITHUB_TOKEN", true),
            (FieldFormat::EnvVarName, "1TOKEN", false),
            (FieldFormat::EnvVarName, "MY-TOKEN", false),
        ];
        for (format, value, ok) in cases {
            assert_eq!(
                format.check(value).is_ok(),
                *ok,
                "{format:?} on {value:?}: {:?}",
                format.check(value)
            );
        }
        for format in [FieldFormat::Text, FieldFormat::Token, FieldFormat::Url] {
            assert!(format.check("").is_err());
        }
    }
}
