//! The statements, prepared with the schema name in place.

/// The statements, with the schema name in place.
pub(super) struct Sql {
    pub(super) schema: String,
    pub(super) lock_state: String,
    pub(super) update_state: String,
    pub(super) read_state: String,
    pub(super) get: String,
    pub(super) find_named: String,
    pub(super) grants: String,
    pub(super) grants_stamped: String,
    pub(super) audit_range: String,
    pub(super) version_of: String,
    pub(super) upsert: String,
    pub(super) delete: String,
    pub(super) delete_grants: String,
    pub(super) put_grant: String,
    pub(super) delete_grant: String,
    pub(super) insert_audit: String,
    pub(super) flush: String,
    pub(super) record: String,
    pub(super) record_version: String,
    pub(super) put_record: String,
    pub(super) delete_record: String,
}

pub(super) const COLUMNS: &str =
    "id, name, scope_kind, owner, provider, handler_type, state, metadata, \
    agent_accessible, version, created_at, updated_at, key_id, sealed, expires_at";

pub(super) const RECORD_COLUMNS: &str =
    "kind, owner, key, version, created_at, updated_at, expires_at, body, sealed";

impl Sql {
    pub(super) fn new(s: &str) -> Sql {
        let c_cols: String = COLUMNS
            .split(", ")
            .map(|c| format!("c.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Sql {
            schema: s.to_string(),
            lock_state: format!(
                "SELECT generation, head_seq, head_hash FROM {s}.state WHERE id = 1 FOR UPDATE"
            ),
            update_state: format!(
                "UPDATE {s}.state SET generation = $1, head_seq = $2, head_hash = $3 WHERE id = 1"
            ),
            read_state: format!(
                "SELECT generation, head_seq, head_hash FROM {s}.state WHERE id = 1"
            ),
            get: format!("SELECT {COLUMNS} FROM {s}.credentials WHERE id = $1"),
            find_named: format!(
                "SELECT st.generation, {c_cols} FROM {s}.state st LEFT JOIN {s}.credentials c \
                 ON c.scope_kind = $1 AND c.owner = $2 AND c.name = $3 WHERE st.id = 1"
            ),
            grants: format!(
                "SELECT credential_id, app, granted_by, granted_at, revoked_at, revoked_by \
                 FROM {s}.grants WHERE credential_id = $1 ORDER BY app"
            ),
            grants_stamped: format!(
                "SELECT st.generation, g.credential_id, g.app, g.granted_by, g.granted_at, \
                 g.revoked_at, g.revoked_by FROM {s}.state st LEFT JOIN {s}.grants g \
                 ON g.credential_id = $1 WHERE st.id = 1 ORDER BY g.app"
            ),
            audit_range: format!(
                "SELECT seq, time, actor, action, credential_id, scope_kind, owner, outcome, \
                 details, prev_hash, hash FROM {s}.audit WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ),
            version_of: format!("SELECT version FROM {s}.credentials WHERE id = $1"),
            upsert: format!(
                "INSERT INTO {s}.credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO UPDATE SET \
                 name = excluded.name, scope_kind = excluded.scope_kind, owner = excluded.owner, \
                 provider = excluded.provider, handler_type = excluded.handler_type, \
                 state = excluded.state, metadata = excluded.metadata, \
                 agent_accessible = excluded.agent_accessible, version = excluded.version, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 key_id = excluded.key_id, sealed = excluded.sealed, \
                 expires_at = excluded.expires_at"
            ),
            delete: format!("DELETE FROM {s}.credentials WHERE id = $1"),
            delete_grants: format!("DELETE FROM {s}.grants WHERE credential_id = $1"),
            put_grant: format!(
                "INSERT INTO {s}.grants (credential_id, app, granted_by, granted_at, revoked_at, \
                 revoked_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (credential_id, app) DO \
                 UPDATE SET granted_by = excluded.granted_by, granted_at = excluded.granted_at, \
                 revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by"
            ),
            delete_grant: format!("DELETE FROM {s}.grants WHERE credential_id = $1 AND app = $2"),
            record: format!(
                "SELECT {RECORD_COLUMNS} FROM {s}.records \
                 WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            record_version: format!(
                "SELECT version FROM {s}.records WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            put_record: format!(
                "INSERT INTO {s}.records ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                 $8, $9) ON CONFLICT (kind, owner, key) DO UPDATE SET \
                 version = excluded.version, created_at = excluded.created_at, \
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at, \
                 body = excluded.body, sealed = excluded.sealed"
            ),
            delete_record: format!(
                "DELETE FROM {s}.records WHERE kind = $1 AND owner = $2 AND key = $3"
            ),
            flush: format!(
                "INSERT INTO {s}.flushes (pid, n) VALUES (pg_backend_pid(), 1) \
                 ON CONFLICT (pid) DO UPDATE SET n = {s}.flushes.n + 1"
            ),
            insert_audit: format!(
                "INSERT INTO {s}.audit (seq, time, actor, action, credential_id, scope_kind, \
                 owner, outcome, details, prev_hash, hash) SELECT * FROM UNNEST($1::bigint[], \
                 $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::bytea[], $11::bytea[])"
            ),
        }
    }
}
