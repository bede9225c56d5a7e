//! The associated data of sealed blobs (`docs/FORMAT.md`): of the data-key wrap and of the
//! payload, for credentials and for record bodies, and the digest of bound fields.

use sha2::{Digest, Sha256};

use super::{
    BOUND_FIELDS_LABEL, DATA_AAD_LABEL, DATA_AAD_LABEL_V1, FORMAT_V1, RECORD_DATA_AAD_LABEL,
    RECORD_DATA_AAD_LABEL_V1, RECORD_WRAP_AAD_LABEL, RECORD_WRAP_AAD_LABEL_V1, WRAP_AAD_LABEL,
    WRAP_AAD_LABEL_V1,
};
use crate::error::Result;
use crate::model::{BoundFields, RecordAad, RecordIdentity};

fn push_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The format-1 identity: `lp(credential id) || lp(scope kind) || lp(owner) || u64be(version)`.
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

/// Where the bytes of the bound fields go: a hash (the digest in the associated data) or a
/// buffer (the data-key cache's exact-match context).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The bytes [`bound_digest`] hashes (its doc comment spells them out).
fn write_bound(out: &mut impl Sink, bound: Option<&BoundFields<'_>>) {
    out.put(BOUND_FIELDS_LABEL);
    let lp = |out: &mut _, bytes: &[u8]| {
        Sink::put(out, &(bytes.len() as u32).to_be_bytes());
        Sink::put(out, bytes);
    };
    match bound {
        None => out.put(&[0x00]),
        Some(b) => {
            out.put(&[0x01]);
            lp(out, b.name.as_bytes());
            lp(out, b.provider.as_bytes());
            lp(out, b.handler_type.as_bytes());
            lp(out, b.state.as_str().as_bytes());
            out.put(&[u8::from(b.agent_accessible)]);
            match b.expires_at {
                None => out.put(&[0x00]),
                Some(at) => {
                    out.put(&[0x01]);
                    out.put(&at.as_millis().to_be_bytes());
                }
            }
            out.put(&(b.metadata.len() as u32).to_be_bytes());
            // A BTreeMap of Strings iterates in ascending byte order of the keys.
            for (key, value) in b.metadata {
                lp(out, key.as_bytes());
                lp(out, value.as_bytes());
            }
        }
    }
}

/// The digest of a credential's bound fields (`docs/FORMAT.md`, "Bound fields"):
/// `SHA-256(label || 0x00)` with none, else `SHA-256(label || 0x01 || lp(name) ||
/// lp(provider) || lp(handler type) || lp(state) || u8(agent accessible) || expiry ||
/// u32be(entries) || (lp(key) || lp(value)) in ascending key order)`, the expiry being
/// `0x00` or `0x01 || i64be(milliseconds)`.
pub fn bound_digest(bound: Option<&BoundFields<'_>>) -> [u8; 32] {
    let mut h = Sha256::new();
    write_bound(&mut h, bound);
    h.finalize().into()
}

/// Associated data for wrapping a record body's data key. Format 1: the record label, the
/// three header bytes, then kind, owner and key (each `lp`) and the version (`u64be`);
/// format 2 (any version byte but 1) puts `lp(namespace)` before the kind.
pub fn record_wrap_aad(header3: [u8; 3], aad: &RecordAad<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + aad.namespace.len() + aad.kind.len() + aad.owner.len() + aad.key.len(),
    );
    if header3[0] == FORMAT_V1 {
        out.extend_from_slice(RECORD_WRAP_AAD_LABEL_V1);
        out.extend_from_slice(&header3);
    } else {
        out.extend_from_slice(RECORD_WRAP_AAD_LABEL);
        out.extend_from_slice(&header3);
        push_lp(&mut out, aad.namespace.as_bytes());
    }
    push_record(&mut out, aad);
    out
}

/// Associated data for a record body's payload: the record label, the version and flags
/// bytes, then (format 2) `lp(namespace)`, then kind, owner, key and version as in
/// [`record_wrap_aad`].
pub fn record_data_aad(version: u8, flags: u8, aad: &RecordAad<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + aad.namespace.len() + aad.kind.len() + aad.owner.len() + aad.key.len(),
    );
    if version == FORMAT_V1 {
        out.extend_from_slice(RECORD_DATA_AAD_LABEL_V1);
        out.push(version);
        out.push(flags);
    } else {
        out.extend_from_slice(RECORD_DATA_AAD_LABEL);
        out.push(version);
        out.push(flags);
        push_lp(&mut out, aad.namespace.as_bytes());
    }
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
    /// What the data-key cache matches by exact bytes before it hands out a payload key
    /// made for [`Binding::data_aad`]: bytes that determine that associated data, and are
    /// cheaper to make. The payload's associated data itself, except that a format-2
    /// credential's ends with the bound fields as [`bound_digest`] hashes them instead of
    /// their digest (so a cached open hashes nothing). Equal contexts give equal associated
    /// data: every field before the bound fields is length-prefixed or of fixed length, and
    /// the bound fields' encoding is the digest's input.
    fn cache_context(&self, version: u8, flags: u8) -> Vec<u8>;
    /// What to call it in errors (never its contents).
    fn describe(&self) -> String;
    /// What a format-2 blob whose data key unwrapped but whose commitment does not match
    /// says: what else the commitment binds.
    fn commitment_covers(&self) -> &'static str;
    /// Refuses what must not be sealed (an empty namespace).
    fn check_sealable(&self) -> Result<()>;
}

