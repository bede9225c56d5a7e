//! The point cache: results of point reads (a credential by name or id, a credential's
//! grants), valid for one data generation.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use super::codec::{decode_credential, CREDENTIAL_COLUMNS};
use super::error::sql_error;
use super::packed::{pack_absent, pack_row, unpack, PointKey};
use super::schema::count_credentials;
use super::writer::exec_cached;
use super::SqliteStore;
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{CredentialId, CredentialRecord, Grant, Scope, Timestamp};

/// The lookup of a credential by scope and name.
static NAMED_SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM credentials \
         WHERE scope_kind = ?1 AND owner = ?2 AND name = ?3"
    )
});

#[derive(Clone)]
pub(super) enum PointValue {
    Named(Option<Arc<CredentialRecord>>),
    Credential(Option<Box<CredentialRecord>>),
    Grants(Vec<Grant>),
}

/// Results of point reads, valid for one data generation. Every credential or grant change
/// (from this process or any other) bumps the generation in the same transaction, so an
/// entry read at generation G is exactly what any snapshot at generation G would return.
///
/// Credentials (by name or by id, found or not) are kept packed (see `packed`), keyed by a
/// keyed SipHash of the lookup: no copy of the lookup's strings is kept, and an entry is
/// checked against the lookup when it is unpacked, so two lookups with one hash only ever
/// cost a miss. Grants are kept as they are.
pub(super) struct PointCache {
    generation: i64,
    limit: usize,
    /// Whether `limit` follows the number of credentials in the file.
    sized_from_file: bool,
    /// Set while one caller counts the file's credentials for a full cache.
    counting: bool,
    hasher: RandomState,
    rows: HashMap<u64, Box<[u8]>, BuildHasherDefault<PassThrough>>,
    grants: HashMap<CredentialId, Vec<Grant>>,
}

/// What [`PointCache::put`] did.
enum Put {
    /// Stored (or not needed); what was dropped, if anything.
    Done(Dropped),
    /// Full: count the file's credentials and call [`PointCache::resize`].
    Recount,
}

/// What a reset took out of the cache, to be dropped after the lock is released.
pub(super) type Dropped = Option<(
    HashMap<u64, Box<[u8]>, BuildHasherDefault<PassThrough>>,
    HashMap<CredentialId, Vec<Grant>>,
)>;

/// The least [`SqliteOptions::point_cache_entries`] sized from the file chooses.
pub(super) const POINT_CACHE_ENTRIES: usize = 100_000;

/// The cache size chosen at open when none is set: room for every credential in the file
/// twice over (by name and by id) and for as many again, at least [`POINT_CACHE_ENTRIES`].
pub(super) fn default_entries(credentials: u64) -> usize {
    usize::try_from(credentials.saturating_mul(4))
        .unwrap_or(usize::MAX)
        .max(POINT_CACHE_ENTRIES)
}

impl PointCache {
    /// A cache of at most `limit` entries; `sized_from_file` lets it grow with the file
    /// (see [`PointCache::put`]).
    pub(super) fn new(limit: usize, sized_from_file: bool) -> PointCache {
        PointCache {
            generation: 0,
            limit: limit.max(1),
            sized_from_file,
            counting: false,
            hasher: RandomState::new(),
            rows: HashMap::default(),
            grants: HashMap::new(),
        }
    }

    /// The entry for `key` at this cache's generation, if any.
    fn get(&self, key: &PointKey) -> Option<PointValue> {
        if let PointKey::Grants(id) = key {
            return self.grants.get(id).cloned().map(PointValue::Grants);
        }
        let packed = self.rows.get(&self.hasher.hash_one(key))?;
        let found = unpack(packed, key)?;
        Some(match key {
            PointKey::Id(_) => PointValue::Credential(found.map(Box::new)),
            _ => PointValue::Named(found.map(Arc::new)),
        })
    }

