//! The key ring: the active master key and retired ones, by id. Seals with the active key,
//! opens with whichever key a blob names, and re-wraps data keys onto the active key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use secrecy::SecretBox;
use subtle::ConstantTimeEq;

use super::cache::DekCache;
use super::envelope::{self, Binding, Sealed};
use super::{BackendId, DekCacheConfig, DekCacheStats, KeyWrapper};
use crate::error::{Error, Result};
use crate::model::{RecordAad, RecordIdentity};

/// The active master key plus older ones still named by stored blobs, and an optional
/// cache of unwrapped data keys (see [`KeyRing::with_dek_cache`]).
///
/// Every key is held under its id and, for a local key, also under the id format 1 gave it
/// ([`KeyWrapper::legacy_alias`]), so version-1 blobs keep opening. Two different keys never
/// share an id: [`KeyRing::try_with_retired`] refuses the second, and
/// [`KeyRing::with_retired`] makes the id unusable rather than pick one of them.
#[derive(Clone)]
pub struct KeyRing {
    active: Arc<dyn KeyWrapper>,
    keys: HashMap<String, Arc<dyn KeyWrapper>>,
    /// Ids claimed by two different keys (through [`KeyRing::with_retired`]): every blob that
    /// names one fails with [`Error::KeyUnavailable`].
    conflicts: HashSet<String>,
    cache: Option<Arc<DekCache>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active.key_id())
            .field("keys", &self.key_ids())
            .field("conflicts", &self.conflicts)
            .finish()
    }
}

/// Are `a` and `b`, which report the same id, the same key? The same object; two keys whose
/// fingerprints (of the key material) are equal; or two remote keys of one backend family,
/// whose id is the service's own full name for the key.
fn same_key(a: &Arc<dyn KeyWrapper>, b: &Arc<dyn KeyWrapper>) -> bool {
    if Arc::ptr_eq(a, b) {
        return true;
    }
    if a.backend_id() != b.backend_id() {
        return false;
    }
    match (a.fingerprint(), b.fingerprint()) {
        (Some(x), Some(y)) => bool::from(x.ct_eq(&y)),
        (None, None) => a.backend_id() != BackendId::Local,
        _ => false,
    }
}

impl KeyRing {
    /// A ring whose only (and active) key is `active` (also held under its format-1 id,
    /// when it has one).
    pub fn new(active: Arc<dyn KeyWrapper>) -> KeyRing {
        let mut ring = KeyRing {
            active: active.clone(),
            keys: HashMap::new(),
            conflicts: HashSet::new(),
            cache: None,
        };
        ring.keys
            .insert(active.key_id().to_string(), active.clone());
        if let Some(alias) = active.legacy_alias() {
            ring.keys.entry(alias.key_id().to_string()).or_insert(alias);
        }
        ring
    }

    /// Keeps unwrapped data keys in memory within `config`'s limits, so opening a blob
    /// whose key was unwrapped (or sealed) recently does not call the master-key backend.
    /// Worth it for remote backends (a KMS round trip per resolve otherwise). A cached key
    /// outlives a revocation of its master key by up to [`DekCacheConfig::max_age`]: see
    /// there.
    pub fn with_dek_cache(mut self, config: DekCacheConfig) -> KeyRing {
        self.cache = Some(Arc::new(DekCache::new(config)));
        self
    }

