//! Credential rows packed into one allocation for the point cache, and checked against the
//! lookup they answer when unpacked.
//!
//! A decoded [`CredentialRecord`] costs about 0.9 KB of heap (a dozen allocations and the
//! map entry around them); packed, the same row is one boxed slice of its bytes, a little
//! more than the sealed blob itself (about 0.35 KB for an API key). Unpacking costs a few
//! hundred nanoseconds, far less than the SQLite read it saves, so the cache can hold every
//! credential of a large vault.
//!
//! Layout (all integers little-endian): a tag byte, then for a row: flags (1: agent
//! accessible, 2: has an expiry), version (u64), created, updated (i64 ms), the expiry (i64,
//! when flagged), the scope kind and the state (one byte each, their index in `ALL`), then
//! owner, name, id, provider, handler type, key id and the metadata as JSON, each a u16 length
//! and its bytes, and the sealed blob as the rest. An absent entry (a lookup that found
//! nothing) keeps what was looked up, to be checked the same way.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::model::{CredentialId, CredentialRecord, LifecycleState, Scope, ScopeKind, Timestamp};

/// What a point read asked for. A lookup by name borrows the caller's scope and name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum PointKey<'a> {
    /// A credential by scope and name.
    Name(Cow<'a, Scope>, Cow<'a, str>),
    /// A credential by id.
    Id(CredentialId),
    /// The grants of a credential.
    Grants(CredentialId),
}

const ROW: u8 = 1;
const ABSENT_NAME: u8 = 2;
const ABSENT_ID: u8 = 3;

/// Packs a row; `None` when a field does not fit the layout (it is then not cached).
pub(super) fn pack_row(record: &CredentialRecord) -> Option<Box<[u8]>> {
    let metadata;
    let metadata_text = if record.metadata.is_empty() {
        "{}"
    } else {
        metadata = serde_json::to_string(&record.metadata).ok()?;
        metadata.as_str()
    };
    let owner = record.scope.owner();
    let strings = [
        owner.as_str(),
        record.name.as_str(),
        record.id.as_str(),
        record.provider.as_str(),
        record.handler_type.as_str(),
        record.key_id.as_str(),
        metadata_text,
    ];
    let size = 1
        + 1
        + 8
        + 8
        + 8
        + 8
        + 2
        + strings.iter().map(|s| 2 + s.len()).sum::<usize>()
        + record.sealed.len();
    let mut out = Vec::with_capacity(size);
    out.push(ROW);
    out.push(u8::from(record.agent_accessible) | if record.expires_at.is_some() { 2 } else { 0 });
    out.extend_from_slice(&record.version.to_le_bytes());
    out.extend_from_slice(&record.created_at.0.to_le_bytes());
    out.extend_from_slice(&record.updated_at.0.to_le_bytes());
    if let Some(at) = record.expires_at {
        out.extend_from_slice(&at.0.to_le_bytes());
    }
    let kind = record.scope.kind();
    out.push(ScopeKind::ALL.iter().position(|k| *k == kind)? as u8);
    out.push(
        LifecycleState::ALL
            .iter()
            .position(|s| *s == record.state)? as u8,
    );
    for text in strings {
        put_text(&mut out, text)?;
    }
    out.extend_from_slice(&record.sealed);
    Some(out.into_boxed_slice())
}

/// Packs "nothing there" for a name or id lookup (grants are not packed).
pub(super) fn pack_absent(key: &PointKey) -> Option<Box<[u8]>> {
    let mut out = Vec::new();
    match key {
        PointKey::Name(scope, name) => {
            let kind = scope.kind();
            out.push(ABSENT_NAME);
            out.push(ScopeKind::ALL.iter().position(|k| *k == kind)? as u8);
            put_text(&mut out, &scope.owner_text())?;
            put_text(&mut out, name)?;
        }
        PointKey::Id(id) => {
            out.push(ABSENT_ID);
            put_text(&mut out, id.as_str())?;
        }
        PointKey::Grants(_) => return None,
    }
    Some(out.into_boxed_slice())
}

