//! The AES-256-GCM key wrap of local master keys, with a synthetic nonce.

use zeroize::Zeroizing;

use super::super::aead::AesGcmKey;
use super::super::kdf::{HmacKey, Secret32};
use super::super::DataKey;
use crate::error::{Error, Result};

pub(super) const WRAP_NONCE_LEN: usize = 12;
pub(super) const WRAPPED_LEN: usize = WRAP_NONCE_LEN + 32 + 16;

/// The AES-256-GCM key wrap with a synthetic nonce, under one wrap key and one nonce key.
pub(super) struct LocalWrap {
    /// The wrap key's schedule (overwritten on drop, as far as safe code can: see
    /// `crypto/aead.rs`).
    cipher: AesGcmKey,
    /// HMAC keyed with the nonce key, cloned per wrap so the key pads are hashed once.
    nonce_mac: HmacKey,
}

impl LocalWrap {
    pub(super) fn new(wrap_key: &[u8; 32], nonce_key: &[u8; 32]) -> LocalWrap {
        LocalWrap {
            cipher: AesGcmKey::new(wrap_key),
            nonce_mac: HmacKey::new(nonce_key),
        }
    }

    /// `nonce(12) || AES-256-GCM(wrap key, nonce, DEK, aad)`, the nonce being
    /// `HMAC-SHA256(nonce key, aad || DEK)[..12]`.
    pub(super) fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let digest = self.nonce_mac.mac(&[aad, dek.expose_secret()]);
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        nonce.copy_from_slice(&digest[..WRAP_NONCE_LEN]);
        // Holds the data key in the clear until it is encrypted in place: wiped if that fails.
        let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek.expose_secret());
        let tag = self
            .cipher
            .seal_in_place(&nonce, aad, &mut out[WRAP_NONCE_LEN..])
            .map_err(|_| Error::invalid("data key", "could not be wrapped"))?;
        out.extend_from_slice(&tag);
        // Ciphertext now: move it out (no copy), leaving an empty vector to wipe.
        Ok(std::mem::take(&mut *out))
    }

    pub(super) fn unwrap(&self, wrapped: &[u8], aad: &[u8], key_id: &str) -> Result<DataKey> {
        let fail = || Error::decrypt(format!("data key wrapped by {key_id}"));
        if wrapped.len() != WRAPPED_LEN {
            return Err(fail());
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let nonce: &[u8; WRAP_NONCE_LEN] = nonce.try_into().map_err(|_| fail())?;
        let (ct, tag) = rest.split_at(32);
        let mut key = Secret32::new([0u8; 32]);
        key.copy_from_slice(ct);
        self.cipher
            .open_in_place(nonce, aad, key.as_mut(), tag)
            .map_err(|_| fail())?;
        Ok(DataKey::from_bytes(*key))
    }
}
