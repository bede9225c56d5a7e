//! The sealed-blob byte format, documented byte by byte in `docs/FORMAT.md`:
//!
//! ```text
//! version(1) | flags(1) | backend id(1) | wrapped-DEK length(2, BE) | wrapped DEK | nonce(12) | commitment(32) | ciphertext+tag
//! ```
//!
//! The wrapped-DEK section starts with the master key's id (`len(1) | id`) followed by the
//! backend's own wrapped bytes. This crate writes version 2 and reads versions 1 and 2.
//!
//! Version 2 binds the vault namespace and the credential's [`BoundFields`] into the
//! associated data, and encrypts the payload under a key derived from the data key, the
//! nonce and a digest of the payload's associated data, next to a commitment derived the
//! same way (checked in constant time before decrypting). Version 1 used the data key
//! itself and committed to the key and nonce only.

// The known-answer tests (`known_answers.rs`, `use super::*`) check blobs against
// RustCrypto's AES-GCM, an implementation independent of the one that seals them.
#[cfg(test)]
use aes_gcm::{aead::AeadInPlace, Aes256Gcm, KeyInit, Nonce, Tag};
use secrecy::SecretBox;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::aead::{AeadFailed, AesGcmKey, OneShotKey};
use super::kdf::{self, HmacKey, Secret32};
use super::{random, BackendId, DataKey, KeyWrapper};
use crate::error::{Error, Result};
#[cfg(test)]
use crate::model::BoundFields;
use crate::model::{RecordAad, RecordIdentity};

/// The format version this crate writes.
pub const FORMAT_VERSION: u8 = 2;
/// The first format version, still read (and re-wrapped, never written anew).
pub const FORMAT_V1: u8 = 1;
/// Flag bit 0: a commitment follows the nonce and is checked before decryption (format 1:
/// to the data key and nonce; format 2: to the data key, the nonce and the associated data).
pub const FLAG_KEY_COMMITTED: u8 = 0x01;
/// Length of the fixed header (version, flags, backend id, wrapped-DEK length).
pub const HEADER_LEN: usize = 5;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Commitment length.
pub const COMMITMENT_LEN: usize = 32;

// Format 2 associated-data labels. Every one starts `strongroom/v2/`, which no format-1
// label does, and the credential and record domains differ at byte 14 (`c` against `r`).
const WRAP_AAD_LABEL: &[u8] = b"strongroom/v2/credential/wrap";
const DATA_AAD_LABEL: &[u8] = b"strongroom/v2/credential/data";
const BOUND_FIELDS_LABEL: &[u8] = b"strongroom/v2/credential/bound-fields";
const RECORD_WRAP_AAD_LABEL: &[u8] = b"strongroom/v2/record/wrap";
const RECORD_DATA_AAD_LABEL: &[u8] = b"strongroom/v2/record/data";
/// HKDF-Expand infos, with the data key as the PRK: the payload key and the commitment.
/// At most 10 bytes, so that `info || nonce || ctx || 0x01` (55 bytes with SHA-256's
/// padding) is one SHA-256 block: each expansion costs one inner and one outer block.
const PAYLOAD_KEY_INFO: &[u8] = b"v2-payload";
const COMMITMENT_INFO: &[u8] = b"v2-commit";

// Format 1 labels.
const WRAP_AAD_LABEL_V1: &[u8] = b"strongroom/wrap/v1";
const DATA_AAD_LABEL_V1: &[u8] = b"strongroom/data/v1";
const COMMIT_LABEL_V1: &[u8] = b"strongroom/commit/v1";
/// The associated-data labels of format-1 record bodies: a domain of their own, so that no
/// record body opens as a credential blob or the reverse (the labels differ from the
/// credential ones at their 12th byte, so no associated data of one domain equals one of
/// the other).
const RECORD_WRAP_AAD_LABEL_V1: &[u8] = b"strongroom/record-wrap/v1";
const RECORD_DATA_AAD_LABEL_V1: &[u8] = b"strongroom/record-data/v1";

/// Is `aad` the associated data of a format-1 data-key wrap (credential or record body)?
/// The format-1 alias of a local key wraps and unwraps only these.
pub(crate) fn is_format1_wrap_aad(aad: &[u8]) -> bool {
    [WRAP_AAD_LABEL_V1, RECORD_WRAP_AAD_LABEL_V1]
        .iter()
        .any(|label| {
            aad.strip_prefix(*label)
                .is_some_and(|rest| rest.first() == Some(&FORMAT_V1))
        })
}

