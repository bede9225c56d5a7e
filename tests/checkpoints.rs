//! Checkpoints from the `Vault`: every commit path hands its receipt to the audit chain, the
//! host's sink gets a checkpoint when one is due, verification against the newest kept
//! checkpoint catches a cut tail, an emptied chain, a rewrite and a forgery, and a master key
//! that cannot derive keys is refused when the vault is built.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use strongroom::audit::{chain_hash, ProblemKind, GENESIS_HASH};
use strongroom::config::{compile, AppConfig, CredentialSlot, Slots};
use strongroom::crypto::BackendId;
use strongroom::RewrapOptions;
use strongroom::{
    Checkpoint, CredentialRef, CredentialUpdate, DataKey, ErrorKind, KeyRing, KeyWrapper,
    LifecycleState, LocalKey, MemoryStore, NewCredential, Principal, ResolveContext, Scope,
    SecretString, SqliteStore, Store, Vault, VerifyReport,
};

type Kept = Arc<Mutex<Vec<Checkpoint>>>;

fn p(text: &str) -> Principal {
    Principal::parse(text).expect("principal")
}

fn key(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

/// A vault on `store` whose sink keeps every checkpoint in memory.
async fn vault_on(store: Arc<dyn Store>, every: u64) -> (Vault, Kept) {
    let kept: Kept = Arc::default();
    let sink = kept.clone();
    let vault = Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .checkpoints(
            Arc::new(move |cp: &Checkpoint| sink.lock().expect("lock").push(cp.clone())),
            every,
        )
        .build()
        .await
        .expect("vault");
    (vault, kept)
}

fn newest(kept: &Kept) -> Checkpoint {
    kept.lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a checkpoint")
}

/// The newest checkpoint vouches for the chain's head right now.
async fn at_head(vault: &Vault, kept: &Kept, step: &str) {
    let head = vault
        .store()
        .chain_head()
        .await
        .expect("head")
        .expect("rows");
    let cp = newest(kept);
    assert_eq!(
        (cp.seq, cp.head_hash),
        (head.seq, head.hash),
        "after {step}, the newest checkpoint is at the head"
    );
}

#[tokio::test]
async fn every_commit_path_of_the_vault_leaves_a_checkpoint_at_the_head() {
    let (vault, kept) = vault_on(Arc::new(MemoryStore::new()), 1).await;
    let admin = p("system_admin:root");
    let alice = p("app_user:crm:alice");
    let runtime = p("runtime:crm:alice");
    let ctx = ResolveContext::of(&runtime).expect("context");
    let shared = vault
        .create(
            &admin,
            NewCredential::new("shared", Scope::SystemWide, "openai", "", key("sk-s-1")),
        )
        .await
        .expect("create");
    at_head(&vault, &kept, "create").await;
    let mine = vault
        .create(
            &alice,
            NewCredential::new(
                "openai_main",
                Scope::per_user("alice").expect("scope"),
                "openai",
                "",
                key("sk-a-1"),
            ),
        )
        .await
        .expect("create");
    let shared = vault
        .update(
            &admin,
            &shared.id,
            1,
            CredentialUpdate {
                fields: Some(key("sk-s-2")),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    at_head(&vault, &kept, "update").await;
    vault.reveal(&admin, &shared.id).await.expect("reveal");
    at_head(&vault, &kept, "reveal").await;
    vault
        .reveal(&p("viewer:v"), &shared.id)
        .await
        .expect_err("a viewer never reads");
    at_head(&vault, &kept, "a denial").await;
    let reference = CredentialRef::compact("openai_main");
    vault
        .resolve(&runtime, &reference, &ctx)
        .await
        .expect_err("no grant yet");
    at_head(&vault, &kept, "a resolve refused for want of a grant").await;
    vault
        .grant_add(&alice, &mine.id, "crm")
        .await
        .expect("grant");
    at_head(&vault, &kept, "grant_add").await;
    vault
        .resolve(&runtime, &reference, &ctx)
        .await
        .expect("resolve");
    at_head(&vault, &kept, "resolve").await;
    let elsewhere = ResolveContext {
        app: "blog".into(),
        user: "alice".into(),
    };
    vault
        .resolve(&runtime, &reference, &elsewhere)
        .await
        .expect_err("not its own context");
    at_head(&vault, &kept, "a context refusal").await;

    // A deploy and a session start inject (one batch of rows each).
    let config = AppConfig::parse(
        "app.yaml",
        "agents:\n  - id: a\n    brain:\n      provider: openai\n      credential: openai_main\n",
    )
    .expect("parse");
    let slots = Slots::new().declare(
        "brain",
        CredentialSlot::new("brain_credential", "LLM")
            .providers(["openai"])
            .inject("api_key", "{block}.config.api_key"),
    );
    let manifest = compile("crm", &config, &slots, &vault.catalog()).expect("compiles");
    let deployment = strongroom::config::Deployment::new(&vault, manifest)
        .await
        .expect("deploy");
    deployment.start_session("alice").await.expect("session");
    at_head(&vault, &kept, "a session start").await;

    vault
        .grant_revoke(&alice, &mine.id, "crm", false)
        .await
        .expect("revoke");
    vault
        .grant_revoke(&alice, &mine.id, "crm", false)
        .await
        .expect("a repeat changes nothing");
    at_head(&vault, &kept, "a repeated revoke").await;
    let disabled = vault
        .set_state(&admin, &mine.id, 1, LifecycleState::Invalid, "leaked")
        .await
        .expect("an admin disables");
    at_head(&vault, &kept, "set_state").await;
    vault
        .set_state(
            &alice,
            &mine.id,
            disabled.version,
            LifecycleState::Filled,
            "mine",
        )
        .await
        .expect_err("the owner cannot lift an admin's disable");
    at_head(&vault, &kept, "a refused lift").await;

    // A re-wrap commits through the key ring; the vault checkpoints what it left.
    let new = Arc::new(LocalKey::generate().expect("key"));
    let ring = KeyRing::new(new).with_retired(vault.keys().active().clone());
    let report = vault
        .rewrap_keys(&admin, &ring, RewrapOptions::default())
        .await
        .expect("rewrap");
    assert!(report.complete && report.rewrapped == 2, "{report:?}");
    at_head(&vault, &kept, "a re-wrap").await;

    vault
        .delete(&admin, &shared.id, None)
        .await
        .expect("delete");
    at_head(&vault, &kept, "delete").await;

    // One checkpoint per commit, each newer than the last, and the newest verifies.
    let seqs: Vec<u64> = kept.lock().expect("lock").iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let report = vault
        .verify_audit_with(&admin, &newest(&kept))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.rows, *seqs.last().expect("some"));
}

#[tokio::test]
async fn the_sink_gets_a_checkpoint_every_n_rows() {
    let (vault, kept) = vault_on(Arc::new(MemoryStore::new()), 5).await;
    let admin = p("system_admin:root");
    for i in 0..12 {
        vault
            .create(
                &admin,
                NewCredential::new(
                    format!("k{i}"),
                    Scope::SystemWide,
                    "openai",
                    "",
                    key("sk-x"),
                ),
            )
            .await
            .expect("create");
    }
    let seqs: Vec<u64> = kept.lock().expect("lock").iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![5, 10]);
    // One on demand covers the rest.
    let cp = vault
        .audit()
        .checkpoint()
        .await
        .expect("made")
        .expect("rows");
    assert_eq!(cp.seq, 12);
    assert_eq!(newest(&kept), cp, "and goes to the sink too");
}

/// Nine rows (one credential created per commit) in a SQLite vault, and the checkpoint of
/// the ninth.
async fn nine_rows() -> (tempfile::TempDir, Vault, Checkpoint, Connection) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vault.db");
    let store = Arc::new(SqliteStore::open(&path).expect("open"));
    let (vault, kept) = vault_on(store, 1).await;
    for i in 0..9 {
        vault
            .create(
                &p("system_admin:root"),
                NewCredential::new(
                    format!("k{i}"),
                    Scope::SystemWide,
                    "openai",
                    "",
                    key("sk-x"),
                ),
            )
            .await
            .expect("create");
    }
    let cp = newest(&kept);
    assert_eq!(cp.seq, 9);
    let conn = Connection::open(&path).expect("open for tampering");
    (dir, vault, cp, conn)
}

