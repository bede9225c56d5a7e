//! Local master keys (`env`, `file`, in memory) and the `STRONGROOM_KMS` selection rule.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use async_trait::async_trait;
use base64::Engine;
use zeroize::Zeroizing;

use super::kdf::{self, HmacKey};
use super::{fill_random, BackendId, DataKey, InternalKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};

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

/// Format 1, kept to open what it sealed: a 64-bit id from SHA-256, the raw master key as
/// the AES-GCM wrap key, and HKDF keys whose info was a plain string.
const KEY_ID_LABEL_V1: &[u8] = b"strongroom/key-id/v1";
const HKDF_SALT_V1: &[u8] = b"strongroom/derive/v1";
const WRAP_NONCE_INFO_V1: &[u8] = b"strongroom local wrap nonce v1";
const CHECKPOINT_INFO_V1: &[u8] = b"strongroom audit checkpoint v1";

const WRAP_NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = WRAP_NONCE_LEN + 32 + 16;

/// The AES-256-GCM key wrap with a synthetic nonce, under one wrap key and one nonce key.
struct LocalWrap {
    /// The wrap key's schedule (wiped on drop: `aes` is built with `zeroize`).
    cipher: Aes256Gcm,
    /// HMAC keyed with the nonce key, cloned per wrap so the key pads are hashed once.
    nonce_mac: HmacKey,
}

impl LocalWrap {
    fn new(wrap_key: &[u8; 32], nonce_key: &[u8; 32]) -> LocalWrap {
        LocalWrap {
            cipher: Aes256Gcm::new(wrap_key.into()),
            nonce_mac: HmacKey::new(nonce_key),
        }
    }

    /// `nonce(12) || AES-256-GCM(wrap key, nonce, DEK, aad)`, the nonce being
    /// `HMAC-SHA256(nonce key, aad || DEK)[..12]`.
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let digest = self.nonce_mac.mac(&[aad, dek.expose_secret()]);
        // Holds the data key in the clear until it is encrypted in place: wiped if that fails.
        let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        out.extend_from_slice(&digest[..WRAP_NONCE_LEN]);
        out.extend_from_slice(dek.expose_secret());
        let (nonce, key) = out.split_at_mut(WRAP_NONCE_LEN);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, key)
            .map_err(|_| Error::invalid("data key", "could not be wrapped"))?;
        out.extend_from_slice(&tag);
        // Ciphertext now: move it out (no copy), leaving an empty vector to wipe.
        Ok(std::mem::take(&mut *out))
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8], key_id: &str) -> Result<DataKey> {
        let fail = || Error::decrypt(format!("data key wrapped by {key_id}"));
        if wrapped.len() != WRAPPED_LEN {
            return Err(fail());
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let (ct, tag) = rest.split_at(32);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(ct);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                key.as_mut(),
                Tag::from_slice(tag),
            )
            .map_err(|_| fail())?;
        Ok(DataKey::from_bytes(*key))
    }
}

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

