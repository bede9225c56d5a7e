//! Local master keys (`env`, `file`, in memory) and the `STRONGROOM_KMS` selection rule.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use async_trait::async_trait;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::{fill_random, BackendId, DataKey, KeyWrapper};
use crate::error::{Error, Result};

/// Selects the master-key backend: `env`, `file`, `aws_kms`, `gcp_kms`, `azure_kv`, `vault`.
pub const ENV_KMS: &str = "STRONGROOM_KMS";
/// A 32-byte master key, base64url (padding optional). Selects `env` when `STRONGROOM_KMS`
/// is unset.
pub const ENV_MASTER_KEY: &str = "STRONGROOM_MASTER_KEY";
/// The strongroom home folder (default `~/.strongroom`); the `file` key is `master.key` in it.
pub const ENV_HOME: &str = "STRONGROOM_HOME";

const KEY_ID_LABEL: &[u8] = b"strongroom/key-id/v1";
const HKDF_SALT: &[u8] = b"strongroom/derive/v1";
/// HKDF info for the key that derives local wrap nonces.
const WRAP_NONCE_INFO: &[u8] = b"strongroom local wrap nonce v1";
const WRAP_NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = WRAP_NONCE_LEN + 32 + 16;

/// A local 256-bit master key. Wraps data keys with AES-256-GCM, authenticating the
/// record's associated data, under a synthetic nonce
/// `HMAC-SHA256(nonce key, aad || DEK)[..12]` (the SIV construction: distinct inputs get
/// distinct nonces without a random draw, and a repeated input only repeats its own output).
/// Its id is a fingerprint of the key (`local:` and 16 hex digits), so the same key has the
/// same id wherever it is loaded from.
pub struct LocalKey {
    key_id: String,
    source: String,
    cipher: Aes256Gcm,
    derive: Hkdf<Sha256>,
    /// HMAC keyed with the nonce key, cloned per wrap so the key pads are hashed once.
    nonce_mac: Hmac<Sha256>,
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey")
            .field("key_id", &self.key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl LocalKey {
    /// Builds a key from its 32 bytes; `source` says where it came from (for messages).
    pub fn from_bytes(bytes: &[u8; 32], source: impl Into<String>) -> LocalKey {
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(bytes)
            .finalize();
        let derive = Hkdf::<Sha256>::new(Some(HKDF_SALT), bytes);
        let mut nonce_key = Zeroizing::new([0u8; 32]);
        derive
            .expand(WRAP_NONCE_INFO, nonce_key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let nonce_mac = <Hmac<Sha256> as Mac>::new_from_slice(nonce_key.as_ref())
            .expect("HMAC takes any key length");
        LocalKey {
            key_id: format!("local:{}", hex::encode(&digest[..8])),
            source: source.into(),
            cipher: Aes256Gcm::new(bytes.into()),
            derive,
            nonce_mac,
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
    pub fn load_or_create_file(path: &Path) -> Result<LocalKey> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                check_private(path, &meta)?;
                let text = Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?,
                );
                LocalKey::from_base64(&text, &format!("master key file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    /// Where the key came from (`STRONGROOM_MASTER_KEY`, a file path, `in-memory`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Wraps `dek` for `aad` (what [`KeyWrapper::wrap`] does, without the future): the
    /// output is `nonce(12) || ciphertext(32) || tag(16)`.
    pub(crate) fn wrap_sync(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut mac = self.nonce_mac.clone();
        mac.update(aad);
        mac.update(dek.expose_secret());
        let digest = mac.finalize().into_bytes();
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&digest[..WRAP_NONCE_LEN]);
        out.extend_from_slice(dek.expose_secret());
        let (nonce, key) = out.split_at_mut(WRAP_NONCE_LEN);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, key)
            .map_err(|_| Error::invalid("data key", "could not be wrapped"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyUnavailable {
            key_id: "file".into(),
            reason: format!(
                "refusing master key file {} with mode {mode:04o}: group or others can access it; \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

fn create_key_file(path: &Path) -> Result<LocalKey> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
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
    }
    let text = LocalKey::generate_base64()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(path.display(), e))?;
            tracing::info!(path = %path.display(), "created a new master key file");
            LocalKey::from_base64(&text, &format!("master key file {}", path.display()))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            LocalKey::load_or_create_file(path)
        }
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
        self.wrap_sync(dek, aad)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let fail = || Error::decrypt(format!("data key wrapped by {}", self.key_id));
        if wrapped.len() != WRAPPED_LEN {
            return Err(fail());
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let (ct, tag) = rest.split_at(32);
        let mut key = [0u8; 32];
        key.copy_from_slice(ct);
        match self.cipher.decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            &mut key,
            Tag::from_slice(tag),
        ) {
            Ok(()) => Ok(DataKey::from_bytes(key)),
            Err(_) => {
                key.zeroize();
                Err(fail())
            }
        }
    }

    async fn derive_key(&self, purpose: &str) -> Result<DataKey> {
        let mut out = [0u8; 32];
        self.derive
            .expand(purpose.as_bytes(), &mut out)
            .map_err(|_| Error::invalid("derived key", "length out of range"))?;
        Ok(DataKey::from_bytes(out))
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
/// - Unset, it is `env` when `STRONGROOM_MASTER_KEY` is set and `file` otherwise.
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
    let master = var(ENV_MASTER_KEY)
        .filter(|v| !v.is_empty())
        .map(Zeroizing::new);
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
        async fn send(&self, _: http::Request<Bytes>) -> crate::Result<http::Response<Bytes>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(crate::Error::transport("127.0.0.1", "refused by the test"))
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
