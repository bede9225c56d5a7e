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

fn push_lp(out: &mut impl Sink, bytes: &[u8]) {
    out.put(&(bytes.len() as u32).to_be_bytes());
    out.put(bytes);
}

/// The format-1 identity: `lp(credential id) || lp(scope kind) || lp(owner) || u64be(version)`.
fn push_identity(out: &mut impl Sink, id: &RecordIdentity<'_>) {
    push_lp(out, id.credential_id.as_bytes());
    push_lp(out, id.scope.kind().as_str().as_bytes());
    // The owner as `Scope::owner` spells it, written without building the string.
    let (first, second) = id.scope.owner_parts();
    match second {
        None => push_lp(out, first.as_bytes()),
        Some(second) => {
            out.put(&((first.len() + 1 + second.len()) as u32).to_be_bytes());
            out.put(first.as_bytes());
            out.put(b"/");
            out.put(second.as_bytes());
        }
    }
    out.put(&id.version.to_be_bytes());
}

fn push_record(out: &mut impl Sink, aad: &RecordAad<'_>) {
    push_lp(out, aad.kind.as_bytes());
    push_lp(out, aad.owner.as_bytes());
    push_lp(out, aad.key.as_bytes());
    out.put(&aad.version.to_be_bytes());
}

/// Where encoded bytes go: a buffer, a hash (the bound-fields digest), or a comparison with
/// bytes held (the data-key cache's context, [`Binding::cache_context_is`]).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// Compares what is written with `rest`, in order, without building it.
struct Matcher<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl Sink for Matcher<'_> {
    fn put(&mut self, bytes: &[u8]) {
        match self.rest.split_at_checked(bytes.len()) {
            Some((head, tail)) if head == bytes => self.rest = tail,
            _ => {
                self.equal = false;
                self.rest = &[];
            }
        }
    }
}

/// Whether `write` writes exactly `expected`.
fn writes_exactly<S: FnOnce(&mut Matcher<'_>)>(expected: &[u8], write: S) -> bool {
    let mut m = Matcher {
        rest: expected,
        equal: true,
    };
    write(&mut m);
    m.equal && m.rest.is_empty()
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
    write_record_data_aad(&mut out, version, flags, aad);
    out
}

fn write_record_data_aad(out: &mut impl Sink, version: u8, flags: u8, aad: &RecordAad<'_>) {
    if version == FORMAT_V1 {
        out.put(RECORD_DATA_AAD_LABEL_V1);
        out.put(&[version, flags]);
    } else {
        out.put(RECORD_DATA_AAD_LABEL);
        out.put(&[version, flags]);
        push_lp(out, aad.namespace.as_bytes());
    }
    push_record(out, aad);
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
    /// Whether [`Binding::cache_context`] is `expected`, found without building it.
    fn cache_context_is(&self, version: u8, flags: u8, expected: &[u8]) -> bool;
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
        let mut out = Vec::with_capacity(256 + self.namespace.len() + self.credential_id.len());
        write_cache_context(&mut out, version, flags, self);
        out
    }

    fn cache_context_is(&self, version: u8, flags: u8, expected: &[u8]) -> bool {
        writes_exactly(expected, |m| write_cache_context(m, version, flags, self))
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

    fn cache_context_is(&self, version: u8, flags: u8, expected: &[u8]) -> bool {
        writes_exactly(expected, |m| write_record_data_aad(m, version, flags, self))
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
    let mut out = Vec::with_capacity(160 + id.namespace.len() + id.credential_id.len());
    write_data_aad_head(&mut out, version, flags, id);
    if version != FORMAT_V1 {
        out.extend_from_slice(&bound_digest(id.bound.as_ref()));
    }
    out
}

/// A payload's associated data up to (format 2) the bound-fields digest, all of it (format 1).
fn write_data_aad_head(out: &mut impl Sink, version: u8, flags: u8, id: &RecordIdentity<'_>) {
    if version == FORMAT_V1 {
        out.put(DATA_AAD_LABEL_V1);
        out.put(&[version, flags]);
    } else {
        out.put(DATA_AAD_LABEL);
        out.put(&[version, flags]);
        push_lp(out, id.namespace.as_bytes());
    }
    push_identity(out, id);
}

/// The data-key cache's context of a credential (`Binding::cache_context`): its payload's
/// associated data, the format-2 digest of the bound fields replaced by their encoding.
fn write_cache_context(out: &mut impl Sink, version: u8, flags: u8, id: &RecordIdentity<'_>) {
    write_data_aad_head(out, version, flags, id);
    if version != FORMAT_V1 {
        write_bound(out, id.bound.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{LifecycleState, Scope, Timestamp};

    /// The data-key cache's context decides the payload's associated data: across
    /// identities that differ in one field each (bound fields included), two contexts are
    /// equal exactly when the associated data are, and the matcher accepts a context exactly
    /// when it equals the one built, refusing its prefixes and extensions.
    #[test]
    fn cache_contexts_match_exactly_when_the_associated_data_do() {
        let scope = Scope::per_user("alice").expect("scope");
        let other_scope = Scope::per_user("bob").expect("scope");
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let meta2 = BTreeMap::from([("k".to_string(), "w".to_string())]);
        let bound = |state, metadata, expires_at| BoundFields {
            name: "n",
            provider: "p",
            handler_type: "api_key",
            state,
            agent_accessible: true,
            expires_at,
            metadata,
        };
        let ids = [
            RecordIdentity::new("c1", &scope, 3),
            RecordIdentity::new("c1", &scope, 4),
            RecordIdentity::new("c2", &scope, 3),
            RecordIdentity::new("c1", &other_scope, 3),
            RecordIdentity::new("c1", &scope, 3).in_namespace("prod"),
            RecordIdentity::new("c1", &scope, 3).with_bound(bound(
                LifecycleState::Valid,
                &meta,
                None,
            )),
            RecordIdentity::new("c1", &scope, 3).with_bound(bound(
                LifecycleState::Valid,
                &meta2,
                None,
            )),
            RecordIdentity::new("c1", &scope, 3).with_bound(bound(
                LifecycleState::Valid,
                &meta,
                Some(Timestamp(1)),
            )),
            RecordIdentity::new("c1", &scope, 3).with_bound(bound(
                LifecycleState::Invalid,
                &meta,
                None,
            )),
        ];
        for version in [FORMAT_V1, super::super::FORMAT_VERSION] {
            for a in &ids {
                let ctx = a.cache_context(version, 1);
                assert!(a.cache_context_is(version, 1, &ctx));
                assert!(!a.cache_context_is(version, 1, &ctx[..ctx.len() - 1]));
                assert!(!a.cache_context_is(version, 1, &[&ctx[..], b"x"].concat()));
                assert!(!a.cache_context_is(version, 0, &ctx));
                for b in &ids {
                    let same_aad = a.data_aad(version, 1) == b.data_aad(version, 1);
                    assert_eq!(b.cache_context(version, 1) == ctx, same_aad);
                    assert_eq!(b.cache_context_is(version, 1, &ctx), same_aad);
                }
            }
        }
        let record = RecordAad::new("kind", "owner", "key", 1);
        let ctx = record.cache_context(2, 1);
        assert_eq!(ctx, record.data_aad(2, 1));
        assert!(record.cache_context_is(2, 1, &ctx));
        assert!(!RecordAad::new("kind", "owner", "key", 2).cache_context_is(2, 1, &ctx));
        assert!(!ids[0].cache_context_is(2, 1, &ctx));
    }
}
