//! Envelope encryption: data keys, the `KeyWrapper` trait for master-key backends, the
//! byte format of sealed blobs (`docs/FORMAT.md`) and the `KeyRing` that seals, opens and
//! re-wraps them.

use std::fmt;

use async_trait::async_trait;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Result;

mod cache;
pub mod envelope;
mod keyring;
#[cfg(feature = "kms")]
pub mod kms;
mod local;

pub use cache::{DekCacheConfig, DekCacheStats};
pub use keyring::KeyRing;
pub use local::{
    default_home_from_env, key_wrapper_from_env, key_wrapper_from_env_with, key_wrapper_from_vars,
    LocalKey, ENV_HOME, ENV_KMS, ENV_MASTER_KEY,
};

/// A 256-bit symmetric key (a data key, or a key derived from the master key). Wiped on drop;
/// `Debug` never shows the bytes. It has no `PartialEq`: compare two keys with
/// [`ConstantTimeEq::ct_eq`], which takes the same time whatever the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

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
    getrandom::fill(buf).map_err(|e| crate::Error::KeyUnavailable {
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
    /// [`crate::Error::DecryptFailed`]) when `aad` differs from the one used to wrap.
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey>;

    /// Derives a 256-bit key for one purpose (for example audit checkpoints), so that
    /// whoever holds the master key can authenticate data without a stored secret.
    /// Backends that cannot derive keys return [`crate::Error::KeyUnavailable`].
    async fn derive_key(&self, purpose: &str) -> Result<DataKey>;
}
