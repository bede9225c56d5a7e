//! Envelope encryption: known answers, every tamper, wrong keys, moved blobs, re-wrapping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;
use strongroom::crypto::{envelope, BackendId, KeyWrapper};

use strongroom::{
    BoundFields, DataKey, Error, ErrorKind, ExposeSecret, KeyRing, LifecycleState, LocalKey,
    MemoryStore, Principal, RecordAad, RecordIdentity, RewrapOptions, Scope, ScopeKind, Store,
    Timestamp, Vault,
};

const CANARY: &[u8] = b"sk-live-CANARY-7f3a9d2e-do-not-leak-0123456789abcdefghijklmnopqrstu";

fn ring() -> KeyRing {
    KeyRing::new(Arc::new(LocalKey::generate().expect("key")))
}

fn ident<'a>(cid: &'a str, scope: &'a Scope, version: u64) -> RecordIdentity<'a> {
    RecordIdentity::new(cid, scope, version)
}

fn assert_refused(result: strongroom::Result<strongroom::SecretBox<[u8]>>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: opened, but must have been refused"),
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::DecryptFailed | ErrorKind::Corrupt | ErrorKind::KeyUnavailable
                ),
                "{what}: unexpected error kind {:?}: {e}",
                e.kind()
            );
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("CANARY"),
                "{what}: the error leaks plaintext: {shown}"
            );
            e
        }
    }
}

/// One known-answer vector, read through the public API only.
struct Vector {
    name: String,
    ring: KeyRing,
    credential_id: String,
    scope: Scope,
    version: u64,
    plaintext: Vec<u8>,
    blob: Vec<u8>,
}

impl Vector {
    fn id(&self) -> RecordIdentity<'_> {
        ident(&self.credential_id, &self.scope, self.version)
    }
}

fn load_vectors(file: &str) -> Vec<Vector> {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("json");
    let vectors = doc["vectors"].as_array().expect("array");
    assert!(vectors.len() >= 4, "{file}: at least four vectors");
    vectors
        .iter()
        .map(|v| {
            let text = |field: &str| v[field].as_str().expect(field).to_string();
            let name = text("name");
            let mut master = [0u8; 32];
            hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
            let key = LocalKey::from_bytes(&master, "vector");
            // Format-1 vectors name the key by the id format 1 gave it.
            assert_eq!(
                key.legacy_key_id(),
                text("master_key_id"),
                "{file}: {name}: key id"
            );
            let scope = Scope::from_parts(
                ScopeKind::parse(&text("scope_kind")).expect("kind"),
                &text("owner"),
            )
            .expect("scope");
            Vector {
                ring: KeyRing::new(Arc::new(key)),
                credential_id: text("credential_id"),
                scope,
                version: v["version"].as_u64().expect("version"),
                plaintext: hex::decode(text("plaintext_hex")).expect("hex"),
                blob: hex::decode(text("blob_hex")).expect("hex"),
                name,
            }
        })
        .collect()
}

#[tokio::test]
async fn known_answer_vectors_open() {
    for v in load_vectors("envelope_vectors.json") {
        let plain = v.ring.open(&v.blob, &v.id()).await.expect("vector opens");
        assert_eq!(plain.expose_secret(), &v.plaintext[..], "vector {}", v.name);
    }
}

/// The vectors in `envelope_vectors_python.json` were encoded by `tests/independent_decoder.py`
/// (written from `docs/FORMAT.md` alone), not by this crate: the reader must open each, and
/// refuse every copy with one byte changed and the blob read as another version.
#[tokio::test]
async fn vectors_encoded_by_the_independent_python_encoder_open() {
    let vectors = load_vectors("envelope_vectors_python.json");
    let kinds: std::collections::HashSet<_> = vectors.iter().map(|v| v.scope.kind()).collect();
    assert!(
        kinds.contains(&ScopeKind::PerAppPerUser) && kinds.contains(&ScopeKind::PerAgent),
        "the Python vectors cover per_app_per_user and per_agent"
    );
    for v in &vectors {
        let id = v.id();
        let plain = v.ring.open(&v.blob, &id).await.unwrap_or_else(|e| {
            panic!("Python vector `{}` does not open: {e}", v.name);
        });
        assert_eq!(plain.expose_secret(), &v.plaintext[..], "vector {}", v.name);
        for i in 0..v.blob.len() {
            let mut tampered = v.blob.clone();
            tampered[i] ^= 0x01;
            assert_refused(
                v.ring.open(&tampered, &id).await,
                &format!("vector `{}` with byte {i} flipped", v.name),
            );
        }
        let other_version = v.version.wrapping_add(1);
        let e = assert_refused(
            v.ring
                .open(&v.blob, &ident(&v.credential_id, &v.scope, other_version))
                .await,
            &format!("vector `{}` read as version {other_version}", v.name),
        );
        assert_eq!(e.kind(), ErrorKind::DecryptFailed, "vector {}", v.name);
    }
}