    /// Stores `value` for `key` read at `generation`: entries of an older generation are
    /// dropped first, and a read older than the entries is not kept. What was dropped is
    /// returned, to be freed outside the lock.
    ///
    /// When the cache is full it starts over; but a cache sized from the file first asks
    /// (once, `Put::Recount`) for the file's credentials to be counted again, since the
    /// vault may have grown since it opened, and keeps nothing new until
    /// [`PointCache::resize`] has the count.
    fn put(&mut self, key: &PointKey, value: &PointValue, generation: i64) -> Put {
        if generation < self.generation {
            return Put::Done(None);
        }
        let full = self.rows.len() + self.grants.len() >= self.limit;
        if full && generation == self.generation && self.sized_from_file {
            if self.counting {
                return Put::Done(None);
            }
            self.counting = true;
            return Put::Recount;
        }
        let mut dropped = None;
        if generation > self.generation || full {
            dropped = Some((
                std::mem::take(&mut self.rows),
                std::mem::take(&mut self.grants),
            ));
            self.generation = generation;
        }
        match (key, value) {
            (PointKey::Grants(id), PointValue::Grants(grants)) => {
                self.grants.insert(id.clone(), grants.clone());
            }
            (_, PointValue::Named(found)) => self.put_row(key, found.as_deref()),
            (_, PointValue::Credential(found)) => self.put_row(key, found.as_deref()),
            _ => {}
        }
        Put::Done(dropped)
    }

    /// Sizes a cache sized from the file for `credentials`; if it is still full, it starts
    /// over (what it held is returned, to be freed outside the lock).
    fn resize(&mut self, credentials: Option<u64>) -> Dropped {
        self.counting = false;
        if let Some(credentials) = credentials {
            self.limit = self.limit.max(default_entries(credentials));
        }
        if self.rows.len() + self.grants.len() < self.limit {
            return None;
        }
        Some((
            std::mem::take(&mut self.rows),
            std::mem::take(&mut self.grants),
        ))
    }

    fn put_row(&mut self, key: &PointKey, found: Option<&CredentialRecord>) {
        let packed = match found {
            Some(record) => pack_row(record),
            None => pack_absent(key),
        };
        if let Some(packed) = packed {
            self.rows.insert(self.hasher.hash_one(key), packed);
        }
    }
}

/// The hash map's hasher for keys that are already keyed SipHash values.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else is folded in, never dropped.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl SqliteStore {
    /// A point read through the generation-checked cache: one read transaction reads the
    /// generation and, on a miss, the data; a hit costs only the generation read.
    ///
    /// With `stamped`, the caller will check the returned generation at commit time
    /// ([`Store::commit_checked`]), so a cache entry no older than what the writer last saw
    /// is returned without touching the database at all.
    pub(super) fn read_cached(
        &self,
        key: &PointKey,
        stamped: bool,
        f: impl FnOnce(&Connection) -> Result<PointValue>,
    ) -> Result<(PointValue, i64)> {
        self.inner.check_open()?;
        if stamped {
            let seen = self.inner.counters.generation.load(Ordering::Acquire);
            {
                let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation >= seen {
                    if let Some(value) = cache.get(key) {
                        return Ok((value, cache.generation));
                    }
                }
            }
            // A miss: one autocommit read, stamped with the generation the writer last saw.
            // The read sees that generation or a newer one (the writer publishes only what
            // is committed), so the stamp is never newer than the data: if the data is
            // newer, the checked commit fails as stale and the caller reads again.
            let value = self.read_point(f)?;
            self.remember(key, &value, seen, None);
            return Ok((value, seen));
        }
        self.read_point(|conn| {
            exec_cached(conn, "BEGIN").map_err(|e| sql_error("cannot start a read", e))?;
            let out = (|| {
                let generation: i64 = conn
                    .prepare_cached("SELECT value FROM strongroom_generation WHERE id = 1")
                    .and_then(|mut st| st.query_row([], |r| r.get(0)))
                    .map_err(|e| sql_error("cannot read the data generation", e))?;
                {
                    let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.generation == generation {
                        if let Some(value) = cache.get(key) {
                            return Ok((value, generation));
                        }
                    }
                }
                let value = f(conn)?;
                // Only the newest generation's entries are kept.
                self.remember(key, &value, generation, Some(conn));
                Ok((value, generation))
            })();
            // A read-only transaction: ending it cannot lose anything.
            let _ = exec_cached(conn, "COMMIT");
            out
        })
    }
}