/// A freshly sealed blob and the id of the master key that wraps its data key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The blob bytes (safe to store: contains no plaintext).
    pub bytes: Vec<u8>,
    /// The wrapping key's id, also written inside the blob.
    pub key_id: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("len", &self.bytes.len())
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// A blob split into its parts, without any cryptographic check.
#[derive(Debug, Clone, Copy)]
pub struct ParsedBlob<'a> {
    /// Format version byte.
    pub version: u8,
    /// Flags byte.
    pub flags: u8,
    /// Backend id byte.
    pub backend: u8,
    /// The master key's id.
    pub key_id: &'a str,
    /// The backend's wrapped data key.
    pub wrapped_key: &'a [u8],
    /// The AES-GCM nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The commitment.
    pub commitment: &'a [u8; COMMITMENT_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: &'a [u8],
}

impl ParsedBlob<'_> {
    /// The three leading header bytes that the wrap's associated data binds.
    pub fn header3(&self) -> [u8; 3] {
        [self.version, self.flags, self.backend]
    }
}

/// Splits a blob into its parts, checking structure only (lengths, version, flags, key id).
pub fn parse<'a>(blob: &'a [u8], what: &dyn Fn() -> String) -> Result<ParsedBlob<'a>> {
    let bad = |reason: &str| Error::corrupt(what(), format!("sealed blob: {reason}"));
    if blob.len() < HEADER_LEN {
        return Err(bad("shorter than the 5-byte header"));
    }
    let (version, flags, backend) = (blob[0], blob[1], blob[2]);
    if version != FORMAT_VERSION && version != FORMAT_V1 {
        return Err(bad(&format!(
            "format version {version} is not supported (this build reads versions \
             {FORMAT_V1} and {FORMAT_VERSION})"
        )));
    }
    if flags != FLAG_KEY_COMMITTED {
        return Err(bad(&format!(
            "flags {flags:#04x} are not supported (version {version} requires exactly the \
             commitment flag 0x01)"
        )));
    }
    let wrapped_len = u16::from_be_bytes([blob[3], blob[4]]) as usize;
    let rest = &blob[HEADER_LEN..];
    if rest.len() < wrapped_len + NONCE_LEN + COMMITMENT_LEN + TAG_LEN {
        return Err(bad("truncated"));
    }
    let (wrapped, rest) = rest.split_at(wrapped_len);
    let Some((&id_len, after_len)) = wrapped.split_first() else {
        return Err(bad("empty wrapped-key section"));
    };
    let id_len = id_len as usize;
    if id_len == 0 || after_len.len() < id_len {
        return Err(bad("key id length out of range"));
    }
    let (id_bytes, wrapped_key) = after_len.split_at(id_len);
    let key_id = std::str::from_utf8(id_bytes).map_err(|_| bad("key id is not UTF-8"))?;
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (commitment, ciphertext) = rest.split_at(COMMITMENT_LEN);
    Ok(ParsedBlob {
        version,
        flags,
        backend,
        key_id,
        wrapped_key,
        nonce: nonce.try_into().map_err(|_| bad("nonce"))?,
        commitment: commitment.try_into().map_err(|_| bad("commitment"))?,
        ciphertext,
    })
}

/// The key that encrypts a blob's payload, and the blob's commitment.
pub(crate) struct PayloadKey {
    key: Secret32,
    commitment: [u8; COMMITMENT_LEN],
}

/// The payload key and commitment of a blob of format `version` (`docs/FORMAT.md`,
/// "Payload key and commitment"):
///
/// - format 2: `ctx = SHA-256(data_aad)`, then HKDF-Expand with the data key as the PRK:
///   `payload key = HMAC-SHA256(DEK, "v2-payload" || nonce || ctx || 0x01)`,
///   `commitment = HMAC-SHA256(DEK, "v2-commit" || nonce || ctx || 0x01)`;
/// - format 1: the data key itself, and `SHA-256("strongroom/commit/v1" || DEK || nonce)`.
pub(crate) fn payload_key(
    version: u8,
    dek: &DataKey,
    nonce: &[u8; NONCE_LEN],
    data_aad: &[u8],
) -> PayloadKey {
    if version == FORMAT_V1 {
        return PayloadKey {
            key: Secret32::new(*dek.expose_secret()),
            commitment: kdf::sha256_wiping(&[COMMIT_LABEL_V1, dek.expose_secret(), nonce]),
        };
    }
    let ctx: [u8; 32] = Sha256::digest(data_aad).into();
    let prk = HmacKey::new(dek.expose_secret());
    PayloadKey {
        key: prk.expand32(&[PAYLOAD_KEY_INFO, nonce, &ctx]),
        commitment: *prk.expand32(&[COMMITMENT_INFO, nonce, &ctx]),
    }
}