/// Sealed record bodies encoded by the independent Python encoder (`record_vectors.json`):
/// `open_record` opens each for its record version, and refuses it for any other version,
/// record, or as a credential blob.
#[tokio::test]
async fn record_body_vectors_open_only_as_the_record_they_were_sealed_for() {
    let path = format!(
        "{}/tests/data/record_vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let vectors = doc["vectors"].as_array().expect("array");
    assert!(vectors.len() >= 3);
    for v in vectors {
        let text = |field: &str| v[field].as_str().expect(field).to_string();
        let mut master = [0u8; 32];
        hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
        let ring = KeyRing::new(Arc::new(LocalKey::from_bytes(&master, "vector")));
        let (kind, owner, key) = (text("kind"), text("owner"), text("key"));
        let version = v["version"].as_u64().expect("version");
        let aad = RecordAad::new(&kind, &owner, &key, version);
        let blob = hex::decode(text("blob_hex")).expect("hex");
        let plain = ring.open_record(&blob, &aad).await.expect("opens");
        assert_eq!(
            hex::encode(plain.expose_secret()),
            text("plaintext_hex"),
            "{}",
            text("name")
        );
        let other_owner = format!("{owner}x");
        for (what, other) in [
            ("another version", aad.at_version(version.wrapping_add(1))),
            (
                "another owner",
                RecordAad::new(&kind, &other_owner, &key, version),
            ),
            (
                "another kind",
                RecordAad::new("lease2", &owner, &key, version),
            ),
        ] {
            let e = assert_refused(ring.open_record(&blob, &other).await, what);
            assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{what}");
        }
        // The same identity spelled as a credential's never opens a record body.
        let scope = Scope::per_user("u1").expect("scope");
        assert_refused(
            ring.open(&blob, &ident(&key, &scope, version)).await,
            "a record body opened as a credential blob",
        );
    }
}

#[tokio::test]
async fn record_bodies_and_credential_blobs_do_not_open_as_each_other() {
    let ring = ring();
    let scope = Scope::SystemWide;
    let credential = ident("cred-1", &scope, 1);
    let record = RecordAad::new("lease", "", "cred-1", 1);
    let sealed = ring.seal_record(CANARY, &record).await.expect("seal");
    let plain = ring
        .open_record(&sealed.bytes, &record)
        .await
        .expect("open");
    assert_eq!(plain.expose_secret(), CANARY);
    assert_refused(
        ring.open(&sealed.bytes, &credential).await,
        "a record body opened as a credential",
    );
    let blob = ring.seal(CANARY, &credential).await.expect("seal");
    assert_refused(
        ring.open_record(&blob.bytes, &record).await,
        "a credential blob opened as a record body",
    );
    // And the data-key cache keeps the domains apart too.
    let cached = ring.clone().with_dek_cache(Default::default());
    let sealed = cached.seal_record(CANARY, &record).await.expect("seal");
    assert_refused(
        cached.open(&sealed.bytes, &credential).await,
        "a record body opened as a credential through the cache",
    );
    assert_eq!(
        cached
            .open_record(&sealed.bytes, &record)
            .await
            .expect("open")
            .expose_secret(),
        CANARY
    );
}

#[tokio::test]
async fn seal_then_open_round_trips_and_each_seal_is_fresh() {
    let ring = ring();
    let scope = Scope::per_user("alice").expect("scope");
    let id = ident("c1", &scope, 1);
    let a = ring.seal(CANARY, &id).await.expect("seal");
    let b = ring.seal(CANARY, &id).await.expect("seal");
    assert_ne!(a.bytes, b.bytes, "fresh data key and nonce per seal");
    assert!(
        !a.bytes
            .windows(8)
            .any(|w| CANARY.windows(8).any(|c| c == w)),
        "no plaintext in blob"
    );
    assert_eq!(a.key_id, ring.active().key_id());
    assert_eq!(
        ring.open(&a.bytes, &id)
            .await
            .expect("open")
            .expose_secret(),
        CANARY
    );
    let empty = ring.seal(b"", &id).await.expect("seal empty");
    assert!(ring
        .open(&empty.bytes, &id)
        .await
        .expect("open")
        .expose_secret()
        .is_empty());
}

#[tokio::test]
async fn every_flipped_bit_is_refused() {
    let ring = ring();
    let scope = Scope::per_app_per_user("crm", "bob").expect("scope");
    let id = ident("c-flip", &scope, 7);
    let blob = ring.seal(CANARY, &id).await.expect("seal").bytes;
    for byte in 0..blob.len() {
        for bit in 0..8 {
            let mut t = blob.clone();
            t[byte] ^= 1 << bit;
            assert_refused(
                ring.open(&t, &id).await,
                &format!("bit {bit} of byte {byte}"),
            );
        }
    }
}

#[tokio::test]
async fn every_truncation_and_extension_is_refused() {
    let ring = ring();
    let scope = Scope::SystemWide;
    let id = ident("c-trunc", &scope, 1);
    let blob = ring.seal(CANARY, &id).await.expect("seal").bytes;
    for len in 0..blob.len() {
        assert_refused(
            ring.open(&blob[..len], &id).await,
            &format!("truncated to {len}"),
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert_refused(ring.open(&longer, &id).await, "one byte appended");
}

#[tokio::test]
async fn a_blob_moved_to_another_record_is_refused() {
    let ring = ring();
    let u1 = Scope::per_user("u1").expect("scope");
    let blob = ring
        .seal(CANARY, &ident("c1", &u1, 3))
        .await
        .expect("seal")
        .bytes;
    let others = [
        ("another credential", "c2".to_string(), u1.clone(), 3),
        ("another version", "c1".into(), u1.clone(), 4),
        ("an older version", "c1".into(), u1.clone(), 2),
        (
            "another owner",
            "c1".into(),
            Scope::per_user("u2").expect("scope"),
            3,
        ),
        (
            "another scope",
            "c1".into(),
            Scope::per_app_shared("u1").expect("scope"),
            3,
        ),
        ("system_wide", "c1".into(), Scope::SystemWide, 3),
        (
            "per_agent",
            "c1".into(),
            Scope::per_agent("u1").expect("scope"),
            3,
        ),
    ];
    for (label, cid, scope, version) in &others {
        let e = assert_refused(ring.open(&blob, &ident(cid, scope, *version)).await, label);
        assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{label}");
    }
    // Owner strings that concatenate the same way still differ.
    let pau = Scope::per_app_per_user("a", "b").expect("scope");
    let blob = ring
        .seal(CANARY, &ident("c1", &pau, 1))
        .await
        .expect("seal")
        .bytes;
    let e = assert_refused(
        ring.open(
            &blob,
            &ident("c1", &Scope::per_app_shared("a").expect("s"), 1),
        )
        .await,
        "per_app_shared a",
    );
    assert_eq!(e.kind(), ErrorKind::DecryptFailed);
}

#[tokio::test]
async fn a_wrapped_key_swapped_between_records_is_refused() {
    let ring = ring();
    let scope = Scope::SystemWide;
    let (ida, idb) = (ident("a", &scope, 1), ident("b", &scope, 1));
    let a = ring.seal(CANARY, &ida).await.expect("seal").bytes;
    let b = ring.seal(b"other secret", &idb).await.expect("seal").bytes;
    let w = u16::from_be_bytes([a[3], a[4]]) as usize;
    assert_eq!(w, u16::from_be_bytes([b[3], b[4]]) as usize);
    // b's payload with a's wrapped key, opened as a and as b.
    let mut mixed = b.clone();
    mixed[5..5 + w].copy_from_slice(&a[5..5 + w]);
    assert_refused(ring.open(&mixed, &ida).await, "swapped wrapped key as a");
    assert_refused(ring.open(&mixed, &idb).await, "swapped wrapped key as b");
    // a's wrapped key and commitment, b's payload.
    let mut mixed = b.clone();
    mixed[..5 + w + 12 + 32].copy_from_slice(&a[..5 + w + 12 + 32]);
    assert_refused(
        ring.open(&mixed, &ida).await,
        "a's key and commitment over b's payload",
    );
}

/// A key that claims another key's id: the wrong master key behind the right name.
#[derive(Debug)]
struct Impostor {
    inner: LocalKey,
    claimed: String,
}

#[async_trait]
impl KeyWrapper for Impostor {
    fn backend_id(&self) -> BackendId {
        BackendId::Local
    }
    fn key_id(&self) -> &str {
        &self.claimed
    }
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        self.inner.wrap(dek, aad).await
    }
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> strongroom::Result<DataKey> {
        self.inner.unwrap(wrapped, aad).await
    }
    async fn derive_key(&self, purpose: &str) -> strongroom::Result<DataKey> {
        self.inner.derive_key(purpose).await
    }
}

#[tokio::test]
async fn the_wrong_master_key_is_refused() {
    let right = ring();
    let scope = Scope::SystemWide;
    let id = ident("c", &scope, 1);
    let blob = right.seal(CANARY, &id).await.expect("seal").bytes;

    let e = assert_refused(ring().open(&blob, &id).await, "a ring without the key");
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable);
    assert!(
        e.to_string().contains(right.active().key_id()),
        "names the missing key: {e}"
    );

    let impostor = KeyRing::new(Arc::new(Impostor {
        inner: LocalKey::generate().expect("key"),
        claimed: right.active().key_id().to_string(),
    }));
    let e = assert_refused(
        impostor.open(&blob, &id).await,
        "another key under the same id",
    );
    assert_eq!(e.kind(), ErrorKind::DecryptFailed);
}

#[tokio::test]
async fn parse_rejects_unknown_versions_and_flags() {
    let ring = ring();
    let scope = Scope::SystemWide;
    let id = ident("c", &scope, 1);
    let blob = ring.seal(CANARY, &id).await.expect("seal").bytes;
    assert_eq!(blob[0], 2, "new seals are format version 2");
    let mut v3 = blob.clone();
    v3[0] = 3;
    let e = assert_refused(ring.open(&v3, &id).await, "version 3");
    assert!(e.to_string().contains("version 3"), "{e}");
    // Read as version 1, the same bytes mean other associated data and another commitment:
    // no downgrade.
    let mut v1 = blob.clone();
    v1[0] = 1;
    assert_eq!(
        assert_refused(ring.open(&v1, &id).await, "version 1").kind(),
        ErrorKind::DecryptFailed
    );
    let mut uncommitted = blob.clone();
    uncommitted[1] = 0;
    assert_eq!(
        assert_refused(ring.open(&uncommitted, &id).await, "flags 0").kind(),
        ErrorKind::Corrupt
    );
    let parsed = envelope::parse(&blob, &|| "test".into()).expect("parse");
    assert_eq!(parsed.key_id, ring.active().key_id());
    assert_eq!(parsed.ciphertext.len(), CANARY.len() + envelope::TAG_LEN);
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let key = LocalKey::generate().expect("key");
    let dek = DataKey::generate().expect("dek");
    let ring = KeyRing::new(Arc::new(
        LocalKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "test").expect("key"),
    ));
    let scope = Scope::SystemWide;
    let sealed = ring
        .seal(CANARY, &ident("c", &scope, 1))
        .await
        .expect("seal");
    let plain = ring
        .open(&sealed.bytes, &ident("c", &scope, 1))
        .await
        .expect("open");
    let shown = format!("{key:?} {dek:?} {ring:?} {sealed:?} {plain:?}");
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(!shown.contains("AAECAwQFBgcI"), "{shown}");
    assert!(
        !shown.contains(&hex::encode(dek.expose_secret())),
        "{shown}"
    );
    assert!(shown.contains("REDACTED"), "{shown}");
}

