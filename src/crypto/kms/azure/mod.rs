//! Azure Key Vault: `wrapKey` / `unwrapKey` (RSA-OAEP-256) with a client-credentials token
//! from Microsoft Entra ID. Key Vault's RSA key wrap takes no associated data, so the record
//! is bound locally: a fresh 256-bit key `K` is wrapped by Key Vault, and the data key is
//! sealed under `K` with AES-256-GCM whose associated data is the record's.
//!
//! RSA key wrap needs only the public key, so a wrapped section alone proves nothing about
//! who made it. Format 2 of the section adds a Key Vault `sign` (which needs the private
//! key) over the section and the record's associated data, checked before the data key is
//! unwrapped; format-1 sections, which have none, are refused unless the operator accepts
//! confidentiality only ([`AzureKeyVaultKey::accept_confidentiality_only`]). The same
//! signing key authenticates audit checkpoints. Both layouts are in `docs/FORMAT.md`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use async_trait::async_trait;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::no_derive;
use crate::crypto::{fill_random, BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

mod client;
mod credential;
mod signing;

use client::AzureClient;
use credential::{authority_for_host, scope_for_host};
pub use credential::{AzureCredential, IMDS_HOST, PUBLIC_AUTHORITY};
use signing::{is_version, split_key_url, AzureSigningKey};

/// The CLI's (and [`super::from_vars`]') switch for
/// [`AzureKeyVaultKey::accept_confidentiality_only`].
pub const ENV_AZURE_CONFIDENTIALITY_ONLY: &str = "STRONGROOM_AZURE_CONFIDENTIALITY_ONLY";

const WRAP_ALG: &str = "RSA-OAEP-256";
/// Section formats: 1 without a signature, 2 with one, 3 with one and the version of the
/// key that wrapped (so that a rotation of the key does not strand it).
const SECTION_V1: u8 = 1;
const SECTION_V2: u8 = 2;
const SECTION_V3: u8 = 3;
/// Prefixes of the local AES-GCM layer's associated data, one per section format.
const LOCAL_AAD_LABEL_V1: &[u8] = b"strongroom/azure-kv/v1";
const LOCAL_AAD_LABEL_V2: &[u8] = b"strongroom/azure-kv/v2";
const LOCAL_AAD_LABEL_V3: &[u8] = b"strongroom/azure-kv/v3";
/// Prefixes of the message a signed section's signature covers.
const SIGNATURE_LABEL_V2: &[u8] = b"strongroom/azure-kv/v2/signature";
const SIGNATURE_LABEL_V3: &[u8] = b"strongroom/azure-kv/v3/signature";
const NONCE_LEN: usize = 12;
/// The data key sealed under `K`: 32 bytes of ciphertext and a 16-byte tag.
const SEALED_LEN: usize = 32 + 16;

/// A key in Azure Key Vault (`https://NAME.vault.azure.net/keys/KEY[/VERSION]`). Without a
/// version, Key Vault wraps with the key's current version; every data key records the
/// version that wrapped it (its `kid`) and is unwrapped by that version, so records keep
/// opening after the key is rotated.
pub struct AzureKeyVaultKey {
    key_url: String,
    /// `…/keys/KEY`, without a version.
    base_url: String,
    /// The version in the configured URL.
    pinned: Option<String>,
    id: String,
    client: Arc<AzureClient>,
    signing_url: String,
    signer: Arc<AzureSigningKey>,
    confidentiality_only: bool,
    warned: AtomicBool,
}

impl fmt::Debug for AzureKeyVaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultKey")
            .field("key", &self.key_url)
            .field("signing_key", &self.signing_url)
            .field("credential", self.client.credential())
            .field("confidentiality_only", &self.confidentiality_only)
            .finish_non_exhaustive()
    }
}