impl SqliteStore {
    /// Keeps a point read in the cache. A full cache sized from the file has the file's
    /// credentials counted again first, on `conn` or a pooled reader, outside the lock (a
    /// count that fails only means the cache starts over).
    fn remember(
        &self,
        key: &PointKey,
        value: &PointValue,
        generation: i64,
        conn: Option<&Connection>,
    ) {
        let cache = || self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let put = cache().put(key, value, generation);
        match put {
            Put::Done(dropped) => drop(dropped),
            Put::Recount => {
                let count = |c: &Connection| {
                    count_credentials(c).map_err(|e| sql_error("cannot count credentials", e))
                };
                let counted = match conn {
                    Some(conn) => count(conn),
                    None => self.read_point(count),
                };
                let mut dropped = Vec::new();
                {
                    let mut cache = cache();
                    dropped.push(cache.resize(counted.ok()));
                    match cache.put(key, value, generation) {
                        Put::Done(d) => dropped.push(d),
                        // Filled up again meanwhile: start over.
                        Put::Recount => {
                            dropped.push(cache.resize(None));
                            if let Put::Done(d) = cache.put(key, value, generation) {
                                dropped.push(d);
                            }
                        }
                    }
                }
                drop(dropped);
            }
        }
    }

    /// The credential named `name` in exactly `scope` (zero or one), through the point
    /// cache, with the data generation of the read.
    pub(super) fn named(
        &self,
        scope: &Scope,
        name: &str,
        stamped: bool,
    ) -> Result<(Option<Arc<CredentialRecord>>, i64)> {
        let key = PointKey::Name(Cow::Borrowed(scope), Cow::Borrowed(name));
        let lookup = |conn: &Connection| {
            let owner = scope.owner_text();
            // One statement, prepared once per connection: (scope_kind, owner, name) is
            // unique, so this is one probe of its index and one of the table.
            let mut stmt = conn
                .prepare_cached(&NAMED_SELECT)
                .map_err(|e| sql_error("cannot prepare a credential lookup", e))?;
            let found = stmt
                .query_row(
                    rusqlite::params![scope.kind().as_str(), &*owner, name],
                    decode_credential,
                )
                .optional()
                .map_err(|e| sql_error("cannot read a credential", e))?
                .transpose()?;
            Ok(PointValue::Named(found.map(Arc::new)))
        };
        match self.read_cached(&key, stamped, lookup)? {
            (PointValue::Named(found), generation) => Ok((found, generation)),
            _ => Err(Error::store(
                StoreErrorKind::Other,
                "point cache kind mismatch",
            )),
        }
    }