/// A wrapper that works `budget` times and then fails, as a KMS outage or a crash would.
#[derive(Debug)]
struct Failing {
    inner: Arc<dyn KeyWrapper>,
    budget: AtomicUsize,
}

#[async_trait]
impl KeyWrapper for Failing {
    fn backend_id(&self) -> BackendId {
        self.inner.backend_id()
    }
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.budget.store(0, Ordering::SeqCst);
            return Err(Error::Transport {
                peer: "test kms".into(),
                message: "connection reset".into(),
            });
        }
        self.inner.wrap(dek, aad).await
    }
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> strongroom::Result<DataKey> {
        self.inner.unwrap(wrapped, aad).await
    }
    async fn derive_key(&self, purpose: &str) -> strongroom::Result<DataKey> {
        self.inner.derive_key(purpose).await
    }
}

async fn fill(store: &dyn Store, ring: &KeyRing, n: usize) -> Vec<strongroom::CredentialRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut r = strongroom::conformance::sample_record(&format!("c{i}"), Scope::SystemWide);
        let secret = format!("secret-{i}");
        let sealed = ring
            .seal(secret.as_bytes(), &r.identity())
            .await
            .expect("seal");
        r.sealed = sealed.bytes;
        r.key_id = sealed.key_id;
        store
            .commit(strongroom::Batch {
                mutations: vec![strongroom::Mutation::Put {
                    record: r.clone(),
                    precondition: strongroom::Precondition::CreateOnly,
                }],
                events: vec![],
            })
            .await
            .expect("store");
        out.push(r);
    }
    out
}

