//! Where the vault lives: `--store sqlite:PATH` or `postgres://…`.

use super::*;

/// Where the vault lives.
pub(crate) enum StoreSpec {
    Sqlite(PathBuf),
    Postgres(String),
}

pub(crate) fn store_spec(spec: Option<&str>) -> Result<StoreSpec, Error> {
    match spec {
        None => Ok(StoreSpec::Sqlite(default_home_from_env()?.join("vault.db"))),
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
            Ok(StoreSpec::Postgres(s.to_string()))
        }
        Some(s) => match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(StoreSpec::Sqlite(PathBuf::from(path))),
            _ => Err(invalid(
                "--store",
                "is not a store; write sqlite:PATH or postgres://USER@HOST:PORT/DATABASE",
            )),
        },
    }
}

/// Opens the store (`STRONGROOM_PG_SCHEMA` picks the PostgreSQL schema, default
/// `strongroom`). A SQLite store is also put in `sqlite`, for `main` to close once the
/// command is done; it is created only when `create` says so.
pub(crate) async fn open_store(
    spec: &StoreSpec,
    sqlite: &mut Option<SqliteStore>,
    create: bool,
) -> Result<Arc<dyn Store>, Error> {
    Ok(match spec {
        StoreSpec::Sqlite(path) => {
            let mut options = strongroom::SqliteOptions::default();
            options.create_if_missing = create;
            Arc::new(
                sqlite
                    .insert(SqliteStore::open_with(path, options)?)
                    .clone(),
            )
        }
        StoreSpec::Postgres(url) => {
            let mut options = strongroom::PostgresOptions::default();
            if let Ok(schema) = std::env::var("STRONGROOM_PG_SCHEMA") {
                options = options.schema(schema);
            }
            Arc::new(strongroom::PostgresStore::connect_with(url, options).await?)
        }
    })
}

/// What a checkpoint line names as its vault: `sqlite:` and the file's absolute path, or
/// the PostgreSQL URL without its password, with the schema.
pub(crate) fn store_label(spec: &StoreSpec) -> String {
    match spec {
        StoreSpec::Sqlite(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let absolute = match (dir.canonicalize(), path.file_name()) {
                (Ok(dir), Some(name)) => dir.join(name),
                _ => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
            };
            format!("sqlite:{}", absolute.display())
        }
        StoreSpec::Postgres(url) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
            let (authority, tail) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split_once(':').map_or(user, |(u, _)| u);
                    format!("{user}@{host}")
                }
                None => authority.to_string(),
            };
            let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
            let schema =
                std::env::var("STRONGROOM_PG_SCHEMA").unwrap_or_else(|_| "strongroom".into());
            format!("{scheme}://{authority}{tail}#schema={schema}")
        }
    }
}
