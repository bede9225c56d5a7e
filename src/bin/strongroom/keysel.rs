//! Which master key seals and which others open: the vault records the id of its active
//! key, and the CLI looks for that key among the ones it is given — the `STRONGROOM_KMS`
//! selection, `keys.toml` in the home, and `STRONGROOM_RETIRED_KEYS`. It never seals under
//! any other key; only `keys rotate` moves the record, on purpose.

use std::sync::OnceLock;

use strongroom::{
    AuditEvent, AuditTarget, Batch, KeyWrapper, ListFilter, Mutation, Record, RecordKey,
};

use super::*;

/// Where the vault records its active master key: a record of this kind, owner and key,
/// whose body is `{"key_id": "...", "previous": ["...", ...]}` (ids only, never key
/// material).
const RECORD_KIND: &str = "strongroom.master-key";
const RECORD_OWNER: &str = "vault";
const RECORD_KEY: &str = "active";

/// More master keys that old blobs may name, for every command: specs (`file:PATH`,
/// `env:VAR`, a cloud backend name) separated by commas.
pub(crate) const ENV_RETIRED_KEYS: &str = "STRONGROOM_RETIRED_KEYS";

/// The file in the home that names the active key and retired ones (`keys rotate` writes
/// it): mode 0600, refused when group or others may read or write it.
pub(crate) const KEYS_FILE: &str = "keys.toml";

/// A master key the CLI was given, and where it came from.
#[derive(Clone)]
pub(crate) struct Configured {
    pub(crate) key: Arc<dyn KeyWrapper>,
    /// Where it came from, for messages (`STRONGROOM_MASTER_KEY`, `the key file PATH`).
    pub(crate) from: String,
    /// How `keys.toml` can name it (`file:PATH`, `env:VAR`, a backend), when it can: a key
    /// given by value in `STRONGROOM_MASTER_KEY` cannot be.
    pub(crate) spec: Option<String>,
}

/// The keys a command runs with.
pub(crate) struct Keys {
    /// The vault's active key: every seal uses it.
    pub(crate) active: Configured,
    /// Every other key given, for opening older blobs.
    pub(crate) retired: Vec<Configured>,
    /// The home, where `keys.toml` lives.
    pub(crate) home: PathBuf,
}

/// The selection of the running command, for `keys rotate` (set once, in `run`).
pub(crate) static SELECTED: OnceLock<Keys> = OnceLock::new();

fn record_key() -> Result<RecordKey, Error> {
    RecordKey::new(RECORD_KIND, RECORD_OWNER, RECORD_KEY)
}

fn pinned_id(record: &Record) -> Result<String, Error> {
    record.body["key_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Corrupt {
            what: "the vault's record of its active master key".into(),
            reason: "it names no key id".into(),
        })
}

fn previous_ids(record: &Record) -> Vec<String> {
    record.body["previous"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `keys.toml`: the active key's spec (after a rotation) and retired keys' specs.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) active: Option<String>,
    #[serde(default)]
    pub(crate) retired: Vec<String>,
}