#[tokio::test]
async fn rewrap_interrupted_half_way_then_rerun_finishes_the_job() {
    let store = Arc::new(MemoryStore::new());
    let old: Arc<dyn KeyWrapper> = Arc::new(LocalKey::generate().expect("key"));
    let new: Arc<dyn KeyWrapper> = Arc::new(LocalKey::generate().expect("key"));
    let records = fill(store.as_ref(), &KeyRing::new(old.clone()), 250).await;
    // Re-wrapping is a vault operation, decided by the policy and audited as its actor.
    let vault = Vault::builder()
        .store(store.clone())
        .key_wrapper(old.clone())
        .build()
        .await
        .expect("vault");
    let operator = Principal::parse("system_admin:operator").expect("principal");

    // The new key fails after 120 wraps: the run stops with an error part way through.
    let failing = KeyRing::new(Arc::new(Failing {
        inner: new.clone(),
        budget: AtomicUsize::new(120),
    }))
    .with_retired(old.clone());
    let options = || RewrapOptions {
        batch_size: 50,
        ..RewrapOptions::default()
    };
    let err = vault
        .rewrap_keys(&operator, &failing, options())
        .await
        .expect_err("the outage stops it");
    assert_eq!(err.kind(), ErrorKind::Transport);
    let moved = store
        .list(&strongroom::ListFilter {
            key_id: Some(new.key_id().to_string()),
            ..Default::default()
        })
        .await
        .expect("list")
        .len();
    assert_eq!(
        moved, 100,
        "two whole batches landed, the third left nothing half-done"
    );

    // Every record still opens with a ring that holds both keys.
    let both = KeyRing::new(new.clone()).with_retired(old.clone());
    for r in &records {
        let stored = store.get(&r.id).await.expect("get").expect("present");
        both.open(&stored.sealed, &stored.identity())
            .await
            .expect("opens mid-rotation");
    }

    // Re-run: finishes the job; a third run has nothing to do.
    let report = vault
        .rewrap_keys(&operator, &both, options())
        .await
        .expect("rerun");
    assert!(report.complete);
    assert_eq!(report.rewrapped, 150);
    let again = vault
        .rewrap_keys(&operator, &both, options())
        .await
        .expect("third run");
    assert_eq!((again.rewrapped, again.complete), (0, true));

    // The old key can now be retired: a ring with only the new key opens everything, and the
    // payload bytes are unchanged.
    let only_new = KeyRing::new(new.clone());
    for (i, r) in records.iter().enumerate() {
        let stored = store.get(&r.id).await.expect("get").expect("present");
        assert_eq!(stored.key_id, new.key_id());
        assert_eq!(
            stored.version, r.version,
            "re-wrapping does not bump versions"
        );
        assert_eq!(
            stored.sealed[stored.sealed.len() - 40..],
            r.sealed[r.sealed.len() - 40..],
            "payload untouched"
        );
        let plain = only_new
            .open(&stored.sealed, &stored.identity())
            .await
            .expect("opens");
        assert_eq!(plain.expose_secret(), format!("secret-{i}").as_bytes());
    }
    // Each committed batch was audited.
    let rows = store.audit_range(1, 100).await.expect("audit");
    assert_eq!(rows.len(), 5);
    assert!(rows
        .iter()
        .all(|r| r.event.action == strongroom::Action::Rewrap
            && r.event.actor == "system_admin:operator"));
}

