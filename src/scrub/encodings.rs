//! The forms a registered value is looked for in: the value itself and the encodings a log
//! line commonly carries it in. Every form is at least as long as the value (so the
//! matcher's minimum pattern length is [`MIN_SECRET_LEN`](super::MIN_SECRET_LEN)), and
//! every buffer made here is wiped when dropped.

use base64::alphabet::{STANDARD, URL_SAFE};
use base64::engine::general_purpose::{GeneralPurpose, NO_PAD};
use base64::Engine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

/// One form of a value, wiped on drop.
pub(crate) type Form = Zeroizing<Vec<u8>>;

/// The forms of one registered value. Dropped (once the value is forgotten and no matcher
/// holds it any more), it wipes every form in place and adds their length to `wiped`.
pub(crate) struct Forms {
    pub(crate) list: Vec<Form>,
    wiped: Arc<AtomicU64>,
}

impl Forms {
    /// The forms of `value`, counting their bytes into `wiped` when dropped.
    pub(crate) fn new(value: &[u8], wiped: Arc<AtomicU64>) -> Forms {
        Forms {
            list: forms(value),
            wiped,
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.list.iter().map(|f| f.len()).sum()
    }

    /// Overwrites every form with zeros in place (lengths kept): the bytes wiped.
    fn wipe(&mut self) -> usize {
        let mut n = 0;
        for form in &mut self.list {
            form.as_mut_slice().zeroize();
            n += form.len();
        }
        n
    }
}

impl Drop for Forms {
    fn drop(&mut self) {
        let n = self.wipe();
        self.wiped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

const BASE64_STD: GeneralPurpose = GeneralPurpose::new(&STANDARD, NO_PAD);
const BASE64_URL: GeneralPurpose = GeneralPurpose::new(&URL_SAFE, NO_PAD);

/// Every form of `value` (deduplicated): the raw bytes; base64 and base64url (a padded
/// encoding contains the unpadded one, so the unpadded one finds both), each also as the
/// characters that encode the value alone when it sits at any of the three byte alignments
/// inside a longer encoded text (an `Authorization: Basic` header, `user:password`); the
/// value percent-encoded (upper- and lower-case hex, and with `+` for a space as in a
/// form body); JSON-escaped; Rust-`Debug`-escaped (what `?field` in a log macro writes), once
/// and twice (an escaped text logged with `?`); and hex in lower and upper case.
pub(crate) fn forms(value: &[u8]) -> Vec<Form> {
    let mut out: Vec<Form> = Vec::with_capacity(16);
    let mut push = |form: Form| {
        if !form.is_empty() && !out.iter().any(|f| **f == *form) {
            out.push(form);
        }
    };
    push(Zeroizing::new(value.to_vec()));
    for engine in [&BASE64_STD, &BASE64_URL] {
        push(Zeroizing::new(engine.encode(value).into_bytes()));
        for offset in 0..3 {
            push(base64_core(value, offset, engine));
        }
    }
    let upper = percent_encode(value, b"0123456789ABCDEF", false);
    let lower = percent_encode(value, b"0123456789abcdef", false);
    let form = percent_encode(value, b"0123456789ABCDEF", true);
    push(upper);
    push(lower);
    push(form);
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok(json) = serde_json::to_string(text) {
            let json = Zeroizing::new(json);
            push(Zeroizing::new(json[1..json.len() - 1].as_bytes().to_vec()));
        }
        push(json_ascii(text));
        let debug: Zeroizing<String> = Zeroizing::new(text.escape_debug().collect());
        push(Zeroizing::new(debug.as_bytes().to_vec()));
        // Escaped twice: a JSON body or an escaped string logged with `?` (`Debug`).
        let twice: Zeroizing<String> = Zeroizing::new(debug.escape_debug().collect());
        push(Zeroizing::new(twice.as_bytes().to_vec()));
    }
    push(Zeroizing::new(hex::encode(value).into_bytes()));
    push(Zeroizing::new(hex::encode_upper(value).into_bytes()));
    out
}

/// The base64 characters that encode `value` alone when it starts `offset` bytes (0..3)
/// into a three-byte group of a longer encoded text: the characters that also carry bits
/// of the neighbouring bytes are left out.
fn base64_core(value: &[u8], offset: usize, engine: &GeneralPurpose) -> Form {
    let mut shifted = Zeroizing::new(Vec::with_capacity(value.len() + offset));
    shifted.resize(offset, 0);
    shifted.extend_from_slice(value);
    let encoded = Zeroizing::new(engine.encode(&*shifted).into_bytes());
    // Character i carries bits [6i, 6i + 6): it is the value's alone when those bits lie
    // within [8 * offset, 8 * (offset + len)).
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + value.len())) / 6;
    if first >= end {
        return Zeroizing::new(Vec::new());
    }
    Zeroizing::new(encoded[first..end].to_vec())
}

