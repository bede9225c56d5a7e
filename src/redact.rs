//! Secrets a peer echoes back: whether a text repeats one in the encodings a server or proxy
//! may use (base64 and base64url at any alignment, URL/form encoding, JSON escaping, hex),
//! and redaction of every piece of one from a text. Shared by the OAuth client and the
//! cloud master keys; it imports nothing of the crate.

use std::collections::HashSet;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// The shortest piece of a secret (in one of its forms) that [`redact`] cuts out.
pub(crate) const MIN_PIECE: usize = 12;

/// What [`redact`] puts in place of a redacted run.
pub(crate) const MARK: &str = "[…]";

/// The encodings of `secret` a peer may echo it in, `secret` itself first when it is text:
/// URL- and form-encoded, JSON-escaped, hex, and base64 / base64url at any byte alignment
/// (of the secret, or of its form encoding, as in an `Authorization: Basic` header: the
/// characters that depend on the secret alone).
pub(crate) fn encoded_forms(secret: &[u8]) -> Vec<String> {
    let mut forms = Vec::new();
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_string());
        forms.push(
            serde_json::to_string(text)
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
        );
    }
    let form: String = url::form_urlencoded::byte_serialize(secret).collect();
    forms.push(form.replace('+', "%20"));
    forms.push(form.clone());
    forms.push(hex::encode(secret));
    forms.push(hex::encode_upper(secret));
    for raw in [secret, form.as_bytes()] {
        for engine in [&STANDARD, &URL_SAFE] {
            for offset in 0..3 {
                let mut input = vec![0u8; offset];
                input.extend_from_slice(raw);
                let encoded = engine.encode(&input);
                let first = (8 * offset).div_ceil(6);
                let last = (8 * (offset + raw.len()) / 6).min(encoded.len());
                if last > first {
                    forms.push(encoded[first..last].to_string());
                }
            }
        }
    }
    forms
}

/// Does `text` hold `secret` in one of the encodings a server may echo it in (not as
/// itself: a caller replaces that first)?
pub(crate) fn repeats_encoded(text: &str, secret: &str) -> bool {
    encoded_forms(secret.as_bytes())
        .iter()
        .any(|f| f.len() >= 4 && f != secret && text.contains(f.as_str()))
}

/// The characters of a run [`redact`] looks at: what tokens, keys and their encodings are
/// made of.
fn token_like(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '.' | '~' | '%')
}

/// `text` with every run of token-like characters (letters, digits, `+/=_-.~%`) that shares
/// a piece of [`MIN_PIECE`] or more characters with one of `secrets` — as itself or in any
/// of its [`encoded_forms`], and for a secret that is base64 also the forms of the bytes it
/// encodes — replaced by [`MARK`]. A secret shorter than [`MIN_PIECE`] (and at least 8
/// characters) is matched whole. Everything else (key ids, versions, URLs) stays.
pub(crate) fn redact(text: &str, secrets: &[&[u8]]) -> String {
    let mut pieces: HashSet<String> = HashSet::new();
    let mut short: Vec<String> = Vec::new();
    let mut add = |form: String| {
        let chars: Vec<char> = form.chars().collect();
        if chars.len() >= MIN_PIECE {
            for w in chars.windows(MIN_PIECE) {
                pieces.insert(w.iter().collect());
            }
        } else if chars.len() >= 8 {
            short.push(form);
        }
    };
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for f in encoded_forms(secret) {
            add(f);
        }
        // A base64 secret (a data key as a request carries it): its bytes' forms too.
        let decoded = std::str::from_utf8(secret).ok().and_then(|t| {
            let t = t.trim();
            STANDARD
                .decode(t)
                .or_else(|_| URL_SAFE.decode(t))
                .or_else(|_| URL_SAFE_NO_PAD.decode(t))
                .ok()
        });
        if let Some(bytes) = decoded.filter(|b| b.len() >= 8) {
            for f in encoded_forms(&bytes) {
                add(f);
            }
            add(STANDARD.encode(&bytes));
            add(URL_SAFE_NO_PAD.encode(&bytes));
        }
    }
    if pieces.is_empty() && short.is_empty() {
        return text.to_string();
    }
    let secret_run = |run: &str| {
        let chars: Vec<char> = run.chars().collect();
        (chars.len() >= MIN_PIECE
            && chars
                .windows(MIN_PIECE)
                .any(|w| pieces.contains(&w.iter().collect::<String>())))
            || short.iter().any(|s| run.contains(s.as_str()))
    };
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if !run.is_empty() && secret_run(run) {
            out.push_str(MARK);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if token_like(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_and_its_pieces_and_encodings_are_cut_key_ids_stay() {
        let key = [
            7u8, 200, 13, 99, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 250, 251, 252, 253, 254, 255,
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
        ];
        let b64 = STANDARD.encode(key);
        let keep =
            "key arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab v2";
        for echoed in [
            b64.clone(),
            b64[5..30].to_string(),
            URL_SAFE_NO_PAD.encode(key),
            hex::encode(key),
            url::form_urlencoded::byte_serialize(b64.as_bytes()).collect(),
            STANDARD.encode(format!("{{\"Plaintext\":\"{b64}\"}}")),
        ] {
            let text = format!("{keep} body {{\"Plaintext\":\"{echoed}\"}} end");
            let out = redact(&text, &[b64.as_bytes()]);
            assert!(out.starts_with(keep), "{out}");
            assert!(out.contains(MARK), "{echoed} survived: {out}");
            assert!(!out.contains(&echoed[..MIN_PIECE]), "{out}");
        }
        // Nothing secret: unchanged, even with long runs.
        let text = format!("{keep} {}", "x".repeat(60));
        assert_eq!(redact(&text, &[b"role-secret-id-0123456789"]), text);
    }

    #[test]
    fn the_oauth_check_still_sees_encodings_not_the_secret_itself() {
        let secret = "s3cr3t/with+odd=chars";
        let basic = STANDARD.encode(format!("client:{secret}"));
        assert!(repeats_encoded(&basic, secret));
        assert!(repeats_encoded(&hex::encode(secret), secret));
        assert!(!repeats_encoded(secret, secret));
        assert!(!repeats_encoded("nothing here", secret));
    }
}
