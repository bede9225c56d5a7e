//! AES-256-GCM for payloads and data-key wraps: ring's implementation (AES-NI, VAES and
//! CLMUL here, constant time), behind a type that overwrites its key schedule on drop.
//!
//! **What is wiped, and how far that goes.** ring's keys (`LessSafeKey`) implement neither
//! `Zeroize` nor `Drop`: dropped, their AES round keys and GHASH table stay in freed memory.
//! [`AesGcmKey`] keeps the ring key in a box of its own (so it is built and used in one
//! place), and its `Drop` assigns over it a copy of a key schedule made from 32 zero bytes,
//! then passes the overwritten memory to [`std::hint::black_box`] so the compiler keeps that
//! store although the memory is freed right after. That is a best effort, not what
//! `zeroize`'s volatile writes guarantee (`black_box` is documented as a hint, and safe code
//! cannot do better here, `unsafe` being forbidden): the schedule's bytes in the box are
//! replaced, but copies ring makes on the stack while expanding the key, or the compiler
//! makes while moving the key into its box, are not wiped. The raw key bytes themselves are
//! only ever held in [`zeroize::Zeroizing`] buffers or a [`super::DataKey`].

use std::sync::LazyLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// The key whose schedule overwrites a dropped key's (a public value: 32 zero bytes).
static WIPED: LazyLock<LessSafeKey> = LazyLock::new(|| expand(&[0u8; 32]));

fn expand(key: &[u8; 32]) -> LessSafeKey {
    // AES-256-GCM takes exactly 32 bytes, so ring cannot refuse them.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

/// An AES-256-GCM key with its schedule built, overwritten on drop (module comment).
pub(crate) struct AesGcmKey(Box<LessSafeKey>);

/// AES-GCM refused to seal (the plaintext is longer than GCM allows) or to open (the tag
/// did not match).
#[derive(Debug)]
pub(crate) struct AeadFailed;

impl AesGcmKey {
    pub(crate) fn new(key: &[u8; 32]) -> AesGcmKey {
        AesGcmKey(Box::new(expand(key)))
    }

    /// Encrypts `buf` in place under `nonce`, authenticating `aad`; returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; 16], AeadFailed> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| AeadFailed)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `buf` in place when `tag` matches `nonce`, `aad` and `buf`. On a mismatch
    /// ring has already overwritten `buf` (no unauthenticated plaintext is left in it).
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AeadFailed> {
        let tag: [u8; 16] = tag.try_into().map_err(|_| AeadFailed)?;
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag.into(),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadFailed)
    }

    /// Overwrites the key schedule with the one of the all-zero key (module comment).
    fn wipe(&mut self) {
        *self.0 = WIPED.clone();
        std::hint::black_box(&*self.0);
    }
}

impl Drop for AesGcmKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &AesGcmKey) -> Vec<u8> {
        let mut buf = b"sixteen byte msg".to_vec();
        let tag = key.seal_in_place(&[1; 12], b"aad", &mut buf).expect("seal");
        buf.extend_from_slice(&tag);
        buf
    }

    /// A wiped key seals as the all-zero key does: its own schedule is gone from the
    /// memory it occupied (what `Drop` does, observed before the memory is freed).
    #[test]
    fn wiping_replaces_the_schedule_with_the_zero_keys() {
        let secret = [0x42u8; 32];
        let mut key = AesGcmKey::new(&secret);
        let before = seal(&key);
        assert_eq!(before, seal(&AesGcmKey::new(&secret)));
        key.wipe();
        assert_ne!(seal(&key), before);
        assert_eq!(seal(&key), seal(&AesGcmKey::new(&[0u8; 32])));
    }

    /// Known answer: test case 14 of McGrew and Viega's GCM specification (AES-256, key,
    /// nonce and 16-byte plaintext all zero); a wrong associated data fails to open.
    #[test]
    fn matches_the_gcm_specification_test_case_14() {
        let key = AesGcmKey::new(&[0u8; 32]);
        let mut buf = [0u8; 16];
        let tag = key.seal_in_place(&[0u8; 12], b"", &mut buf).expect("seal");
        assert_eq!(hex::encode(buf), "cea7403d4d606b6e074ec5d3baf39d18");
        assert_eq!(hex::encode(tag), "d0d1c8a799996bf0265b98b5d48ab919");
        let mut bad = buf;
        assert!(key.open_in_place(&[0u8; 12], b"x", &mut bad, &tag).is_err());
        key.open_in_place(&[0u8; 12], b"", &mut buf, &tag)
            .expect("open");
        assert_eq!(buf, [0u8; 16]);
    }
}