/// `text` JSON-escaped with every non-ASCII character as `\uXXXX` (UTF-16), as encoders
/// that keep their output ASCII write it (Python's `json.dumps`, for one).
fn json_ascii(text: &str) -> Form {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 2));
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c as u8),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
                }
            }
        }
    }
    out
}

/// `value` percent-encoded: every byte but the unreserved ones (RFC 3986) as `%XX` in the
/// given hex digits; with `plus_for_space`, a space as `+` (a form body).
fn percent_encode(value: &[u8], digits: &[u8; 16], plus_for_space: bool) -> Form {
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 3));
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else if b == b' ' && plus_for_space {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;

    fn contains(forms: &[Form], text: &[u8]) -> bool {
        forms
            .iter()
            .any(|f| text.windows(f.len()).any(|w| w == f.as_slice()))
    }

    #[test]
    fn forms_are_wiped_in_place_and_counted() {
        let wiped = Arc::new(AtomicU64::new(0));
        let mut held = Forms::new(b"a-registered-value/1", wiped.clone());
        let bytes = held.bytes();
        assert!(held.list.len() > 5 && bytes > 100);
        assert_eq!(held.wipe(), bytes);
        assert!(held
            .list
            .iter()
            .all(|f| !f.is_empty() && f.iter().all(|&b| b == 0)));
        drop(held);
        assert_eq!(wiped.load(Ordering::Relaxed), bytes as u64);
    }

    #[test]
    fn every_form_is_at_least_as_long_as_the_value() {
        for len in super::super::MIN_SECRET_LEN..80 {
            let value: Vec<u8> = (0..len as u8).map(|i| b'a' + i % 26).collect();
            for form in forms(&value) {
                assert!(form.len() >= len, "a form of a {len}-byte value is shorter");
            }
        }
    }

    #[test]
    fn a_value_inside_a_longer_base64_text_is_found_at_every_alignment() {
        let secret = b"s3cr3t-Value/with+odd_chars";
        let all = forms(secret);
        for prefix in ["", "u", "us", "user:", "admin:", "ab:"] {
            let mut plain = prefix.as_bytes().to_vec();
            plain.extend_from_slice(secret);
            plain.extend_from_slice(b"!tail");
            let encoded = B64.encode(&plain);
            assert!(
                contains(&all, encoded.as_bytes()),
                "not found after {prefix:?}: {encoded}"
            );
        }
    }

    #[test]
    fn percent_json_debug_and_hex_forms() {
        let secret = "p@ss word\"\\é/x";
        let all = forms(secret.as_bytes());
        let want: [&[u8]; 6] = [
            b"p%40ss%20word%22%5C%C3%A9%2Fx",
            b"p%40ss+word%22%5C%C3%A9%2Fx",
            b"p%40ss%20word%22%5c%c3%a9%2fx",
            br#"p@ss word\"\\\u00e9/x"#,
            b"7040737320776f7264225cc3a92f78",
            b"7040737320776F7264225CC3A92F78",
        ];
        for w in want {
            assert!(contains(&all, w), "{}", String::from_utf8_lossy(w));
        }
        // serde_json keeps non-ASCII characters as they are.
        assert!(contains(&all, r#"p@ss word\"\\é/x"#.as_bytes()));
    }
}
