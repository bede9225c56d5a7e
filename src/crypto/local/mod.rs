//! Local master keys (`env`, `file`, in memory) and the `STRONGROOM_KMS` selection rule.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use zeroize::Zeroizing;

use super::kdf::{self, HmacKey};
use super::{fill_random, BackendId, DataKey, InternalKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};

mod file;
mod legacy;
mod select;
mod wrap;

use file::{check_private, create_key_file};
pub(crate) use legacy::LegacyLocalKey;
pub use select::{
    default_home_from_env, key_wrapper_from_env, key_wrapper_from_env_with, key_wrapper_from_vars,
};
use wrap::LocalWrap;

/// Selects the master-key backend: `env`, `file`, `aws_kms`, `gcp_kms`, `azure_kv`, `vault`.
pub const ENV_KMS: &str = "STRONGROOM_KMS";
/// A 32-byte master key, base64url (padding optional). Selects `env` when `STRONGROOM_KMS`
/// is unset.
pub const ENV_MASTER_KEY: &str = "STRONGROOM_MASTER_KEY";
/// The strongroom home folder (default `~/.strongroom`); the `file` key is `master.key` in it.
pub const ENV_HOME: &str = "STRONGROOM_HOME";

/// Format 2: every key a local master key yields is HKDF-SHA256 from one PRK, each under an
/// info label of its own. The library's own labels start `strongroom/v2/internal/`, callers'
/// purposes `strongroom/v2/purpose/`: the two differ at byte 14, before any caller text, so
/// no purpose reaches an internal key (`docs/FORMAT.md`, "Local keys").
const HKDF_SALT: &[u8] = b"strongroom/local-key/v2";
const INFO_KEY_ID: &[u8] = b"strongroom/v2/internal/key-id";
const INFO_WRAP_KEY: &[u8] = b"strongroom/v2/internal/wrap-key";
const INFO_WRAP_NONCE_KEY: &[u8] = b"strongroom/v2/internal/wrap-nonce-key";
const INFO_CHECKPOINT_KEY: &[u8] = b"strongroom/v2/internal/audit-checkpoint-key";
const INFO_FINGERPRINT: &[u8] = b"strongroom/v2/internal/fingerprint";
const PURPOSE_PREFIX: &[u8] = b"strongroom/v2/purpose/";
/// Bytes of the format-2 key id (128 bits: a colliding key costs about 2^64 work).
const KEY_ID_LEN: usize = 16;

