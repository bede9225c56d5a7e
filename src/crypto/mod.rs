//! Envelope encryption: data keys, the `KeyWrapper` trait for master-key backends, the
//! byte format of sealed blobs (`docs/FORMAT.md`) and the `KeyRing` that seals, opens and
//! re-wraps them.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

mod aead;
mod cache;
pub mod envelope;
pub(crate) mod kdf;
mod keyring;
#[cfg(feature = "kms")]
pub mod kms;
mod local;
pub(crate) mod random;
mod signer;

pub use cache::{DekCacheConfig, DekCacheStats};
pub use keyring::KeyRing;
pub use local::{
    default_home_from_env, key_wrapper_from_env, key_wrapper_from_env_with, key_wrapper_from_vars,
    LocalKey, ENV_HOME, ENV_KMS, ENV_MASTER_KEY,
};
pub(crate) use signer::HmacCheckpointKey;
pub use signer::{AuditKey, CheckpointSigner};

/// A 256-bit symmetric key (a data key, or a key derived from the master key). Wiped on drop;
/// `Debug` never shows the bytes. It has no `PartialEq`: compare two keys with
/// [`ConstantTimeEq::ct_eq`], which takes the same time whatever the bytes.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl Zeroize for DataKey {
    /// Clears the bytes as a slice: one fill behind `zeroize`'s optimisation barrier (an
    /// array is written one volatile byte at a time).
    fn zeroize(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for DataKey {}

impl ConstantTimeEq for DataKey {
    fn ct_eq(&self, other: &DataKey) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl DataKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<DataKey> {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes)?;
        Ok(DataKey(bytes))
    }

    /// Wraps existing key bytes (taking ownership; the caller's copy should be wiped).
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(bytes)
    }

    /// The key bytes. Named so every use is easy to find.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| crate::error::Error::KeyUnavailable {
        key_id: "os-random".into(),
        reason: format!("the operating system's random number generator failed: {e}"),
    })
}

/// Which family of master-key backend wrapped a data key; written into byte 2 of every blob.
///
/// Keys of one family share a wrapped-key format, so a local key may move between the `env`
/// and `file` sources without re-wrapping anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendId {
    /// A local 256-bit key (`env`, `file`, or in memory): AES-256-GCM key wrap.
    Local,
    /// AWS KMS.
    AwsKms,
    /// Google Cloud KMS.
    GcpKms,
    /// Azure Key Vault.
    AzureKv,
    /// HashiCorp Vault transit.
    Vault,
}

impl BackendId {
    /// The byte written into the blob header.
    pub fn to_byte(self) -> u8 {
        match self {
            BackendId::Local => 1,
            BackendId::AwsKms => 2,
            BackendId::GcpKms => 3,
            BackendId::AzureKv => 4,
            BackendId::Vault => 5,
        }
    }

    /// Reads the header byte; `None` for an unknown value.
    pub fn from_byte(byte: u8) -> Option<BackendId> {
        Some(match byte {
            1 => BackendId::Local,
            2 => BackendId::AwsKms,
            3 => BackendId::GcpKms,
            4 => BackendId::AzureKv,
            5 => BackendId::Vault,
            _ => return None,
        })
    }

    /// The `STRONGROOM_KMS` name of the backend.
    pub fn name(self) -> &'static str {
        match self {
            BackendId::Local => "local",
            BackendId::AwsKms => "aws_kms",
            BackendId::GcpKms => "gcp_kms",
            BackendId::AzureKv => "azure_kv",
            BackendId::Vault => "vault",
        }
    }
}