impl Binding for RecordIdentity<'_> {
    fn wrap_aad(&self, header3: [u8; 3]) -> Vec<u8> {
        wrap_aad(header3, self)
    }

    fn data_aad(&self, version: u8, flags: u8) -> Vec<u8> {
        data_aad(version, flags, self)
    }

    fn cache_context(&self, version: u8, flags: u8) -> Vec<u8> {
        if version == FORMAT_V1 {
            return data_aad(version, flags, self);
        }
        let mut out = data_aad_v2_prefix(version, flags, self);
        write_bound(&mut out, self.bound.as_ref());
        out
    }

    fn describe(&self) -> String {
        format!(
            "credential {} version {} ({}) in vault namespace `{}`",
            self.credential_id,
            self.version,
            self.scope,
            self.namespace.escape_debug()
        )
    }

    fn commitment_covers(&self) -> &'static str {
        "the columns bound to it (name, provider, handler type, state, agent_accessible, \
         expires_at, metadata) or the blob's nonce or commitment"
    }

    fn check_sealable(&self) -> Result<()> {
        crate::model::validate_namespace(self.namespace)
    }
}

impl Binding for RecordAad<'_> {
    fn wrap_aad(&self, header3: [u8; 3]) -> Vec<u8> {
        record_wrap_aad(header3, self)
    }

    fn data_aad(&self, version: u8, flags: u8) -> Vec<u8> {
        record_data_aad(version, flags, self)
    }

    fn cache_context(&self, version: u8, flags: u8) -> Vec<u8> {
        record_data_aad(version, flags, self)
    }

    fn describe(&self) -> String {
        format!(
            "the sealed body of record `{}` of kind `{}`, owner `{}`, version {} in vault \
             namespace `{}`",
            self.key.escape_debug(),
            self.kind,
            self.owner.escape_debug(),
            self.version,
            self.namespace.escape_debug()
        )
    }

    fn commitment_covers(&self) -> &'static str {
        "the blob's nonce or commitment"
    }

    fn check_sealable(&self) -> Result<()> {
        crate::model::validate_namespace(self.namespace)
    }
}

/// Associated data for wrapping the data key: label, the three header bytes, the identity.
/// Format 1 (version byte 1): `"strongroom/wrap/v1" || header || identity`; format 2:
/// `"strongroom/v2/credential/wrap" || header || lp(namespace) || identity`. The bound
/// fields are not in it (they are in the payload's associated data), so a remote KMS never
/// sees them in its encryption context.
pub fn wrap_aad(header3: [u8; 3], id: &RecordIdentity<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + id.namespace.len() + id.credential_id.len());
    if header3[0] == FORMAT_V1 {
        out.extend_from_slice(WRAP_AAD_LABEL_V1);
        out.extend_from_slice(&header3);
    } else {
        out.extend_from_slice(WRAP_AAD_LABEL);
        out.extend_from_slice(&header3);
        push_lp(&mut out, id.namespace.as_bytes());
    }
    push_identity(&mut out, id);
    out
}

/// Associated data for the payload: label, version and flags bytes, the identity, and
/// (format 2) the namespace before it and the [`bound_digest`] after it. The backend id and
/// wrapped key are left out on purpose so re-wrapping never touches payloads; they are
/// bound by the wrap's own associated data instead.
pub fn data_aad(version: u8, flags: u8, id: &RecordIdentity<'_>) -> Vec<u8> {
    if version == FORMAT_V1 {
        let mut out = Vec::with_capacity(160 + id.namespace.len() + id.credential_id.len());
        out.extend_from_slice(DATA_AAD_LABEL_V1);
        out.push(version);
        out.push(flags);
        push_identity(&mut out, id);
        return out;
    }
    let mut out = data_aad_v2_prefix(version, flags, id);
    out.extend_from_slice(&bound_digest(id.bound.as_ref()));
    out
}

/// A format-2 payload's associated data up to the bound-fields digest.
fn data_aad_v2_prefix(version: u8, flags: u8, id: &RecordIdentity<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + id.namespace.len() + id.credential_id.len());
    out.extend_from_slice(DATA_AAD_LABEL);
    out.push(version);
    out.push(flags);
    push_lp(&mut out, id.namespace.as_bytes());
    push_identity(&mut out, id);
    out
}