/// The commitment a blob of format `version` carries for these inputs (what a reader
/// recomputes and compares before decrypting).
pub fn commitment(
    version: u8,
    dek: &DataKey,
    nonce: &[u8; NONCE_LEN],
    data_aad: &[u8],
) -> [u8; COMMITMENT_LEN] {
    payload_key(version, dek, nonce, data_aad).commitment
}

/// The wrapped-DEK section: `len(key id) | key id | backend bytes`.
fn wrapped_section_len(key_id: &str, wrapped_key: &[u8]) -> Result<usize> {
    if key_id.is_empty() || key_id.len() > 255 {
        return Err(Error::config(format!(
            "master key id `{key_id}` must be 1 to 255 bytes long"
        )));
    }
    let len = 1 + key_id.len() + wrapped_key.len();
    if len > u16::MAX as usize {
        return Err(Error::config(format!(
            "the wrapped data key from master key `{key_id}` is {len} bytes; at most 65535 fit"
        )));
    }
    Ok(len)
}

/// Assembles a blob of the format `header3[0]` names from its parts and encrypts
/// `plaintext` into it. Deterministic given its inputs; [`seal`] supplies fresh randomness.
#[cfg(test)]
pub(crate) fn assemble(
    header3: [u8; 3],
    key_id: &str,
    wrapped_key: &[u8],
    dek: &DataKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    id: &dyn Binding,
) -> Result<Vec<u8>> {
    let aad = id.data_aad(header3[0], header3[1]);
    assemble_prepared(
        header3,
        key_id,
        wrapped_key,
        dek,
        nonce,
        plaintext,
        aad,
        false,
    )
    .map(|(b, _)| b)
}

/// [`assemble`] with the payload's associated data given. With `keep`, also returns the
/// payload key made ready (what the data-key cache holds, so a seal need not derive it
/// twice); without, the key schedule is built on the stack and wiped there.
#[allow(clippy::too_many_arguments)]
fn assemble_prepared(
    header3: [u8; 3],
    key_id: &str,
    wrapped_key: &[u8],
    dek: &DataKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: Vec<u8>,
    keep: bool,
) -> Result<(Vec<u8>, Option<PreparedPayload>)> {
    let section = wrapped_section_len(key_id, wrapped_key)?;
    let total = HEADER_LEN + section + NONCE_LEN + COMMITMENT_LEN + plaintext.len() + TAG_LEN;
    let pk = payload_key(header3[0], dek, nonce, &aad);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header3);
    out.extend_from_slice(&(section as u16).to_be_bytes());
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(wrapped_key);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&pk.commitment);
    let ct_start = out.len();
    out.extend_from_slice(plaintext);
    let (sealed, prepared) = if keep {
        let prepared = PreparedPayload {
            commitment: pk.commitment,
            cipher: AesGcmKey::new(&pk.key),
            data_aad: aad,
        };
        let tag = prepared
            .cipher
            .seal_in_place(nonce, &prepared.data_aad, &mut out[ct_start..]);
        (tag, Some(prepared))
    } else {
        let cipher = OneShotKey::new(&pk.key);
        (
            cipher.seal_in_place(nonce, &aad, &mut out[ct_start..]),
            None,
        )
    };
    let tag = sealed.map_err(|_| {
        out[ct_start..].zeroize();
        Error::invalid("plaintext", "too long for AES-GCM")
    })?;
    out.extend_from_slice(&tag);
    Ok((out, prepared))
}

/// Seals `plaintext` for the record `id` under `wrapper`: a fresh data key and nonce, the
/// data key wrapped with the record's identity as associated data.
pub async fn seal(
    wrapper: &dyn KeyWrapper,
    plaintext: &[u8],
    id: &RecordIdentity<'_>,
) -> Result<Sealed> {
    seal_keeping_key(wrapper, plaintext, id, false)
        .await
        .map(|(s, _)| s)
}