/// One format-2 vector, read through the public API only.
struct VectorV2 {
    name: String,
    format: u8,
    ring: KeyRing,
    namespace: Option<String>,
    credential_id: String,
    scope: Scope,
    version: u64,
    bound: Option<BoundJson>,
    plaintext: Vec<u8>,
    blob: Vec<u8>,
}

#[derive(Clone, PartialEq, serde::Deserialize)]
struct BoundJson {
    name: String,
    provider: String,
    handler_type: String,
    state: String,
    agent_accessible: bool,
    expires_at: Option<i64>,
    metadata: BTreeMap<String, String>,
}

impl BoundJson {
    fn fields(&self) -> BoundFields<'_> {
        BoundFields {
            name: &self.name,
            provider: &self.provider,
            handler_type: &self.handler_type,
            state: LifecycleState::parse(&self.state).expect("state"),
            agent_accessible: self.agent_accessible,
            expires_at: self.expires_at.map(Timestamp),
            metadata: &self.metadata,
        }
    }
}

impl VectorV2 {
    fn id_with<'a>(&'a self, bound: Option<&'a BoundJson>) -> RecordIdentity<'a> {
        let mut id = RecordIdentity::new(&self.credential_id, &self.scope, self.version);
        if let Some(ns) = &self.namespace {
            id = id.in_namespace(ns);
        }
        match bound {
            Some(b) => id.with_bound(b.fields()),
            None => id,
        }
    }

    fn id(&self) -> RecordIdentity<'_> {
        self.id_with(self.bound.as_ref())
    }
}

fn load_v2_vectors(file: &str) -> Vec<VectorV2> {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("json");
    let vectors = doc["vectors"].as_array().expect("array");
    assert!(vectors.len() >= 4, "{file}: at least four vectors");
    vectors
        .iter()
        .map(|v| {
            let text = |field: &str| v[field].as_str().expect(field).to_string();
            let mut master = [0u8; 32];
            hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
            let key = LocalKey::from_bytes(&master, "vector");
            assert_eq!(key.key_id(), text("master_key_id"), "{file}: key id");
            assert_eq!(key.key_id().len(), "local:".len() + 32, "128-bit key ids");
            VectorV2 {
                name: text("name"),
                format: v["format"].as_u64().expect("format") as u8,
                ring: KeyRing::new(Arc::new(key)),
                namespace: v["namespace"].as_str().map(str::to_string),
                credential_id: text("credential_id"),
                scope: Scope::from_parts(
                    ScopeKind::parse(&text("scope_kind")).expect("kind"),
                    &text("owner"),
                )
                .expect("scope"),
                version: v["version"].as_u64().expect("version"),
                bound: serde_json::from_value(v["bound"].clone()).expect("bound"),
                plaintext: hex::decode(text("plaintext_hex")).expect("hex"),
                blob: hex::decode(text("blob_hex")).expect("hex"),
            }
        })
        .collect()
}

