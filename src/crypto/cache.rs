//! The data-key cache: unwrapped data keys kept for a while, so resolving a credential
//! does not call a remote KMS every time. Entries expire by age and by number of uses; the
//! cache holds at most a set number of keys, evicting the oldest first. Evicted keys are
//! zeroised (a [`DataKey`] wipes itself on drop).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::DataKey;

/// Limits of the data-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DekCacheConfig {
    /// A key is dropped this long after it was unwrapped.
    pub max_age: Duration,
    /// A key is dropped after this many uses.
    pub max_uses: u64,
    /// At most this many keys are held; the oldest goes first.
    pub max_entries: usize,
}

impl Default for DekCacheConfig {
    /// 5 minutes, 10,000 uses, 10,000 keys.
    fn default() -> Self {
        DekCacheConfig {
            max_age: Duration::from_secs(300),
            max_uses: 10_000,
            max_entries: 10_000,
        }
    }
}

/// Counters of the data-key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DekCacheStats {
    /// Opens served from the cache.
    pub hits: u64,
    /// Opens that had to unwrap (the key was absent, too old or used up).
    pub misses: u64,
    /// Keys dropped to make room, or for age or uses.
    pub evictions: u64,
    /// Keys held now.
    pub entries: usize,
}

struct Entry {
    dek: DataKey,
    born: Instant,
    uses: u64,
}

pub(crate) struct DekCache {
    config: DekCacheConfig,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<[u8; 32]>,
}

/// The cache key: the wrapping key's id, the wrap's associated data (header and record
/// identity) and the wrapped bytes, hashed. The same three always unwrap to the same key.
pub(crate) fn cache_key(key_id: &str, wrap_aad: &[u8], wrapped: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"strongroom/dek-cache/v1");
    for part in [key_id.as_bytes(), wrap_aad, wrapped] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl DekCache {
    pub(crate) fn new(config: DekCacheConfig) -> DekCache {
        DekCache {
            config,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The key for `k`, when held, young enough and not used up (counting this use).
    pub(crate) fn get(&self, k: &[u8; 32]) -> Option<DataKey> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match inner.map.get_mut(k) {
            Some(e) if e.born.elapsed() < self.config.max_age && e.uses < self.config.max_uses => {
                e.uses += 1;
                Some(e.dek.clone())
            }
            Some(_) => {
                inner.map.remove(k);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        match &fresh {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        fresh
    }

    pub(crate) fn put(&self, k: [u8; 32], dek: &DataKey) {
        if self.config.max_entries == 0 || self.config.max_uses == 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        if inner
            .map
            .insert(
                k,
                Entry {
                    dek: dek.clone(),
                    born: Instant::now(),
                    uses: 0,
                },
            )
            .is_none()
        {
            inner.order.push_back(k);
        }
        // Drop the oldest until within bounds; stale order entries (already removed
        // keys) are skipped.
        while inner.map.len() > self.config.max_entries {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if inner.map.remove(&old).is_some() {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if inner.order.len() > 2 * self.config.max_entries + 16 {
            let map = &inner.map;
            inner.order.retain(|k| map.contains_key(k));
        }
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = inner.map.len() as u64;
        inner.map.clear();
        inner.order.clear();
        self.evictions.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> DekCacheStats {
        let entries = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len();
        DekCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dek(b: u8) -> DataKey {
        DataKey::from_bytes([b; 32])
    }

    #[test]
    fn entries_expire_by_uses_age_and_count() {
        let cache = DekCache::new(DekCacheConfig {
            max_age: Duration::from_secs(60),
            max_uses: 2,
            max_entries: 2,
        });
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert!(cache.get(&a).is_none());
        cache.put(a, &dek(1));
        assert_eq!(cache.get(&a).map(|k| k.expose_secret()[0]), Some(1));
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&a).is_none(), "used up after two uses");
        cache.put(a, &dek(1));
        cache.put(b, &dek(2));
        cache.put(c, &dek(3));
        assert!(cache.get(&a).is_none(), "the oldest was evicted");
        assert!(cache.get(&b).is_some() && cache.get(&c).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.hits, s.misses), (2, 4, 3));
        assert!(s.evictions >= 2);

        let short = DekCache::new(DekCacheConfig {
            max_age: Duration::from_millis(1),
            ..DekCacheConfig::default()
        });
        short.put(a, &dek(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&a).is_none(), "too old");
    }
}
