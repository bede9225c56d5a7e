//! The data-key cache: the payload keys of opened blobs kept for a while (their data keys
//! unwrapped and their payload keys derived, the AES key schedule built), so resolving a
//! credential neither calls a remote KMS nor derives keys every time. Entries expire by age
//! and by number of uses (the expired ones are dropped on every get and put); the cache
//! holds at most a set number of keys, evicting the oldest first. Evicted keys are zeroised
//! (the key schedules wipe themselves on drop), and every key sits behind a pointer of its
//! own that never moves, so the map's growth leaves no copy of a key behind in freed memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::envelope::PreparedPayload;

/// Limits of the data-key cache.
///
/// **Revocation.** A cached key keeps opening its blobs without asking the master-key
/// backend, so after a KMS key is disabled, revoked or its grant withdrawn, the records whose
/// data keys are cached stay readable by this process for up to `max_age` after each key
/// was unwrapped (or sealed) — 5 minutes by default — or until it has served `max_uses`
/// opens, whichever comes first. New unwraps fail at once. To cut that window to zero, call
/// [`crate::KeyRing::clear_dek_cache`] when you revoke a key, or run without a cache
/// (`VaultBuilder::no_dek_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DekCacheConfig {
    /// A key is dropped this long after it was unwrapped: also the longest a cached key
    /// outlives a revoked master key.
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

struct Entry<V> {
    /// The payload's associated data the value was made for: a lookup with any other is a
    /// miss, so a blob copied under another identity never reaches a cached key.
    context: Box<[u8]>,
    /// Kept behind a pointer by the caller (`Arc`), so that the map's growth moves
    /// pointers, never key bytes.
    value: V,
    born: Instant,
    /// Counted under the read lock.
    uses: AtomicU64,
}

/// The data-key cache. Keyed by the exact bytes of a blob before its ciphertext (header,
/// wrapped-key section, nonce, commitment: see [`crate::crypto::envelope::key_section`]) and
/// checked against the payload's associated data, it holds what opening that blob needs:
/// its payload key with the AES key schedule built, so a cached open neither unwraps nor
/// derives.
pub(crate) struct DekCache<V = Arc<PreparedPayload>> {
    config: DekCacheConfig,
    /// Lookups share the lock; puts, evictions and expiry take it alone.
    inner: Padded<RwLock<Inner<V>>>,
    /// When the cache was made: times below are nanoseconds since.
    epoch: Instant,
    /// The birth of the oldest entry `order` may still hold (`u64::MAX` when empty), so a
    /// lookup knows without the write lock whether anything may have expired.
    oldest: Padded<AtomicU64>,
    hits: Striped,
    misses: Striped,
    evictions: AtomicU64,
}

/// Entries the map and queue are sized for up front (more than this and they grow; the
/// keys themselves sit behind pointers, so growth moves pointers, never key bytes).
const PREALLOCATED: usize = 1 << 16;

/// Hashes a cache key by its last eight bytes: the end of a blob's commitment, an HMAC (or
/// SHA-256) output that is uniform for every entry the cache holds (only blobs that opened
/// are put), so hashing the rest of the key, as SipHash would, buys nothing. Equality is
/// still decided on the whole key.
#[derive(Default, Clone, Copy)]
struct TailHash;

#[derive(Default)]
struct TailHasher(u64);

impl std::hash::BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(0)
    }
}