impl KeysFile {
    pub(crate) fn read(home: &Path) -> Result<KeysFile, Error> {
        let path = home.join(KEYS_FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeysFile::default()),
            Err(e) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if !meta.is_file() || mode & 0o077 != 0 {
            return Err(Error::Config {
                message: format!(
                    "refusing {}: {}; it names the master keys, so only its owner may read or \
                     change it: run `chmod 600 {}`",
                    path.display(),
                    if meta.is_file() {
                        format!("group or others can access it (mode {mode:04o})")
                    } else {
                        "it is not a regular file".into()
                    },
                    path.display()
                ),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            message: format!(
                "{} does not parse: {}; it holds `active = \"SPEC\"` and `retired = [\"SPEC\", \
                 …]`, each SPEC file:PATH, env:VAR or a cloud backend name",
                path.display(),
                e.message().trim()
            ),
        })
    }

    /// Writes the file whole (a temporary file renamed over it), mode 0600.
    pub(crate) fn write(&self, home: &Path) -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = home.join(KEYS_FILE);
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let body = toml::to_string(self).map_err(|e| Error::Config {
            message: format!("cannot write {}: {e}", path.display()),
        })?;
        let text = format!(
            "# The vault's master keys, as `strongroom keys rotate` left them: `active` is the\n\
             # key new credentials are sealed with, `retired` the keys older ones may still\n\
             # need. Each is file:PATH, env:VAR or a cloud backend name.\n{body}"
        );
        let temp = home.join(format!(".{KEYS_FILE}.{}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(io)
    }
}

/// Loads a key named by a spec without creating anything: `file:PATH` must exist, `env:VAR`
/// must be set; the cloud backends as `keys rotate --to` takes them.
pub(crate) fn load_spec(spec: &str, role: &str) -> Result<Configured, Error> {
    let spec = spec.trim();
    if let Some(path) = spec.strip_prefix("file:") {
        let path = Path::new(path);
        let key = strongroom::LocalKey::load_file(path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::Config {
                    message: format!("{role} file:{}: no such file", path.display()),
                }
            }
            other => other,
        })?;
        return Ok(Configured {
            key: Arc::new(key),
            from: format!("{role} file:{}", path.display()),
            spec: Some(format!("file:{}", path.display())),
        });
    }
    if let Some(var) = spec.strip_prefix("env:") {
        let value = std::env::var(var).unwrap_or_default();
        if value.trim().is_empty() {
            return Err(Error::Config {
                message: format!("{role} env:{var}: the variable is not set, or empty"),
            });
        }
        let key = strongroom::LocalKey::from_base64(&value, &format!("variable {var}"))?;
        return Ok(Configured {
            key: Arc::new(key),
            from: format!("{role} env:{var}"),
            spec: Some(format!("env:{var}")),
        });
    }
    match spec {
        "aws_kms" | "gcp_kms" | "azure_kv" | "vault" => Ok(Configured {
            key: key_from_spec(spec)?,
            from: format!("{role} {spec}"),
            spec: Some(spec.to_string()),
        }),
        _ => Err(Error::Config {
            message: format!(
                "{role} `{}` is not a key: write file:PATH, env:VAR, aws_kms, gcp_kms, \
                 azure_kv or vault",
                one_line(spec)
            ),
        }),
    }
}

/// The key the `STRONGROOM_KMS` rule selects, or `None` when that is the key file and it
/// does not exist and may not be created.
fn primary(home: &Path, may_create: bool) -> Result<Option<Configured>, Error> {
    let kms = std::env::var("STRONGROOM_KMS")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    let master = std::env::var_os("STRONGROOM_MASTER_KEY").is_some();
    let file = match kms.as_deref() {
        Some("file") => true,
        None => !master,
        Some(_) => false,
    };
    if file {
        let path = home.join("master.key");
        if !path.exists() && !may_create {
            return Ok(None);
        }
        let absolute = std::path::absolute(&path).unwrap_or(path.clone());
        return Ok(Some(Configured {
            key: key_wrapper_from_env()?,
            from: format!("the key file {}", path.display()),
            spec: Some(format!("file:{}", absolute.display())),
        }));
    }
    let key = key_wrapper_from_env()?;
    Ok(Some(match kms.as_deref() {
        None | Some("env") => Configured {
            key,
            from: "STRONGROOM_MASTER_KEY".into(),
            spec: None,
        },
        Some(backend) => Configured {
            key,
            from: format!("STRONGROOM_KMS={backend}"),
            spec: Some(backend.to_string()),
        },
    }))
}