async fn verify_with(vault: &Vault, cp: &Checkpoint) -> VerifyReport {
    let admin = p("system_admin:root");
    // The chain alone has nothing to say against any of these.
    let alone = vault.verify_audit(&admin).await.expect("verify");
    assert!(alone.is_ok(), "{:?}", alone.problem);
    let report = vault.verify_audit_with(&admin, cp).await.expect("verify");
    // The writer's quick check agrees.
    let quick = vault.audit().still_holds(cp).await.expect("check");
    assert_eq!(
        quick.map(|p| p.kind),
        report.problem.as_ref().map(|p| p.kind),
        "still_holds agrees with verify_against"
    );
    report
}

#[tokio::test]
async fn a_cut_tail_is_named_by_the_rows_it_lost() {
    let (_dir, vault, cp, conn) = nine_rows().await;
    conn.execute("DELETE FROM audit WHERE seq >= 5", [])
        .expect("cut");
    let report = verify_with(&vault, &cp).await;
    let problem = report.problem.expect("caught");
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::Truncated, 5),
        "{problem}"
    );
    assert!(
        problem
            .detail
            .contains("rows 5–9 missing (checkpoint at seq 9)"),
        "{problem}"
    );
    assert!(problem.detail.contains("ends at row 4"), "{problem}");
}

