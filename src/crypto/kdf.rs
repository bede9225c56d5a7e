//! HMAC-SHA256, HKDF-SHA256 and SHA-256 over key material, on states that wipe themselves
//! when dropped (RustCrypto `hmac` 0.13 and `sha2` 0.11 with their `zeroize` features), with
//! every output key held in [`Zeroizing`].
//!
//! HKDF here is RFC 5869 for outputs of at most 32 bytes (one HMAC block, `T(1)`), which is
//! all strongroom derives: 32-byte keys and a 16-byte key id.

use hmac_zeroizing::{Hmac, KeyInit, Mac};
use sha2_zeroizing::{Digest, Sha256};
use zeroize::Zeroizing;

/// An HMAC-SHA256 state keyed once; cloned per message, so the key is padded and hashed
/// once. Its inner and outer hash states wipe themselves on drop, and so does every clone.
#[derive(Clone)]
pub(crate) struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    /// A key of any length (HMAC hashes a longer one, pads a shorter one).
    pub(crate) fn new(key: &[u8]) -> HmacKey {
        HmacKey(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"))
    }

    /// `HMAC-SHA256(key, parts[0] || parts[1] || ...)`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        self.mac_then(parts, &[])
    }

    /// `HMAC-SHA256(key, parts[0] || ... || last)`.
    fn mac_then(&self, parts: &[&[u8]], last: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.update(last);
        let tag = mac.finalize();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_bytes().as_slice());
        out
    }

    /// HKDF-Expand (RFC 5869) of at most 32 bytes with this key as the PRK:
    /// `T(1) = HMAC(PRK, info || 0x01)`, truncated to `out.len()`. `info` is given in parts
    /// that are concatenated.
    pub(crate) fn expand_into(&self, info: &[&[u8]], out: &mut [u8]) {
        assert!(out.len() <= 32, "one HMAC-SHA256 block");
        let t1 = self.mac_then(info, &[0x01]);
        out.copy_from_slice(&t1[..out.len()]);
    }

    /// [`HmacKey::expand_into`] of a 32-byte key.
    pub(crate) fn expand32(&self, info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.expand_into(info, out.as_mut());
        out
    }
}

/// HKDF-Extract (RFC 5869): `PRK = HMAC-SHA256(salt, ikm)`, returned as a keyed HMAC ready
/// to expand.
pub(crate) fn extract(salt: &[u8], ikm: &[u8]) -> HmacKey {
    let prk = HmacKey::new(salt).mac(&[ikm]);
    HmacKey::new(prk.as_ref())
}

/// SHA-256 of `parts` concatenated, on a hash state that wipes itself on drop (for inputs
/// that hold key material).
pub(crate) fn sha256_wiping(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finalize().as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869, test case 1 (the first 32 of its 42 output bytes) and test case 3 (no
    /// salt, empty info).
    #[test]
    fn hkdf_matches_rfc_5869() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let prk = extract(&salt, &ikm);
        assert_eq!(
            hex::encode(prk.expand32(&[&info]).as_ref()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
        let prk = extract(&[0u8; 32], &ikm);
        assert_eq!(
            hex::encode(prk.expand32(&[]).as_ref()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        );
        // Split info is the same as joined info; a shorter output is a prefix.
        let prk = extract(&salt, &ikm);
        let mut short = [0u8; 16];
        prk.expand_into(&[&info[..3], &info[3..]], &mut short);
        assert_eq!(hex::encode(short), "3cb25f25faacd57a90434f64d0362f2a");
    }

    /// RFC 4231, test case 2.
    #[test]
    fn hmac_matches_rfc_4231() {
        let tag = HmacKey::new(b"Jefe").mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(sha256_wiping(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
