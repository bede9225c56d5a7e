//! Disk full (issue 15, item 7): a vault on `SqliteStore` on a 2 MiB tmpfs the test mounts
//! (it is skipped, saying so, where mounting is not allowed). Writes go on until the disk is
//! full: each one either succeeds — and is then still there, with its value, after space is
//! freed and after the store is reopened — or fails with a store error of kind `Full` whose
//! message says so and how to fix it. Nothing panics; reads keep working while the disk is
//! full; once space is freed the same vault writes again without being reopened. The master
//! key file, created on a full disk, fails with an i/o error naming the file and leaves
//! nothing half-written behind.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strongroom::{
    CredentialId, CredentialRef, CredentialUpdate, Error, ErrorKind, ExposeSecret, ListFilter,
    LocalKey, NewCredential, Principal, ResolveContext, Scope, SecretString, SqliteStore, Store,
    StoreErrorKind, Vault,
};

const KEY: [u8; 32] = [0x3c; 32];

/// A tmpfs of `size` mounted for the test, unmounted (lazily) when dropped.
struct Mounted {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// `None` (with a printed reason) where this process may not mount.
    fn tmpfs(size: &str) -> Option<Mounted> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mounted { path, _dir: dir }),
            Ok(o) => {
                println!(
                    "SKIPPED: cannot mount a {size} tmpfs here ({}): the disk-full test needs \
                     root in a sandbox that allows `mount -t tmpfs`",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED: cannot run `mount` ({e}): the disk-full test needs it");
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn p(text: &str) -> Principal {
    Principal::parse(text).expect("principal")
}

fn fields(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

/// An 8 KiB key, different for each `i`.
fn big_value(i: usize) -> String {
    let mut v = format!("sk-{i:06}-");
    while v.len() < 8 * 1024 {
        v.push_str(&format!(
            "{:016x}",
            (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ));
    }
    v
}

async fn open_vault(db: &Path) -> (SqliteStore, Vault) {
    let store = SqliteStore::open(db).expect("open");
    let vault = Vault::builder()
        .store(Arc::new(store.clone()))
        .key_wrapper(Arc::new(LocalKey::from_bytes(&KEY, "disk-full test key")))
        .build()
        .await
        .expect("vault");
    (store, vault)
}

/// A failed write: a store error of kind `Full` that says so and how to fix it.
fn assert_full(what: &str, e: &Error) {
    assert_eq!(e.kind(), ErrorKind::Store, "{what}: {e}");
    let Error::Store { kind, .. } = e else {
        unreachable!()
    };
    assert_eq!(*kind, StoreErrorKind::Full, "{what}: {e}");
    let message = e.to_string();
    assert!(
        message.contains("full") && message.contains("free space"),
        "{what}: the message says the disk is full and what to do: {message}"
    );
}

/// Runs `f` in its own task, so a panic is reported as one rather than aborting the test.
async fn no_panic<T: Send + 'static>(
    what: &str,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(f).await {
        Ok(v) => v,
        Err(e) => panic!("{what} panicked: {e}"),
    }
}

/// Fills the rest of the filesystem with one file; returns its path.
fn fill(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_a_full_disk_succeed_durably_or_fail_clearly_and_the_vault_recovers() {
    let Some(mnt) = Mounted::tmpfs("2m") else {
        return;
    };
    // Ballast to free later: the space the vault gets back.
    std::fs::write(mnt.path.join("ballast"), vec![0u8; 384 * 1024]).expect("ballast");
    std::fs::write(mnt.path.join("ballast2"), vec![0u8; 768 * 1024]).expect("ballast");
    let db = mnt.path.join("vault.db");
    let (store, vault) = open_vault(&db).await;
    let owner = p("app_user:crm:alice");
    let runtime = p("runtime:crm:alice");
    let ctx = ResolveContext::of(&runtime).expect("ctx");

    // id -> (name, version, value) of every acknowledged write.
    let mut acked: BTreeMap<CredentialId, (String, u64, String)> = BTreeMap::new();
    let mut failures = 0;
    let mut i = 0;
    while failures < 12 {
        i += 1;
        assert!(i < 2_000, "a 2 MiB disk never filled up");
        let name = format!("cred_{i}");
        let value = big_value(i);
        let result = no_panic("create", {
            let (vault, owner, name, value) =
                (vault.clone(), owner.clone(), name.clone(), value.clone());
            async move {
                vault
                    .create(
                        &owner,
                        NewCredential::new(
                            name,
                            Scope::per_user("alice").expect("scope"),
                            "openai",
                            "",
                            fields(&value),
                        ),
                    )
                    .await
            }
        })
        .await;
        match result {
            Ok(info) => {
                acked.insert(info.id.clone(), (name, info.version, value));
            }
            Err(e) => {
                assert_full(&format!("create {i}"), &e);
                failures += 1;
                // While full: an update of an acknowledged credential, a grant, a resolve.
                let (id, (_, version, _)) = acked.iter().next().expect("some writes landed");
                let (id, version) = (id.clone(), *version);
                let new_value = big_value(100_000 + i);
                let updated = no_panic("update", {
                    let (vault, owner, id, new_value) =
                        (vault.clone(), owner.clone(), id.clone(), new_value.clone());
                    async move {
                        let update = CredentialUpdate {
                            fields: Some(fields(&new_value)),
                            ..CredentialUpdate::default()
                        };
                        vault.update(&owner, &id, version, update).await
                    }
                })
                .await;
                match updated {
                    Ok(info) => {
                        let entry = acked.get_mut(&id).expect("acked");
                        entry.1 = info.version;
                        entry.2 = new_value;
                    }
                    Err(e) => assert_full("update while full", &e),
                }
                let name = acked[&id].0.clone();
                let resolved = no_panic("resolve", {
                    let (vault, runtime, ctx, owner, id) = (
                        vault.clone(),
                        runtime.clone(),
                        ctx.clone(),
                        owner.clone(),
                        id.clone(),
                    );
                    async move {
                        vault.grant_add(&owner, &id, "crm").await?;
                        vault
                            .resolve(&runtime, &CredentialRef::compact(&name), &ctx)
                            .await
                    }
                })
                .await;
                match resolved {
                    Ok(r) => assert_eq!(r.fields["api_key"].expose_secret(), acked[&id].2),
                    Err(e) => assert_full("grant and resolve while full", &e),
                }
                // Reads need no space.
                let info = vault.get(&owner, &id).await.expect("get while full");
                assert_eq!(info.version, acked[&id].1);
                let listed = store.list(&ListFilter::default()).await.expect("list");
                assert_eq!(listed.len(), acked.len());
            }
        }
    }
    assert!(
        acked.len() > 20,
        "{} writes landed before the disk filled",
        acked.len()
    );

    // Free space: the same vault writes again, without a restart.
    std::fs::remove_file(mnt.path.join("ballast")).expect("free space");
    let info = vault
        .create(
            &owner,
            NewCredential::new(
                "after_space_freed",
                Scope::per_user("alice").expect("scope"),
                "openai",
                "",
                fields("sk-after-space-freed-0123456789"),
            ),
        )
        .await
        .expect("the vault writes once space is freed");
    vault
        .grant_add(&owner, &info.id, "crm")
        .await
        .expect("grant");
    let r = vault
        .resolve(&runtime, &CredentialRef::compact("after_space_freed"), &ctx)
        .await
        .expect("resolve once space is freed");
    assert_eq!(
        r.fields["api_key"].expose_secret(),
        "sk-after-space-freed-0123456789"
    );
    check_acked(&vault, &owner, &acked).await;
    // Closing folds the WAL into the database file, which needs room for it to grow; with
    // too little, it fails saying so (the data is safe in the WAL) and works once there is.
    if let Err(e) = store.close().await {
        assert_full("close", &e);
        std::fs::remove_file(mnt.path.join("ballast2")).expect("free more space");
        store.close().await.expect("close once there is room");
    }

    // Durable: a new store on the file has every acknowledged write, and a sound chain.
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    }
    let (store, vault) = open_vault(&db).await;
    check_acked(&vault, &owner, &acked).await;
    let report = vault.audit().verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    println!(
        "{} writes acknowledged, {failures} refused as full, {} audit rows",
        acked.len(),
        report.rows
    );
    store.close().await.expect("close");
}

async fn check_acked(
    vault: &Vault,
    owner: &Principal,
    acked: &BTreeMap<CredentialId, (String, u64, String)>,
) {
    for (id, (name, version, value)) in acked {
        let revealed = vault
            .reveal(owner, id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} is gone: {e}"));
        assert_eq!(revealed.info.version, *version, "{name}");
        assert_eq!(revealed.fields["api_key"].expose_secret(), value, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_and_a_master_key_file_created_on_a_full_disk_fail_clearly() {
    let Some(mnt) = Mounted::tmpfs("256k") else {
        return;
    };
    let filler = fill(&mnt.path, "filler");

    let key_path = mnt.path.join("home").join("master.key");
    let err = no_panic("key file", {
        let key_path = key_path.clone();
        async move { LocalKey::load_or_create_file(&key_path) }
    })
    .await
    .expect_err("no room for the key file");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("No space left on device") && message.contains("master.key"),
        "{message}"
    );
    // Nothing half-written under the key's name, and no temporary file left behind.
    assert!(!key_path.exists(), "a key file was left on a full disk");
    if let Ok(entries) = std::fs::read_dir(mnt.path.join("home")) {
        let left: Vec<_> = entries.map(|e| e.expect("entry").file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    let db = mnt.path.join("vault.db");
    let opened = no_panic("open", {
        let db = db.clone();
        async move { SqliteStore::open(&db).map(drop) }
    })
    .await;
    let err = opened.expect_err("no room for a new database");
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(
        matches!(
            err,
            Error::Store {
                kind: StoreErrorKind::Full,
                ..
            }
        ),
        "a full disk is reported as full: {err}"
    );

    // With space, both work on the same paths.
    std::fs::remove_file(filler).expect("free");
    let key = LocalKey::load_or_create_file(&key_path).expect("key file");
    let again = LocalKey::load_or_create_file(&key_path).expect("the same key file");
    assert_eq!(
        format!("{key:?}"),
        format!("{again:?}"),
        "the key file holds one key"
    );
    let store = SqliteStore::open(&db).expect("open once space is freed");
    store.close().await.expect("close");
}
