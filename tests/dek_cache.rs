//! The data-key cache: a resolve does not call the master-key backend while the key is
//! cached; limits evict; a cached key never opens a blob moved to another record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strongroom::crypto::{BackendId, DekCacheConfig};
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
