//! Audit checkpoints with a cloud master key: each service's MAC or signature makes them
//! (AWS KMS `GenerateMac`, Google Cloud KMS `macSign`, Vault transit `hmac`, Azure Key Vault
//! `sign`) and checks them (`VerifyMac`, `macVerify`, transit `verify`, the Key Vault key's
//! public part), a forged or altered one is refused, and a cut tail is caught against one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use strongroom::audit::{AuditKey, ProblemKind};
use strongroom::crypto::kms::{AwsKmsKey, AzureKeyVaultKey, GcpKmsKey, VaultTransitKey};
use strongroom::{
    Checkpoint, ErrorKind, KeyWrapper, NewCredential, Principal, Scope, SecretString, SqliteStore,
    Vault,
};

use super::{http, s, servers};

type Kept = Arc<Mutex<Vec<Checkpoint>>>;

fn admin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}

async fn vault(path: &std::path::Path, key: Arc<dyn KeyWrapper>, kept: &Kept) -> Vault {
    let sink = kept.clone();
    Vault::builder()
        .store(Arc::new(SqliteStore::open(path).expect("open")))
        .key_wrapper(key)
        .namespace("kms-checkpoints")
        .checkpoints(
            Arc::new(move |cp: &Checkpoint| sink.lock().expect("lock").push(cp.clone())),
            1,
        )
        .build()
        .await
        .expect("a vault whose master key offers a checkpoint key")
}

/// A vault on `make()`'s key makes a checkpoint per commit named `prefix…`; the newest
/// checks, also in a vault started afresh on the same key; a forged or altered one does
/// not; and once the tail is cut, verifying against it names the rows lost.
async fn checkpoints_with(make: impl Fn() -> Arc<dyn KeyWrapper>, prefix: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let kept: Kept = Arc::default();
    let first = vault(&path, make(), &kept).await;
    for i in 0..6 {
        let fields =
            BTreeMap::from([("api_key".to_string(), SecretString::from(format!("sk-{i}")))]);
        first
            .create(
                &admin(),
                NewCredential::new(format!("k{i}"), Scope::SystemWide, "openai", "", fields),
            )
            .await
            .expect("create");
    }
    let cp = kept.lock().expect("lock").last().cloned().expect("made");
    assert_eq!(cp.seq, 6, "one checkpoint per commit");
    assert!(cp.key_id.starts_with(prefix), "{} for {prefix}", cp.key_id);
    assert!(!cp.mac.is_empty());
    assert_eq!(
        first.audit().checkpoint_key_id().await.expect("id"),
        cp.key_id
    );
    // As the CLI keeps it: JSON with the tag in hex, read back the same.
    let line = serde_json::to_string(&cp).expect("json");
    assert_eq!(
        serde_json::from_str::<Checkpoint>(&line).expect("parse"),
        cp
    );

    // A vault started afresh (no cached keys or tokens) checks it too.
    let again = vault(&path, make(), &Arc::default()).await;
    assert!(again.audit().check_checkpoint(&cp).await.expect("check"));
    assert!(again.audit().can_check(&cp.key_id).await);
    let report = again
        .verify_audit_with(&admin(), &cp)
        .await
        .expect("verify");
    assert!(report.is_ok() && report.rows == 6, "{:?}", report.problem);

    // Forged: another row, another time, an altered tag, someone else's tag.
    let mut later = cp.clone();
    later.seq = 60;
    let mut retimed = cp.clone();
    retimed.time.0 += 1;
    let mut flipped = cp.clone();
    if let Some(last) = flipped.mac.last_mut() {
        *last ^= 1;
    }
    let mut truncated = cp.clone();
    truncated.mac.truncate(cp.mac.len() / 2);
    let mut empty = cp.clone();
    empty.mac.clear();
    for forged in [&later, &retimed, &flipped, &truncated, &empty] {
        assert!(
            !again.audit().check_checkpoint(forged).await.expect("check"),
            "{prefix}: {forged:?}"
        );
    }
    let report = again
        .verify_audit_with(&admin(), &later)
        .await
        .expect("verify");
    assert_eq!(
        report.problem.map(|p| p.kind),
        Some(ProblemKind::ForgedCheckpoint)
    );

    // The tail cut off: the chain alone looks intact, the checkpoint says what was lost.
    Connection::open(&path)
        .expect("open for tampering")
        .execute("DELETE FROM audit WHERE seq >= 4", [])
        .expect("cut");
    let alone = again.verify_audit(&admin()).await.expect("verify");
    assert!(alone.is_ok(), "{:?}", alone.problem);
    let report = again
        .verify_audit_with(&admin(), &cp)
        .await
        .expect("verify");
    let problem = report.problem.expect("the cut is caught");
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Truncated, 4),
        "{problem}"
    );
    assert!(
        problem
            .detail
            .contains("rows 4–6 missing (checkpoint at seq 6)"),
        "{problem}"
    );
    assert!(again
        .audit()
        .still_holds(&cp)
        .await
        .expect("check")
        .is_some());
}

