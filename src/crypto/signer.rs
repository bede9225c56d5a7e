//! Keys that authenticate audit checkpoints: the [`CheckpointSigner`] trait, the HMAC key a
//! local master key derives for it, and [`AuditKey`], a local key kept for checkpoints alone
//! (for a vault whose master key is in a KMS that makes no MACs).
//!
//! The checkpoint message and each signer's tag are specified in `docs/AUDIT.md`.

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::kdf::{self, HmacKey};
use super::{fill_random, DataKey};
use crate::error::{Error, Result};

/// A key that authenticates audit checkpoints: it makes a tag over a checkpoint's message and
/// checks one.
///
/// A master key offers one through [`KeyWrapper::checkpoint_signer`](super::KeyWrapper::checkpoint_signer)
/// (a local key: an HMAC key derived from it; AWS KMS and Google Cloud KMS: an HMAC key of
/// the service, when one is configured; HashiCorp Vault transit: the transit key's HMAC;
/// Azure Key Vault: a Key Vault signature), or a host configures one of its own
/// ([`AuditKey`], or any implementation) with `VaultBuilder::checkpoint_key`. Object-safe;
/// hold it as `Arc<dyn CheckpointSigner>`.
#[async_trait]
pub trait CheckpointSigner: Send + Sync + fmt::Debug + 'static {
    /// The id written into each checkpoint this key makes (1 to 255 bytes of UTF-8), so a
    /// checkpoint names the key that checks it. It should say what kind of key this is
    /// (`local:…`, `audit:…`, `aws_kms_mac:…`, …): the tag format follows from it.
    fn key_id(&self) -> &str;

    /// The tag over `message` (a checkpoint's message, `docs/AUDIT.md`).
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;

    /// Whether `tag` is this key's tag over `message`. `Ok(false)` for a tag that does not
    /// verify (forged, altered, or malformed); an error only when the key cannot be used
    /// (a service that does not answer, access denied).
    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool>;
}

/// HMAC-SHA256 under a 256-bit key, named by `key_id`: the checkpoint key a local master key
/// derives (`KeyWrapper::derive_internal`), and the MAC key of an [`AuditKey`].
pub(crate) struct HmacCheckpointKey {
    key_id: String,
    mac: HmacKey,
}

impl HmacCheckpointKey {
    pub(crate) fn new(key_id: &str, key: &DataKey) -> HmacCheckpointKey {
        HmacCheckpointKey {
            key_id: key_id.to_string(),
            mac: HmacKey::new(key.expose_secret()),
        }
    }

    fn tag(&self, message: &[u8]) -> kdf::Secret32 {
        self.mac.mac(&[message])
    }
}

impl fmt::Debug for HmacCheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacCheckpointKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CheckpointSigner for HmacCheckpointKey {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        Ok(self.tag(message).to_vec())
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        let expected = self.tag(message);
        Ok(tag.len() == expected.len() && bool::from(expected.as_slice().ct_eq(tag)))
    }
}

/// HKDF labels of an [`AuditKey`] (`docs/AUDIT.md`).
const AUDIT_KEY_SALT: &[u8] = b"strongroom/audit-key/v1";
const AUDIT_KEY_INFO_ID: &[u8] = b"strongroom/audit-key/v1/key-id";
const AUDIT_KEY_INFO_MAC: &[u8] = b"strongroom/audit-key/v1/checkpoint-mac";

/// A 256-bit key of its own for audit checkpoints, apart from the master key: the CLI's
/// `STRONGROOM_AUDIT_KEY`, or `VaultBuilder::checkpoint_key(Arc::new(AuditKey::…))`.
///
/// Use it when the master key offers no checkpoint key (AWS KMS or Google Cloud KMS without
/// a MAC key), or to keep checkpoints apart from the master key. Its id is `audit:` and 32
/// hex digits (128 bits), and its tag is HMAC-SHA256 under a key derived from it by HKDF
/// (`docs/AUDIT.md`). Keep it where the database's writers cannot read it: whoever holds it
/// can make checkpoints. `Debug` never shows it.
pub struct AuditKey(HmacCheckpointKey);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuditKey").field(&self.0.key_id).finish()
    }
}