/// Whether `scope` is the one of kind `kind` whose owner is stored as `owner`, without
/// building the owner text.
fn is_scope(scope: &Scope, kind: ScopeKind, owner: &str) -> bool {
    if scope.kind() != kind {
        return false;
    }
    match scope {
        Scope::PerAppPerUser { app, user } => {
            owner.len() == app.len() + 1 + user.len()
                && owner.starts_with(app.as_str())
                && owner.as_bytes()[app.len()] == b'/'
                && owner.ends_with(user.as_str())
        }
        other => other.owner_text() == owner,
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(text.len()).ok()?.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Some(())
}

/// What a packed entry says about `key`: `Some(Some(row))`, `Some(None)` for "nothing
/// there", or `None` when the entry answers another lookup (two keys with one hash) or does
/// not unpack — a miss either way.
pub(super) fn unpack(bytes: &[u8], key: &PointKey) -> Option<Option<CredentialRecord>> {
    let mut r = Reader(bytes);
    match r.byte()? {
        ROW => {}
        ABSENT_NAME => {
            let kind = *ScopeKind::ALL.get(usize::from(r.byte()?))?;
            let (owner, name) = (r.text()?, r.text()?);
            let same = matches!(key, PointKey::Name(s, n) if n == name && is_scope(s, kind, owner));
            return same.then_some(None);
        }
        ABSENT_ID => {
            let id = r.text()?;
            return matches!(key, PointKey::Id(k) if k.as_str() == id).then_some(None);
        }
        _ => return None,
    }
    let flags = r.byte()?;
    let version = u64::from_le_bytes(r.array()?);
    let created_at = Timestamp(i64::from_le_bytes(r.array()?));
    let updated_at = Timestamp(i64::from_le_bytes(r.array()?));
    let expires_at = if flags & 2 != 0 {
        Some(Timestamp(i64::from_le_bytes(r.array()?)))
    } else {
        None
    };
    let kind = *ScopeKind::ALL.get(usize::from(r.byte()?))?;
    let state = *LifecycleState::ALL.get(usize::from(r.byte()?))?;
    let owner = r.text()?;
    let name = r.text()?;
    let id = r.text()?;
    let answers = match key {
        PointKey::Name(s, n) => n == name && is_scope(s, kind, owner),
        PointKey::Id(k) => k.as_str() == id,
        PointKey::Grants(_) => false,
    };
    if !answers {
        return None;
    }
    let (provider, handler_type, key_id, metadata) = (r.text()?, r.text()?, r.text()?, r.text()?);
    let metadata: BTreeMap<String, String> = if metadata == "{}" {
        BTreeMap::new()
    } else {
        serde_json::from_str(metadata).ok()?
    };
    let scope = match key {
        // The lookup's own scope, checked equal above: no parse of the stored form.
        PointKey::Name(scope, _) => scope.clone().into_owned(),
        _ => Scope::from_parts(kind, owner).ok()?,
    };
    Some(Some(CredentialRecord {
        id: CredentialId::new(id).ok()?,
        name: name.to_string(),
        scope,
        provider: provider.to_string(),
        handler_type: handler_type.to_string(),
        state,
        metadata,
        agent_accessible: flags & 1 != 0,
        version,
        created_at,
        updated_at,
        expires_at,
        key_id: key_id.to_string(),
        sealed: r.0.to_vec(),
    }))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn text(&mut self) -> Option<&'a str> {
        let len = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scope: Scope, metadata: &[(&str, &str)], expires: Option<i64>) -> CredentialRecord {
        CredentialRecord {
            id: CredentialId::generate(),
            name: "openai_main".into(),
            scope,
            provider: "openai".into(),
            handler_type: "api_key".into(),
            state: LifecycleState::Expired,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            agent_accessible: true,
            version: 7,
            created_at: Timestamp(-5),
            updated_at: Timestamp(1_764_000_000_000),
            expires_at: expires.map(Timestamp),
            key_id: "local:abc".into(),
            sealed: vec![0, 1, 2, 255, 254],
        }
    }

    fn name_key(r: &CredentialRecord) -> PointKey<'_> {
        PointKey::Name(Cow::Borrowed(&r.scope), Cow::Borrowed(&r.name))
    }

    fn owned_name(scope: Scope, name: &str) -> PointKey<'static> {
        PointKey::Name(Cow::Owned(scope), Cow::Owned(name.to_string()))
    }

    #[test]
    fn a_row_unpacks_to_itself_for_its_name_and_its_id() {
        for r in [
            record(
                Scope::per_app_per_user("crm", "u1").expect("scope"),
                &[],
                None,
            ),
            record(Scope::SystemWide, &[("label", "a \"quoted\" é")], Some(-1)),
            record(
                Scope::per_user("bob").expect("scope"),
                &[("x", "")],
                Some(9),
            ),
        ] {
            let packed = pack_row(&r).expect("packs");
            assert_eq!(unpack(&packed, &name_key(&r)), Some(Some(r.clone())));
            assert_eq!(
                unpack(&packed, &PointKey::Id(r.id.clone())),
                Some(Some(r.clone()))
            );
        }
    }

    #[test]
    fn an_entry_never_answers_another_lookup() {
        let r = record(
            Scope::per_app_per_user("crm", "u1").expect("scope"),
            &[],
            None,
        );
        let packed = pack_row(&r).expect("packs");
        let others = [
            owned_name(
                Scope::per_app_per_user("crm", "u2").expect("scope"),
                &r.name,
            ),
            owned_name(Scope::per_app_per_user("crm", "u").expect("scope"), &r.name),
            owned_name(Scope::per_app_per_user("cr", "u1").expect("scope"), &r.name),
            owned_name(Scope::per_app_shared("crm").expect("scope"), &r.name),
            owned_name(Scope::per_user("u1").expect("scope"), &r.name),
            owned_name(r.scope.clone(), "other"),
            PointKey::Id(CredentialId::generate()),
            PointKey::Grants(r.id.clone()),
        ];
        for other in &others {
            assert_eq!(unpack(&packed, other), None, "{:?}", other_name(other));
        }
        let absent = pack_absent(&name_key(&r)).expect("packs");
        assert_eq!(unpack(&absent, &name_key(&r)), Some(None));
        for other in &others {
            assert_eq!(unpack(&absent, other), None);
        }
        let absent = pack_absent(&PointKey::Id(r.id.clone())).expect("packs");
        assert_eq!(unpack(&absent, &PointKey::Id(r.id.clone())), Some(None));
        assert_eq!(unpack(&absent, &name_key(&r)), None);
        assert!(pack_absent(&PointKey::Grants(r.id.clone())).is_none());
    }

    #[test]
    fn a_truncated_or_unknown_entry_is_a_miss() {
        let r = record(Scope::SystemWide, &[("k", "v")], Some(3));
        let packed = pack_row(&r).expect("packs");
        let key = name_key(&r);
        // Cut anywhere before the sealed blob: never a panic, never a wrong row.
        let sealed_at = packed.len() - r.sealed.len();
        for cut in 0..sealed_at {
            assert_eq!(unpack(&packed[..cut], &key), None, "cut at {cut}");
        }
        let mut unknown = packed.to_vec();
        unknown[0] = 9;
        assert_eq!(unpack(&unknown, &key), None);
    }

    fn other_name(key: &PointKey) -> String {
        match key {
            PointKey::Name(s, n) => format!("name {s} {n}"),
            PointKey::Id(id) => format!("id {id}"),
            PointKey::Grants(id) => format!("grants {id}"),
        }
    }
}
