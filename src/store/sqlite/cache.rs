//! The point cache: results of point reads (a credential by name or id, a credential's
//! grants), valid for one data generation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::Connection;

use super::error::sql_error;
use super::writer::exec_cached;
use super::{list_sync, SqliteStore};
use crate::error::{Error, Result, StoreErrorKind};
use crate::model::{CredentialId, CredentialRecord, Grant, Scope, ScopeKind, Timestamp};
use crate::store::ListFilter;

/// What a point read asked for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum PointKey {
    /// A credential by scope kind, owner and name.
    Name(ScopeKind, String, String),
    /// A credential by id.
    Id(CredentialId),
    /// The grants of a credential.
    Grants(CredentialId),
}

#[derive(Clone)]
pub(super) enum PointValue {
    Named(Option<Arc<CredentialRecord>>),
    Credential(Option<Box<CredentialRecord>>),
    Grants(Vec<Grant>),
}

/// Results of point reads, valid for one data generation. Every credential or grant change
/// (from this process or any other) bumps the generation in the same transaction, so an
/// entry read at generation G is exactly what any snapshot at generation G would return.
#[derive(Default)]
pub(super) struct PointCache {
    generation: i64,
    entries: std::collections::HashMap<PointKey, PointValue>,
}

/// Default of [`SqliteOptions::point_cache_entries`].
pub(super) const POINT_CACHE_ENTRIES: usize = 100_000;

impl SqliteStore {
    /// A point read through the generation-checked cache: one read transaction reads the
    /// generation and, on a miss, the data; a hit costs only the generation read.
    ///
    /// With `stamped`, the caller will check the returned generation at commit time
    /// ([`Store::commit_checked`]), so a cache entry no older than what the writer last saw
    /// is returned without touching the database at all.
    pub(super) fn read_cached(
        &self,
        key: PointKey,
        stamped: bool,
        f: impl FnOnce(&Connection) -> Result<PointValue>,
    ) -> Result<(PointValue, i64)> {
        self.inner.check_open()?;
        if stamped {
            let seen = self.inner.counters.generation.load(Ordering::Acquire);
            {
                let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation >= seen {
                    if let Some(value) = cache.entries.get(&key) {
                        return Ok((value.clone(), cache.generation));
                    }
                }
            }
            // A miss: one autocommit read, stamped with the generation the writer last saw.
            // The read sees that generation or a newer one (the writer publishes only what
            // is committed), so the stamp is never newer than the data: if the data is
            // newer, the checked commit fails as stale and the caller reads again.
            let value = self.read_point(f)?;
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if (cache.generation < seen
                || cache.entries.len() >= self.inner.options.point_cache_entries.max(1))
                && seen >= cache.generation
            {
                cache.entries.clear();
                cache.generation = seen;
            }
            if cache.generation == seen {
                cache.entries.insert(key, value.clone());
            }
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
                        if let Some(value) = cache.entries.get(&key) {
                            return Ok((value.clone(), generation));
                        }
                    }
                }
                let value = f(conn)?;
                let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation != generation
                    || cache.entries.len() >= self.inner.options.point_cache_entries.max(1)
                {
                    // Keep only the newest generation's entries.
                    if generation >= cache.generation {
                        cache.entries.clear();
                        cache.generation = generation;
                    }
                }
                if cache.generation == generation {
                    cache.entries.insert(key, value.clone());
                }
                Ok((value, generation))
            })();
            // A read-only transaction: ending it cannot lose anything.
            let _ = exec_cached(conn, "COMMIT");
            out
        })
    }
}

impl SqliteStore {
    /// The credential named `name` in exactly `scope` (zero or one), through the point
    /// cache, with the data generation of the read.
    pub(super) fn named(
        &self,
        scope: &Scope,
        name: &str,
        stamped: bool,
    ) -> Result<(Option<Arc<CredentialRecord>>, i64)> {
        let key = PointKey::Name(scope.kind(), scope.owner(), name.to_string());
        match self.read_cached(key, stamped, |conn| {
            let only = ListFilter {
                scope: Some(scope.clone()),
                name: Some(name.to_string()),
                ..ListFilter::default()
            };
            list_sync(conn, &only)
                .map(|found| PointValue::Named(found.into_iter().next().map(Arc::new)))
        })? {
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
        let value = self.read_cached(PointKey::Grants(id.clone()), stamped, move |conn| {
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