    /// The cache's counters, when there is a cache.
    pub fn dek_cache_stats(&self) -> Option<DekCacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Drops every cached data key (zeroising it): call it when a master key is revoked, so
    /// cached keys stop opening blobs at once.
    pub fn clear_dek_cache(&self) {
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// Drops the cached data keys of every blob wrapped by the master key `key_id`
    /// (zeroising them) and returns how many: call it when that one key is revoked or
    /// retired, so its blobs stop opening from the cache at once while the other keys'
    /// stay cached. The ring keeps the key itself: a blob it wraps still opens by
    /// unwrapping, until the ring is rebuilt without it.
    pub fn clear_dek_cache_for(&self, key_id: &str) -> usize {
        let Some(cache) = &self.cache else {
            return 0;
        };
        cache.remove_where(|section| envelope::section_key_id(section) == Some(key_id))
    }

    /// Adds a retired key that can still open (and be re-wrapped away from) old blobs,
    /// under its id and its format-1 id. A second copy of a key the ring holds is dropped.
    /// A *different* key whose id the ring already holds (a forged or colliding id) is
    /// refused: rather than keep one of the two silently, the ring stops using that id
    /// (every blob naming it fails with [`Error::KeyUnavailable`] saying why). Prefer
    /// [`KeyRing::try_with_retired`], which returns the refusal at once.
    pub fn with_retired(self, key: Arc<dyn KeyWrapper>) -> KeyRing {
        let (mut ring, refused) = self.add(key);
        for id in refused {
            tracing::error!(
                key_id = %id,
                "two different master keys claim one key id; the key ring will not use it"
            );
            ring.keys.remove(&id);
            ring.conflicts.insert(id);
        }
        ring
    }

    /// [`KeyRing::with_retired`], refusing (with a configuration error naming the id) a key
    /// that differs from one the ring holds under the same id.
    pub fn try_with_retired(self, key: Arc<dyn KeyWrapper>) -> Result<KeyRing> {
        let (ring, refused) = self.add(key);
        match refused.first() {
            None => Ok(ring),
            Some(id) => Err(Error::config(format!(
                "two different master keys claim the key id `{id}`; a key ring holds one key per \
                 id (check the retired keys given: one of them is not the key it claims to be)"
            ))),
        }
    }

    /// Adds `key` and its alias; returns the ids refused because another key holds them.
    fn add(mut self, key: Arc<dyn KeyWrapper>) -> (KeyRing, Vec<String>) {
        let mut refused = Vec::new();
        let alias = key.legacy_alias();
        for k in std::iter::once(key).chain(alias) {
            let id = k.key_id().to_string();
            if self.conflicts.contains(&id) {
                continue;
            }
            match self.keys.get(&id) {
                None => {
                    self.keys.insert(id, k);
                }
                Some(held) if same_key(held, &k) => {}
                Some(_) => refused.push(id),
            }
        }
        (self, refused)
    }

    /// The key new blobs are sealed with.
    pub fn active(&self) -> &Arc<dyn KeyWrapper> {
        &self.active
    }

    /// The key with this id, if the ring holds it (a format-1 id gives the key's format-1
    /// alias; an id two keys claimed gives `None`).
    pub fn key(&self, key_id: &str) -> Option<&Arc<dyn KeyWrapper>> {
        self.keys.get(key_id)
    }

    /// Ids of every key in the ring (format-1 aliases included), sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Seals `plaintext` for the record `id` under the active key, with a fresh data key
    /// (format 2: the namespace and bound fields of `id` are bound too).
    pub async fn seal(&self, plaintext: &[u8], id: &RecordIdentity<'_>) -> Result<Sealed> {
        self.seal_bound(plaintext, id).await
    }

    /// Opens a blob (format 1 or 2) sealed for the record `id`, with whichever key of the
    /// ring it names. Any tampering, a blob from another record or namespace, a changed
    /// bound field, or a wrong key fails with a typed error and yields no plaintext.
    pub async fn open(&self, blob: &[u8], id: &RecordIdentity<'_>) -> Result<SecretBox<[u8]>> {
        self.open_bound(blob, id).await
    }

    /// Seals a record's secret body for the record version `aad` (its own associated-data
    /// domain, `docs/FORMAT.md` "Record bodies"), as [`KeyRing::seal`] seals a credential's
    /// fields. Store the result in [`crate::Record::sealed`] of that version.
    pub async fn seal_record(&self, plaintext: &[u8], aad: &RecordAad<'_>) -> Result<Sealed> {
        self.seal_bound(plaintext, aad).await
    }

    /// Opens a record's sealed body for the record version `aad`. A body moved to another
    /// record, version or namespace, a credential blob, or a wrong key fails and yields
    /// nothing.
    pub async fn open_record(&self, blob: &[u8], aad: &RecordAad<'_>) -> Result<SecretBox<[u8]>> {
        self.open_bound(blob, aad).await
    }

    async fn seal_bound(&self, plaintext: &[u8], id: &dyn Binding) -> Result<Sealed> {
        if let Some(reason) = self.conflict(self.active.key_id()) {
            return Err(reason);
        }
        let (sealed, prepared) =
            envelope::seal_keeping_key(self.active.as_ref(), plaintext, id, self.cache.is_some())
                .await?;
        // The record is usually read soon after it is written: keep its payload key, made
        // ready by the seal itself.
        if let (Some(cache), Some(prepared)) = (&self.cache, prepared) {
            if let Ok(parsed) = envelope::parse(&sealed.bytes, &|| id.describe()) {
                let section = envelope::key_section(&sealed.bytes, &parsed);
                let context = id.cache_context(parsed.version, parsed.flags);
                cache.put(section, &context, Arc::new(prepared));
            }
        }
        Ok(sealed)
    }

    async fn open_bound(&self, blob: &[u8], id: &dyn Binding) -> Result<SecretBox<[u8]>> {
        let parsed = envelope::parse(blob, &|| id.describe())?;
        let wrapper = self.lookup(parsed.key_id, id)?;
        let Some(cache) = &self.cache else {
            let dek = envelope::unwrap_key(wrapper.as_ref(), &parsed, id).await?;
            return envelope::open_with_key(&dek, &parsed, id);
        };
        // The cache is keyed by the blob's bytes before its ciphertext and checked against
        // this open's identity, by the exact bytes that determine the payload's associated
        // data (`Binding::cache_context`): a hit is the key an earlier open of this very
        // blob, under this very identity, unwrapped and checked, with the associated data it
        // was made for.
        let section = envelope::key_section(blob, &parsed);
        // The commitment and the payload's tag are still checked.
        let hit = cache.with_matching(
            section,
            |held| id.cache_context_is(parsed.version, parsed.flags, held),
            |prepared| envelope::open_prepared(prepared, &parsed, id),
        );
        if let Some(Ok(plain)) = hit {
            return Ok(plain);
        }
        let dek = envelope::unwrap_key(wrapper.as_ref(), &parsed, id).await?;
        let aad = id.data_aad(parsed.version, parsed.flags);
        let prepared = envelope::prepare(&dek, &parsed, id, aad)?;
        let plain = envelope::open_prepared(&prepared, &parsed, id)?;
        let context = id.cache_context(parsed.version, parsed.flags);
        cache.put(section, &context, Arc::new(prepared));
        Ok(plain)
    }

    /// Why the ring will not use `key_id`, when two keys claimed it.
    fn conflict(&self, key_id: &str) -> Option<Error> {
        self.conflicts
            .contains(key_id)
            .then(|| Error::KeyUnavailable {
                key_id: key_id.to_string(),
                reason: "two different master keys were given under this id, so the key ring uses \
                     neither; remove the one that is not the key it claims to be"
                    .into(),
            })
    }

    fn lookup(&self, key_id: &str, id: &dyn Binding) -> Result<&Arc<dyn KeyWrapper>> {
        if let Some(reason) = self.conflict(key_id) {
            return Err(reason);
        }
        // Most blobs name the active key, which the ring always holds under its id (unless
        // two keys claimed it: a conflict, refused above). Skips hashing the id.
        if key_id == self.active.key_id() {
            return Ok(&self.active);
        }
        self.keys.get(key_id).ok_or_else(|| Error::KeyUnavailable {
            key_id: key_id.to_string(),
            reason: format!(
                "{} is wrapped by a master key this key ring does not hold; add that key as a \
                 retired key (the ring holds {})",
                id.describe(),
                self.key_ids().join(", ")
            ),
        })
    }

    /// Re-wraps one blob's data key under the active key without touching its payload (its
    /// format version stays: a version-1 blob stays version 1, under the active key's
    /// current id and wrap). Returns `None` when it is already wrapped by the active key.
    /// The data key is checked against the blob's commitment first, so a data key that is
    /// not the blob's (a tampered or swapped wrap) is never re-wrapped. The payload is not
    /// decrypted: a blob whose ciphertext was altered is re-wrapped and still fails to open
    /// (`Vault::check_blobs` finds those).
    pub async fn rewrap_blob(
        &self,
        blob: &[u8],
        id: &RecordIdentity<'_>,
    ) -> Result<Option<Sealed>> {
        let parsed = envelope::parse(blob, &|| id.describe())?;
        if parsed.key_id == self.active.key_id() {
            return Ok(None);
        }
        if let Some(reason) = self.conflict(self.active.key_id()) {
            return Err(reason);
        }
        let old = self.lookup(parsed.key_id, id)?;
        let dek = envelope::unwrap_key(old.as_ref(), &parsed, id).await?;
        let data_aad = envelope::data_aad(parsed.version, parsed.flags, id);
        envelope::checked_payload_key(&dek, &parsed, id, &data_aad)?;
        let backend = self.active.backend_id();
        let header3 = [parsed.version, parsed.flags, backend.to_byte()];
        let wrapped = self
            .active
            .wrap(&dek, &envelope::wrap_aad(header3, id))
            .await?;
        let key_id = self.active.key_id();
        let bytes = envelope::rebuild_with_wrapped(&parsed, backend, key_id, &wrapped)?;
        // The payload key is the same (same data key, nonce and associated data): move a
        // cached one to the re-wrapped blob, so the old blob, which names the retired key,
        // no longer opens from the cache and the new one does not need an unwrap.
        if let Some(cache) = &self.cache {
            let old_section = envelope::key_section(blob, &parsed);
            let context = id.cache_context(parsed.version, parsed.flags);
            if let Some(prepared) = cache.take(old_section, &context) {
                if let Ok(new_parsed) = envelope::parse(&bytes, &|| id.describe()) {
                    cache.put(
                        envelope::key_section(&bytes, &new_parsed),
                        &context,
                        prepared,
                    );
                }
            }
        }
        Ok(Some(Sealed {
            bytes,
            key_id: key_id.to_string(),
        }))
    }
}