/// The format-2 vectors (Rust-made and Python-made) open through the public API, and
/// nowhere else: not in another namespace, not at another version, not with any bound field
/// changed, not with any byte changed (the Python ones, every byte).
#[tokio::test]
async fn format_2_vectors_open_only_as_sealed() {
    for file in [
        "envelope_vectors_v2.json",
        "envelope_vectors_v2_python.json",
    ] {
        let vectors = load_v2_vectors(file);
        for v in &vectors {
            let what = format!("{file}: `{}`", v.name);
            assert_eq!(v.blob[0], v.format, "{what}");
            let plain = v.ring.open(&v.blob, &v.id()).await.unwrap_or_else(|e| {
                panic!("{what} does not open: {e}");
            });
            assert_eq!(plain.expose_secret(), &v.plaintext[..], "{what}");
            let e = assert_refused(
                v.ring
                    .open(&v.blob, &v.id().at_version(v.version ^ 1))
                    .await,
                &format!("{what} at another version"),
            );
            assert_eq!(e.kind(), ErrorKind::DecryptFailed);
            if v.format != 2 {
                // A format-1 blob binds neither namespace nor bound fields.
                assert!(v
                    .ring
                    .open(&v.blob, &v.id().in_namespace("x"))
                    .await
                    .is_ok());
                continue;
            }
            let e = assert_refused(
                v.ring
                    .open(&v.blob, &v.id().in_namespace("another-vault"))
                    .await,
                &format!("{what} in another namespace"),
            );
            assert_eq!(e.kind(), ErrorKind::DecryptFailed);
            assert!(e.to_string().contains("another-vault"), "{e}");
            if let Some(b) = &v.bound {
                for (label, changed) in bound_changes(b) {
                    let e = assert_refused(
                        v.ring.open(&v.blob, &v.id_with(Some(&changed))).await,
                        &format!("{what} with {label}"),
                    );
                    assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{label}");
                }
                assert_refused(
                    v.ring.open(&v.blob, &v.id_with(None)).await,
                    &format!("{what} read with nothing bound"),
                );
            }
            if file.contains("python") {
                for i in 0..v.blob.len() {
                    let mut tampered = v.blob.clone();
                    tampered[i] ^= 0x01;
                    assert_refused(
                        v.ring.open(&tampered, &v.id()).await,
                        &format!("{what} with byte {i} flipped"),
                    );
                }
            }
        }
    }
}