impl AuditKey {
    /// The audit key with these 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> AuditKey {
        let prk = kdf::extract(AUDIT_KEY_SALT, bytes);
        let mut id = [0u8; 16];
        prk.expand_into(&[AUDIT_KEY_INFO_ID], &mut id);
        let mac_key = DataKey::from_bytes(*prk.expand32(&[AUDIT_KEY_INFO_MAC]));
        AuditKey(HmacCheckpointKey::new(
            &format!("audit:{}", hex::encode(id)),
            &mac_key,
        ))
    }

    /// A fresh audit key from the operating system's random generator, and its 32 bytes as
    /// base64url (to keep: [`AuditKey::from_base64`] reads it back).
    pub fn generate() -> Result<(AuditKey, Zeroizing<String>)> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        let text = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes));
        Ok((AuditKey::from_bytes(&bytes), text))
    }

    /// The audit key from 32 bytes written as base64url (padding optional) or standard
    /// base64; `source` names where it came from in the error (never the value).
    pub fn from_base64(text: &str, source: &str) -> Result<AuditKey> {
        let text = text.trim();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::config(format!(
                    "{source} is not base64: give 32 random bytes as base64url (for example \
                     `openssl rand -base64 32 | tr '+/' '-_'`)"
                ))
            })?;
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(decoded.as_slice().try_into().map_err(|_| {
                Error::config(format!(
                    "{source} must be 32 bytes, it decodes to {}",
                    decoded.len()
                ))
            })?);
        Ok(AuditKey::from_bytes(&bytes))
    }
}

#[async_trait]
impl CheckpointSigner for AuditKey {
    fn key_id(&self) -> &str {
        self.0.key_id()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(message).await
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        self.0.verify(message, tag).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_audit_key_signs_and_checks_and_never_prints() {
        let key = AuditKey::from_bytes(&[7u8; 32]);
        assert!(key.key_id().starts_with("audit:") && key.key_id().len() == 6 + 32);
        let tag = key.sign(b"message").await.expect("sign");
        assert_eq!(tag.len(), 32);
        assert!(key.verify(b"message", &tag).await.expect("verify"));
        assert!(!key.verify(b"messagf", &tag).await.expect("verify"));
        assert!(!key.verify(b"message", &tag[..31]).await.expect("verify"));
        let other = AuditKey::from_bytes(&[8u8; 32]);
        assert!(!other.verify(b"message", &tag).await.expect("verify"));
        assert!(!format!("{key:?}").contains("0707"));
        let (fresh, text) = AuditKey::generate().expect("generate");
        let back = AuditKey::from_base64(&text, "test").expect("read back");
        assert_eq!(fresh.key_id(), back.key_id());
        let err = AuditKey::from_base64("c2hvcnQ", "STRONGROOM_AUDIT_KEY").expect_err("short");
        assert!(err.to_string().contains("STRONGROOM_AUDIT_KEY"), "{err}");
    }

    /// The derivation docs/AUDIT.md gives for an audit key.
    #[tokio::test]
    async fn the_audit_key_derivation_is_the_documented_one() {
        let bytes = [0x11u8; 32];
        let prk = kdf::extract(b"strongroom/audit-key/v1", &bytes);
        let id = prk.expand32(&[b"strongroom/audit-key/v1/key-id"]);
        let mac = prk.expand32(&[b"strongroom/audit-key/v1/checkpoint-mac"]);
        let key = AuditKey::from_bytes(&bytes);
        assert_eq!(key.key_id(), format!("audit:{}", hex::encode(&id[..16])));
        let tag = key.sign(b"m").await.expect("sign");
        assert_eq!(tag, HmacKey::new(mac.as_ref()).mac(&[b"m"]).to_vec());
    }
}