impl std::hash::Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
        self.0 ^= u64::from_le_bytes(tail);
    }
    fn write_usize(&mut self, n: usize) {
        // The length prefix of a slice: mixed in so keys of other lengths spread too.
        self.0 ^= (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A value on cache lines of its own, so that writes to its neighbours (the lock word, the
/// counters) by another core do not evict it from this one's cache.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A counter that every thread adds to without contending: one padded cell per stripe,
/// summed when read.
#[derive(Default)]
struct Striped([Padded<AtomicU64>; STRIPES]);

const STRIPES: usize = 8;

impl Default for Padded<AtomicU64> {
    fn default() -> Self {
        Padded(AtomicU64::new(0))
    }
}

impl Striped {
    fn add_one(&self) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
            };
        }
        let stripe = STRIPE.with(|s| *s);
        self.0[stripe].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

struct Inner<V> {
    map: HashMap<Arc<[u8]>, Entry<V>, TailHash>,
    /// Cache keys in the order their entries were born (oldest first), with that birth
    /// time: an element whose entry was replaced or dropped since is stale and skipped.
    order: VecDeque<(Arc<[u8]>, Instant)>,
}

impl<V: Clone> DekCache<V> {
    pub(crate) fn new(config: DekCacheConfig) -> DekCache<V> {
        let room = config.max_entries.min(PREALLOCATED);
        DekCache {
            config,
            inner: Padded(RwLock::new(Inner {
                map: HashMap::with_capacity_and_hasher(room, TailHash),
                order: VecDeque::with_capacity(room),
            })),
            epoch: Instant::now(),
            oldest: Padded(AtomicU64::new(u64::MAX)),
            hits: Striped::default(),
            misses: Striped::default(),
            evictions: AtomicU64::new(0),
        }
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the birth of the front of `order` (called with the write lock held, after
    /// `order` changed).
    fn note_oldest(&self, inner: &Inner<V>) {
        let oldest = inner
            .order
            .front()
            .map_or(u64::MAX, |(_, born)| self.since_epoch(*born));
        self.oldest.store(oldest, Ordering::Relaxed);
    }

    /// Whether an entry may have passed `max_age` by `now` (without taking the lock).
    fn expiry_due(&self, now: Instant) -> bool {
        let oldest = self.oldest.load(Ordering::Relaxed);
        let max_age = u64::try_from(self.config.max_age.as_nanos()).unwrap_or(u64::MAX);
        oldest != u64::MAX && self.since_epoch(now) >= oldest.saturating_add(max_age)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<V>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every entry older than `max_age` (they sit at the front of `order`).
    fn drop_expired(&self, inner: &mut Inner<V>, now: Instant) {
        while let Some(born) = inner.order.front().map(|(_, born)| *born) {
            if now.saturating_duration_since(born) < self.config.max_age {
                break;
            }
            let Some((k, _)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&*k).is_some_and(|e| e.born == born) {
                inner.map.remove(&*k);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.note_oldest(inner);
    }

    /// The value for `key` made for `context`, when held, young enough and not used up
    /// (counting this use). Held for another context, it is a miss and stays. Expired
    /// entries (of any key) are dropped first.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8], context: &[u8]) -> Option<V> {
        self.with(key, context, |value| value.clone())
    }

    /// `f` of the value for `key` made for `context` (see [`DekCache::get`]), called under
    /// the shared lock so the value is neither cloned nor counted twice.
    #[cfg(test)]
    pub(crate) fn with<R>(&self, key: &[u8], context: &[u8], f: impl FnOnce(&V) -> R) -> Option<R> {
        self.with_matching(key, |held| held == context, f)
    }

    /// [`DekCache::with`], the entry's context checked by `matches` (given the context the
    /// entry was made for) instead of compared with bytes the caller built: an entry whose
    /// context it refuses is a miss and stays.
    pub(crate) fn with_matching<R>(
        &self,
        key: &[u8],
        matches: impl FnOnce(&[u8]) -> bool,
        f: impl FnOnce(&V) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        if self.expiry_due(now) {
            let mut inner = self.write();
            self.drop_expired(&mut inner, now);
        }
        let (fresh, used_up) = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            match inner.map.get(key) {
                Some(e) if !matches(&e.context) => (None, false),
                Some(e) => {
                    if e.uses.fetch_add(1, Ordering::Relaxed) < self.config.max_uses {
                        (Some(f(&e.value)), false)
                    } else {
                        (None, true)
                    }
                }
                None => (None, false),
            }
        };
        if used_up {
            let mut inner = self.write();
            let max_uses = self.config.max_uses;
            if inner
                .map
                .get(key)
                .is_some_and(|e| e.uses.load(Ordering::Relaxed) >= max_uses)
            {
                inner.map.remove(key);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        match &fresh {
            Some(_) => self.hits.add_one(),
            None => self.misses.add_one(),
        }
        fresh
    }

    /// Holds `value` for `key` and `context` (replacing what was held for `key`).
    pub(crate) fn put(&self, key: &[u8], context: &[u8], value: V) {
        if self.config.max_entries == 0 || self.config.max_uses == 0 {
            return;
        }
        let now = Instant::now();
        let key: Arc<[u8]> = Arc::from(key);
        let mut inner = self.write();
        let inner = &mut *inner;
        self.drop_expired(inner, now);
        inner.map.insert(
            key.clone(),
            Entry {
                context: context.into(),
                value,
                born: now,
                uses: AtomicU64::new(0),
            },
        );
        inner.order.push_back((key, now));
        // Drop the oldest until within bounds; stale order entries (replaced or already
        // removed keys) are skipped.
        while inner.map.len() > self.config.max_entries {
            let Some((old, born)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&*old).is_some_and(|e| e.born == born) {
                inner.map.remove(&*old);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        if inner.order.len() > 2 * self.config.max_entries + 16 {
            let map = &inner.map;
            inner
                .order
                .retain(|(k, born)| map.get(&**k).is_some_and(|e| e.born == *born));
        }
        self.note_oldest(inner);
    }

    /// Removes and returns the value for `key` when it was made for `context` (an entry
    /// for another context stays).
    pub(crate) fn take(&self, key: &[u8], context: &[u8]) -> Option<V> {
        let mut inner = self.write();
        if inner.map.get(key).is_some_and(|e| *e.context == *context) {
            // Its `order` element is now stale and skipped when reached.
            return inner.map.remove(key).map(|e| e.value);
        }
        None
    }

    /// Drops every entry whose cache key `doomed` picks; returns how many.
    pub(crate) fn remove_where(&self, doomed: impl Fn(&[u8]) -> bool) -> usize {
        let mut guard = self.write();
        let inner = &mut *guard;
        let before = inner.map.len();
        inner.map.retain(|k, _| !doomed(k));
        let removed = before - inner.map.len();
        let map = &inner.map;
        inner
            .order
            .retain(|(k, born)| map.get(&**k).is_some_and(|e| e.born == *born));
        self.note_oldest(inner);
        self.evictions.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.write();
        let n = inner.map.len() as u64;
        inner.map.clear();
        inner.order.clear();
        self.note_oldest(&inner);
        self.evictions.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> DekCacheStats {
        let entries = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len();
        DekCacheStats {
            hits: self.hits.sum(),
            misses: self.misses.sum(),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dek(b: u8) -> Arc<u8> {
        Arc::new(b)
    }

    const CTX: &[u8] = b"aad";

    #[test]
    fn entries_expire_by_uses_age_and_count() {
        let cache = DekCache::<Arc<u8>>::new(DekCacheConfig {
            max_age: Duration::from_secs(60),
            max_uses: 2,
            max_entries: 2,
        });
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"a", b"b", b"c");
        assert!(cache.get(a, CTX).is_none());
        cache.put(a, CTX, dek(1));
        assert_eq!(cache.get(a, CTX).map(|k| *k), Some(1));
        assert!(cache.get(a, CTX).is_some());
        assert!(cache.get(a, CTX).is_none(), "used up after two uses");
        cache.put(a, CTX, dek(1));
        cache.put(b, CTX, dek(2));
        cache.put(c, CTX, dek(3));
        assert!(cache.get(a, CTX).is_none(), "the oldest was evicted");
        assert!(cache.get(b, CTX).is_some() && cache.get(c, CTX).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.hits, s.misses), (2, 4, 3));
        assert!(s.evictions >= 2);

        let short = DekCache::<Arc<u8>>::new(DekCacheConfig {
            max_age: Duration::from_millis(1),
            ..DekCacheConfig::default()
        });
        short.put(a, CTX, dek(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(a, CTX).is_none(), "too old");
    }

    /// Entries past their age leave on the next get or put, whichever key it is for, so an
    /// idle key does not linger until someone asks for it again.
    #[test]
    fn expired_entries_are_dropped_on_every_get_and_put() {
        let cache = DekCache::<Arc<u8>>::new(DekCacheConfig {
            max_age: Duration::from_millis(20),
            max_uses: 100,
            max_entries: 100,
        });
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"a", b"b", b"c");
        cache.put(a, CTX, dek(1));
        cache.put(b, CTX, dek(2));
        assert_eq!(cache.stats().entries, 2);
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get(c, CTX).is_none());
        assert_eq!(
            cache.stats().entries,
            0,
            "a get for another key dropped both"
        );
        cache.put(a, CTX, dek(1));
        std::thread::sleep(Duration::from_millis(30));
        cache.put(c, CTX, dek(3));
        assert_eq!(cache.stats().entries, 1, "a put dropped the expired one");
        assert_eq!(cache.stats().evictions, 3);
        // A key put again is as young as its last put, whatever its first one was.
        cache.put(c, CTX, dek(3));
        assert!(cache.get(c, CTX).is_some());
    }

    #[test]
    fn the_map_is_sized_up_front() {
        let cache = DekCache::<Arc<u8>>::new(DekCacheConfig {
            max_entries: 500,
            ..DekCacheConfig::default()
        });
        let capacity = cache.inner.read().expect("lock").map.capacity();
        assert!(capacity >= 500, "{capacity}");
        for i in 0..500u32 {
            cache.put(&i.to_be_bytes(), CTX, dek(1));
        }
        assert_eq!(
            cache.inner.read().expect("lock").map.capacity(),
            capacity,
            "filling it never grew the map"
        );
    }

    /// A value is only for the associated data it was made for: another context misses
    /// (and leaves the entry for its own).
    #[test]
    fn another_context_is_a_miss() {
        let cache = DekCache::<Arc<u8>>::new(DekCacheConfig::default());
        cache.put(b"blob", b"identity A", dek(1));
        assert!(cache.get(b"blob", b"identity B").is_none());
        assert!(cache.get(b"blob", b"identity A").is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.hits, s.misses), (1, 1, 1));
    }

    /// Counts its drops: the cache's values are `Arc`s, and the key inside one is wiped
    /// when the last `Arc` goes (`PreparedPayload` -> `AesGcmKey::drop`, tested in
    /// `crypto::aead`).
    struct Tracked(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Every way an entry leaves the cache drops its value at once (no copy stays behind
    /// in the map or the age queue): eviction for room, for uses, for age, a take, a
    /// removal by key id, and a clear.
    #[test]
    fn every_eviction_drops_the_value() {
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let value = || Arc::new(Tracked(dropped.clone()));
        let count = || dropped.load(Ordering::SeqCst);
        let cache = DekCache::<Arc<Tracked>>::new(DekCacheConfig {
            max_age: Duration::from_millis(40),
            max_uses: 2,
            max_entries: 2,
        });
        cache.put(b"a", CTX, value());
        cache.put(b"b", CTX, value());
        cache.put(b"c", CTX, value());
        assert_eq!(count(), 1, "the oldest went for room");
        assert!(cache.with(b"b", CTX, |_| ()).is_some());
        assert!(cache.with(b"b", CTX, |_| ()).is_some());
        assert!(cache.with(b"b", CTX, |_| ()).is_none());
        assert_eq!(count(), 2, "used up");
        std::thread::sleep(Duration::from_millis(50));
        assert!(cache.with(b"zz", CTX, |_| ()).is_none());
        assert_eq!(count(), 3, "too old");
        cache.put(b"d", CTX, value());
        assert!(cache.take(b"d", b"another context").is_none());
        drop(cache.take(b"d", CTX).expect("taken"));
        assert_eq!(count(), 4, "taken and dropped");
        cache.put(b"e", CTX, value());
        cache.put(b"f", CTX, value());
        assert_eq!(cache.remove_where(|k| k == b"e"), 1);
        assert_eq!(count(), 5, "removed by key");
        cache.clear();
        assert_eq!(count(), 6, "cleared");
        assert_eq!(cache.stats().entries, 0);
    }
}
