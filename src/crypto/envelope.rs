//! The sealed-blob byte format (version 1), documented byte by byte in `docs/FORMAT.md`:
//!
//! ```text
//! version(1) | flags(1) | backend id(1) | wrapped-DEK length(2, BE) | wrapped DEK | nonce(12) | commitment(32) | ciphertext+tag
//! ```
//!
//! The wrapped-DEK section starts with the master key's id (`len(1) | id`) followed by the
//! backend's own wrapped bytes.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use secrecy::SecretBox;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{fill_random, BackendId, DataKey, KeyWrapper};
use crate::error::{Error, Result};
use crate::model::{RecordAad, RecordIdentity};

/// The only format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Flag bit 0: a key commitment follows the nonce and is checked before decryption.
pub const FLAG_KEY_COMMITTED: u8 = 0x01;
/// Length of the fixed header (version, flags, backend id, wrapped-DEK length).
pub const HEADER_LEN: usize = 5;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Key commitment length.
pub const COMMITMENT_LEN: usize = 32;

const WRAP_AAD_LABEL: &[u8] = b"strongroom/wrap/v1";
const DATA_AAD_LABEL: &[u8] = b"strongroom/data/v1";
const COMMIT_LABEL: &[u8] = b"strongroom/commit/v1";
/// The associated-data labels of record bodies: a domain of their own, so that no record
/// body opens as a credential blob or the reverse (the labels differ from the credential
/// ones at their 12th byte, so no associated data of one domain equals one of the other).
const RECORD_WRAP_AAD_LABEL: &[u8] = b"strongroom/record-wrap/v1";
const RECORD_DATA_AAD_LABEL: &[u8] = b"strongroom/record-data/v1";

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
    /// The key commitment.
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
    if version != FORMAT_VERSION {
        return Err(bad(&format!(
            "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        )));
    }
    if flags != FLAG_KEY_COMMITTED {
        return Err(bad(&format!(
            "flags {flags:#04x} are not supported (version 1 requires exactly the key-commitment flag 0x01)"
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

fn push_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn push_identity(out: &mut Vec<u8>, id: &RecordIdentity<'_>) {
    push_lp(out, id.credential_id.as_bytes());
    push_lp(out, id.scope.kind().as_str().as_bytes());
    // The owner as `Scope::owner` spells it, written without building the string.
    let (first, second) = id.scope.owner_parts();
    match second {
        None => push_lp(out, first.as_bytes()),
        Some(second) => {
            out.extend_from_slice(&((first.len() + 1 + second.len()) as u32).to_be_bytes());
            out.extend_from_slice(first.as_bytes());
            out.push(b'/');
            out.extend_from_slice(second.as_bytes());
        }
    }
    out.extend_from_slice(&id.version.to_be_bytes());
}

fn push_record(out: &mut Vec<u8>, aad: &RecordAad<'_>) {
    push_lp(out, aad.kind.as_bytes());
    push_lp(out, aad.owner.as_bytes());
    push_lp(out, aad.key.as_bytes());
    out.extend_from_slice(&aad.version.to_be_bytes());
}

/// Associated data for wrapping a record body's data key: the record label, the three
/// header bytes, then kind, owner and key (each `lp`) and the version (`u64be`).
pub fn record_wrap_aad(header3: [u8; 3], aad: &RecordAad<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + aad.kind.len() + aad.owner.len() + aad.key.len());
    out.extend_from_slice(RECORD_WRAP_AAD_LABEL);
    out.extend_from_slice(&header3);
    push_record(&mut out, aad);
    out
}

/// Associated data for a record body's payload: the record label, the version and flags
/// bytes, then kind, owner, key and version as in [`record_wrap_aad`].
pub fn record_data_aad(version: u8, flags: u8, aad: &RecordAad<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + aad.kind.len() + aad.owner.len() + aad.key.len());
    out.extend_from_slice(RECORD_DATA_AAD_LABEL);
    out.push(version);
    out.push(flags);
    push_record(&mut out, aad);
    out
}

/// What a blob is bound to: a credential version ([`RecordIdentity`]) or a record version
/// ([`RecordAad`]), each with its own associated-data domain.
pub(crate) trait Binding: Sync {
    /// The associated data of the data-key wrap.
    fn wrap_aad(&self, header3: [u8; 3]) -> Vec<u8>;
    /// The associated data of the payload.
    fn data_aad(&self, version: u8, flags: u8) -> Vec<u8>;
    /// What to call it in errors (never its contents).
    fn describe(&self) -> String;
}

impl Binding for RecordIdentity<'_> {
    fn wrap_aad(&self, header3: [u8; 3]) -> Vec<u8> {
        wrap_aad(header3, self)
    }

    fn data_aad(&self, version: u8, flags: u8) -> Vec<u8> {
        data_aad(version, flags, self)
    }

    fn describe(&self) -> String {
        format!(
            "credential {} version {} ({})",
            self.credential_id, self.version, self.scope
        )
    }
}

impl Binding for RecordAad<'_> {
    fn wrap_aad(&self, header3: [u8; 3]) -> Vec<u8> {
        record_wrap_aad(header3, self)
    }

    fn data_aad(&self, version: u8, flags: u8) -> Vec<u8> {
        record_data_aad(version, flags, self)
    }

    fn describe(&self) -> String {
        format!(
            "the sealed body of record `{}` of kind `{}`, owner `{}`, version {}",
            self.key.escape_debug(),
            self.kind,
            self.owner.escape_debug(),
            self.version
        )
    }
}

/// Associated data for wrapping the data key: label, the three header bytes, the identity.
pub fn wrap_aad(header3: [u8; 3], id: &RecordIdentity<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + id.credential_id.len());
    out.extend_from_slice(WRAP_AAD_LABEL);
    out.extend_from_slice(&header3);
    push_identity(&mut out, id);
    out
}

/// Associated data for the payload: label, version and flags bytes, the identity. The
/// backend id and wrapped key are left out on purpose so re-wrapping never touches payloads;
/// they are bound by the wrap's own associated data instead.
pub fn data_aad(version: u8, flags: u8, id: &RecordIdentity<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + id.credential_id.len());
    out.extend_from_slice(DATA_AAD_LABEL);
    out.push(version);
    out.push(flags);
    push_identity(&mut out, id);
    out
}

/// The key commitment: `SHA-256("strongroom/commit/v1" || DEK || nonce)`.
pub fn commitment(dek: &DataKey, nonce: &[u8; NONCE_LEN]) -> [u8; COMMITMENT_LEN] {
    Sha256::new()
        .chain_update(COMMIT_LABEL)
        .chain_update(dek.expose_secret())
        .chain_update(nonce)
        .finalize()
        .into()
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

/// Assembles a blob from its parts and encrypts `plaintext` into it. Deterministic given
/// its inputs; [`seal`] supplies fresh randomness.
pub(crate) fn assemble(
    header3: [u8; 3],
    key_id: &str,
    wrapped_key: &[u8],
    dek: &DataKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    id: &dyn Binding,
) -> Result<Vec<u8>> {
    let section = wrapped_section_len(key_id, wrapped_key)?;
    let total = HEADER_LEN + section + NONCE_LEN + COMMITMENT_LEN + plaintext.len() + TAG_LEN;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header3);
    out.extend_from_slice(&(section as u16).to_be_bytes());
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(wrapped_key);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&commitment(dek, nonce));
    let ct_start = out.len();
    out.extend_from_slice(plaintext);
    let cipher = Aes256Gcm::new(dek.expose_secret().into());
    let aad = id.data_aad(header3[0], header3[1]);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), &aad, &mut out[ct_start..])
        .map_err(|_| {
            out[ct_start..].zeroize();
            Error::invalid("plaintext", "too long for AES-GCM")
        })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Seals `plaintext` for the record `id` under `wrapper`: a fresh data key and nonce, the
