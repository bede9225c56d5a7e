//! The point-read cache: scope + name lookups and a credential's grants, each valid for the
//! one data generation it was read at.
//!
//! The data generation (the `state` row) moves with every batch that changes a credential
//! or a grant, whichever instance commits it. An entry is served only while it was read at
//! the newest generation this instance has seen; the stamp it returns is that generation,
//! and the writer refuses a checked commit whose stamp is not the generation it finds under
//! the chain-head lock. So a hit needs no round trip, and a change made by another instance
//! (which this instance has not seen yet) costs the resolve one retry with fresh reads: the
//! refused commit's group has seen the new generation and emptied the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{CredentialId, CredentialRecord, Grant};

/// Default of [`super::PostgresOptions::point_cache_entries`].
pub(super) const POINT_CACHE_ENTRIES: usize = 100_000;

/// A scope + name key: scope kind, owner, name.
pub(super) type NameKey = (&'static str, String, String);

#[derive(Default)]
struct Entries {
    /// The newest data generation seen; every entry was read at it.
    generation: i64,
    names: HashMap<NameKey, Option<Arc<CredentialRecord>>>,
    grants: HashMap<CredentialId, Vec<Grant>>,
}

/// The cache, shared by the store's readers and its writer.
pub(super) struct PointCache {
    max: usize,
    entries: Mutex<Entries>,
}

impl PointCache {
    /// A cache of at most `max` names and `max` grant lists (`0`: nothing is kept).
    pub(super) fn new(max: usize) -> PointCache {
        PointCache {
            max,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Every update leaves the maps consistent, so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data generation is `generation`, as the writer read it under the chain-head lock
    /// or committed it: entries read at any other generation are dropped. (Exact rather than
    /// "at least", so that a database whose generation went back, a schema restored from a
    /// backup, empties the cache too.)
    pub(super) fn set_generation(&self, generation: i64) {
        let mut e = self.lock();
        if e.generation != generation {
            e.generation = generation;
            e.names.clear();
            e.grants.clear();
        }
    }

    /// A group committed `generation`: entries read before it are dropped. Only ever moves
    /// forward, unlike [`PointCache::set_generation`]: groups finish out of order, and one
    /// that finishes late must not take the cache back to a generation a later read
    /// already passed (that would only cost a refused commit and a retry, but for nothing).
    pub(super) fn raise_generation(&self, generation: i64) {
        saw(&mut self.lock(), generation);
    }

    /// The cached answer for a name and the generation it was read at.
    pub(super) fn name(&self, key: &NameKey) -> Option<(Option<Arc<CredentialRecord>>, i64)> {
        let e = self.lock();
        e.names.get(key).map(|found| (found.clone(), e.generation))
    }

    /// Keeps the answer for a name read at `generation`.
    pub(super) fn keep_name(
        &self,
        key: NameKey,
        generation: i64,
        found: Option<Arc<CredentialRecord>>,
    ) {
        if self.max == 0 {
            return;
        }
        let mut e = self.lock();
        saw(&mut e, generation);
        if e.generation == generation {
            if e.names.len() >= self.max {
                e.names.clear();
            }
            e.names.insert(key, found);
        }
    }

    /// The cached grants of a credential and the generation they were read at.
    pub(super) fn grants(&self, id: &CredentialId) -> Option<(Vec<Grant>, i64)> {
        let e = self.lock();
        e.grants.get(id).map(|g| (g.clone(), e.generation))
    }

    /// Keeps the grants of a credential read at `generation`.
    pub(super) fn keep_grants(&self, id: CredentialId, generation: i64, grants: Vec<Grant>) {
        if self.max == 0 {
            return;
        }
        let mut e = self.lock();
        saw(&mut e, generation);
        if e.generation == generation {
            if e.grants.len() >= self.max {
                e.grants.clear();
            }
            e.grants.insert(id, grants);
        }
    }
}

fn saw(e: &mut Entries, generation: i64) {
    if generation > e.generation {
        e.generation = generation;
        e.names.clear();
        e.grants.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> NameKey {
        ("system", String::new(), name.to_string())
    }

    /// A group that finishes late does not take the cache back to an older generation; the
    /// generation read under the lock is exact, so a database that went back (a restored
    /// backup) still empties it.
    #[test]
    fn a_late_group_never_takes_the_generation_back() {
        let cache = PointCache::new(10);
        cache.set_generation(5);
        cache.keep_name(key("a"), 5, None);
        assert_eq!(cache.name(&key("a")).map(|(_, g)| g), Some(5));
        cache.raise_generation(7);
        assert!(cache.name(&key("a")).is_none(), "read before generation 7");
        cache.keep_name(key("b"), 7, None);
        cache.raise_generation(6);
        assert_eq!(cache.name(&key("b")).map(|(_, g)| g), Some(7));
        cache.set_generation(6);
        assert!(cache.name(&key("b")).is_none(), "the database went back");
    }
}