    /// The grant rows of a credential through the point cache, with the data generation.
    pub(super) fn grants_of(
        &self,
        credential_id: &CredentialId,
        stamped: bool,
    ) -> Result<(Vec<Grant>, i64)> {
        let id = credential_id.clone();
        let value = self.read_cached(&PointKey::Grants(id.clone()), stamped, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT app, granted_by, granted_at, revoked_at, revoked_by FROM grants
                     WHERE credential_id = ?1 ORDER BY app",
                )
                .map_err(|e| sql_error("cannot prepare a grant listing", e))?;
            let rows = stmt
                .query_map([id.as_str()], |r| {
                    Ok(Grant {
                        credential_id: id.clone(),
                        app: r.get(0)?,
                        granted_by: r.get(1)?,
                        granted_at: Timestamp(r.get(2)?),
                        revoked_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                        revoked_by: r.get(4)?,
                    })
                })
                .map_err(|e| sql_error("cannot list grants", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map(PointValue::Grants)
                .map_err(|e| sql_error(&format!("cannot decode the grants of credential {id}"), e))
        })?;
        match value {
            (PointValue::Grants(grants), generation) => Ok((grants, generation)),
            _ => Err(Error::store(
                StoreErrorKind::Other,
                "point cache kind mismatch",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LifecycleState, Timestamp};

    fn named(i: usize) -> (PointKey<'static>, PointValue) {
        let record = CredentialRecord {
            id: CredentialId::generate(),
            name: "openai_main".into(),
            scope: Scope::per_app_per_user("crm", format!("user{i}")).expect("scope"),
            provider: "openai".into(),
            handler_type: "api_key".into(),
            state: LifecycleState::Valid,
            metadata: Default::default(),
            agent_accessible: false,
            version: 1,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            expires_at: None,
            key_id: "local".into(),
            sealed: vec![7; 150],
        };
        let key = PointKey::Name(
            Cow::Owned(record.scope.clone()),
            Cow::Owned(record.name.clone()),
        );
        (key, PointValue::Named(Some(Arc::new(record))))
    }

    fn hit(cache: &PointCache, key: &PointKey) -> bool {
        matches!(cache.get(key), Some(PointValue::Named(Some(_))))
    }

    #[test]
    fn a_full_cache_sized_from_the_file_asks_for_a_count_once_and_then_grows() {
        let mut cache = PointCache::new(2, true);
        let entries: Vec<_> = (0..4).map(named).collect();
        for (key, value) in &entries[..2] {
            assert!(matches!(cache.put(key, value, 0), Put::Done(None)));
        }
        let (key, value) = &entries[2];
        assert!(matches!(cache.put(key, value, 0), Put::Recount));
        // While one caller counts, the others keep nothing new and drop nothing.
        let (other, other_value) = &entries[3];
        assert!(matches!(cache.put(other, other_value, 0), Put::Done(None)));
        assert!(!hit(&cache, other));
        assert!(cache.resize(Some(1_000_000)).is_none());
        assert_eq!(cache.limit, 4_000_000);
        assert!(matches!(cache.put(key, value, 0), Put::Done(None)));
        for (key, _) in &entries[..3] {
            assert!(hit(&cache, key));
        }
    }

    #[test]
    fn a_full_cache_of_a_set_size_starts_over_and_a_new_generation_empties_it() {
        let mut cache = PointCache::new(2, false);
        let entries: Vec<_> = (0..3).map(named).collect();
        for (key, value) in &entries[..2] {
            assert!(matches!(cache.put(key, value, 0), Put::Done(None)));
        }
        assert!(matches!(
            cache.put(&entries[2].0, &entries[2].1, 0),
            Put::Done(Some(_))
        ));
        assert!(hit(&cache, &entries[2].0) && !hit(&cache, &entries[0].0));
        // An older read is not kept; a newer one empties what is there first.
        assert!(matches!(
            cache.put(&entries[0].0, &entries[0].1, -1),
            Put::Done(None)
        ));
        assert!(!hit(&cache, &entries[0].0));
        assert!(matches!(
            cache.put(&entries[0].0, &entries[0].1, 1),
            Put::Done(Some(_))
        ));
        assert!(hit(&cache, &entries[0].0) && !hit(&cache, &entries[2].0));
    }

    #[test]
    fn a_still_full_cache_after_a_count_starts_over() {
        let mut cache = PointCache::new(2, true);
        for (key, value) in (0..2).map(named) {
            assert!(matches!(cache.put(&key, &value, 0), Put::Done(None)));
        }
        let (key, value) = named(2);
        assert!(matches!(cache.put(&key, &value, 0), Put::Recount));
        // A failed count, or a file that did not grow: the cache starts over.
        assert!(cache.resize(None).is_some());
        assert!(matches!(cache.put(&key, &value, 0), Put::Done(None)));
        assert!(hit(&cache, &key));
    }
}