impl AzureKeyVaultKey {
    /// The key at `key_url`, used as the app registration `client_id` of `tenant`. The key
    /// wraps data keys and, unless [`AzureKeyVaultKey::with_signing_key`] names another,
    /// signs them and the audit checkpoints: it needs the `wrapKey`, `unwrapKey`, `sign` and
    /// `get` permissions.
    pub fn new(
        key_url: &str,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AzureKeyVaultKey> {
        let credential = AzureCredential::ClientSecret {
            tenant: tenant.into(),
            client_id: client_id.into(),
            secret: SecretString::from(client_secret.into()),
        };
        AzureKeyVaultKey::with_credential(key_url, credential, http)
    }

    /// The key at `key_url`, called as `credential` says (a client secret, a certificate,
    /// workload identity or a managed identity). The token's scope is the Key Vault or
    /// Managed HSM resource of the key URL's cloud (`…vault.azure.cn` → China's, and so
    /// on), and tokens come from that cloud's sign-in host
    /// ([`AzureKeyVaultKey::with_authority`] to choose another).
    pub fn with_credential(
        key_url: &str,
        credential: AzureCredential,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AzureKeyVaultKey> {
        let (base_url, pinned) = split_key_url(key_url, "Azure key")?;
        let key_url = match &pinned {
            Some(v) => format!("{base_url}/{v}"),
            None => base_url.clone(),
        };
        let host = url::Url::parse(&key_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let client = Arc::new(AzureClient::new(
            credential,
            authority_for_host(&host).to_string(),
            scope_for_host(&host),
            http,
        ));
        Ok(AzureKeyVaultKey {
            id: format!("azure_kv:{key_url}"),
            signer: Arc::new(AzureSigningKey::new(&key_url, client.clone())?),
            signing_url: key_url.clone(),
            key_url,
            base_url,
            pinned,
            client,
            confidentiality_only: false,
            warned: AtomicBool::new(false),
        })
    }

    /// Gets tokens from this authority (`AZURE_AUTHORITY_HOST`) instead of the key's cloud's
    /// (`https://login.microsoftonline.com` for the public cloud).
    pub fn with_authority(mut self, authority: impl Into<String>) -> AzureKeyVaultKey {
        self.client = Arc::new(self.client.with(Some(authority.into()), None));
        self.rebuild_signer()
    }

    /// Asks for tokens of this scope (`https://RESOURCE/.default`) instead of the one the
    /// key URL's host implies (for a Key Vault reached by a name of its own).
    pub fn with_scope(mut self, scope: impl Into<String>) -> AzureKeyVaultKey {
        self.client = Arc::new(self.client.with(None, Some(scope.into())));
        self.rebuild_signer()
    }

    /// Signs the wrapped data keys and the audit checkpoints with the key at `key_url` (an
    /// RSA key, RS256, or an EC P-256 key, ES256, in a vault the same app registration may
    /// use: `sign` and `get` permissions) instead of the wrapping key. The signing key is
    /// part of the records' integrity: records and checkpoints signed by one key do not
    /// verify under another, so change it only together with a reseal.
    pub fn with_signing_key(mut self, key_url: &str) -> Result<AzureKeyVaultKey> {
        split_key_url(key_url, "Azure signing key")?;
        self.signing_url = key_url.trim_end_matches('/').to_string();
        Ok(self.rebuild_signer())
    }

    /// Accepts data keys wrapped without a Key Vault signature (sections of format 1,
    /// written before signatures existed). **Confidentiality only**: such a section needs
    /// only the public key to make, so anyone who can write the database can make a record
    /// the vault serves. Set it to move old records onto signed data keys
    /// (`Vault::reseal_credentials` with `ResealSelection::All`, or a rotation onto another
    /// key version), then turn it off. New data keys are always signed, and a signed one is
    /// always checked. The CLI sets it from `STRONGROOM_AZURE_CONFIDENTIALITY_ONLY=1`.
    pub fn accept_confidentiality_only(mut self) -> AzureKeyVaultKey {
        self.confidentiality_only = true;
        self
    }

    fn rebuild_signer(mut self) -> AzureKeyVaultKey {
        // The URL was checked when it was set, so this does not fail; should it, the old
        // signer stays and the error shows at first use.
        match AzureSigningKey::new(&self.signing_url, self.client.clone()) {
            Ok(signer) => self.signer = Arc::new(signer),
            Err(e) => tracing::error!(error = %e, "Azure signing key not rebuilt"),
        }
        self
    }

    fn bad(&self, why: &str) -> Error {
        Error::DecryptFailed {
            what: format!("a data key wrapped by {} ({why})", self.id),
        }
    }

    /// What a format-2 section's signature covers: the label, the section up to its
    /// signature (length-prefixed), and the record's associated data.
    fn signed_message(label: &[u8], unsigned: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(label.len() + 4 + unsigned.len() + aad.len());
        m.extend_from_slice(label);
        m.extend_from_slice(&(unsigned.len() as u32).to_be_bytes());
        m.extend_from_slice(unsigned);
        m.extend_from_slice(aad);
        m
    }

    fn local_aad(label: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = label.to_vec();
        out.extend_from_slice(aad);
        out
    }

    /// Opens the data key sealed under `K` (unwrapped by Key Vault from `wrapped_k`).
    async fn open_sealed(
        &self,
        unwrap_url: &str,
        wrapped_k: &[u8],
        nonce: &[u8],
        sealed: &[u8],
        local_aad: &[u8],
    ) -> Result<DataKey> {
        let unwrapped = self
            .client
            .key_operation(&self.id, unwrap_url, "unwrapkey", WRAP_ALG, wrapped_k, true)
            .await?;
        if unwrapped.len() != 32 {
            return Err(self.bad("Key Vault unwrapped a key that is not 32 bytes"));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&unwrapped);
        let (ct, tag) = sealed.split_at(32);
        let mut buf = Zeroizing::new(ct.to_vec());
        Aes256Gcm::new(k.as_ref().into())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                local_aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| self.bad("its local seal does not open"))?;
        super::to_dek(buf, &self.id)
    }

    /// Format 1 (no signature): only when confidentiality only was accepted.
    async fn unwrap_v1(&self, rest: &[u8], aad: &[u8]) -> Result<DataKey> {
        if !self.confidentiality_only {
            return Err(Error::config(format!(
                "a record's data key was wrapped by Azure Key Vault key {} without a Key Vault \
                 signature (an Azure section of format 1, written before signatures): RSA key \
                 wrap needs only the public key, so anyone who can write the database could \
                 have made it, and it is refused. To move such records onto signed data keys, \
                 set {ENV_AZURE_CONFIDENTIALITY_ONLY}=1 \
                 (AzureKeyVaultKey::accept_confidentiality_only) for one re-seal \
                 (Vault::reseal_credentials with ResealSelection::All) or one rotation onto \
                 another key version (`strongroom keys rotate --to azure_kv`), then unset it; \
                 see docs/DEPLOYMENT.md",
                self.id
            )));
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key = %self.id,
                "reading an Azure Key Vault data key without a signature (confidentiality only \
                 accepted); reseal the vault's records, then turn confidentiality-only off"
            );
        }
        let (len, rest) = read_u16(rest).ok_or_else(|| self.bad("truncated"))?;
        if rest.len() != len + NONCE_LEN + SEALED_LEN {
            return Err(self.bad("its length does not add up"));
        }
        let (wrapped_k, rest) = rest.split_at(len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        self.open_sealed(
            &self.key_url,
            wrapped_k,
            nonce,
            sealed,
            &Self::local_aad(LOCAL_AAD_LABEL_V1, aad),
        )
        .await
    }

    /// Formats 2 and 3: the signature is checked (with the signing key's public part)
    /// before Key Vault is asked to unwrap anything. Format 3 names the key version that
    /// wrapped and is unwrapped by it; format 2 (written before) by the configured URL, and,
    /// when that has no version and fails, by the version that signed (the wrapping key's
    /// current version when it was written, unless another key signs).
    async fn unwrap_signed(&self, section: &[u8], aad: &[u8]) -> Result<DataKey> {
        let short = || self.bad("truncated");
        let format = section[0];
        let (wrap_version, body) = if format == SECTION_V3 {
            let (&len, rest) = section[1..].split_first().ok_or_else(short)?;
            let len = usize::from(len);
            if rest.len() < len {
                return Err(short());
            }
            let (version, rest) = rest.split_at(len);
            let version = std::str::from_utf8(version)
                .ok()
                .filter(|v| is_version(v))
                .ok_or_else(|| self.bad("its wrapping key version"))?;
            (Some(version), rest)
        } else {
            (None, &section[1..])
        };
        let (len, rest) = read_u16(body).ok_or_else(short)?;
        if rest.len() < len + NONCE_LEN + SEALED_LEN + 1 {
            return Err(short());
        }
        let (wrapped_k, rest) = rest.split_at(len);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (sealed, rest) = rest.split_at(SEALED_LEN);
        let version_len = usize::from(rest[0]);
        let rest = &rest[1..];
        if rest.len() < version_len + 2 {
            return Err(short());
        }
        let (version, rest) = rest.split_at(version_len);
        let (sig_len, signature) = read_u16(rest).ok_or_else(short)?;
        if signature.len() != sig_len || sig_len == 0 {
            return Err(self.bad("its length does not add up"));
        }
        let unsigned = &section[..section.len() - 2 - sig_len];
        let version = std::str::from_utf8(version).map_err(|_| self.bad("its key version"))?;
        let (sig_label, local_label) = if format == SECTION_V3 {
            (SIGNATURE_LABEL_V3, LOCAL_AAD_LABEL_V3)
        } else {
            (SIGNATURE_LABEL_V2, LOCAL_AAD_LABEL_V2)
        };
        let message = Self::signed_message(sig_label, unsigned, aad);
        if !self
            .signer
            .verify_message(version, &message, signature)
            .await?
        {
            return Err(self.bad(
                "its Key Vault signature does not verify: it was not made with the signing \
                 key's private key for this record, or another signing key is configured",
            ));
        }
        let local_aad = Self::local_aad(local_label, aad);
        // The section is Key Vault's own for this record: from here, a key that does not
        // unwrap it is an operational failure (a version disabled, deleted or restored
        // differently), not tampering.
        let url = match wrap_version {
            Some(v) => format!("{}/{v}", self.base_url),
            None => self.key_url.clone(),
        };
        let mut opened = self
            .open_sealed(&url, wrapped_k, nonce, sealed, &local_aad)
            .await;
        if wrap_version.is_none()
            && self.pinned.is_none()
            && self.signing_url.trim_end_matches('/') == self.base_url
            && matches!(opened, Err(Error::DecryptFailed { .. }))
        {
            let url = format!("{}/{version}", self.base_url);
            opened = self
                .open_sealed(&url, wrapped_k, nonce, sealed, &local_aad)
                .await;
        }
        opened.map_err(|e| match e {
            Error::DecryptFailed { .. } => Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: format!(
                    "Key Vault did not unwrap a data key it signed for this record with {}: \
                     that key version no longer holds the key that wrapped it (restored or \
                     re-imported differently?), or a key-version-less section written before \
                     key versions were recorded was wrapped by a version that is not the \
                     current or the signing one",
                    if wrap_version.is_some() {
                        url
                    } else {
                        "the configured key".to_string()
                    }
                ),
            },
            other => other,
        })
    }

    /// The version a wrap answer's `kid` names, checked to be this key's (and the pinned
    /// version, when the URL has one).
    fn wrapping_version(&self, kid: Option<String>) -> Result<String> {
        let found = kid
            .as_deref()
            .and_then(|kid| split_key_url(kid, "kid").ok());
        let name = |url: &str| url.rsplit('/').next().map(str::to_string);
        match found {
            Some((base, Some(version)))
                if name(&base) == name(&self.base_url)
                    && self.pinned.as_ref().is_none_or(|p| *p == version) =>
            {
                Ok(version)
            }
            _ => Err(Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: format!(
                    "Key Vault's wrapKey answer names no version of {} in its `kid` ({})",
                    self.base_url,
                    kid.as_deref().unwrap_or("none")
                ),
            }),
        }
    }
}

