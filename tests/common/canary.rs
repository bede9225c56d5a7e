//! Canary secrets and every encoding a leak could take (issue 15): plaintext, base64 and
//! base64url with and without padding (also as a fragment of a longer encoded text, at each
//! of the three byte alignments), URL- and form-encoded, JSON-escaped, Rust-`Debug`-escaped,
//! hex lower and upper case. `find_leak` searches bytes for any of them.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// A fresh canary: `label`, 16 random bytes in hex, and characters that every encoding
/// changes (`+`, `/`, `"`, a space), so an encoded copy differs from the plaintext.
pub fn canary(label: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    format!("CNRY-{label}-{}+x/y\"z w", hex::encode(bytes))
}

/// A canary made only of letters, digits and `-` (for fields whose validation refuses
/// anything else: tokens, keys with a fixed alphabet).
pub fn plain_canary(label: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    format!("CNRYplain-{label}-{}", hex::encode(bytes))
}

fn percent_encode(text: &str, plus_for_space: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' if plus_for_space => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The part of `engine`'s encoding of `text` that stays the same wherever `text` sits in
/// a longer input, for the byte alignment `offset` (0, 1 or 2 bytes before it).
fn base64_fragment(engine: &impl Engine, text: &[u8], offset: usize) -> String {
    let mut input = vec![0u8; offset];
    input.extend_from_slice(text);
    let encoded = engine.encode(&input);
    let first = (8 * offset).div_ceil(6);
    let last = (8 * (offset + text.len())) / 6;
    encoded[first..last.min(encoded.len())].to_string()
}

/// Every form of `secret` that must not appear anywhere, each with its name.
pub fn encodings(secret: &str) -> Vec<(String, String)> {
    let bytes = secret.as_bytes();
    let mut out = vec![
        ("plaintext".to_string(), secret.to_string()),
        ("base64".into(), STANDARD.encode(bytes)),
        ("base64 (no padding)".into(), STANDARD_NO_PAD.encode(bytes)),
        ("base64url".into(), URL_SAFE.encode(bytes)),
        (
            "base64url (no padding)".into(),
            URL_SAFE_NO_PAD.encode(bytes),
        ),
        ("URL-encoded".into(), percent_encode(secret, false)),
        ("form-encoded".into(), percent_encode(secret, true)),
        (
            "JSON-escaped".into(),
            serde_json::to_string(secret).expect("json")[1..]
                .trim_end_matches('"')
                .to_string(),
        ),
        (
            "Debug-escaped".into(),
            format!("{secret:?}")[1..].trim_end_matches('"').to_string(),
        ),
        ("hex".into(), hex::encode(bytes)),
        ("HEX".into(), hex::encode_upper(bytes)),
    ];
    for offset in 0..3 {
        out.push((
            format!("base64 fragment (alignment {offset})"),
            base64_fragment(&STANDARD, bytes, offset),
        ));
        out.push((
            format!("base64url fragment (alignment {offset})"),
            base64_fragment(&URL_SAFE, bytes, offset),
        ));
    }
    out.sort();
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

/// The first of `secrets` found in `haystack`, in any encoding: "`secret` as `encoding`",
/// and where.
pub fn find_leak_at(haystack: &[u8], secrets: &[String]) -> Option<(String, usize)> {
    for secret in secrets {
        for (name, form) in encodings(secret) {
            if form.is_empty() {
                continue;
            }
            if let Some(at) = haystack
                .windows(form.len())
                .position(|w| w == form.as_bytes())
            {
                return Some((format!("`{secret}` as {name} (`{form}`)"), at));
            }
        }
    }
    None
}

/// The first of `secrets` found in `haystack`, in any encoding.
pub fn find_leak(haystack: &[u8], secrets: &[String]) -> Option<String> {
    find_leak_at(haystack, secrets).map(|(leak, _)| leak)
}

/// Panics naming `what`, the encoding and the text around it when any of `secrets` is in
/// `haystack`.
pub fn assert_no_leak(what: &str, haystack: &[u8], secrets: &[String]) {
    if let Some((leak, at)) = find_leak_at(haystack, secrets) {
        let start = at.saturating_sub(1500);
        let end = (at + 500).min(haystack.len());
        let around = String::from_utf8_lossy(&haystack[start..end]);
        panic!("{what} leaks {leak} at byte {at}:\n...{around}...");
    }
}

/// Checks this module: every encoding is found inside a longer text, a secret embedded in
/// a longer base64 text is found at every alignment, and nothing is found where it is not.
pub fn check_the_encodings() {
    let secret = canary("self-test");
    for (name, form) in encodings(&secret) {
        let text = format!("prefix {form} suffix");
        assert!(
            find_leak(text.as_bytes(), std::slice::from_ref(&secret)).is_some(),
            "{name} not found"
        );
    }
    // A secret embedded in a longer encoded text, at every alignment.
    for prefix in ["", "a", "ab", "abc"] {
        let inner = format!("{prefix}{secret}tail");
        for encoded in [
            STANDARD.encode(&inner),
            URL_SAFE_NO_PAD.encode(&inner),
            format!("user:{}", STANDARD.encode(format!("client:{inner}"))),
        ] {
            assert!(
                find_leak(encoded.as_bytes(), std::slice::from_ref(&secret)).is_some(),
                "{encoded}"
            );
        }
    }
    assert!(find_leak(b"nothing to see", &[secret]).is_none());
}