/// Does the vault hold a credential sealed under `key` (its id or its format-1 id)?
async fn used(store: &dyn Store, key: &Arc<dyn KeyWrapper>) -> Result<bool, Error> {
    let mut ids = vec![key.key_id().to_string()];
    if let Some(alias) = key.legacy_alias() {
        ids.push(alias.key_id().to_string());
    }
    for id in ids {
        let found = store
            .list(&ListFilter {
                key_id: Some(id),
                limit: Some(1),
                ..ListFilter::default()
            })
            .await?;
        if !found.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Picks the keys for a command on the vault `label` in `store`.
///
/// - The vault records its active key's id (written by the first command that may seal,
///   moved only by `keys rotate`). The key with that id among those given seals; if none
///   has it, the command stops (exit 2) and says which key the vault wants.
/// - A vault without the record (new, or made before it existed) takes the configured key
///   — the `STRONGROOM_KMS` selection, else `active` of `keys.toml` — if the vault is empty
///   or has credentials sealed with it; a key the vault has never used is refused.
/// - `pin`: write the record when it is missing (every command but the read-only ones).
///   `creates`: the command starts a vault, so `master.key` may be created.
pub(crate) async fn select(
    store: &dyn Store,
    home: &Path,
    label: &str,
    creates: bool,
    pin: bool,
) -> Result<Keys, Error> {
    let record = store.record(&record_key()?).await?;
    let file = KeysFile::read(home)?;
    let empty = record.is_none()
        && store
            .list(&ListFilter {
                limit: Some(1),
                ..ListFilter::default()
            })
            .await?
            .is_empty();
    let primary = primary(home, creates && empty && file.active.is_none())?;
    let mut given: Vec<Configured> = primary.iter().cloned().collect();
    if let Some(spec) = &file.active {
        let where_ = format!("the active key of {}", home.join(KEYS_FILE).display());
        given.push(load_spec(spec, &where_)?);
    }
    let mut retired_specs: Vec<(String, String)> = file
        .retired
        .iter()
        .map(|s| {
            (
                s.clone(),
                format!("a retired key of {}", home.join(KEYS_FILE).display()),
            )
        })
        .collect();
    if let Ok(list) = std::env::var(ENV_RETIRED_KEYS) {
        for spec in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            retired_specs.push((spec.to_string(), format!("{ENV_RETIRED_KEYS} entry")));
        }
    }
    let mut retired_given = Vec::new();
    for (spec, role) in retired_specs {
        match load_spec(&spec, &role) {
            Ok(key) => retired_given.push(key),
            // A retired key is needed only by the blobs that name it; those fail with the
            // key's id if it is missing.
            Err(e) => eprintln!(
                "warning: a retired key was skipped: {}",
                one_line(&e.to_string())
            ),
        }
    }
    let active = match &record {
        Some(rec) => {
            let want = pinned_id(rec)?;
            let found = given
                .iter()
                .chain(&retired_given)
                .find(|c| c.key.key_id() == want)
                .cloned();
            match found {
                Some(found) => found,
                None => {
                    return Err(wrong_key(store, label, home, &want, rec, primary.as_ref()).await?)
                }
            }
        }
        None if empty => match given.first() {
            Some(first) => first.clone(),
            None => {
                return Err(Error::Config {
                    message: format!(
                        "no master key: {} does not exist, and a command that only reads does \
                         not create one; the first `credentials create` makes it (or set \
                         STRONGROOM_MASTER_KEY or STRONGROOM_KMS)",
                        home.join("master.key").display()
                    ),
                })
            }
        },
        None => {
            let mut chosen = None;
            for candidate in &given {
                if used(store, &candidate.key).await? {
                    chosen = Some(candidate.clone());
                    break;
                }
            }
            match chosen {
                Some(chosen) => chosen,
                None => return Err(never_used(store, label, home, primary.as_ref()).await?),
            }
        }
    };
    if record.is_none() && pin {
        pin_first(store, active.key.key_id()).await?;
    }
    let retired = given
        .into_iter()
        .chain(retired_given)
        .filter(|c| c.key.key_id() != active.key.key_id())
        .collect();
    Ok(Keys {
        active,
        retired,
        home: home.to_path_buf(),
    })
}

/// Writes the record of the vault's first active key (create-only: of processes racing to
/// start a vault, one writes it and the others read it back).
async fn pin_first(store: &dyn Store, key_id: &str) -> Result<Record, Error> {
    let record = Record::new(
        record_key()?,
        serde_json::json!({ "key_id": key_id, "previous": [] }),
        Timestamp::now(),
    );
    let batch = Batch {
        mutations: vec![Mutation::create_record(record.clone())],
        events: Vec::new(),
    };
    match store.commit(batch).await {
        Ok(_) => Ok(record),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let theirs = store.record(&record_key()?).await?.ok_or(e)?;
            let id = pinned_id(&theirs)?;
            if id == key_id {
                Ok(theirs)
            } else {
                Err(Error::Config {
                    message: format!(
                        "another process started this vault with master key {id} at the same \
                         time; this one has {key_id}. Nothing was sealed: give this command \
                         the key {id}"
                    ),
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// Why the keys given do not include the vault's active key `want`.
async fn wrong_key(
    store: &dyn Store,
    label: &str,
    home: &Path,
    want: &str,
    record: &Record,
    primary: Option<&Configured>,
) -> Result<Error, Error> {
    let advice = format!(
        "give this command that key: STRONGROOM_MASTER_KEY (or STRONGROOM_KMS and its \
         variables), or `active = \"file:PATH\"` in {} as `keys rotate` writes it. Nothing was \
         done",
        home.join(KEYS_FILE).display()
    );
    let Some(primary) = primary else {
        return Ok(Error::Config {
            message: format!(
                "the vault {label} seals with master key {want}, and no key is configured: {} \
                 does not exist; {advice}",
                home.join("master.key").display()
            ),
        });
    };
    let id = primary.key.key_id();
    let earlier = previous_ids(record).iter().any(|p| p == id) || used(store, &primary.key).await?;
    Ok(Error::Config {
        message: if earlier {
            format!(
                "the vault {label} now seals with master key {want}; the key given, {id} ({}), \
                 is one of its earlier keys (the vault was rotated since); {advice}",
                primary.from
            )
        } else {
            format!(
                "master key {id} ({}) has never been used by the vault {label}, whose active \
                 key is {want}; {advice}",
                primary.from
            )
        },
    })
}

/// Why a vault without the record refuses the key given.
async fn never_used(
    store: &dyn Store,
    label: &str,
    home: &Path,
    primary: Option<&Configured>,
) -> Result<Error, Error> {
    let some = store
        .list(&ListFilter {
            limit: Some(1),
            ..ListFilter::default()
        })
        .await?;
    let theirs = some.first().map_or_else(String::new, |r| r.key_id.clone());
    Ok(Error::Config {
        message: match primary {
            Some(p) => format!(
                "master key {} ({}) has never been used by the vault {label}, whose credentials \
                 are sealed with {theirs}; give this command that key (STRONGROOM_MASTER_KEY, \
                 STRONGROOM_KMS, or `active` in {}). Nothing was done",
                p.key.key_id(),
                p.from,
                home.join(KEYS_FILE).display()
            ),
            None => format!(
                "no master key: {} does not exist, and the vault {label} is sealed with \
                 {theirs}; give this command that key (STRONGROOM_MASTER_KEY, STRONGROOM_KMS, or \
                 `active` in {}). Nothing was done",
                home.join("master.key").display(),
                home.join(KEYS_FILE).display()
            ),
        },
    })
}

/// `keys rotate`: makes `new` the vault's active key before any data key moves, so that
/// every later command (and this one's new credentials) seals with it: `keys.toml` names it
/// (`to`) and keeps the previous key as retired, then the vault's record moves (audited as
/// `keys.rewrap`, step `activate`). Returns a note for the operator when the previous key
/// cannot be named in `keys.toml`.
pub(crate) async fn activate(
    store: &dyn Store,
    actor: &Principal,
    new: &Arc<dyn KeyWrapper>,
    to: &str,
) -> Result<Option<String>, Error> {
    let Some(keys) = SELECTED.get() else {
        return Ok(None);
    };
    let to = match to.strip_prefix("file:") {
        Some(path) => format!(
            "file:{}",
            std::path::absolute(path)
                .unwrap_or_else(|_| PathBuf::from(path))
                .display()
        ),
        None => to.to_string(),
    };
    let old = &keys.active;
    let mut note = None;
    if old.key.key_id() != new.key_id() {
        let mut file = KeysFile::read(&keys.home)?;
        let mut changed = file.active.as_deref() != Some(to.as_str());
        file.active = Some(to.clone());
        match &old.spec {
            Some(spec) if spec != &to && !file.retired.contains(spec) => {
                file.retired.push(spec.clone());
                changed = true;
            }
            Some(_) => {}
            None => {
                note = Some(format!(
                    "note: the previous key {} came from {}; blobs not yet re-wrapped, and older \
                     checkpoints, still need it: keep it in a variable and list env:VAR in {} or \
                     under `retired` in {}",
                    old.key.key_id(),
                    old.from,
                    ENV_RETIRED_KEYS,
                    keys.home.join(KEYS_FILE).display()
                ))
            }
        }
        let before = file.retired.len();
        file.retired.retain(|spec| spec != &to);
        changed |= file.retired.len() != before;
        if changed {
            file.write(&keys.home)?;
        }
    }
    let current = store.record(&record_key()?).await?;
    let mutation = match &current {
        Some(rec) if pinned_id(rec)? == new.key_id() => return Ok(note),
        Some(rec) => {
            let mut previous = previous_ids(rec);
            let old_id = pinned_id(rec)?;
            if !previous.contains(&old_id) {
                previous.push(old_id);
            }
            let mut next = rec.next_version(Timestamp::now());
            next.body = serde_json::json!({ "key_id": new.key_id(), "previous": previous });
            Mutation::update_record(next)
        }
        None => Mutation::create_record(Record::new(
            record_key()?,
            serde_json::json!({ "key_id": new.key_id(), "previous": [old.key.key_id()] }),
            Timestamp::now(),
        )),
    };
    let event = AuditEvent::new(actor.to_string(), Action::Rewrap, AuditTarget::none())
        .detail("step", "activate")
        .detail("key_id", new.key_id())
        .detail("previous", old.key.key_id());
    store
        .commit(Batch {
            mutations: vec![mutation],
            events: vec![event],
        })
        .await?;
    Ok(note)
}