/// Seals a record body for the record version `aad` under `wrapper`, as [`seal`] seals a
/// credential's fields, with the record associated-data domain ([`record_wrap_aad`],
/// [`record_data_aad`]).
pub async fn seal_record(
    wrapper: &dyn KeyWrapper,
    plaintext: &[u8],
    aad: &RecordAad<'_>,
) -> Result<Sealed> {
    seal_keeping_key(wrapper, plaintext, aad, false)
        .await
        .map(|(s, _)| s)
}

/// [`seal`]; with `keep`, also returning the sealed payload's key made ready (for the
/// data-key cache).
pub(crate) async fn seal_keeping_key(
    wrapper: &dyn KeyWrapper,
    plaintext: &[u8],
    id: &dyn Binding,
    keep: bool,
) -> Result<(Sealed, Option<PreparedPayload>)> {
    id.check_sealable()?;
    // One draw for both the data key and the nonce, from this thread's generator (seeded
    // from the OS, reseeded after a fork: `super::random`).
    let mut random = [0u8; 32 + NONCE_LEN];
    let drawn = random::fill(&mut random);
    let mut key = Secret32::new([0u8; 32]);
    key.copy_from_slice(&random[..32]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&random[32..]);
    random.as_mut_slice().zeroize();
    drawn?;
    let dek = DataKey::from_bytes(*key);
    let header3 = [
        FORMAT_VERSION,
        FLAG_KEY_COMMITTED,
        wrapper.backend_id().to_byte(),
    ];
    let wrapped = wrapper.wrap(&dek, &id.wrap_aad(header3)).await?;
    let key_id = wrapper.key_id();
    let aad = id.data_aad(header3[0], header3[1]);
    let (bytes, prepared) = assemble_prepared(
        header3, key_id, &wrapped, &dek, &nonce, plaintext, aad, keep,
    )?;
    Ok((
        Sealed {
            bytes,
            key_id: key_id.to_string(),
        },
        prepared,
    ))
}

/// Unwraps the data key of a parsed blob (its commitment is checked by [`open_with_key`],
/// or by [`checked_payload_key`]).
pub(crate) async fn unwrap_key(
    wrapper: &dyn KeyWrapper,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<DataKey> {
    if BackendId::from_byte(parsed.backend) != Some(wrapper.backend_id()) {
        return Err(Error::decrypt(id.describe()));
    }
    wrapper
        .unwrap(parsed.wrapped_key, &id.wrap_aad(parsed.header3()))
        .await
        .map_err(|e| match e {
            Error::DecryptFailed { .. } => Error::decrypt(id.describe()),
            other => other,
        })
}

/// The payload key of a parsed blob, once its commitment matched (compared in constant
/// time); a mismatch is a decryption failure and nothing is decrypted.
pub(crate) fn checked_payload_key(
    dek: &DataKey,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
    data_aad: &[u8],
) -> Result<PayloadKey> {
    let pk = payload_key(parsed.version, dek, parsed.nonce, data_aad);
    if commitments_equal(&pk.commitment, parsed.commitment) {
        return Ok(pk);
    }
    Err(Error::decrypt(if parsed.version == FORMAT_V1 {
        id.describe()
    } else {
        format!(
            "{} (its data key unwrapped, but its commitment does not match: {} changed \
             after it was sealed)",
            id.describe(),
            id.commitment_covers()
        )
    }))
}

/// Compares two commitments in constant time: the XORs of their 8-byte words are ORed into
/// one word, which is then compared with zero through `subtle` (one optimisation barrier
/// where `[u8]::ct_eq` puts one on every byte). No branch depends on the bytes.
fn commitments_equal(a: &[u8; COMMITMENT_LEN], b: &[u8; COMMITMENT_LEN]) -> bool {
    // Whole words only: a length that is not a multiple of 8 would leave bytes unchecked.
    const _: () = assert!(COMMITMENT_LEN.is_multiple_of(8));
    let diff = a
        .as_chunks::<8>()
        .0
        .iter()
        .zip(b.as_chunks::<8>().0)
        .fold(0u64, |acc, (x, y)| {
            acc | (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y))
        });
    bool::from(diff.ct_eq(&0))
}