/// Each change a database writer could make to a policy column, as a vector's bound fields
/// (those that change something for this vector).
fn bound_changes(b: &BoundJson) -> Vec<(&'static str, BoundJson)> {
    let change = |f: &dyn Fn(&mut BoundJson)| {
        let mut c = b.clone();
        f(&mut c);
        c
    };
    vec![
        (
            "agent_accessible flipped",
            change(&|c| c.agent_accessible = !c.agent_accessible),
        ),
        ("provider changed", change(&|c| c.provider.push('x'))),
        (
            "handler type changed",
            change(&|c| c.handler_type = "ssh_key".into()),
        ),
        (
            "expires_at moved",
            change(&|c| c.expires_at = Some(c.expires_at.unwrap_or(0) + 86_400_000)),
        ),
        ("expiry removed", change(&|c| c.expires_at = None)),
        (
            "state changed",
            change(&|c| {
                c.state = if c.state == "valid" {
                    "invalid"
                } else {
                    "valid"
                }
                .into()
            }),
        ),
        ("name changed", change(&|c| c.name.push('x'))),
        (
            "metadata base_url re-pointed",
            change(&|c| {
                c.metadata
                    .insert("base_url".into(), "https://evil.example".into());
            }),
        ),
        (
            "a metadata entry added",
            change(&|c| {
                c.metadata.insert("label".into(), "x".into());
            }),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| changed != b)
    .collect()
}

/// Sealed record bodies of format 2 (`record_vectors_v2.json`, Python-made) open only as
/// their own record version, in their own namespace.
#[tokio::test]
async fn format_2_record_body_vectors_open_only_in_their_namespace() {
    let path = format!(
        "{}/tests/data/record_vectors_v2.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let vectors = doc["vectors"].as_array().expect("array");
    assert!(vectors.len() >= 3);
    for v in vectors {
        let text = |field: &str| v[field].as_str().expect(field).to_string();
        let mut master = [0u8; 32];
        hex::decode_to_slice(text("master_key_hex"), &mut master).expect("hex");
        let ring = KeyRing::new(Arc::new(LocalKey::from_bytes(&master, "vector")));
        let (ns, kind, owner, key) = (text("namespace"), text("kind"), text("owner"), text("key"));
        let version = v["version"].as_u64().expect("version");
        let aad = RecordAad::new(&kind, &owner, &key, version).in_namespace(&ns);
        let blob = hex::decode(text("blob_hex")).expect("hex");
        assert_eq!(blob[0], 2);
        let plain = ring.open_record(&blob, &aad).await.expect("opens");
        assert_eq!(hex::encode(plain.expose_secret()), text("plaintext_hex"));
        for (what, other) in [
            ("another namespace", aad.in_namespace("another-vault")),
            ("another version", aad.at_version(version.wrapping_add(1))),
        ] {
            let e = assert_refused(ring.open_record(&blob, &other).await, what);
            assert_eq!(e.kind(), ErrorKind::DecryptFailed, "{what}");
        }
    }
}

/// A blob sealed by one vault namespace does not open in another, even at the same
/// credential id, scope, owner and version and under the same master key.
#[tokio::test]
async fn a_blob_from_another_namespace_is_refused() {
    let ring = ring();
    let scope = Scope::per_user("alice").expect("scope");
    let a = ident("c1", &scope, 1).in_namespace("tenant-a");
    let b = ident("c1", &scope, 1).in_namespace("tenant-b");
    let blob = ring.seal(CANARY, &a).await.expect("seal").bytes;
    let e = assert_refused(ring.open(&blob, &b).await, "tenant-b");
    assert_eq!(e.kind(), ErrorKind::DecryptFailed);
    assert!(
        e.to_string().contains("`tenant-b`"),
        "names the namespace: {e}"
    );
    assert_eq!(
        ring.open(&blob, &a).await.expect("opens").expose_secret(),
        CANARY
    );
    // Record bodies too.
    let record = RecordAad::new("lease", "refresh", "c1", 1);
    let body = ring
        .seal_record(CANARY, &record.in_namespace("tenant-a"))
        .await
        .expect("seal")
        .bytes;
    assert_refused(
        ring.open_record(&body, &record.in_namespace("tenant-b"))
            .await,
        "a record body in another namespace",
    );
    // And the data-key cache does not bridge them.
    let cached = ring.clone().with_dek_cache(Default::default());
    let blob = cached.seal(CANARY, &a).await.expect("seal").bytes;
    assert_refused(cached.open(&blob, &b).await, "through the cache");
    // An empty namespace is not a namespace.
    let e = ring
        .seal(CANARY, &ident("c1", &scope, 1).in_namespace(""))
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// A key backend that ignores associated data (a transit key created without
/// `derived=true`, a careless proxy) lets a wrapped data key move between records. The
/// format-2 commitment still keeps a blob to its own record: moved whole, it is refused
/// before its payload is decrypted.
#[derive(Debug)]
struct Careless(LocalKey);

#[async_trait]
impl KeyWrapper for Careless {
    fn backend_id(&self) -> BackendId {
        BackendId::Vault
    }
    fn key_id(&self) -> &str {
        "vault:careless"
    }
    async fn wrap(&self, dek: &DataKey, _aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        self.0.wrap(dek, b"ignored").await
    }
    async fn unwrap(&self, wrapped: &[u8], _aad: &[u8]) -> strongroom::Result<DataKey> {
        self.0.unwrap(wrapped, b"ignored").await
    }
    async fn derive_key(&self, purpose: &str) -> strongroom::Result<DataKey> {
        self.0.derive_key(purpose).await
    }
}

#[tokio::test]
async fn a_data_key_reached_without_its_own_wrap_opens_no_other_record() {
    let ring = KeyRing::new(Arc::new(Careless(LocalKey::generate().expect("key"))));
    let scope = Scope::per_user("alice").expect("scope");
    let (ida, idb) = (ident("a", &scope, 1), ident("b", &scope, 1));
    let a = ring.seal(CANARY, &ida).await.expect("seal").bytes;
    let b = ring.seal(b"secret b", &idb).await.expect("seal").bytes;
    // A's whole blob in B's row: the careless backend unwraps A's data key for B, and the
    // commitment (over B's associated data) refuses it.
    let e = assert_refused(ring.open(&a, &idb).await, "a's blob as b");
    assert!(e.to_string().contains("commitment does not match"), "{e}");
    // A's wrapped key with B's payload: A's data key does not open B's payload.
    let w = u16::from_be_bytes([a[3], a[4]]) as usize;
    assert_eq!(w, u16::from_be_bytes([b[3], b[4]]) as usize);
    let mut mixed = b.clone();
    mixed[5..5 + w].copy_from_slice(&a[5..5 + w]);
    assert_refused(ring.open(&mixed, &idb).await, "a's data key on b's payload");
    assert_refused(
        ring.open(&mixed, &ida).await,
        "a's data key on b's payload, as a",
    );
}

/// A key whose id another key claims: refused, never dropped in silence.
#[tokio::test]
async fn duplicate_key_ids_are_refused() {
    let real = LocalKey::generate().expect("key");
    let real_id = real.key_id().to_string();
    let legacy_id = real.legacy_key_id().to_string();
    let real: Arc<dyn KeyWrapper> = Arc::new(real);
    let scope = Scope::SystemWide;
    let id = ident("c", &scope, 1);
    let blob = KeyRing::new(real.clone())
        .seal(CANARY, &id)
        .await
        .expect("seal")
        .bytes;
    for claimed in [real_id.clone(), legacy_id] {
        let impostor: Arc<dyn KeyWrapper> = Arc::new(Impostor {
            inner: LocalKey::generate().expect("key"),
            claimed: claimed.clone(),
        });
        let e = KeyRing::new(real.clone())
            .try_with_retired(impostor.clone())
            .expect_err("a second key under a taken id");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains(&claimed), "{e}");
        // `with_retired` cannot return an error: it stops using the id instead.
        let ring = KeyRing::new(Arc::new(LocalKey::generate().expect("key")))
            .with_retired(real.clone())
            .with_retired(impostor);
        assert!(ring.key(&claimed).is_none());
        if claimed == real_id {
            let e = assert_refused(ring.open(&blob, &id).await, "an id two keys claim");
            assert_eq!(e.kind(), ErrorKind::KeyUnavailable);
            assert!(e.to_string().contains("two different master keys"), "{e}");
        }
    }
    // The same key given twice (loaded twice, or as active and retired) is not a conflict.
    let bytes = [42u8; 32];
    let ring = KeyRing::new(Arc::new(LocalKey::from_bytes(&bytes, "one")))
        .try_with_retired(Arc::new(LocalKey::from_bytes(&bytes, "two")))
        .expect("the same key twice");
    assert_eq!(ring.key_ids().len(), 2, "its id and its format-1 id");
    // And a vault refuses a retired key that claims its key's id.
    let e = Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(real.clone())
        .retired_key(Arc::new(Impostor {
            inner: LocalKey::generate().expect("key"),
            claimed: real_id,
        }))
        .build()
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Config);
}

/// Version-1 blobs still open (the ring holds a local key under its format-1 id too), in
/// any namespace; re-wrapping moves one onto the key's format-2 id and wrap without touching
/// its payload or its version.
#[tokio::test]
async fn format_1_blobs_open_and_re_wrap_onto_the_format_2_id() {
    for v in load_vectors("envelope_vectors_python.json") {
        let id = v.id().in_namespace("any-namespace");
        let plain = v.ring.open(&v.blob, &id).await.expect("a v1 blob opens");
        assert_eq!(plain.expose_secret(), &v.plaintext[..]);
        let active = v.ring.active().key_id().to_string();
        assert_ne!(
            envelope::parse(&v.blob, &|| "v".into())
                .expect("parse")
                .key_id,
            active
        );
        let moved = v
            .ring
            .rewrap_blob(&v.blob, &id)
            .await
            .expect("re-wrap")
            .expect("moved off the format-1 id");
        assert_eq!(moved.key_id, active);
        assert_eq!(moved.bytes[0], 1, "still version 1");
        assert_eq!(
            moved.bytes[moved.bytes.len() - v.plaintext.len() - 16..],
            v.blob[v.blob.len() - v.plaintext.len() - 16..],
            "payload untouched"
        );
        let plain = v.ring.open(&moved.bytes, &id).await.expect("opens");
        assert_eq!(plain.expose_secret(), &v.plaintext[..], "{}", v.name);
        assert!(v
            .ring
            .rewrap_blob(&moved.bytes, &id)
            .await
            .expect("again")
            .is_none());
    }
}

/// The nonces of `n` blobs sealed on this thread (each blob's data key and nonce come from
/// one draw of this thread's generator, so distinct nonces mean distinct draws).
fn sealed_nonces(ring: &KeyRing, n: usize) -> Vec<[u8; 12]> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let scope = Scope::SystemWide;
    let id = ident("c-fork", &scope, 1);
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let sealed = ring.seal(b"x", &id).await.expect("seal");
            let parsed = envelope::parse(&sealed.bytes, &|| "blob".into()).expect("parse");
            out.push(*parsed.nonce);
        }
        out
    })
}