#[tokio::test]
async fn an_emptied_chain_is_caught() {
    let (_dir, vault, cp, conn) = nine_rows().await;
    conn.execute("DELETE FROM audit", []).expect("empty");
    let report = verify_with(&vault, &cp).await;
    assert_eq!(report.rows, 0);
    let problem = report.problem.expect("caught");
    assert_eq!((problem.kind, problem.seq), (ProblemKind::Truncated, 1));
    assert!(
        problem
            .detail
            .contains("rows 1–9 missing (checkpoint at seq 9); the chain is now empty"),
        "{problem}"
    );
}

/// Rewrites row `seq`'s details in the SQLite file and recomputes every hash from it on, as
/// someone who can write the database but not read the master key would.
async fn rewrite(vault: &Vault, conn: &Connection, seq: u64) {
    let rows = vault.store().audit_range(1, 1000).await.expect("rows");
    let mut prev = GENESIS_HASH;
    for mut row in rows {
        if row.seq == seq {
            row.event.details.insert("name".into(), "innocent".into());
        }
        let hash = chain_hash(&prev, row.seq, &row.event);
        if row.seq >= seq {
            conn.execute(
                "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                params![
                    serde_json::to_string(&row.event.details).expect("json"),
                    &prev[..],
                    &hash[..],
                    row.seq as i64
                ],
            )
            .expect("rewrite");
        }
        prev = hash;
    }
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_is_caught() {
    let (_dir, vault, cp, conn) = nine_rows().await;
    rewrite(&vault, &conn, 3).await;
    let report = verify_with(&vault, &cp).await;
    let problem = report.problem.expect("caught");
    assert_eq!(
        (problem.kind, problem.seq),
        (ProblemKind::CheckpointMismatch, 1)
    );
    assert!(
        problem
            .detail
            .contains("rows 1–9 rewritten (checkpoint at seq 9"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_forged_checkpoint_is_reported_and_an_intact_chain_passes() {
    let (_dir, vault, cp, _conn) = nine_rows().await;
    let report = verify_with(&vault, &cp).await;
    assert!(report.is_ok() && report.rows == 9, "{:?}", report.problem);
    let mut forged = cp.clone();
    forged.seq = 4;
    let report = vault
        .verify_audit_with(&p("system_admin:root"), &forged)
        .await
        .expect("verify");
    assert_eq!(
        report.problem.map(|p| p.kind),
        Some(ProblemKind::ForgedCheckpoint)
    );
    // Only those who may verify the chain may verify it against a checkpoint.
    let err = vault
        .verify_audit_with(&p("app_user:crm:alice"), &cp)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

/// A master key that wraps like a local one but, like the cloud backends today, cannot
/// derive keys.
#[derive(Debug)]
struct NoDerive(LocalKey);

#[async_trait::async_trait]
impl KeyWrapper for NoDerive {
    fn backend_id(&self) -> BackendId {
        BackendId::AwsKms
    }
    fn key_id(&self) -> &str {
        "arn:aws:kms:eu-west-1:000000000000:key/test"
    }
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        self.0.wrap(dek, aad).await
    }
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> strongroom::Result<DataKey> {
        self.0.unwrap(wrapped, aad).await
    }
    async fn derive_key(&self, _purpose: &str) -> strongroom::Result<DataKey> {
        Err(strongroom::Error::KeyUnavailable {
            key_id: self.key_id().into(),
            reason: "this backend does not derive keys".into(),
        })
    }
}

#[tokio::test]
async fn a_master_key_that_cannot_derive_keys_is_refused_for_checkpoints() {
    let wrapper = || Arc::new(NoDerive(LocalKey::generate().expect("key")));
    let err = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(wrapper())
        .checkpoints(Arc::new(|_: &Checkpoint| {}), 1)
        .build()
        .await
        .expect_err("no checkpoint key");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("aws_kms") && message.contains("VaultBuilder::checkpoints"),
        "{message}"
    );
    // Without checkpoints the same key serves, and an on-demand checkpoint says why not.
    let vault = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(wrapper())
        .build()
        .await
        .expect("vault");
    vault
        .create(
            &p("system_admin:root"),
            NewCredential::new("k", Scope::SystemWide, "openai", "", key("sk-x")),
        )
        .await
        .expect("create");
    let err = vault.audit().checkpoint().await.expect_err("cannot sign");
    assert_eq!(err.kind(), ErrorKind::KeyUnavailable);
}

/// HMAC-SHA256, for checking the documented derivations from outside the crate.
fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `HKDF-Expand(HKDF-Extract(salt, ikm), info, 32)`, as docs/FORMAT.md writes it.
fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac256(salt, &[ikm]);
    hmac256(&prk, &[info, &[1]])
}

/// The checkpoint MAC of docs/AUDIT.md.
fn checkpoint_mac(key: &[u8], cp: &Checkpoint) -> Vec<u8> {
    hmac256(
        key,
        &[
            b"strongroom/checkpoint/v1",
            &cp.seq.to_be_bytes(),
            &cp.head_hash,
            &cp.time.0.to_be_bytes(),
            &(cp.key_id.len() as u32).to_be_bytes(),
            cp.key_id.as_bytes(),
        ],
    )
    .to_vec()
}

const MASTER: [u8; 32] = [0x5c; 32];

async fn vault_with_known_key(store: Arc<dyn Store>) -> (Vault, Kept) {
    let kept: Kept = Arc::default();
    let sink = kept.clone();
    let vault = Vault::builder()
        .store(store)
        .key_wrapper(Arc::new(LocalKey::from_bytes(&MASTER, "test")))
        .checkpoints(
            Arc::new(move |cp: &Checkpoint| sink.lock().expect("lock").push(cp.clone())),
            1,
        )
        .build()
        .await
        .expect("vault");
    (vault, kept)
}

/// The checkpoint key is derived under a label of the library's own: no purpose a caller
/// passes to `derive_key` (the format-1 purpose string included) yields it, so no caller
/// can forge a checkpoint with a derived key.
#[tokio::test]
async fn no_derive_key_purpose_yields_the_checkpoint_key() {
    let (vault, kept) = vault_with_known_key(Arc::new(MemoryStore::new())).await;
    vault
        .create(
            &p("system_admin:root"),
            NewCredential::new("k", Scope::SystemWide, "openai", "", key("sk-x")),
        )
        .await
        .expect("create");
    let cp = newest(&kept);
    let key = LocalKey::from_bytes(&MASTER, "test");
    assert_eq!(cp.key_id, key.key_id());
    // The documented derivation is the real one.
    let prk = hmac256(b"strongroom/local-key/v2", &[&MASTER]);
    let documented = hmac256(
        &prk,
        &[b"strongroom/v2/internal/audit-checkpoint-key", &[1]],
    );
    assert_eq!(checkpoint_mac(&documented, &cp), cp.mac);
    assert!(vault.audit().check_checkpoint(&cp).await.expect("check"));
    for purpose in [
        strongroom::audit::CHECKPOINT_KEY_PURPOSE,
        "strongroom/v2/internal/audit-checkpoint-key",
        "../internal/audit-checkpoint-key",
        "audit-checkpoint-key",
        "",
    ] {
        let derived = key.derive_key(purpose).await.expect("derive");
        assert_ne!(derived.expose_secret(), &documented, "{purpose:?}");
        // A checkpoint claiming a later row, signed with the derived key: refused.
        let mut forged = cp.clone();
        forged.seq += 5;
        forged.mac = checkpoint_mac(derived.expose_secret(), &forged);
        assert!(
            !vault
                .audit()
                .check_checkpoint(&forged)
                .await
                .expect("check"),
            "{purpose:?}"
        );
    }
}

/// A checkpoint made before format 2 (under the key's format-1 id and checkpoint key)
/// still checks: the key ring holds the key under both ids.
#[tokio::test]
async fn checkpoints_made_before_format_2_still_verify() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (vault, _kept) = vault_with_known_key(store.clone()).await;
    vault
        .create(
            &p("system_admin:root"),
            NewCredential::new("k", Scope::SystemWide, "openai", "", key("sk-x")),
        )
        .await
        .expect("create");
    let head = store.chain_head().await.expect("head").expect("rows");
    let legacy = LocalKey::from_bytes(&MASTER, "test")
        .legacy_key_id()
        .to_string();
    let mut cp = Checkpoint {
        seq: head.seq,
        head_hash: head.hash,
        time: strongroom::Timestamp(1_700_000_000_000),
        key_id: legacy,
        mac: vec![0; 32],
    };
    let v1_key = hkdf32(
        b"strongroom/derive/v1",
        &MASTER,
        b"strongroom audit checkpoint v1",
    );
    cp.mac = checkpoint_mac(&v1_key, &cp);
    assert!(vault.audit().check_checkpoint(&cp).await.expect("check"));
    let report = vault
        .verify_audit_with(&p("system_admin:root"), &cp)
        .await
        .expect("verify");
    assert!(report.problem.is_none(), "{report:?}");
    // The same under a wrong key is still a forgery.
    cp.mac = checkpoint_mac(&[0u8; 32], &cp);
    assert!(!vault.audit().check_checkpoint(&cp).await.expect("check"));
}
