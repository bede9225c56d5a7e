//! PKCE (RFC 7636) verifiers and challenges, and `state` values: fresh randomness from the
//! operating system for every authorization request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A PKCE code verifier and its S256 challenge. The verifier stays secret until the token
/// request; the challenge goes in the authorization URL. `Debug` shows only the challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    verifier: SecretString,
    challenge: String,
}

impl Pkce {
    /// A fresh verifier: 32 random bytes as 43 base64url characters (RFC 7636 4.1, 256 bits
    /// of entropy), with its challenge.
    pub fn generate() -> Result<Pkce> {
        let verifier = random_base64url()?;
        Pkce::from_verifier(verifier)
    }

    /// The pair for a verifier kept from earlier (a flow resumed after a restart). The
    /// verifier must be 43 to 128 unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 7636
    /// 4.1).
    pub fn from_verifier(verifier: SecretString) -> Result<Pkce> {
        let v = verifier.expose_secret();
        if !(43..=128).contains(&v.len())
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(Error::invalid(
                "PKCE code verifier",
                "must be 43 to 128 characters from A-Z, a-z, 0-9, `-`, `.`, `_` and `~` \
                 (RFC 7636 4.1); make one with Pkce::generate",
            ));
        }
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()));
        Ok(Pkce {
            verifier,
            challenge,
        })
    }

    /// The verifier, for the token request (`code_verifier`).
    pub fn verifier(&self) -> &SecretString {
        &self.verifier
    }

    /// `BASE64URL(SHA256(verifier))` without padding, for the authorization URL
    /// (`code_challenge`, with `code_challenge_method=S256`).
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

/// A fresh `state` value: 32 random bytes as base64url (256 bits), to bind the callback to
/// the request that started it (RFC 6749 10.12, RFC 9700 4.7).
pub fn random_state() -> Result<String> {
    Ok(random_base64url()?.expose_secret().to_string())
}

/// 32 random bytes as 43 base64url characters.
fn random_base64url() -> Result<SecretString> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    crate::crypto::fill_random(bytes.as_mut())?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7636_appendix_b_known_answer() {
        let pkce = Pkce::from_verifier(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ))
        .expect("valid verifier");
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn generated_verifiers_are_43_unreserved_characters_and_differ() {
        let a = Pkce::generate().expect("random");
        let b = Pkce::generate().expect("random");
        assert_eq!(a.verifier().expose_secret().len(), 43);
        assert_ne!(a.verifier().expose_secret(), b.verifier().expose_secret());
        assert_eq!(a.challenge().len(), 43);
        assert!(!format!("{a:?}").contains(a.verifier().expose_secret()));
    }

    #[test]
    fn bad_verifiers_are_refused_without_echoing_them() {
        for bad in ["short", &"a".repeat(129), &format!("{}!", "a".repeat(43))] {
            let e = Pkce::from_verifier(SecretString::from(bad.to_string())).expect_err("bad");
            assert!(!e.to_string().contains(bad), "{e}");
        }
        Pkce::from_verifier(SecretString::from("a~.-_".repeat(10))).expect("unreserved ok");
    }

    #[test]
    fn states_are_256_bits_and_fresh() {
        let s = random_state().expect("random");
        assert_eq!(s.len(), 43);
        assert_ne!(s, random_state().expect("random"));
    }
}