/// A local 256-bit master key. Wraps data keys with AES-256-GCM under a wrap key derived
/// from it (HKDF), authenticating the record's associated data, under a synthetic nonce
/// `HMAC-SHA256(nonce key, aad || DEK)[..12]` (the SIV construction: distinct inputs get
/// distinct nonces without a random draw, and a repeated input only repeats its own output).
/// Its id is `local:` and 32 hex digits (128 bits derived from the key), so the same key has
/// the same id wherever it is loaded from.
///
/// The key also answers, through [`KeyWrapper::legacy_alias`], to the 64-bit id format 1
/// gave it (`local:` and 16 hex digits), with format 1's rules, so a [`super::KeyRing`]
/// holding it still opens version-1 blobs.
pub struct LocalKey {
    key_id: String,
    source: String,
    wrap: LocalWrap,
    /// HKDF PRK of every key below, as a keyed HMAC (wiped on drop).
    prk: HmacKey,
    fingerprint: [u8; 32],
    legacy: Arc<LegacyLocalKey>,
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey")
            .field("key_id", &self.key_id)
            .field("legacy_key_id", &self.legacy.key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl LocalKey {
    /// Builds a key from its 32 bytes; `source` says where it came from (for messages).
    pub fn from_bytes(bytes: &[u8; 32], source: impl Into<String>) -> LocalKey {
        let prk = kdf::extract(HKDF_SALT, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        prk.expand_into(&[INFO_KEY_ID], &mut id);
        let wrap = LocalWrap::new(
            &prk.expand32(&[INFO_WRAP_KEY]),
            &prk.expand32(&[INFO_WRAP_NONCE_KEY]),
        );
        let fingerprint = *prk.expand32(&[INFO_FINGERPRINT]);
        let legacy = Arc::new(LegacyLocalKey::new(bytes, fingerprint));
        LocalKey {
            key_id: format!("local:{}", hex::encode(id)),
            source: source.into(),
            wrap,
            prk,
            fingerprint,
            legacy,
        }
    }

    /// A fresh random key held only in memory (for test suites).
    pub fn generate() -> Result<LocalKey> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        Ok(LocalKey::from_bytes(&bytes, "in-memory"))
    }

    /// Parses a base64url key (padding optional, surrounding whitespace ignored);
    /// `source` names the variable or file in errors.
    pub fn from_base64(text: &str, source: &str) -> Result<LocalKey> {
        let trimmed = text.trim().trim_end_matches('=');
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(trimmed)
                .map_err(|_| {
                    Error::config(format!(
                        "{source} is not valid base64url; it must hold 32 random bytes encoded \
                         as base64url (generate one with `openssl rand 32 | basenc --base64url`)"
                    ))
                })?,
        );
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(decoded.as_slice().try_into().map_err(|_| {
                Error::config(format!(
                    "{source} decodes to {} bytes; a master key is exactly 32 bytes",
                    decoded.len()
                ))
            })?);
        Ok(LocalKey::from_bytes(&bytes, source))
    }

    /// Encodes fresh key bytes as base64url text (how `master.key` and
    /// `STRONGROOM_MASTER_KEY` hold a key).
    pub fn generate_base64() -> Result<Zeroizing<String>> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut())?;
        Ok(Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        ))
    }

    /// Loads the key from `STRONGROOM_MASTER_KEY`-style text.
    pub fn from_env_value(value: &str) -> Result<LocalKey> {
        LocalKey::from_base64(value, ENV_MASTER_KEY)
    }

    /// Loads `path`, creating it with a fresh key (mode 0600, folder 0700) when absent, and
    /// refusing a file that group or others can read or write.
    ///
    /// Creating is safe against concurrent first use: the key is written to a temporary file
    /// in the same folder and linked into place only if nothing is there yet, so every
    /// process that raced to create it ends up with the one key that won, never with a file
    /// another process has not finished writing.
    pub fn load_or_create_file(path: &Path) -> Result<LocalKey> {
        match std::fs::metadata(path) {
            Ok(_) => LocalKey::load_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    /// Loads the key file at `path`, which must exist, refusing a file that group or others
    /// can read or write. Never creates anything (for retired keys and existing vaults).
    pub fn load_file(path: &Path) -> Result<LocalKey> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
        check_private(path, &meta)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?,
        );
        LocalKey::from_base64(&text, &format!("master key file {}", path.display()))
    }

    /// Where the key came from (`STRONGROOM_MASTER_KEY`, a file path, `in-memory`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The id format 1 gave this key (`local:` and 16 hex digits), under which version-1
    /// blobs name it.
    pub fn legacy_key_id(&self) -> &str {
        &self.legacy.key_id
    }

    /// Wraps `dek` for `aad` (what [`KeyWrapper::wrap`] does, without the future): the
    /// output is `nonce(12) || ciphertext(32) || tag(16)`.
    #[cfg(test)]
    pub(crate) fn wrap_sync(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        self.wrap.wrap(dek, aad)
    }

    /// The format-1 face of this key, as a concrete type (for the known-answer tests).
    #[cfg(test)]
    pub(crate) fn legacy(&self) -> &LegacyLocalKey {
        &self.legacy
    }
}