/// Checks a data key (unwrapped) against the blob's commitment, then decrypts the payload
/// with a key schedule built on the stack and wiped there.
pub(crate) fn open_with_key(
    dek: &DataKey,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<SecretBox<[u8]>> {
    let aad = id.data_aad(parsed.version, parsed.flags);
    let pk = checked_payload_key(dek, parsed, id, &aad)?;
    let cipher = OneShotKey::new(&pk.key);
    decrypt(parsed, id, |buf, tag| {
        cipher.open_in_place(parsed.nonce, &aad, buf, tag)
    })
}

/// A blob's payload key made ready for use: the AES key schedule built, the commitment it
/// was checked against and the payload's associated data it was made for kept. What the
/// data-key cache holds, so that opening the same blob again neither unwraps nor derives
/// (nor hashes the bound fields again: the cache matches the identity by exact bytes,
/// [`Binding::cache_context`]). The key schedule is overwritten on drop, as far as safe code
/// can ([`AesGcmKey`] says how far that is).
pub(crate) struct PreparedPayload {
    commitment: [u8; COMMITMENT_LEN],
    cipher: AesGcmKey,
    data_aad: Vec<u8>,
}

/// The bytes of a parsed blob before its ciphertext: header, wrapped-key section, nonce and
/// commitment. With the payload's associated data they decide its payload key, so they are
/// what the data-key cache is keyed by.
pub(crate) fn key_section<'a>(blob: &'a [u8], parsed: &ParsedBlob<'_>) -> &'a [u8] {
    &blob[..blob.len().saturating_sub(parsed.ciphertext.len())]
}

/// The master key id named by a blob's key section ([`key_section`]), when it is well
/// formed.
pub(crate) fn section_key_id(section: &[u8]) -> Option<&str> {
    let id_len = *section.get(HEADER_LEN)? as usize;
    let id = section.get(HEADER_LEN + 1..HEADER_LEN + 1 + id_len)?;
    std::str::from_utf8(id).ok()
}

/// The payload key of a blob under data key `dek`, once the blob's commitment matched, for
/// the payload's associated data `data_aad`.
pub(crate) fn prepare(
    dek: &DataKey,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
    data_aad: Vec<u8>,
) -> Result<PreparedPayload> {
    let pk = checked_payload_key(dek, parsed, id, &data_aad)?;
    Ok(PreparedPayload {
        commitment: pk.commitment,
        cipher: AesGcmKey::new(&pk.key),
        data_aad,
    })
}

/// Decrypts a blob's payload with a prepared payload key and the associated data it was
/// made for. The blob's commitment is compared (in constant time) with the one the key was
/// checked against, and the tag checks the ciphertext and the associated data.
pub(crate) fn open_prepared(
    prepared: &PreparedPayload,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<SecretBox<[u8]>> {
    if !commitments_equal(&prepared.commitment, parsed.commitment) {
        return Err(Error::decrypt(id.describe()));
    }
    decrypt(parsed, id, |buf, tag| {
        prepared
            .cipher
            .open_in_place(parsed.nonce, &prepared.data_aad, buf, tag)
    })
}

/// Copies the ciphertext out and decrypts it in place with `open` (given the buffer and the
/// tag); on a failure the buffer is wiped and nothing is returned.
fn decrypt(
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
    open: impl FnOnce(&mut [u8], &[u8]) -> std::result::Result<(), AeadFailed>,
) -> Result<SecretBox<[u8]>> {
    let ct_len = parsed.ciphertext.len() - TAG_LEN;
    let (ct, tag) = parsed.ciphertext.split_at(ct_len);
    let mut buf = ct.to_vec();
    match open(&mut buf, tag) {
        Ok(()) => Ok(SecretBox::new(buf.into_boxed_slice())),
        Err(_) => {
            buf.zeroize();
            Err(Error::decrypt(id.describe()))
        }
    }
}

/// Replaces the wrapped-key section of a blob, keeping nonce, commitment and payload.
pub(crate) fn rebuild_with_wrapped(
    parsed: &ParsedBlob<'_>,
    backend: BackendId,
    key_id: &str,
    wrapped_key: &[u8],
) -> Result<Vec<u8>> {
    let section = wrapped_section_len(key_id, wrapped_key)?;
    let mut out = Vec::with_capacity(
        HEADER_LEN + section + NONCE_LEN + COMMITMENT_LEN + parsed.ciphertext.len(),
    );
    out.extend_from_slice(&[parsed.version, parsed.flags, backend.to_byte()]);
    out.extend_from_slice(&(section as u16).to_be_bytes());
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(wrapped_key);
    out.extend_from_slice(parsed.nonce);
    out.extend_from_slice(parsed.commitment);
    out.extend_from_slice(parsed.ciphertext);
    Ok(out)
}

mod aad;
#[cfg(test)]
mod known_answers;

pub(crate) use aad::Binding;
pub use aad::{bound_digest, data_aad, record_data_aad, record_wrap_aad, wrap_aad};
