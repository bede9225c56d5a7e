//! A local master key as format 1 knew it (its 64-bit id and format 1's keys), kept to open
//! and re-wrap what format 1 sealed.

use std::fmt;

use async_trait::async_trait;

use super::super::kdf::{self, Secret32};
use super::super::{BackendId, DataKey, InternalKey, InternalUse, KeyWrapper};
use super::wrap::LocalWrap;
use crate::error::{Error, Result};

/// Format 1, kept to open what it sealed: a 64-bit id from SHA-256, the raw master key as
/// the AES-GCM wrap key, and HKDF keys whose info was a plain string.
pub(super) const KEY_ID_LABEL_V1: &[u8] = b"strongroom/key-id/v1";
pub(super) const HKDF_SALT_V1: &[u8] = b"strongroom/derive/v1";
pub(super) const WRAP_NONCE_INFO_V1: &[u8] = b"strongroom local wrap nonce v1";
pub(super) const CHECKPOINT_INFO_V1: &[u8] = b"strongroom audit checkpoint v1";

/// A local master key as format 1 knew it: its 64-bit id, the raw key as the AES-GCM wrap
/// key, the format-1 nonce and checkpoint keys. Reached only through
/// [`KeyWrapper::legacy_alias`]; it wraps and unwraps for format-1 associated data only
/// (a version-2 blob that names a format-1 id does not open), and derives no caller keys.
pub(crate) struct LegacyLocalKey {
    pub(super) key_id: String,
    wrap: LocalWrap,
    checkpoint_key: Secret32,
    fingerprint: [u8; 32],
}

impl fmt::Debug for LegacyLocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyLocalKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl LegacyLocalKey {
    pub(super) fn new(bytes: &[u8; 32], fingerprint: [u8; 32]) -> LegacyLocalKey {
        let digest = kdf::sha256_wiping(&[KEY_ID_LABEL_V1, bytes]);
        let prk = kdf::extract(HKDF_SALT_V1, bytes);
        LegacyLocalKey {
            key_id: format!("local:{}", hex::encode(&digest[..8])),
            wrap: LocalWrap::new(bytes, &prk.expand32(&[WRAP_NONCE_INFO_V1])),
            checkpoint_key: prk.expand32(&[CHECKPOINT_INFO_V1]),
            fingerprint,
        }
    }

    /// Wraps for format-1 associated data (the known-answer vectors of format 1).
    pub(crate) fn wrap_sync(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        self.format1_only(aad)?;
        self.wrap.wrap(dek, aad)
    }

    fn format1_only(&self, aad: &[u8]) -> Result<()> {
        if super::super::envelope::is_format1_wrap_aad(aad) {
            Ok(())
        } else {
            Err(Error::decrypt(format!(
                "a blob naming {}, the format-1 id of a local key: only version-1 blobs may \
                 (a version-2 blob names the key's 128-bit id)",
                self.key_id
            )))
        }
    }
}

#[async_trait]
impl KeyWrapper for LegacyLocalKey {
    fn backend_id(&self) -> BackendId {
        BackendId::Local
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        self.wrap_sync(dek, aad)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        self.format1_only(aad)?;
        self.wrap.unwrap(wrapped, aad, &self.key_id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(Error::KeyUnavailable {
            key_id: self.key_id.clone(),
            reason: "the format-1 id of a local key opens old blobs and checks old checkpoints \
                     only; derive keys with the key itself (its 128-bit id)"
                .into(),
        })
    }

    async fn derive_internal(&self, key: InternalKey, _proof: &InternalUse) -> Result<DataKey> {
        match key {
            // Checkpoints made before format 2 name this id and were made with this key.
            InternalKey::AuditCheckpoint => Ok(DataKey::from_bytes(*self.checkpoint_key)),
        }
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        Some(self.fingerprint)
    }
}