/// `(u16be at the start, the rest)`.
fn read_u16(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    Some((usize::from(u16::from_be_bytes(*len)), rest))
}

#[async_trait]
impl KeyWrapper for AzureKeyVaultKey {
    fn backend_id(&self) -> BackendId {
        BackendId::AzureKv
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    /// A format-3 section: `0x03 || u8(len(WV)) || WV || u16be(len(W)) || W || nonce ||
    /// AES-GCM(K, DEK) || u8(len(V)) || V || u16be(len(S)) || S` (`docs/FORMAT.md`).
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(k.as_mut())?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let (wrapped_k, kid) = self
            .client
            .key_operation_kid(
                &self.id,
                &self.key_url,
                "wrapkey",
                WRAP_ALG,
                k.as_ref(),
                false,
            )
            .await?;
        let wrap_version = self.wrapping_version(kid)?;
        let mut buf = Zeroizing::new(dek.expose_secret().to_vec());
        let tag = Aes256Gcm::new(k.as_ref().into())
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &Self::local_aad(LOCAL_AAD_LABEL_V3, aad),
                &mut buf,
            )
            .map_err(|_| Error::config("local AES-GCM failed"))?;
        let len = u16::try_from(wrapped_k.len())
            .map_err(|_| Error::config("Key Vault returned an oversized wrapped key"))?;
        let version = self.signer.signing_version().await?;
        let mut out = Vec::with_capacity(
            5 + wrap_version.len() + wrapped_k.len() + NONCE_LEN + SEALED_LEN + 600,
        );
        out.push(SECTION_V3);
        // Key versions are 1 to 64 letters and digits (checked when they were read).
        out.push(wrap_version.len() as u8);
        out.extend_from_slice(wrap_version.as_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&wrapped_k);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out.push(version.len() as u8);
        out.extend_from_slice(version.as_bytes());
        let signature = self
            .signer
            .sign_as(
                &version,
                &Self::signed_message(SIGNATURE_LABEL_V3, &out, aad),
            )
            .await?;
        let sig_len = u16::try_from(signature.len())
            .map_err(|_| Error::config("Key Vault returned an oversized signature"))?;
        out.extend_from_slice(&sig_len.to_be_bytes());
        out.extend_from_slice(&signature);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        match wrapped.first() {
            Some(&SECTION_V2 | &SECTION_V3) => self.unwrap_signed(wrapped, aad).await,
            Some(&SECTION_V1) => self.unwrap_v1(&wrapped[1..], aad).await,
            _ => Err(self.bad("unknown section format")),
        }
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        Ok(self.signer.clone())
    }
}