/// A local master key as format 1 knew it: its 64-bit id, the raw key as the AES-GCM wrap
/// key, the format-1 nonce and checkpoint keys. Reached only through
/// [`KeyWrapper::legacy_alias`]; it wraps and unwraps for format-1 associated data only
/// (a version-2 blob that names a format-1 id does not open), and derives no caller keys.
pub(crate) struct LegacyLocalKey {
    key_id: String,
    wrap: LocalWrap,
    checkpoint_key: Zeroizing<[u8; 32]>,
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
    fn new(bytes: &[u8; 32], fingerprint: [u8; 32]) -> LegacyLocalKey {
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
        if super::envelope::is_format1_wrap_aad(aad) {
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

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // A configuration problem (the CLI exits 2), not a key that is missing.
        return Err(Error::config(format!(
            "refusing master key file {} with mode {mode:04o}: group or others can access it; \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

fn create_key_file(path: &Path) -> Result<LocalKey> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .map_err(|e| Error::io(dir.display(), e))?;
    }
    let text = LocalKey::generate_base64()?;
    // The key goes into a temporary file of its own first, complete and on disk, and is
    // then linked in under its name only if that name is free: a process that loses the
    // race never sees a half-written file, and reads the winner's key instead.
    let mut nonce = [0u8; 8];
    fill_random(&mut nonce)?;
    let name = path
        .file_name()
        .map_or_else(|| "master.key".into(), |n| n.to_string_lossy());
    let temp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(temp.display(), e));
    }
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // The new name is durable only once the folder is synced.
            if let Ok(folder) = std::fs::File::open(dir) {
                let _ = folder.sync_all();
            }
            tracing::info!(path = %path.display(), "created a new master key file");
            LocalKey::from_base64(&text, &format!("master key file {}", path.display()))
        }
        // Another process created it first: use theirs (complete, since it was linked in
        // only once written).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => LocalKey::load_file(path),
        Err(e) => Err(Error::io(path.display(), e)),
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

/// Picks the master-key backend from the process environment (see [`key_wrapper_from_vars`]).
pub fn key_wrapper_from_env() -> Result<Arc<dyn KeyWrapper>> {
    key_wrapper_from_vars(|name| std::env::var(name).ok())
}

/// [`key_wrapper_from_env`], with the host's HTTP client for a cloud backend (the vault
/// builder passes the one it was given, so its proxy, TLS roots and timeouts apply to KMS
/// calls too).
pub fn key_wrapper_from_env_with(
    http: Option<Arc<dyn crate::transport::HttpTransport>>,
) -> Result<Arc<dyn KeyWrapper>> {
    select(&|name: &str| std::env::var(name).ok(), http)
}

/// Picks the master-key backend from variables looked up through `var`:
///
/// - `STRONGROOM_KMS` names the backend: `env`, `file`, `aws_kms`, `gcp_kms`, `azure_kv`,
///   `vault`.
/// - Unset, it is `env` when `STRONGROOM_MASTER_KEY` is set and `file` otherwise. A
///   `STRONGROOM_MASTER_KEY` that is set but empty (or blank) is a configuration error,
///   never taken as unset.
/// - `file` reads `$STRONGROOM_HOME/master.key` (home `~/.strongroom` by default), creating
///   it with mode 0600 on first use.
/// - The cloud backends (features `kms` and `reqwest`) read the variables
///   [`crate::crypto::kms::from_vars`] documents.
/// - A cloud backend uses a `ReqwestTransport` (feature `reqwest`); pass your own client
///   with [`key_wrapper_from_env_with`].
pub fn key_wrapper_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Arc<dyn KeyWrapper>> {
    select(&var, None)
}

fn select(
    var: &dyn Fn(&str) -> Option<String>,
    http: Option<Arc<dyn crate::transport::HttpTransport>>,
) -> Result<Arc<dyn KeyWrapper>> {
    let master = match var(ENV_MASTER_KEY) {
        // Set but empty is a mistake (an unexpanded variable, a blank line in an env file),
        // not a request for the key file: taking it as unset would seal with another key.
        Some(v) if v.trim().is_empty() => {
            return Err(Error::config(format!(
                "{ENV_MASTER_KEY} is set but empty; set it to the vault's master key (32 random \
                 bytes, base64url), or unset it to use the key file in {ENV_HOME}"
            )))
        }
        other => other.map(Zeroizing::new),
    };
    let selected = var(ENV_KMS)
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    let backend = match (&selected, &master) {
        (Some(name), _) => name.as_str(),
        (None, Some(_)) => "env",
        (None, None) => "file",
    };
    match backend {
        "env" => {
            let value = master.ok_or_else(|| {
                Error::config(format!(
                    "{ENV_KMS}=env but {ENV_MASTER_KEY} is not set; set it to 32 random bytes \
                     encoded as base64url"
                ))
            })?;
            Ok(Arc::new(LocalKey::from_env_value(&value)?))
        }
        "file" => {
            let path = default_home(&var)?.join("master.key");
            let _ = http;
            Ok(Arc::new(LocalKey::load_or_create_file(&path)?))
        }
        #[cfg(feature = "kms")]
        "aws_kms" | "gcp_kms" | "azure_kv" | "vault" => {
            let http = match http {
                Some(http) => http,
                None => default_transport(backend)?,
            };
            crate::crypto::kms::from_vars(backend, var, http)
        }
        #[cfg(not(feature = "kms"))]
        "aws_kms" | "gcp_kms" | "azure_kv" | "vault" => Err(Error::config(format!(
            "{ENV_KMS}={backend} needs strongroom built with the `kms` feature"
        ))),
        other => Err(Error::config(format!(
            "{ENV_KMS}=`{other}` is not a known backend; use one of env, file, aws_kms, gcp_kms, \
             azure_kv, vault"
        ))),
    }
}

/// The HTTP client a cloud key uses when the host gave none.
#[cfg(all(feature = "kms", feature = "reqwest"))]
fn default_transport(_backend: &str) -> Result<Arc<dyn crate::transport::HttpTransport>> {
    Ok(Arc::new(crate::transport::ReqwestTransport::new()?))
}

#[cfg(all(feature = "kms", not(feature = "reqwest")))]
fn default_transport(backend: &str) -> Result<Arc<dyn crate::transport::HttpTransport>> {
    Err(Error::config(format!(
        "{ENV_KMS}={backend} needs an HTTP client: give the vault one with VaultBuilder::http \
         (or build strongroom with the `reqwest` feature)"
    )))
}

/// `$STRONGROOM_HOME`, or `~/.strongroom`, from the process environment.
pub fn default_home_from_env() -> Result<PathBuf> {
    default_home(&|name: &str| std::env::var(name).ok())
}

/// `$STRONGROOM_HOME`, or `~/.strongroom`.
pub(crate) fn default_home(var: &impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    if let Some(home) = var(ENV_HOME).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match var("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".strongroom")),
        None => Err(Error::config(format!(
            "neither {ENV_HOME} nor HOME is set, so there is no place for master.key; set \
             {ENV_HOME}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::AeadInPlace;

    use super::*;

    /// Every key the library derives for itself, and format 1's keys.
    fn internal_keys(key: &LocalKey, master: &[u8; 32]) -> Vec<Zeroizing<[u8; 32]>> {
        let prk_v1 = kdf::extract(HKDF_SALT_V1, master);
        let mut keys: Vec<Zeroizing<[u8; 32]>> = [
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
        keys.push(Zeroizing::new(*master));
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

#[cfg(all(test, feature = "kms"))]
mod transport_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::select;
    use crate::crypto::DataKey;
    use crate::transport::{Bytes, HttpTransport};

    /// Counts requests and answers none (nothing leaves the process).
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl HttpTransport for Counting {
        async fn send(
            &self,
            _: http::Request<Bytes>,
        ) -> crate::error::Result<http::Response<Bytes>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(crate::error::Error::transport(
                "127.0.0.1",
                "refused by the test",
            ))
        }
    }

    #[tokio::test]
    async fn a_cloud_key_uses_the_transport_it_is_given() {
        let http = Arc::new(Counting::default());
        let var = |name: &str| -> Option<String> {
            match name {
                "STRONGROOM_KMS" => Some("vault".into()),
                "VAULT_ADDR" => Some("http://127.0.0.1:9".into()),
                "STRONGROOM_VAULT_TRANSIT_KEY" => Some("strongroom".into()),
                "VAULT_TOKEN" => Some("t".into()),
                _ => None,
            }
        };
        let key = select(&var, Some(http.clone())).expect("a transit key");
        let dek = DataKey::from_bytes([7u8; 32]);
        let err = key.wrap(&dek, b"aad").await.expect_err("refused");
        assert!(err.to_string().contains("refused by the test"), "{err}");
        assert!(
            http.0.load(Ordering::SeqCst) >= 1,
            "the host's client was used"
        );
    }
}