#[tokio::test]
async fn aws_kms_checkpoints_with_generate_mac_and_verify_mac() {
    let srv = servers();
    if let Some(e) = srv.info.get("aws_error") {
        panic!("AWS KMS test server: {e}");
    }
    let a = srv.info["aws"].clone();
    let plain = {
        let a = a.clone();
        move || {
            AwsKmsKey::new(
                s(&a, "/key"),
                s(&a, "/region"),
                s(&a, "/access_key_id"),
                s(&a, "/secret_access_key"),
                None,
                http(),
            )
            .expect("key")
            .with_endpoint(s(&a, "/endpoint"))
        }
    };
    let mac_key = s(&a, "/mac_key");
    checkpoints_with(
        || Arc::new(plain().with_mac_key(mac_key.clone()).expect("mac key")),
        &format!("aws_kms_mac:{mac_key}"),
    )
    .await;

    // An encryption key alone makes no MACs: asking for checkpoints says what to configure.
    let err = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(Arc::new(plain()))
        .checkpoints(Arc::new(|_: &Checkpoint| {}), 1)
        .build()
        .await
        .expect_err("no checkpoint key");
    assert_eq!(err.kind(), ErrorKind::Config);
    let message = err.to_string();
    for needle in [
        "STRONGROOM_AWS_KMS_MAC_KEY_ID",
        "VaultBuilder::checkpoint_key",
        "aws_kms",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(!message.contains(&s(&a, "/secret_access_key")), "{message}");
    // ... and an audit key of the vault's own makes them instead.
    let (audit, _) = AuditKey::generate().expect("audit key");
    let audit = Arc::new(audit);
    let kept: Kept = Arc::default();
    let sink = kept.clone();
    let v = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(Arc::new(plain()))
        .checkpoint_key(audit.clone())
        .checkpoints(
            Arc::new(move |cp: &Checkpoint| sink.lock().expect("lock").push(cp.clone())),
            1,
        )
        .build()
        .await
        .expect("vault");
    let cp = v.audit().checkpoint().await.expect("made");
    assert!(cp.is_none(), "an empty chain has no checkpoint");
    v.create(
        &admin(),
        NewCredential::new(
            "k",
            Scope::SystemWide,
            "openai",
            "",
            BTreeMap::from([("api_key".into(), SecretString::from("sk-1".to_string()))]),
        ),
    )
    .await
    .expect("create");
    let cp = kept.lock().expect("lock").last().cloned().expect("made");
    assert!(cp.key_id.starts_with("audit:"), "{}", cp.key_id);
    assert!(v.audit().check_checkpoint(&cp).await.expect("check"));
}

#[tokio::test]
async fn gcp_kms_checkpoints_with_mac_sign_and_mac_verify() {
    let srv = servers();
    let g = srv.info["gcp"].clone();
    let sa = g["service_account"].to_string();
    let mac_key = s(&g, "/mac_key");
    let make = || -> Arc<dyn KeyWrapper> {
        Arc::new(
            GcpKmsKey::with_service_account(s(&g, "/key"), &sa, http())
                .expect("key")
                .with_endpoint(s(&g, "/endpoint"))
                .with_mac_key(mac_key.clone())
                .expect("mac key"),
        )
    };
    checkpoints_with(make, &format!("gcp_kms_mac:{mac_key}")).await;
    // A MAC key must be a key version.
    let err = GcpKmsKey::with_access_token(s(&g, "/key"), "t", http())
        .expect("key")
        .with_mac_key(s(&g, "/key"))
        .expect_err("not a version");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn vault_transit_checkpoints_with_hmac_and_verify() {
    let srv = servers();
    let v = srv.info["vault"].clone();
    let key = || VaultTransitKey::new(s(&v, "/addr"), s(&v, "/key"), s(&v, "/token"), http());
    // The transit key's own HMAC, then another transit key's.
    checkpoints_with(
        || Arc::new(key().expect("key")),
        &format!("vault_hmac:{}/transit/{}", s(&v, "/addr"), s(&v, "/key")),
    )
    .await;
    checkpoints_with(
        || {
            Arc::new(
                key()
                    .expect("key")
                    .with_hmac_key(s(&v, "/hmac_key"))
                    .expect("hmac key"),
            )
        },
        &format!(
            "vault_hmac:{}/transit/{}",
            s(&v, "/addr"),
            s(&v, "/hmac_key")
        ),
    )
    .await;
}

#[tokio::test]
async fn azure_key_vault_checkpoints_with_sign_rs256_and_es256() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let key = || {
        AzureKeyVaultKey::new(
            &s(&z, "/key_url"),
            s(&z, "/tenant"),
            s(&z, "/client_id"),
            s(&z, "/client_secret"),
            http(),
        )
        .expect("key")
        .with_authority(s(&z, "/authority"))
    };
    // The wrapping key signs (RSA, RS256) ...
    checkpoints_with(
        || Arc::new(key()),
        &format!("azure_kv_sign:{}", s(&z, "/key_url")),
    )
    .await;
    // ... or an EC P-256 key of its own (ES256), named without a version.
    checkpoints_with(
        || {
            Arc::new(
                key()
                    .with_signing_key(&s(&z, "/ec_signing_key_url"))
                    .expect("signing key"),
            )
        },
        &format!("azure_kv_sign:{}", s(&z, "/ec_signing_key_url")),
    )
    .await;
}