/// data key wrapped with the record's identity as associated data.
pub async fn seal(
    wrapper: &dyn KeyWrapper,
    plaintext: &[u8],
    id: &RecordIdentity<'_>,
) -> Result<Sealed> {
    seal_keeping_key(wrapper, plaintext, id)
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
    seal_keeping_key(wrapper, plaintext, aad)
        .await
        .map(|(s, _)| s)
}

/// [`seal`], also returning the data key (for the data-key cache).
pub(crate) async fn seal_keeping_key(
    wrapper: &dyn KeyWrapper,
    plaintext: &[u8],
    id: &dyn Binding,
) -> Result<(Sealed, DataKey)> {
    // One draw from the OS for both the data key and the nonce (each draw is a syscall).
    let mut random = zeroize::Zeroizing::new([0u8; 32 + NONCE_LEN]);
    fill_random(random.as_mut())?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&random[..32]);
    let dek = DataKey::from_bytes(key);
    key.zeroize();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&random[32..]);
    let header3 = [
        FORMAT_VERSION,
        FLAG_KEY_COMMITTED,
        wrapper.backend_id().to_byte(),
    ];
    let wrapped = wrapper.wrap(&dek, &id.wrap_aad(header3)).await?;
    let key_id = wrapper.key_id();
    let bytes = assemble(header3, key_id, &wrapped, &dek, &nonce, plaintext, id)?;
    Ok((
        Sealed {
            bytes,
            key_id: key_id.to_string(),
        },
        dek,
    ))
}