/// A master-key backend: wraps and unwraps data keys, binding the record's associated data
/// so a wrapped key cannot be moved to another record.
///
/// Object-safe; hold it as `Arc<dyn KeyWrapper>`. Implementations for remote services call
/// them through the host's transport; the local implementation is [`LocalKey`].
#[async_trait]
pub trait KeyWrapper: Send + Sync + fmt::Debug + 'static {
    /// The backend family, written into each blob's header.
    fn backend_id(&self) -> BackendId;

    /// A stable id for this key (1 to 255 bytes of UTF-8), written into each blob so that
    /// opening picks the right key from a [`KeyRing`].
    fn key_id(&self) -> &str;

    /// Wraps `dek`, authenticating `aad` (the record's identity and the blob header).
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>>;

    /// Unwraps what [`KeyWrapper::wrap`] produced. Must fail (with
    /// [`crate::error::Error::DecryptFailed`]) when `aad` differs from the one used to wrap.
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey>;

    /// Derives a 256-bit key for a caller's own `purpose`, so that whoever holds the master
    /// key can authenticate data without a stored secret. Callers' purposes live in a
    /// namespace of their own (a local key derives with HKDF info
    /// `"strongroom/v2/purpose/" || purpose`): no purpose string, whatever it spells, yields
    /// one of the keys the library derives for itself ([`KeyWrapper::derive_internal`]).
    /// Backends that cannot derive keys return [`crate::error::Error::KeyUnavailable`].
    async fn derive_key(&self, purpose: &str) -> Result<DataKey>;

    /// Derives one of the library's own keys (the audit checkpoint key) under a label no
    /// [`KeyWrapper::derive_key`] purpose can produce. Only the library can call it: the
    /// [`InternalUse`] it takes cannot be made outside the crate. A wrapper that delegates to
    /// another passes the call on unchanged. The default (for backends that derive nothing)
    /// is [`crate::error::Error::KeyUnavailable`].
    async fn derive_internal(&self, key: InternalKey, proof: &InternalUse) -> Result<DataKey> {
        let _ = (key, proof);
        Err(Error::KeyUnavailable {
            key_id: self.key_id().to_string(),
            reason: format!(
                "a {} master key derives no keys (audit checkpoints need a key of their own: \
                 a MAC key of the service, or a separate audit key; see docs/DEPLOYMENT.md)",
                self.backend_id().name()
            ),
        })
    }

    /// The key that authenticates audit checkpoints made under this master key
    /// (`docs/AUDIT.md`). Only the library can call it ([`InternalUse`]): with a local key
    /// the signer holds a key derived from the master key, which no caller may hold. A
    /// wrapper that delegates to another passes the call on unchanged.
    ///
    /// The default is HMAC-SHA256 under [`InternalKey::AuditCheckpoint`] from
    /// [`KeyWrapper::derive_internal`], named by [`KeyWrapper::key_id`] (local keys). The
    /// cloud backends offer their service's MAC or signature instead (AWS KMS
    /// `GenerateMac`, Google Cloud KMS `macSign`, Vault transit `hmac`, Azure Key Vault
    /// `sign`), under an id of that key's own; one that offers none fails with
    /// [`crate::error::Error::KeyUnavailable`] saying how to configure one.
    async fn checkpoint_signer(&self, proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        let key = self
            .derive_internal(InternalKey::AuditCheckpoint, proof)
            .await?;
        Ok(Arc::new(HmacCheckpointKey::new(self.key_id(), &key)))
    }

    /// The same master key as format version 1 named and used it, so that a [`KeyRing`]
    /// holding this key still opens version-1 blobs that name the old id. Only local keys
    /// changed between the formats (a 64-bit id and the raw master key as the wrap key in
    /// version 1; a 128-bit id and HKDF-derived keys in version 2); the default is `None`.
    /// The alias opens and wraps version-1 blobs only, and derives no caller keys.
    fn legacy_alias(&self) -> Option<Arc<dyn KeyWrapper>> {
        None
    }

    /// A 256-bit fingerprint of the key material, when the backend holds it (local keys),
    /// so that a [`KeyRing`] can tell a second copy of a key it holds from a different key
    /// that claims the same id. The default is `None`: for a remote key, the id is the
    /// service's own full name for it.
    fn fingerprint(&self) -> Option<[u8; 32]> {
        None
    }
}

/// Keys the library derives from a master key for its own use
/// ([`KeyWrapper::derive_internal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InternalKey {
    /// The key that authenticates audit checkpoints (`docs/AUDIT.md`).
    AuditCheckpoint,
}

/// Proof that a [`KeyWrapper::derive_internal`] call comes from inside strongroom: only the
/// crate can make one, so code outside it cannot obtain the library's internal keys
/// through a key wrapper (a wrapper that delegates can pass one on, not make one).
pub struct InternalUse(());

impl InternalUse {
    pub(crate) const fn new() -> InternalUse {
        InternalUse(())
    }
}

impl fmt::Debug for InternalUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InternalUse")
    }
}
