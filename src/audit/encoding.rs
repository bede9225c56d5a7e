//! The canonical encoding of an audit row (`docs/AUDIT.md`), its hash, the chain head, and
//! the stored row: what a store needs to append to the chain and to hash rows it reads.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::AuditEvent;

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];
/// The domain label that starts every row's canonical encoding.
pub const CANONICAL_LABEL: &[u8] = b"strongroom/audit/v1";

/// A stored audit row: the event, its sequence number and its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// The previous row's hash ([`GENESIS_HASH`] for row 1).
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash || canonical_encoding(seq, event))`.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

/// The last row of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl ChainHead {
    /// Numbers and chains `event` after `head` (or as row 1), advancing `head`.
    pub fn append(head: &mut Option<ChainHead>, event: AuditEvent) -> AuditRecord {
        let owner = event_owner(&event);
        let link = ChainHead::link(head, &event, &owner);
        AuditRecord {
            seq: link.seq,
            event,
            prev_hash: link.prev_hash,
            hash: link.hash,
        }
    }

    /// [`ChainHead::append`] without building the record: the row's number and links, for
    /// a store that writes the event's columns straight from it. `owner` is the target's
    /// owner as stored ([`crate::audit::AuditTarget::columns`]).
    pub(crate) fn link(head: &mut Option<ChainHead>, event: &AuditEvent, owner: &str) -> Link {
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS_HASH),
        };
        let hash = canonical_row(seq, event, owner).hash(&prev_hash);
        *head = Some(ChainHead { seq, hash });
        Link {
            seq,
            prev_hash,
            hash,
        }
    }
}

/// A row's number and its links in the chain ([`ChainHead::link`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    /// Sequence number.
    pub seq: u64,
    /// The previous row's hash.
    pub prev_hash: [u8; 32],
    /// This row's hash.
    pub hash: [u8; 32],
}

/// Where canonical bytes go: a buffer (to show them) or a hasher (to hash them in place).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn put_lp(&mut self, text: &str) {
        self.put(&(text.len() as u32).to_be_bytes());
        self.put(text.as_bytes());
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// A row's fields exactly as the canonical encoding reads them, borrowed. Stores use it to
/// hash rows straight from their columns; `details` must be in ascending byte order of keys.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalRow<'a, D> {
    /// Sequence number.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time: i64,
    /// Actor.
    pub actor: &'a str,
    /// Action.
    pub action: &'a str,
    /// Credential id or `""`.
    pub credential_id: &'a str,
    /// Scope kind or `""`.
    pub scope_kind: &'a str,
    /// Owner or `""`.
    pub owner: &'a str,
    /// Outcome text.
    pub outcome: &'a str,
    /// Details, sorted by key.
    pub details: D,
}

impl<'a, D> CanonicalRow<'a, D>
where
    D: ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
{
    fn encode(&self, sink: &mut impl Sink) {
        sink.put(CANONICAL_LABEL);
        sink.put(&self.seq.to_be_bytes());
        sink.put(&self.time.to_be_bytes());
        for field in [
            self.actor,
            self.action,
            self.credential_id,
            self.scope_kind,
            self.owner,
            self.outcome,
        ] {
            sink.put_lp(field);
        }
        sink.put(&(self.details.len() as u32).to_be_bytes());
        for (k, v) in self.details.clone() {
            sink.put_lp(k);
            sink.put_lp(v);
        }
    }

    /// The canonical encoding as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.encode(&mut out);
        out
    }

    /// `SHA-256(prev_hash || canonical encoding)`.
    pub fn hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        // Straight into the hasher, which buffers whole blocks itself (gathering the pieces
        // on the stack first measured slower).
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        self.encode(&mut hasher);
        hasher.finalize().into()
    }
}

/// The `details` column as the stores write it (`serde_json` of a map of strings), read in
/// place without allocating when it has exactly that form: a compact JSON object whose
/// strings hold no escape and whose keys are strictly ascending in byte order. Any other
/// text (escapes, white space, keys out of order or repeated, anything malformed) gives
/// `None`, and the caller decodes it the general way; for any text this accepts, both give
/// the same pairs in the same order.
#[derive(Debug, Clone, Copy)]
pub struct PlainDetails<'a> {
    /// The text from the next key's opening quote (or the closing brace).
    rest: &'a str,
    remaining: usize,
}

impl<'a> PlainDetails<'a> {
    /// Checks `text` and counts its pairs; `None` when it is not in the plain form.
    pub fn parse(text: &'a str) -> Option<PlainDetails<'a>> {
        let bytes = text.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'{' || bytes[bytes.len() - 1] != b'}' {
            return None;
        }
        let mut at = 1;
        let mut count = 0usize;
        let mut previous: Option<&[u8]> = None;
        if bytes.len() > 2 {
            loop {
                let (key, after) = plain_string(bytes, at)?;
                if previous.is_some_and(|p| p >= key) || bytes.get(after) != Some(&b':') {
                    return None;
                }
                let (_, after) = plain_string(bytes, after + 1)?;
                previous = Some(key);
                count += 1;
                match bytes.get(after) {
                    Some(b',') => at = after + 1,
                    Some(b'}') if after == bytes.len() - 1 => break,
                    _ => return None,
                }
            }
        }
        Some(PlainDetails {
            rest: &text[1..],
            remaining: count,
        })
    }
}

/// The string starting with the quote at `at`: its contents and the index after its closing
/// quote, or `None` for a missing quote, an escape or a control character.
fn plain_string(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let len = bytes
        .get(start..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let end = start + len;
    (bytes[end] == b'"').then(|| (&bytes[start..end], end + 1))
}

impl<'a> Iterator for PlainDetails<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Checked by `parse`: `"key":"value"` then `,` or `}`, no escapes, so every quote
        // found ends a string and every cut falls on an ASCII byte.
        // A byte loop: the strings are short, and a `str::find` costs more to set up.
        let rest = self.rest;
        let quote = |from: usize| {
            rest.as_bytes()
                .get(from..)?
                .iter()
                .position(|&b| b == b'"')
                .map(|at| from + at)
        };
        let key_end = quote(1)?;
        let key = &rest[1..key_end];
        let value_start = key_end + 3;
        let value_end = quote(value_start)?;
        let value = &rest[value_start..value_end];
        self.rest = &rest[value_end + 2..];
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for PlainDetails<'_> {}

fn event_owner(event: &AuditEvent) -> std::borrow::Cow<'_, str> {
    event.target.owner()
}

fn canonical_row<'a>(
    seq: u64,
    event: &'a AuditEvent,
    owner: &'a str,
) -> CanonicalRow<'a, impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone + 'a> {
    CanonicalRow {
        seq,
        time: event.time.0,
        actor: &event.actor,
        action: event.action.as_str(),
        credential_id: event
            .target
            .credential_id
            .as_ref()
            .map(|c| c.as_str())
            .unwrap_or(""),
        scope_kind: event
            .target
            .scope
            .as_ref()
            .map(|s| s.kind().as_str())
            .unwrap_or(""),
        owner,
        outcome: event.outcome.as_str(),
        details: event.details.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    }
}

/// The canonical encoding of a row (see `docs/AUDIT.md`): the label, `seq` (u64 BE), time
/// (i64 BE, ms), then length-prefixed (u32 BE) actor, action, credential id, scope kind,
/// owner, outcome, then the detail count (u32 BE) and each key and value length-prefixed,
/// in byte order of the keys.
pub fn canonical_encoding(seq: u64, event: &AuditEvent) -> Vec<u8> {
    let owner = event_owner(event);
    let bytes = canonical_row(seq, event, &owner).to_bytes();
    bytes
}

/// `SHA-256(prev_hash || canonical_encoding(seq, event))`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: u64, event: &AuditEvent) -> [u8; 32] {
    let owner = event_owner(event);
    let hash = canonical_row(seq, event, &owner).hash(prev_hash);
    hash
}

/// What chain verification needs of one row: its number, its stored links, and the hash
/// recomputed from its contents (or why its contents cannot be decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDigest {
    /// Sequence number.
    pub seq: u64,
    /// The stored `prev_hash`.
    pub prev_hash: [u8; 32],
    /// The stored `hash`.
    pub hash: [u8; 32],
    /// `SHA-256(stored prev_hash || canonical(contents))`, or why the row does not decode.
    pub computed: std::result::Result<[u8; 32], String>,
}

impl AuditDigest {
    /// The digest of a decoded row.
    pub fn of(record: &AuditRecord) -> AuditDigest {
        AuditDigest {
            seq: record.seq,
            prev_hash: record.prev_hash,
            hash: record.hash,
            computed: Ok(chain_hash(&record.prev_hash, record.seq, &record.event)),
        }
    }
}

/// Bytes of any length as lowercase hex (a checkpoint's tag).
pub(crate) mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::audit::{Action, AuditTarget, Outcome};
    use crate::model::{CredentialId, Scope, Timestamp};

    /// The worked example of `docs/AUDIT.md`; the doc quotes these exact bytes.
    pub(crate) fn worked_example() -> AuditEvent {
        AuditEvent {
            time: Timestamp(1_764_000_000_000),
            actor: "alice".into(),
            action: Action::Create,
            target: AuditTarget::credential(
                &CredentialId::new("cred-1").expect("id"),
                &Scope::per_user("alice").expect("scope"),
            ),
            outcome: Outcome::Success,
            details: BTreeMap::from([("provider".to_string(), "openai".to_string())]),
        }
    }

    #[test]
    fn worked_example_matches_the_documentation() {
        let event = worked_example();
        let canonical = canonical_encoding(1, &event);
        let hash = chain_hash(&GENESIS_HASH, 1, &event);
        let doc = include_str!("../../docs/AUDIT.md");
        assert!(
            doc.contains(&hex::encode(&canonical)),
            "canonical hex {}",
            hex::encode(&canonical)
        );
        assert!(
            doc.contains(&hex::encode(hash)),
            "hash {}",
            hex::encode(hash)
        );
    }

    /// What `PlainDetails` reads, against the general decoder: the same pairs whenever it
    /// accepts a text, and `None` for every form it must leave to the general path.
    #[test]
    fn plain_details_agree_with_serde_or_step_aside() {
        let general = |text: &str| -> Option<Vec<(String, String)>> {
            serde_json::from_str::<BTreeMap<String, String>>(text)
                .ok()
                .map(|m| m.into_iter().collect())
        };
        let plain = |text: &str| -> Option<Vec<(String, String)>> {
            PlainDetails::parse(text).map(|d| {
                assert_eq!(d.len(), d.count());
                d.map(|(k, v)| (k.to_string(), v.to_string())).collect()
            })
        };
        for accepted in [
            "{}",
            r#"{"slot":"brain.api_key"}"#,
            r#"{"a":"","b":"x","provider":"openai"}"#,
            r#"{"":"empty key"}"#,
            "{\"k\u{e9}y\":\"v\u{e0}lue \u{1F511}\"}",
        ] {
            assert_eq!(plain(accepted), general(accepted), "{accepted}");
            assert!(plain(accepted).is_some(), "{accepted}");
        }
        // Serializing a map gives the plain form, whatever its contents.
        let map = BTreeMap::from([
            ("b".to_string(), "x:y,z}".to_string()),
            ("a".to_string(), "{\"}".to_string()),
            ("c".to_string(), "line\nbreak".to_string()),
        ]);
        let text = serde_json::to_string(&map).expect("json");
        let expected: Vec<(String, String)> = map.into_iter().collect();
        match plain(&text) {
            Some(pairs) => assert_eq!(pairs, expected),
            None => assert_eq!(general(&text), Some(expected)),
        }
        for refused in [
            "",
            "{",
            "}",
            "[]",
            "null",
            r#"{"b":"1","a":"2"}"#, // out of order: the general path sorts
            r#"{"a":"1","a":"2"}"#, // repeated: the general path keeps the last
            r#"{ "a":"1"}"#,        // white space
            r#"{"a": "1"}"#,
            r#"{"a":"1",}"#,
            r#"{"a":"1"}x"#,
            r#"{"a":"1"}}"#,
            r#"{"a":"\"q"}"#, // an escape
            r#"{"a\u0041":"1"}"#,
            "{\"a\":\"tab\there\"}", // a raw control character
            r#"{"a":1}"#,            // not a string
            r#"{"a":"1""b":"2"}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":"1"#,
        ] {
            assert!(plain(refused).is_none(), "{refused}");
        }
    }
}