/// Unwraps the data key of a parsed blob and checks its commitment.
pub(crate) async fn unwrap_key(
    wrapper: &dyn KeyWrapper,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<DataKey> {
    if BackendId::from_byte(parsed.backend) != Some(wrapper.backend_id()) {
        return Err(Error::decrypt(id.describe()));
    }
    let dek = wrapper
        .unwrap(parsed.wrapped_key, &id.wrap_aad(parsed.header3()))
        .await
        .map_err(|e| match e {
            Error::DecryptFailed { .. } => Error::decrypt(id.describe()),
            other => other,
        })?;
    if !bool::from(commitment(&dek, parsed.nonce).ct_eq(parsed.commitment)) {
        return Err(Error::decrypt(id.describe()));
    }
    Ok(dek)
}

/// Checks a (cached) key against the blob's commitment, then decrypts the payload.
pub(crate) fn check_and_decrypt(
    dek: &DataKey,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<SecretBox<[u8]>> {
    if !bool::from(commitment(dek, parsed.nonce).ct_eq(parsed.commitment)) {
        return Err(Error::decrypt(id.describe()));
    }
    decrypt_payload(dek, parsed, id)
}

/// Decrypts the payload of a parsed blob with its (already unwrapped and committed) key.
pub(crate) fn decrypt_payload(
    dek: &DataKey,
    parsed: &ParsedBlob<'_>,
    id: &dyn Binding,
) -> Result<SecretBox<[u8]>> {
    let ct_len = parsed.ciphertext.len() - TAG_LEN;
    let (ct, tag) = parsed.ciphertext.split_at(ct_len);
    let mut buf = vec![0u8; ct_len];
    buf.copy_from_slice(ct);
    let cipher = Aes256Gcm::new(dek.expose_secret().into());
    let aad = id.data_aad(parsed.version, parsed.flags);
    match cipher.decrypt_in_place_detached(
        Nonce::from_slice(parsed.nonce),
        &aad,
        &mut buf,
        Tag::from_slice(tag),
    ) {
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

#[cfg(test)]
mod known_answers {
    //! The vectors in `tests/data/envelope_vectors.json` are produced by this exact code path
    //! (`regenerate_vectors`), with fixed test patterns in place of the random data key and
    //! nonce; the vectors in `tests/data/envelope_vectors_python.json` are produced by the
    //! independent Python encoder in `tests/independent_decoder.py`. This encoder must
    //! reproduce both files byte for byte.
    use super::*;
    use crate::crypto::LocalKey;
    use crate::model::{RecordAad, Scope, ScopeKind};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Vector {
        name: String,
        master_key_hex: String,
        master_key_id: String,
        credential_id: String,
        scope_kind: String,
        owner: String,
        version: u64,
        dek_hex: String,
        nonce_hex: String,
        plaintext_hex: String,
        blob_hex: String,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Vectors {
        description: String,
        vectors: Vec<Vector>,
    }

    fn arr<const N: usize>(hex_text: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(hex_text, &mut out).expect("hex of the right length");
        out
    }

    fn encode(v: &Vector) -> String {
        let master = LocalKey::from_bytes(&arr::<32>(&v.master_key_hex), "vector");
        assert_eq!(crate::crypto::KeyWrapper::key_id(&master), v.master_key_id);
        let scope = Scope::from_parts(ScopeKind::parse(&v.scope_kind).expect("kind"), &v.owner)
            .expect("scope");
        let id = RecordIdentity {
            credential_id: &v.credential_id,
            scope: &scope,
            version: v.version,
        };
        let dek = DataKey::from_bytes(arr::<32>(&v.dek_hex));
        let header3 = [
            FORMAT_VERSION,
            FLAG_KEY_COMMITTED,
            BackendId::Local.to_byte(),
        ];
        let wrapped = master
            .wrap_sync(&dek, &wrap_aad(header3, &id))
            .expect("wrap");
        let plaintext = hex::decode(&v.plaintext_hex).expect("hex");
        let blob = assemble(
            header3,
            &v.master_key_id,
            &wrapped,
            &dek,
            &arr::<12>(&v.nonce_hex),
            &plaintext,
            &id,
        )
        .expect("assemble");
        hex::encode(blob)
    }

    const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/envelope_vectors.json"
    );
    const PYTHON_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/envelope_vectors_python.json"
    );
    /// Set to `1` to let `regenerate_vectors` rewrite [`PATH`].
    const REGENERATE_VAR: &str = "STRONGROOM_REGENERATE_VECTORS";
    const DESCRIPTION: &str = "strongroom envelope format v1 known-answer vectors, written by \
                               the Rust encoder (regenerate_vectors in src/crypto/envelope.rs); \
                               see docs/FORMAT.md. master_key_hex, dek_hex and nonce_hex are \
                               fixed test patterns, not random draws: the master key is 00 01 \
                               ... 1f, and for the case at index i (from 0) every DEK byte is \
                               0xa0+i and every nonce byte 0xc0+i. A real seal draws the DEK \
                               and nonce from the operating system.";

    #[test]
    fn encoder_reproduces_the_known_answer_vectors() {
        for path in [PATH, PYTHON_PATH] {
            let text = std::fs::read_to_string(path).expect("vectors file");
            let vectors: Vectors = serde_json::from_str(&text).expect("vectors parse");
            assert!(vectors.vectors.len() >= 4, "{path}");
            for v in &vectors.vectors {
                assert_eq!(encode(v), v.blob_hex, "{path}: vector `{}`", v.name);
            }
        }
    }

    #[derive(serde::Deserialize)]
    struct RecordVector {
        name: String,
        master_key_hex: String,
        master_key_id: String,
        kind: String,
        owner: String,
        key: String,
        version: u64,
        wrap_aad_hex: String,
        data_aad_hex: String,
        dek_hex: String,
        nonce_hex: String,
        plaintext_hex: String,
        blob_hex: String,
    }

    #[derive(serde::Deserialize)]
    struct RecordVectors {
        vectors: Vec<RecordVector>,
    }

    const RECORD_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/record_vectors.json"
    );

    /// The record associated-data domain, checked against `tests/data/record_vectors.json`,
    /// which the independent Python encoder wrote from `docs/FORMAT.md`: the associated data
    /// byte for byte, and the whole sealed body.
    #[test]
    fn encoder_reproduces_the_record_body_vectors() {
        let text = std::fs::read_to_string(RECORD_PATH).expect("record vectors file");
        let vectors: RecordVectors = serde_json::from_str(&text).expect("vectors parse");
        assert!(vectors.vectors.len() >= 3);
        for v in &vectors.vectors {
            let master = LocalKey::from_bytes(&arr::<32>(&v.master_key_hex), "vector");
            assert_eq!(crate::crypto::KeyWrapper::key_id(&master), v.master_key_id);
            let aad = RecordAad {
                kind: &v.kind,
                owner: &v.owner,
                key: &v.key,
                version: v.version,
            };
            let header3 = [
                FORMAT_VERSION,
                FLAG_KEY_COMMITTED,
                BackendId::Local.to_byte(),
            ];
            let wrap = record_wrap_aad(header3, &aad);
            assert_eq!(hex::encode(&wrap), v.wrap_aad_hex, "{}: wrap aad", v.name);
            assert_eq!(
                hex::encode(record_data_aad(header3[0], header3[1], &aad)),
                v.data_aad_hex,
                "{}: data aad",
                v.name
            );
            let dek = DataKey::from_bytes(arr::<32>(&v.dek_hex));
            let wrapped = master.wrap_sync(&dek, &wrap).expect("wrap");
            let blob = assemble(
                header3,
                &v.master_key_id,
                &wrapped,
                &dek,
                &arr::<12>(&v.nonce_hex),
                &hex::decode(&v.plaintext_hex).expect("hex"),
                &aad,
            )
            .expect("assemble");
            assert_eq!(hex::encode(blob), v.blob_hex, "{}: blob", v.name);
        }
    }

    /// The worked example of `docs/FORMAT.md` "Record bodies", byte for byte.
    #[test]
    fn record_associated_data_reads_as_documented() {
        let aad = RecordAad {
            kind: "lease",
            owner: "refresh",
            key: "cred-1",
            version: 2,
        };
        let expected = [
            &b"strongroom/record-data/v1"[..],
            &[0x01, 0x01],
            &[0, 0, 0, 5],
            b"lease",
            &[0, 0, 0, 7],
            b"refresh",
            &[0, 0, 0, 6],
            b"cred-1",
            &[0, 0, 0, 0, 0, 0, 0, 2],
        ]
        .concat();
        assert_eq!(record_data_aad(1, 1, &aad), expected);
        let mut wrap = b"strongroom/record-wrap/v1".to_vec();
        wrap.extend_from_slice(&[0x01, 0x01, 0x01]);
        wrap.extend_from_slice(&expected[b"strongroom/record-data/v1".len() + 2..]);
        assert_eq!(record_wrap_aad([1, 1, 1], &aad), wrap);
        // The credential domain never yields the same bytes: the labels differ at byte 11.
        assert_ne!(&WRAP_AAD_LABEL[..12], &RECORD_WRAP_AAD_LABEL[..12]);
        assert_ne!(&DATA_AAD_LABEL[..12], &RECORD_DATA_AAD_LABEL[..12]);
    }

    /// Rebuilds `tests/data/envelope_vectors.json` from the cases below. Run alone, or by
    /// `cargo test -- --include-ignored`, it only compares the file with what the cases
    /// produce and writes nothing. It rewrites the file only when the environment variable
    /// `STRONGROOM_REGENERATE_VECTORS` is `1`:
    ///
    /// ```text
    /// STRONGROOM_REGENERATE_VECTORS=1 cargo test --lib regenerate_vectors -- --ignored
    /// ```
    ///
    /// Only for a deliberate format change (which also needs a new format version); check
    /// the result against the independent Python decoder (`python3 tests/independent_decoder.py`),
    /// which must still pass.
    #[test]
    #[ignore]
    fn regenerate_vectors() {
        let master_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let master = LocalKey::from_bytes(&arr::<32>(master_hex), "vector");
        let key_id = crate::crypto::KeyWrapper::key_id(&master).to_string();
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            u64,
            Vec<u8>,
        );
        let cases: [Case; 4] = [
            (
                "empty payload, system_wide",
                "cred-0001",
                "system_wide",
                "",
                1,
                vec![],
            ),
            (
                "64-byte secret, per_user",
                "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "per_user",
                "alice",
                3,
                b"sk-proj-CANARY-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN".to_vec(),
            ),
            (
                "JSON fields, per_app_per_user",
                "cred-0003",
                "per_app_per_user",
                "crm/bob@example.com",
                42,
                br#"{"api_key":"sk_live_51Hxyz","webhook_secret":"whsec_\u00e9t\u00e9"}"#.to_vec(),
            ),
            (
                "binary payload, per_agent",
                "cred-0004",
                "per_agent",
                "agent-7",
                u64::MAX,
                (0..=255u8).collect(),
            ),
        ];
        let vectors = cases
            .into_iter()
            .enumerate()
            .map(|(i, (name, cid, kind, owner, version, plaintext))| {
                let b = i as u8;
                let mut v = Vector {
                    name: name.into(),
                    master_key_hex: master_hex.into(),
                    master_key_id: key_id.clone(),
                    credential_id: cid.into(),
                    scope_kind: kind.into(),
                    owner: owner.into(),
                    version,
                    dek_hex: hex::encode([0xA0 + b; 32]),
                    nonce_hex: hex::encode([0xC0 + b; 12]),
                    plaintext_hex: hex::encode(plaintext),
                    blob_hex: String::new(),
                };
                v.blob_hex = encode(&v);
                v
            })
            .collect();
        let doc = Vectors {
            description: DESCRIPTION.into(),
            vectors,
        };
        let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
        if std::env::var_os(REGENERATE_VAR).is_some_and(|v| v == "1") {
            std::fs::write(PATH, text).expect("write vectors");
            println!("{REGENERATE_VAR}=1: rewrote {PATH}");
            return;
        }
        println!("{REGENERATE_VAR} is not 1: comparing {PATH}, not writing it");
        let on_disk = std::fs::read_to_string(PATH).expect("vectors file");
        assert!(
            on_disk == text,
            "{PATH} differs from what the cases produce; if the change is deliberate, rerun \
             with {REGENERATE_VAR}=1 to rewrite it"
        );
    }
}
