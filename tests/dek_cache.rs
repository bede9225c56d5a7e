//! The data-key cache: a resolve does not call the master-key backend while the key is
//! cached; limits evict; a cached key never opens a blob moved to another record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strongroom::crypto::{envelope, BackendId, DekCacheConfig};
use strongroom::{
    CredentialRef, DataKey, ExposeSecret, KeyRing, KeyWrapper, LocalKey, NewCredential, Principal,
    RecordIdentity, ResolveContext, Scope, ScopeKind, SecretString, Vault,
};

/// A local key that counts unwraps, standing in for a remote KMS.
#[derive(Debug)]
struct Counting {
    inner: LocalKey,
    unwraps: AtomicUsize,
}

#[async_trait]
impl KeyWrapper for Counting {
    fn backend_id(&self) -> BackendId {
        self.inner.backend_id()
    }
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        self.inner.wrap(dek, aad).await
    }
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> strongroom::Result<DataKey> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(wrapped, aad).await
    }
    async fn derive_key(&self, purpose: &str) -> strongroom::Result<DataKey> {
        self.inner.derive_key(purpose).await
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        inner: LocalKey::generate().expect("key"),
        unwraps: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn resolves_use_the_cached_key_and_the_counters_show_it() {
    let key = counting();
    let vault = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(key.clone())
        .dek_cache(DekCacheConfig::default())
        .build()
        .await
        .expect("vault");
    let admin = Principal::parse("system_admin:root").expect("p");
    vault
        .create(
            &admin,
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "",
                BTreeMap::from([("api_key".into(), SecretString::from("sk-cache".to_string()))]),
            ),
        )
        .await
        .expect("create");
    let runtime = Principal::parse("runtime:crm:alice").expect("p");
    let reference = CredentialRef::explicit("openai_main", ScopeKind::SystemWide, None);
    let ctx = ResolveContext {
        app: "crm".into(),
        user: "alice".into(),
    };
    for _ in 0..10 {
        let r = vault
            .resolve(&runtime, &reference, &ctx)
            .await
            .expect("resolve");
        assert_eq!(r.fields["api_key"].expose_secret(), "sk-cache");
    }
    assert_eq!(
        key.unwraps.load(Ordering::SeqCst),
        0,
        "the key sealed at create is cached"
    );
    let stats = vault.keys().dek_cache_stats().expect("a cache");
    assert_eq!(stats.hits, 10);
    vault.keys().clear_dek_cache();
    for _ in 0..5 {
        vault
            .resolve(&runtime, &reference, &ctx)
            .await
            .expect("resolve");
    }
    assert_eq!(
        key.unwraps.load(Ordering::SeqCst),
        1,
        "one unwrap, then cached"
    );

    // Without a cache, every resolve unwraps.
    let key = counting();
    let plain = Vault::builder()
        .store(Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(key.clone())
        .no_dek_cache()
        .build()
        .await
        .expect("vault");
    assert!(plain.keys().dek_cache_stats().is_none());
}

#[tokio::test]
async fn uses_and_age_limits_force_an_unwrap() {
    let key = counting();
    let ring = KeyRing::new(key.clone()).with_dek_cache(DekCacheConfig {
        max_age: Duration::from_secs(60),
        max_uses: 3,
        max_entries: 100,
    });
    let scope = Scope::SystemWide;
    let id = RecordIdentity::new("c1", &scope, 1);
    let sealed = ring.seal(b"secret", &id).await.expect("seal");
    for _ in 0..3 {
        ring.open(&sealed.bytes, &id).await.expect("open");
    }
    assert_eq!(key.unwraps.load(Ordering::SeqCst), 0);
    ring.open(&sealed.bytes, &id).await.expect("open");
    assert_eq!(
        key.unwraps.load(Ordering::SeqCst),
        1,
        "used up: unwrapped again"
    );
}

#[tokio::test]
async fn a_cached_key_never_opens_a_blob_under_another_identity() {
    let ring = KeyRing::new(counting()).with_dek_cache(DekCacheConfig::default());
    let scope = Scope::per_user("alice").expect("s");
    let id = RecordIdentity::new("c1", &scope, 1);
    let sealed = ring.seal(b"secret", &id).await.expect("seal");
    ring.open(&sealed.bytes, &id).await.expect("open");
    let bob = Scope::per_user("bob").expect("s");
    for other in [
        id.at_version(2),
        RecordIdentity::new("c2", &scope, 1),
        RecordIdentity::new("c1", &bob, 1),
        id.in_namespace("another-vault"),
    ] {
        assert!(ring.open(&sealed.bytes, &other).await.is_err());
    }
}

/// A local key under another key's id (a forged or colliding id).
#[derive(Debug)]
struct Impostor {
    inner: LocalKey,
    id: String,
}

#[async_trait]
impl KeyWrapper for Impostor {
    fn backend_id(&self) -> BackendId {
        self.inner.backend_id()
    }
    fn key_id(&self) -> &str {
        &self.id
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
    fn fingerprint(&self) -> Option<[u8; 32]> {
        self.inner.fingerprint()
    }
}

fn unwraps(key: &Counting) -> usize {
    key.unwraps.load(Ordering::SeqCst)
}

/// Two records' blobs, both cached: neither opens as the other, and a blob spliced from
/// one's key section (what the cache is keyed by) and the other's ciphertext never opens
/// through the cached payload key either; the cached keys keep serving their own blobs.
#[tokio::test]
async fn a_swapped_or_spliced_blob_never_opens_through_a_cached_key() {
    let key = counting();
    let ring = KeyRing::new(key.clone()).with_dek_cache(DekCacheConfig::default());
    let scope = Scope::per_user("alice").expect("s");
    let (a, b) = (
        RecordIdentity::new("c-a", &scope, 1),
        RecordIdentity::new("c-b", &scope, 1),
    );
    let blob_a = ring.seal(b"secret of a", &a).await.expect("seal").bytes;
    let blob_b = ring.seal(b"secret of b", &b).await.expect("seal").bytes;
    for (blob, id) in [(&blob_a, &a), (&blob_b, &b)] {
        ring.open(blob, id).await.expect("open");
    }
    assert_eq!(
        unwraps(&key),
        0,
        "both payload keys were cached by the seals"
    );
    assert!(ring.open(&blob_a, &b).await.is_err(), "a's blob in b's row");
    assert!(ring.open(&blob_b, &a).await.is_err(), "b's blob in a's row");

    // a's header, wrapped key, nonce and commitment with b's ciphertext and tag.
    let parsed_a = envelope::parse(&blob_a, &|| "a".into()).expect("parse");
    let parsed_b = envelope::parse(&blob_b, &|| "b".into()).expect("parse");
    let section_a = &blob_a[..blob_a.len() - parsed_a.ciphertext.len()];
    let spliced: Vec<u8> = [section_a, parsed_b.ciphertext].concat();
    assert!(ring.open(&spliced, &a).await.is_err(), "spliced, as a");
    assert!(ring.open(&spliced, &b).await.is_err(), "spliced, as b");
    // Same key section, one ciphertext bit flipped.
    let mut flipped = blob_a.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(ring.open(&flipped, &a).await.is_err(), "tampered tag");

    let plain = ring.open(&blob_a, &a).await.expect("a still opens");
    assert_eq!(plain.expose_secret(), b"secret of a");
    let plain = ring.open(&blob_b, &b).await.expect("b still opens");
    assert_eq!(plain.expose_secret(), b"secret of b");
}

/// Re-wrapping a blob onto the active key moves its cached payload key to the new blob:
/// the new blob opens without an unwrap, and the old blob (naming the retired key) is no
/// longer served from the cache.
#[tokio::test]
async fn rewrapping_moves_the_cached_key_off_the_retired_keys_blob() {
    let (old, new) = (counting(), counting());
    let scope = Scope::SystemWide;
    let id = RecordIdentity::new("c1", &scope, 1);
    let old_blob = KeyRing::new(old.clone())
        .seal(b"secret", &id)
        .await
        .expect("seal")
        .bytes;
    let ring = KeyRing::new(new.clone())
        .try_with_retired(old.clone())
        .expect("ring")
        .with_dek_cache(DekCacheConfig::default());
    ring.open(&old_blob, &id).await.expect("open");
    ring.open(&old_blob, &id).await.expect("open");
    assert_eq!(unwraps(&old), 1, "unwrapped once, then cached");

    let new_blob = ring
        .rewrap_blob(&old_blob, &id)
        .await
        .expect("rewrap")
        .expect("moved to the active key")
        .bytes;
    assert_eq!(
        unwraps(&old),
        2,
        "the re-wrap unwraps under the retired key"
    );
    let hits = ring.dek_cache_stats().expect("cache").hits;
    let plain = ring.open(&new_blob, &id).await.expect("open");
    assert_eq!(plain.expose_secret(), b"secret");
    assert_eq!(
        unwraps(&new),
        0,
        "the re-wrapped blob opened from the cache"
    );
    assert_eq!(ring.dek_cache_stats().expect("cache").hits, hits + 1);

    ring.open(&old_blob, &id)
        .await
        .expect("the ring still holds the old key");
    assert_eq!(
        unwraps(&old),
        3,
        "the old blob is no longer served from the cache"
    );
}

/// `clear_dek_cache_for` drops the cached keys of one master key's blobs only: those
/// unwrap again, the other key's stay cached.
#[tokio::test]
async fn clearing_one_master_keys_entries_leaves_the_others() {
    let (old, new) = (counting(), counting());
    let scope = Scope::SystemWide;
    let id = RecordIdentity::new("c1", &scope, 1);
    let old_blob = KeyRing::new(old.clone())
        .seal(b"old", &id)
        .await
        .expect("seal")
        .bytes;
    let ring = KeyRing::new(new.clone())
        .try_with_retired(old.clone())
        .expect("ring")
        .with_dek_cache(DekCacheConfig::default());
    let new_blob = ring.seal(b"new", &id).await.expect("seal").bytes;
    ring.open(&old_blob, &id).await.expect("open");
    ring.open(&new_blob, &id).await.expect("open");
    assert_eq!((unwraps(&old), unwraps(&new)), (1, 0));

    assert_eq!(ring.clear_dek_cache_for(old.key_id()), 1);
    assert_eq!(ring.clear_dek_cache_for("local:not-a-key-of-this-ring"), 0);
    ring.open(&old_blob, &id).await.expect("open");
    ring.open(&new_blob, &id).await.expect("open");
    assert_eq!(
        (unwraps(&old), unwraps(&new)),
        (2, 0),
        "only the retired key's blob unwrapped again"
    );
    assert_eq!(ring.dek_cache_stats().expect("cache").entries, 2);
}

/// A cached key does not outlive its key id becoming unusable: once a second, different
/// key claims the id, a blob naming it fails even though its payload key is cached.
#[tokio::test]
async fn a_cached_key_does_not_bypass_a_refused_key_id() {
    let key = counting();
    let ring = KeyRing::new(key.clone()).with_dek_cache(DekCacheConfig::default());
    let scope = Scope::SystemWide;
    let id = RecordIdentity::new("c1", &scope, 1);
    let blob = ring.seal(b"secret", &id).await.expect("seal").bytes;
    ring.open(&blob, &id).await.expect("open");
    let impostor = Arc::new(Impostor {
        inner: LocalKey::generate().expect("key"),
        id: key.key_id().to_string(),
    });
    let ring = ring.with_retired(impostor);
    let err = ring.open(&blob, &id).await.expect_err("the id is refused");
    assert!(
        matches!(err, strongroom::Error::KeyUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(unwraps(&key), 0);
}
