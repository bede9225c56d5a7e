//! Concurrent writers on one credential, on a multi-thread runtime: optimistic versioning
//! makes racing read-modify-write loops conflict, the losers re-read and retry, and no
//! update is lost or applied twice — on `MemoryStore` and on `SqliteStore`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use strongroom::{
    CredentialUpdate, Error, ExposeSecret, LocalKey, MemoryStore, NewCredential, Principal, Scope,
    SecretString, Vault,
};
use tokio::sync::Barrier;

/// How many updaters race.
const TASKS: usize = 8;

/// The metadata key every updater appends its marker to.
const LOG: &str = "log";

fn owner() -> Principal {
    Principal::parse("app_user:crm:u1").expect("principal")
}

fn api_key(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

/// What one updater did.
struct Updated {
    task: usize,
    /// The version its successful update made.
    version: u64,
    /// How many of its attempts met a version conflict.
    conflicts: usize,
}

/// `TASKS` updaters, released together, each appending its own marker to one metadata value
/// with a get → update(expected_version) loop that re-reads and retries on a version
/// conflict. In the first round every task reads before any task writes (a second
/// barrier), so all of them hold the same version and all but one must conflict.
async fn concurrent_updaters_conflict_retry_and_lose_nothing(vault: Vault) {
    let owner = owner();
    let created = vault
        .create(
            &owner,
            NewCredential::new(
                "k",
                Scope::per_user("u1").expect("scope"),
                "openai",
                "api_key",
                api_key("sk-base"),
            ),
        )
        .await
        .expect("create");
    assert_eq!(created.version, 1);
    let id = created.id;
    let start = Arc::new(Barrier::new(TASKS));
    let all_read = Arc::new(Barrier::new(TASKS));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (vault, owner, id) = (vault.clone(), owner.clone(), id.clone());
        let (start, all_read, conflicts) = (start.clone(), all_read.clone(), conflicts.clone());
        handles.push(tokio::spawn(async move {
            start.wait().await;
            let mut first_round = true;
            let mut mine = 0;
            loop {
                let current = vault.get(&owner, &id).await.expect("get");
                if first_round {
                    // Nobody writes until everybody has read: the race is certain.
                    all_read.wait().await;
                    first_round = false;
                }
                let mut metadata = current.metadata.clone();
                let log = metadata.entry(LOG.to_string()).or_default();
                if !log.is_empty() {
                    log.push(',');
                }
                log.push_str(&format!("t{task}"));
                match vault
                    .update(
                        &owner,
                        &id,
                        current.version,
                        CredentialUpdate {
                            metadata: Some(metadata),
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(info) => {
                        return Updated {
                            task,
                            version: info.version,
                            conflicts: mine,
                        }
                    }
                    Err(Error::VersionConflict { .. }) => {
                        mine += 1;
                        conflicts.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("task {task}: {e}"),
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("updater task"));
    }

    let total_conflicts = conflicts.load(Ordering::SeqCst);
    assert!(
        total_conflicts >= TASKS - 1,
        "all {TASKS} tasks read version 1 before any wrote, so at least {} updates must have \
         conflicted; saw {total_conflicts}",
        TASKS - 1
    );
    let retried = outcomes.iter().filter(|o| o.conflicts > 0).count();
    assert!(
        retried >= TASKS - 1,
        "every task but the first round's winner conflicted and retried to success; \
         {retried} of {TASKS} retried"
    );
    assert_eq!(
        outcomes.iter().map(|o| o.conflicts).sum::<usize>(),
        total_conflicts
    );
    // Each successful update made its own version: 2, 3, …, TASKS + 1, none shared.
    let mut versions: Vec<u64> = outcomes.iter().map(|o| o.version).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=1 + TASKS as u64).collect::<Vec<_>>(),
        "one version per successful update"
    );

    let info = vault.get(&owner, &id).await.expect("get");
    assert_eq!(
        info.version,
        1 + outcomes.len() as u64,
        "final version = 1 + successful updates"
    );
    let log = info.metadata.get(LOG).expect("the log survived");
    let mut markers: Vec<&str> = log.split(',').collect();
    markers.sort_unstable();
    let mut expected: Vec<String> = outcomes.iter().map(|o| format!("t{}", o.task)).collect();
    expected.sort_unstable();
    assert_eq!(
        markers, expected,
        "every task's marker exactly once (log: {log})"
    );
    let revealed = vault.reveal(&owner, &id).await.expect("reveal");
    assert_eq!(
        revealed.fields["api_key"].expose_secret(),
        "sk-base",
        "secret fields kept across metadata-only updates"
    );
    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    assert_eq!(
        rows.iter()
            .filter(|r| r.event.action == "credential.update")
            .count(),
        TASKS,
        "one audit row per successful update, none for the conflicts"
    );
    assert!(vault.audit().verify().await.expect("verify").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updaters_on_memory_store_conflict_retry_and_lose_nothing() {
    let vault = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .build()
        .await
        .expect("vault");
    concurrent_updaters_conflict_retry_and_lose_nothing(vault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updaters_on_sqlite_store_conflict_retry_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = common::sqlite_vault(dir.path().join("vault.db")).await;
    concurrent_updaters_conflict_retry_and_lose_nothing(vault).await;
}