/// A forked child inherits a copy of its parent's memory, this thread's random generator
/// included: its seals must still draw data keys and nonces its parent never drew (the
/// generator reseeds from the OS in the child before its first draw there).
#[cfg(unix)]
#[test]
fn a_forked_child_never_repeats_its_parents_data_keys_or_nonces() {
    use std::io::Write;

    let ring = ring();
    // Seed this thread's generator before forking, so the child inherits a live state.
    let before = sealed_nonces(&ring, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("child-nonces");
    match fork::fork().expect("fork") {
        fork::Fork::Child => {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sealed_nonces(&ring, 64)
            })) {
                Ok(nonces) => {
                    let text: String = nonces.iter().map(|n| hex::encode(n) + "\n").collect();
                    let written =
                        std::fs::File::create(&path).and_then(|mut f| f.write_all(text.as_bytes()));
                    i32::from(written.is_err())
                }
                Err(_) => 2,
            };
            std::process::exit(code);
        }
        fork::Fork::Parent(pid) => {
            let mine = sealed_nonces(&ring, 64);
            let status = fork::waitpid(pid).expect("waitpid");
            assert_eq!(status, 0, "the child sealed and wrote its nonces");
            let child: Vec<String> = std::fs::read_to_string(&path)
                .expect("the child's nonces")
                .lines()
                .map(str::to_string)
                .collect();
            assert_eq!(child.len(), 64);
            let parent: std::collections::HashSet<String> =
                mine.iter().chain(&before).map(hex::encode).collect();
            let distinct: std::collections::HashSet<&String> = child.iter().collect();
            assert_eq!(distinct.len(), 64, "the child's own draws are distinct");
            for n in &child {
                assert!(
                    !parent.contains(n),
                    "the child repeated the parent's nonce {n}"
                );
            }
        }
    }
}
