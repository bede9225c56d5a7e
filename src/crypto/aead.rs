//! AES-256-GCM for payloads and data-key wraps: ring's implementation (AES-NI, VAES and
//! CLMUL here, constant time), behind types that overwrite their key schedule on drop.
//!
//! **What is wiped, and how far that goes.** ring's keys (`LessSafeKey`) implement neither
//! `Zeroize` nor `Drop`: dropped, their AES round keys and GHASH table stay in freed memory.
//! [`AesGcmKey`], the key that is kept (a local key's wrap key, a cached payload key), holds
//! the ring key in a box of its own (so it is built and used in one place); [`OneShotKey`],
//! the payload key of one seal or one open that nothing keeps, holds it inline in the stack
//! frame that builds and uses it (no allocation). On drop both assign over the key a copy of
//! a key schedule made from 32 zero bytes, then pass the overwritten memory to
//! [`std::hint::black_box`] so the compiler keeps that store although the memory is freed (or
//! the frame popped) right after. That is a best effort, not what `zeroize`'s volatile writes
//! guarantee (`black_box` is documented as a hint, and safe code cannot do better here,
//! `unsafe` being forbidden): the schedule's bytes where the key lives are replaced, but
//! copies ring makes on the stack while expanding the key, or the compiler makes while
//! moving the key into its box or its caller's frame, are not wiped. The raw key bytes
//! themselves are only ever held in [`zeroize::Zeroizing`] buffers or a [`super::DataKey`].

use std::sync::LazyLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// The key whose schedule overwrites a dropped key's (a public value: 32 zero bytes).
static WIPED: LazyLock<LessSafeKey> = LazyLock::new(|| expand(&[0u8; 32]));

fn expand(key: &[u8; 32]) -> LessSafeKey {
    // AES-256-GCM takes exactly 32 bytes, so ring cannot refuse them.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

/// An AES-256-GCM key with its schedule built, kept in a box of its own and overwritten on
/// drop (module comment).
pub(crate) struct AesGcmKey(Box<LessSafeKey>);

/// An AES-256-GCM key with its schedule built, for one seal or open where it is made: held
/// inline (no allocation) and overwritten on drop (module comment). Bind it to a local and
/// use it by reference; it is not meant to be moved or kept.
pub(crate) struct OneShotKey(LessSafeKey);

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
        seal_in_place(&self.0, nonce, aad, buf)
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
        open_in_place(&self.0, nonce, aad, buf, tag)
    }

    /// Overwrites the key schedule with the one of the all-zero key (module comment).
    fn wipe(&mut self) {
        wipe(&mut self.0);
    }
}

impl OneShotKey {
    pub(crate) fn new(key: &[u8; 32]) -> OneShotKey {
        OneShotKey(expand(key))
    }

    /// [`AesGcmKey::seal_in_place`].
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; 16], AeadFailed> {
        seal_in_place(&self.0, nonce, aad, buf)
    }

    /// [`AesGcmKey::open_in_place`].
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AeadFailed> {
        open_in_place(&self.0, nonce, aad, buf, tag)
    }
}

fn seal_in_place(
    key: &LessSafeKey,
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; 16], AeadFailed> {
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
        .map_err(|_| AeadFailed)?;
    let mut out = [0u8; 16];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

fn open_in_place(
    key: &LessSafeKey,
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), AeadFailed> {
    let tag: [u8; 16] = tag.try_into().map_err(|_| AeadFailed)?;
    key.open_in_place_separate_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        tag.into(),
        buf,
        0..,
    )
    .map(|_| ())
    .map_err(|_| AeadFailed)
}

/// Overwrites a key schedule with the one of the all-zero key (module comment).
fn wipe(key: &mut LessSafeKey) {
    key.clone_from(&WIPED);
    std::hint::black_box(&*key);
}

impl Drop for AesGcmKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl Drop for OneShotKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
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

    /// The inline key seals as the boxed one does, and its wipe replaces its schedule too.
    #[test]
    fn the_one_shot_key_matches_and_wipes() {
        let secret = [0x42u8; 32];
        let boxed = AesGcmKey::new(&secret);
        let mut once = OneShotKey::new(&secret);
        let mut buf = b"sixteen byte msg".to_vec();
        let tag = once
            .seal_in_place(&[1; 12], b"aad", &mut buf)
            .expect("seal");
        assert_eq!([buf.clone(), tag.to_vec()].concat(), seal(&boxed));
        boxed
            .open_in_place(&[1; 12], b"aad", &mut buf.clone(), &tag)
            .expect("open");
        wipe(&mut once.0);
        assert!(once
            .open_in_place(&[1; 12], b"aad", &mut buf, &tag)
            .is_err());
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