#[async_trait]
impl KeyWrapper for LocalKey {
    fn backend_id(&self) -> BackendId {
        BackendId::Local
    }

    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        self.wrap.wrap(dek, aad)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        self.wrap.unwrap(wrapped, aad, &self.key_id)
    }

    async fn derive_key(&self, purpose: &str) -> Result<DataKey> {
        let key = self.prk.expand32(&[PURPOSE_PREFIX, purpose.as_bytes()]);
        Ok(DataKey::from_bytes(*key))
    }

    async fn derive_internal(&self, key: InternalKey, _proof: &InternalUse) -> Result<DataKey> {
        let info = match key {
            InternalKey::AuditCheckpoint => INFO_CHECKPOINT_KEY,
        };
        Ok(DataKey::from_bytes(*self.prk.expand32(&[info])))
    }

    fn legacy_alias(&self) -> Option<Arc<dyn KeyWrapper>> {
        Some(self.legacy.clone())
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        Some(self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    // RustCrypto's AES-GCM: an implementation independent of the one that wraps.
    use aes_gcm::aead::AeadInPlace;
    use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

    use super::legacy::{CHECKPOINT_INFO_V1, HKDF_SALT_V1, WRAP_NONCE_INFO_V1};
    use super::wrap::WRAP_NONCE_LEN;
    use super::*;
    use std::path::Path;

    /// Every key the library derives for itself, and format 1's keys.
    fn internal_keys(key: &LocalKey, master: &[u8; 32]) -> Vec<kdf::Secret32> {
        let prk_v1 = kdf::extract(HKDF_SALT_V1, master);
        let mut keys: Vec<kdf::Secret32> = [
            INFO_KEY_ID,
            INFO_WRAP_KEY,
            INFO_WRAP_NONCE_KEY,
            INFO_CHECKPOINT_KEY,
            INFO_FINGERPRINT,
        ]
        .iter()
        .map(|info| key.prk.expand32(&[info]))
        .collect();
        keys.push(prk_v1.expand32(&[WRAP_NONCE_INFO_V1]));
        keys.push(prk_v1.expand32(&[CHECKPOINT_INFO_V1]));
        keys.push(kdf::Secret32::new(*master));
        keys
    }

    #[tokio::test]
    async fn no_purpose_reaches_an_internal_key() {
        let master = [9u8; 32];
        let key = LocalKey::from_bytes(&master, "test");
        let internal = internal_keys(&key, &master);
        let checkpoint = key
            .derive_internal(InternalKey::AuditCheckpoint, &InternalUse::new())
            .await
            .expect("checkpoint key");
        assert_eq!(checkpoint.expose_secret(), &*internal[3]);
        let legacy_checkpoint = key
            .legacy
            .derive_internal(InternalKey::AuditCheckpoint, &InternalUse::new())
            .await
            .expect("format-1 checkpoint key");
        assert_eq!(legacy_checkpoint.expose_secret(), &*internal[6]);
        let purposes = [
            "",
            "key-id",
            "wrap-key",
            "wrap-nonce-key",
            "audit-checkpoint-key",
            "../internal/audit-checkpoint-key",
            "strongroom/v2/internal/audit-checkpoint-key",
            "strongroom/v2/internal/wrap-key",
            "strongroom audit checkpoint v1",
            "strongroom local wrap nonce v1",
            crate::audit::CHECKPOINT_KEY_PURPOSE,
        ];
        for purpose in purposes {
            let derived = key.derive_key(purpose).await.expect("derive");
            for k in &internal {
                assert_ne!(derived.expose_secret(), &**k, "purpose {purpose:?}");
            }
        }
        // Why no purpose can: every internal label differs from the purpose prefix before
        // the prefix ends, so `prefix || purpose` is never an internal label.
        for info in [
            INFO_KEY_ID,
            INFO_WRAP_KEY,
            INFO_WRAP_NONCE_KEY,
            INFO_CHECKPOINT_KEY,
            INFO_FINGERPRINT,
        ] {
            let differs = info
                .iter()
                .zip(PURPOSE_PREFIX)
                .position(|(a, b)| a != b)
                .expect("they differ");
            assert!(differs < PURPOSE_PREFIX.len() && differs < info.len());
        }
        // The format-1 alias derives no caller keys at all.
        assert!(key.legacy.derive_key("x").await.is_err());
    }

    #[test]
    fn concurrent_first_use_gives_every_caller_the_one_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("home").join("master.key");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|_| scope.spawn(|| LocalKey::load_or_create_file(&path)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .expect("no panic")
                        .expect("every caller gets a key")
                        .key_id()
                        .to_string()
                })
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let on_disk = LocalKey::load_file(&path).expect("the file holds the key");
        assert_eq!(on_disk.key_id(), ids[0]);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(path.parent().expect("folder"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["master.key"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().expect("folder")), 0o700);
        }
    }

    #[test]
    fn an_empty_master_key_variable_is_an_error_not_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().display().to_string();
        for empty in ["", "  ", "\n"] {
            let var = |name: &str| match name {
                ENV_MASTER_KEY => Some(empty.to_string()),
                ENV_HOME => Some(home.clone()),
                _ => None,
            };
            let err = key_wrapper_from_vars(var).expect_err("empty is refused");
            assert!(err.to_string().contains("set but empty"), "{err}");
        }
        assert!(
            !dir.path().join("master.key").exists(),
            "no key file was made in its place"
        );
        assert!(LocalKey::load_file(&dir.path().join("master.key")).is_err());
    }

    #[tokio::test]
    async fn the_wrap_key_is_derived_and_the_ids_are_128_and_64_bits() {
        let master = [3u8; 32];
        let key = LocalKey::from_bytes(&master, "test");
        assert_eq!(key.key_id().len(), "local:".len() + 32);
        assert_eq!(key.legacy_key_id().len(), "local:".len() + 16);
        let dek = DataKey::from_bytes([5u8; 32]);
        let aad = b"strongroom/v2/credential/wrap\x02\x01\x01";
        let wrapped = key.wrap(&dek, aad).await.expect("wrap");
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let try_key = |k: &[u8; 32]| {
            let mut buf = rest[..32].to_vec();
            Aes256Gcm::new(k.into())
                .decrypt_in_place_detached(
                    Nonce::from_slice(nonce),
                    aad,
                    &mut buf,
                    Tag::from_slice(&rest[32..]),
                )
                .is_ok()
        };
        assert!(!try_key(&master), "the raw master key is not the wrap key");
        assert!(try_key(&key.prk.expand32(&[INFO_WRAP_KEY])));
        // The alias wraps and unwraps format-1 associated data only.
        let v1_aad = b"strongroom/wrap/v1\x01\x01\x01";
        let old = key.legacy.wrap(&dek, v1_aad).await.expect("format-1 wrap");
        assert!(key.legacy.unwrap(&old, v1_aad).await.is_ok());
        assert!(key.legacy.wrap(&dek, aad).await.is_err());
        assert!(key.legacy.unwrap(&wrapped, aad).await.is_err());
        // The format-2 key unwraps format-1 associated data too (a re-wrapped v1 blob).
        let rewrapped = key.wrap(&dek, v1_aad).await.expect("wrap");
        assert!(key.unwrap(&rewrapped, v1_aad).await.is_ok());
    }
}
