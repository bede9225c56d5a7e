//! The SQLite store's sync thread finds the WAL SQLite really writes (named after the
//! resolved database path), whatever path the caller gave, and a chain head is handed out
//! only once durable.
#![cfg(all(feature = "sqlite", unix))]

use strongroom::store::{Batch, SqliteStore, Store, Synchronous};
use strongroom::{Error, SqliteOptions, StoreErrorKind};

fn event(i: usize) -> strongroom::AuditEvent {
    strongroom::AuditEvent::new(
        "w",
        strongroom::Action::Resolve,
        strongroom::AuditTarget::none(),
    )
    .detail("i", i.to_string())
}

/// Commits three batches and checks each was synced (the counter moves with each commit
/// made one at a time) and that the rows are there.
async fn commits_are_synced(store: &SqliteStore) {
    let before = store.writer_stats().syncs;
    for i in 0..3 {
        store
            .commit(Batch::events(vec![event(i)]))
            .await
            .expect("a commit through this path is synced and acknowledged");
    }
    assert_eq!(store.writer_stats().syncs, before + 3);
    let head = store.chain_head().await.expect("head").expect("three rows");
    assert_eq!(head.seq, 3);
}

#[tokio::test]
async fn a_vault_opened_through_a_symbolic_link_commits_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("dir");
    let target = real.join("v.db");
    SqliteStore::open(&target)
        .expect("create")
        .close()
        .await
        .expect("close");
    // A link to the file: SQLite writes `real/v.db-wal`, not `link.db-wal`.
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let store = SqliteStore::open(&link).expect("open through the link");
    commits_are_synced(&store).await;
    assert!(!dir.path().join("link.db-wal").exists());
    store.close().await.expect("close");
    // A link to the folder.
    let folder_link = dir.path().join("folder");
    std::os::unix::fs::symlink(&real, &folder_link).expect("symlink");
    let store = SqliteStore::open(folder_link.join("v.db")).expect("open through the link");
    let before = store.writer_stats().syncs;
    store
        .commit(Batch::events(vec![event(9)]))
        .await
        .expect("commit");
    assert_eq!(store.writer_stats().syncs, before + 1);
    store.close().await.expect("close");
    let store = SqliteStore::open(&target).expect("reopen");
    assert_eq!(
        store.chain_head().await.expect("head").expect("rows").seq,
        4
    );
}

/// The only test in this file that changes the working directory (it is process-wide).
#[tokio::test]
async fn a_vault_opened_by_a_relative_path_keeps_syncing_its_own_wal_after_a_chdir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&home).expect("dir");
    std::fs::create_dir(&elsewhere).expect("dir");
    let back = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(&home).expect("chdir");
    let store = SqliteStore::open("v.db").expect("open by a relative path");
    // The first sync comes after the move: `v.db-wal` there is no WAL of this store's.
    std::env::set_current_dir(&elsewhere).expect("chdir");
    let result = async {
        commits_are_synced(&store).await;
        store.close().await.expect("close");
    };
    result.await;
    std::env::set_current_dir(&back).expect("chdir back");
    assert!(!elsewhere.join("v.db-wal").exists());
    let store = SqliteStore::open(home.join("v.db")).expect("reopen");
    assert_eq!(
        store.chain_head().await.expect("head").expect("rows").seq,
        3
    );
}

/// With `Full`, handing out a chain head goes through a sync (the head may be a group's
/// whose sync is still under way); with `Normal` nothing is synced; a closed store refuses.
#[tokio::test]
async fn a_chain_head_is_handed_out_only_after_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        let mut options = SqliteOptions::default();
        options.synchronous = synchronous;
        let store = SqliteStore::open_with(dir.path().join(format!("{synchronous:?}.db")), options)
            .expect("open");
        store
            .commit(Batch::events(vec![event(0)]))
            .await
            .expect("commit");
        let before = store.writer_stats().syncs;
        let head = store.chain_head().await.expect("head").expect("one row");
        assert_eq!(head.seq, 1);
        let expected = match synchronous {
            Synchronous::Full => before + 1,
            _ => 0,
        };
        assert_eq!(store.writer_stats().syncs, expected, "{synchronous:?}");
        store.close().await.expect("close");
        let closed = store.chain_head().await.expect_err("closed");
        assert!(
            matches!(
                closed,
                Error::Store {
                    kind: StoreErrorKind::Closed,
                    ..
                }
            ),
            "{closed}"
        );
    }
}
