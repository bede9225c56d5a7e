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
use zeroize::Zeroizing;

use super::{no_derive, Hidden};
use crate::crypto::{fill_random, BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

mod client;
mod signing;

use client::AzureClient;
use signing::{split_key_url, AzureSigningKey};

/// The CLI's (and [`super::from_vars`]') switch for
/// [`AzureKeyVaultKey::accept_confidentiality_only`].
pub const ENV_AZURE_CONFIDENTIALITY_ONLY: &str = "STRONGROOM_AZURE_CONFIDENTIALITY_ONLY";

const WRAP_ALG: &str = "RSA-OAEP-256";
/// Section formats: 1 without a signature, 2 with one.
const SECTION_V1: u8 = 1;
const SECTION_V2: u8 = 2;
/// Prefixes of the local AES-GCM layer's associated data, one per section format.
const LOCAL_AAD_LABEL_V1: &[u8] = b"strongroom/azure-kv/v1";
const LOCAL_AAD_LABEL_V2: &[u8] = b"strongroom/azure-kv/v2";
/// Prefix of the message a format-2 section's signature covers.
const SIGNATURE_LABEL: &[u8] = b"strongroom/azure-kv/v2/signature";
const NONCE_LEN: usize = 12;
/// The data key sealed under `K`: 32 bytes of ciphertext and a 16-byte tag.
const SEALED_LEN: usize = 32 + 16;

/// A key in Azure Key Vault (`https://NAME.vault.azure.net/keys/KEY/VERSION`).
pub struct AzureKeyVaultKey {
    key_url: String,
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
            .field("tenant", &self.client.tenant())
            .field("client_id", &self.client.client_id())
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
        let (base, version) = split_key_url(key_url, "Azure key")?;
        let key_url = match version {
            Some(v) => format!("{base}/{v}"),
            None => base,
        };
        let client = Arc::new(AzureClient::new(
            tenant.into(),
            client_id.into(),
            Hidden::new(client_secret),
            http,
        ));
        Ok(AzureKeyVaultKey {
            id: format!("azure_kv:{key_url}"),
            signer: Arc::new(AzureSigningKey::new(&key_url, client.clone())?),
            signing_url: key_url.clone(),
            key_url,
            client,
            confidentiality_only: false,
            warned: AtomicBool::new(false),
        })
    }

    /// Gets tokens from this authority instead of `https://login.microsoftonline.com`.
    pub fn with_authority(mut self, authority: impl Into<String>) -> AzureKeyVaultKey {
        self.client = Arc::new(self.client.with_authority(authority.into()));
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
    fn signed_message(unsigned: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + 4 + unsigned.len() + aad.len());
        m.extend_from_slice(SIGNATURE_LABEL);
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
        wrapped_k: &[u8],
        nonce: &[u8],
        sealed: &[u8],
        local_aad: &[u8],
    ) -> Result<DataKey> {
        let unwrapped = self
            .client
            .key_operation(
                &self.id,
                &self.key_url,
                "unwrapkey",
                WRAP_ALG,
                wrapped_k,
                true,
            )
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
            wrapped_k,
            nonce,
            sealed,
            &Self::local_aad(LOCAL_AAD_LABEL_V1, aad),
        )
        .await
    }

    /// Format 2: the signature is checked (with the signing key's public part) before Key
    /// Vault is asked to unwrap anything.
    async fn unwrap_v2(&self, section: &[u8], aad: &[u8]) -> Result<DataKey> {
        let short = || self.bad("truncated");
        let (len, rest) = read_u16(&section[1..]).ok_or_else(short)?;
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
        let message = Self::signed_message(unsigned, aad);
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
        self.open_sealed(
            wrapped_k,
            nonce,
            sealed,
            &Self::local_aad(LOCAL_AAD_LABEL_V2, aad),
        )
        .await
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

    /// A format-2 section: `0x02 || u16be(len(W)) || W || nonce || AES-GCM(K, DEK) ||
    /// u8(len(V)) || V || u16be(len(S)) || S` (`docs/FORMAT.md`).
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(k.as_mut())?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let wrapped_k = self
            .client
            .key_operation(
                &self.id,
                &self.key_url,
                "wrapkey",
                WRAP_ALG,
                k.as_ref(),
                false,
            )
            .await?;
        let mut buf = Zeroizing::new(dek.expose_secret().to_vec());
        let tag = Aes256Gcm::new(k.as_ref().into())
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &Self::local_aad(LOCAL_AAD_LABEL_V2, aad),
                &mut buf,
            )
            .map_err(|_| Error::config("local AES-GCM failed"))?;
        let len = u16::try_from(wrapped_k.len())
            .map_err(|_| Error::config("Key Vault returned an oversized wrapped key"))?;
        let version = self.signer.signing_version().await?;
        let mut out = Vec::with_capacity(3 + wrapped_k.len() + NONCE_LEN + SEALED_LEN + 600);
        out.push(SECTION_V2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&wrapped_k);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        // A key version is 1 to 64 letters and digits (checked when it was read).
        out.push(version.len() as u8);
        out.extend_from_slice(version.as_bytes());
        let signature = self
            .signer
            .sign_as(&version, &Self::signed_message(&out, aad))
            .await?;
        let sig_len = u16::try_from(signature.len())
            .map_err(|_| Error::config("Key Vault returned an oversized signature"))?;
        out.extend_from_slice(&sig_len.to_be_bytes());
        out.extend_from_slice(&signature);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        match wrapped.first() {
            Some(&SECTION_V2) => self.unwrap_v2(wrapped, aad).await,
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
