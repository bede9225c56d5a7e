//! The key ring: the active master key and retired ones, by id. Seals with the active key,
//! opens with whichever key a blob names, and re-wraps data keys onto the active key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use secrecy::SecretBox;

use super::cache::{cache_key, DekCache};
use super::envelope::{self, Binding, Sealed};
use super::{DekCacheConfig, DekCacheStats, KeyWrapper};
use crate::error::{Error, Result};
use crate::model::{RecordAad, RecordIdentity};

/// The active master key plus older ones still named by stored blobs, and an optional
/// cache of unwrapped data keys (see [`KeyRing::with_dek_cache`]).
#[derive(Clone)]
pub struct KeyRing {
    active: Arc<dyn KeyWrapper>,
    keys: HashMap<String, Arc<dyn KeyWrapper>>,
    cache: Option<Arc<DekCache>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing")
            .field("active", &self.active.key_id())
            .field("keys", &ids)
            .finish()
    }
}

impl KeyRing {
    /// A ring whose only (and active) key is `active`.
    pub fn new(active: Arc<dyn KeyWrapper>) -> KeyRing {
        let mut keys = HashMap::new();
        keys.insert(active.key_id().to_string(), active.clone());
        KeyRing {
            active,
            keys,
            cache: None,
        }
    }

    /// Keeps unwrapped data keys in memory within `config`'s limits, so opening a blob
    /// whose key was unwrapped (or sealed) recently does not call the master-key backend.
    /// Worth it for remote backends (a KMS round trip per resolve otherwise).
    pub fn with_dek_cache(mut self, config: DekCacheConfig) -> KeyRing {
        self.cache = Some(Arc::new(DekCache::new(config)));
        self
    }

    /// The cache's counters, when there is a cache.
    pub fn dek_cache_stats(&self) -> Option<DekCacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Drops every cached data key (zeroising it).
    pub fn clear_dek_cache(&self) {
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// Adds a retired key that can still open (and be re-wrapped away from) old blobs.
    pub fn with_retired(mut self, key: Arc<dyn KeyWrapper>) -> KeyRing {
        self.keys.entry(key.key_id().to_string()).or_insert(key);
        self
    }

    /// The key new blobs are sealed with.
    pub fn active(&self) -> &Arc<dyn KeyWrapper> {
        &self.active
    }

    /// The key with this id, if the ring holds it.
    pub fn key(&self, key_id: &str) -> Option<&Arc<dyn KeyWrapper>> {
        self.keys.get(key_id)
    }

    /// Ids of every key in the ring, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Seals `plaintext` for the record `id` under the active key, with a fresh data key.
    pub async fn seal(&self, plaintext: &[u8], id: &RecordIdentity<'_>) -> Result<Sealed> {
        self.seal_bound(plaintext, id).await
    }

    /// Opens a blob sealed for the record `id`, with whichever key of the ring it names.
    /// Any tampering, a blob from another record, or a wrong key fails with a typed error
    /// and yields no plaintext.
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
    /// record or version, a credential blob, or a wrong key fails and yields nothing.
    pub async fn open_record(&self, blob: &[u8], aad: &RecordAad<'_>) -> Result<SecretBox<[u8]>> {
        self.open_bound(blob, aad).await
    }

    async fn seal_bound(&self, plaintext: &[u8], id: &dyn Binding) -> Result<Sealed> {
        let Some(cache) = &self.cache else {
            return envelope::seal_keeping_key(self.active.as_ref(), plaintext, id)
                .await
                .map(|(sealed, _)| sealed);
        };
        let (sealed, dek) = envelope::seal_keeping_key(self.active.as_ref(), plaintext, id).await?;
        // The record is usually read soon after it is written: keep its key.
        if let Ok(parsed) = envelope::parse(&sealed.bytes, &|| id.describe()) {
            let aad = id.wrap_aad(parsed.header3());
            cache.put(cache_key(parsed.key_id, &aad, parsed.wrapped_key), &dek);
        }
        Ok(sealed)
    }

    async fn open_bound(&self, blob: &[u8], id: &dyn Binding) -> Result<SecretBox<[u8]>> {
        let parsed = envelope::parse(blob, &|| id.describe())?;
        let wrapper = self.lookup(parsed.key_id, id)?;
        let Some(cache) = &self.cache else {
            let dek = envelope::unwrap_key(wrapper.as_ref(), &parsed, id).await?;
            return envelope::decrypt_payload(&dek, &parsed, id);
        };
        let aad = id.wrap_aad(parsed.header3());
        let k = cache_key(parsed.key_id, &aad, parsed.wrapped_key);
        if let Some(dek) = cache.get(&k) {
            // The commitment and the payload's tag are still checked with the cached key.
            if let Ok(plain) = envelope::check_and_decrypt(&dek, &parsed, id) {
                return Ok(plain);
            }
        }
        let dek = envelope::unwrap_key(wrapper.as_ref(), &parsed, id).await?;
        let plain = envelope::decrypt_payload(&dek, &parsed, id)?;
        cache.put(k, &dek);
        Ok(plain)
    }

    fn lookup(&self, key_id: &str, id: &dyn Binding) -> Result<&Arc<dyn KeyWrapper>> {
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

    /// Re-wraps one blob's data key under the active key without touching its payload.
    /// Returns `None` when it is already wrapped by the active key.
    pub async fn rewrap_blob(
        &self,
        blob: &[u8],
        id: &RecordIdentity<'_>,
    ) -> Result<Option<Sealed>> {
        let parsed = envelope::parse(blob, &|| id.describe())?;
        if parsed.key_id == self.active.key_id() {
            return Ok(None);
        }
        let old = self.lookup(parsed.key_id, id)?;
        let dek = envelope::unwrap_key(old.as_ref(), &parsed, id).await?;
        let backend = self.active.backend_id();
        let header3 = [parsed.version, parsed.flags, backend.to_byte()];
        let wrapped = self
            .active
            .wrap(&dek, &envelope::wrap_aad(header3, id))
            .await?;
        let key_id = self.active.key_id();
        let bytes = envelope::rebuild_with_wrapped(&parsed, backend, key_id, &wrapped)?;
        Ok(Some(Sealed {
            bytes,
            key_id: key_id.to_string(),
        }))
    }
}
