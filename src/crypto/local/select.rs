//! The `STRONGROOM_KMS` selection rule: which master-key backend the environment names.

use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{LocalKey, ENV_HOME, ENV_KMS, ENV_MASTER_KEY};
use crate::crypto::KeyWrapper;
use crate::error::{Error, Result};

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
