//! Azure Key Vault's integrity: RSA key wrap needs only the public key, so the data key of
//! every record is also signed by Key Vault (which needs the private key) and the signature
//! is checked before anything is unwrapped. A record forged with the public key alone is
//! refused; one that copies a genuine signature is refused; records wrapped before
//! signatures open only when the operator accepts confidentiality only, and a re-seal moves
//! them onto signed data keys.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use strongroom::crypto::kms::AzureKeyVaultKey;
use strongroom::crypto::BackendId;
use strongroom::{
    DataKey, Error, ErrorKind, ExposeSecret, KeyRing, KeyWrapper, MemoryStore, NewCredential,
    Principal, RecordIdentity, ResealOptions, ResealSelection, Scope, SecretString, Vault,
};

use super::{http, s, servers};

fn key(z: &serde_json::Value) -> AzureKeyVaultKey {
    AzureKeyVaultKey::new(
        &s(z, "/key_url"),
        s(z, "/tenant"),
        s(z, "/client_id"),
        s(z, "/client_secret"),
        http(),
    )
    .expect("key")
    .with_authority(s(z, "/authority"))
}

/// RSA-OAEP-256 of `value` under the Key Vault key's public part alone, computed outside Key
/// Vault (no token, no private key): what anyone who can read the public key can do.
fn public_wrap(public_pem: &str, value: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kms_servers.py"))
        .args(["--oaep-wrap", public_pem, &b64.encode(value)])
        .output()
        .expect("python3 runs tests/kms_servers.py --oaep-wrap");
    assert!(out.status.success(), "{out:?}");
    b64.decode(String::from_utf8_lossy(&out.stdout).trim())
        .expect("base64url")
}

/// Someone who can write the database and read the Key Vault key's public part, but cannot
/// use the key: wraps a data key of their choosing the way Key Vault's `wrapKey` would, and
/// seals it locally as docs/FORMAT.md describes. `tail` is what follows the sealed data key
/// in a format-2 section (the key version and signature), copied from a genuine record.
#[derive(Debug)]
struct PublicKeyOnly {
    id: String,
    public_pem: String,
    section: u8,
    tail: Vec<u8>,
}

#[async_trait::async_trait]
impl KeyWrapper for PublicKeyOnly {
    fn backend_id(&self) -> BackendId {
        BackendId::AzureKv
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        let mut k = [0u8; 32];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut k).expect("random");
        getrandom::fill(&mut nonce).expect("random");
        let w = public_wrap(&self.public_pem, &k);
        let label: &[u8] = if self.section == 1 {
            b"strongroom/azure-kv/v1"
        } else {
            b"strongroom/azure-kv/v2"
        };
        let local_aad = [label, aad].concat();
        let sealed = Aes256Gcm::new_from_slice(&k)
            .expect("key")
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: dek.expose_secret(),
                    aad: &local_aad,
                },
            )
            .expect("seal");
        let mut out = vec![self.section];
        out.extend_from_slice(&(w.len() as u16).to_be_bytes());
        out.extend_from_slice(&w);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&self.tail);
        Ok(out)
    }

    async fn unwrap(&self, _wrapped: &[u8], _aad: &[u8]) -> strongroom::Result<DataKey> {
        Err(Error::KeyUnavailable {
            key_id: self.id.clone(),
            reason: "only the public key".into(),
        })
    }

    async fn derive_key(&self, _purpose: &str) -> strongroom::Result<DataKey> {
        Err(Error::KeyUnavailable {
            key_id: self.id.clone(),
            reason: "only the public key".into(),
        })
    }
}

/// The Azure section (`backend_bytes`) of a sealed blob, read as docs/FORMAT.md lays out
/// the blob: `W` at bytes 3–4, the wrapped-DEK section after, its key id first.
fn azure_section(blob: &[u8]) -> &[u8] {
    assert_eq!(blob[2], 0x04, "backend: Azure Key Vault");
    let w = usize::from(u16::from_be_bytes([blob[3], blob[4]]));
    let section = &blob[5..5 + w];
    &section[1 + usize::from(section[0])..]
}

/// What follows the sealed data key in a format-3 section: `u8(len(V)) || V ||
/// u16be(len(S)) || S` (after `0x03 || u8(len(WV)) || WV || u16be(len(W)) || W || nonce
/// || sealed`).
fn signature_tail(section: &[u8]) -> Vec<u8> {
    assert_eq!(section[0], 3, "format-3 section");
    let at = 2 + usize::from(section[1]);
    let w = usize::from(u16::from_be_bytes([section[at], section[at + 1]]));
    section[at + 2 + w + 12 + 48..].to_vec()
}

fn expect_decrypt_failed(result: strongroom::Result<impl std::fmt::Debug>, why: &str) {
    match result {
        Err(Error::DecryptFailed { .. }) => {}
        other => panic!("{why}: expected DecryptFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_record_forged_with_the_public_key_alone_is_refused() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let real: Arc<dyn KeyWrapper> = Arc::new(key(&z));
    let ring = KeyRing::new(real.clone());
    let scope = Scope::per_user("alice").expect("scope");
    let id = RecordIdentity::new("cred-1", &scope, 1).in_namespace("azure-tests");
    let genuine = ring
        .seal(b"{\"api_key\":\"sk-genuine\"}", &id)
        .await
        .expect("seal");
    let section = azure_section(&genuine.bytes);
    assert_eq!(
        section[0], 3,
        "new data keys are signed and name their key version (section format 3)"
    );
    let opened = ring.open(&genuine.bytes, &id).await.expect("open");
    assert_eq!(opened.expose_secret(), b"{\"api_key\":\"sk-genuine\"}");

    let forger = |section: u8, tail: Vec<u8>| {
        KeyRing::new(Arc::new(PublicKeyOnly {
            id: real.key_id().to_string(),
            public_pem: s(&z, "/public_pem"),
            section,
            tail,
        }))
    };
    // Unsigned, as Key Vault's wrapKey alone allows: refused, saying why and what to do.
    let unsigned = forger(1, Vec::new())
        .seal(b"{\"api_key\":\"sk-attacker\"}", &id)
        .await
        .expect("forged");
    match ring.open(&unsigned.bytes, &id).await {
        Err(Error::Config { message }) => {
            for needle in [
                "without a Key Vault signature",
                "public key",
                "STRONGROOM_AZURE_CONFIDENTIALITY_ONLY",
                "reseal",
            ] {
                assert!(message.contains(needle), "{needle}: {message}");
            }
        }
        other => panic!("an unsigned Azure data key must be refused, got {other:?}"),
    }
    // With the genuine record's signature copied over: the signature covers the wrapped
    // key, so it does not verify for another.
    let copied = forger(2, signature_tail(section))
        .seal(b"{\"api_key\":\"sk-attacker\"}", &id)
        .await
        .expect("forged");
    expect_decrypt_failed(ring.open(&copied.bytes, &id).await, "a copied signature");
    // A genuine section with one bit of its wrapped key `W` changed (the Azure section
    // starts after the 5-byte header and the key id; `W` after its own 6 bytes, format 3).
    let mut tampered = genuine.bytes.clone();
    let at = 5 + 1 + usize::from(genuine.bytes[5]) + 6 + 10;
    tampered[at] ^= 1;
    expect_decrypt_failed(ring.open(&tampered, &id).await, "a changed wrapped key");
    // The genuine blob under another record's identity (the signature binds it).
    expect_decrypt_failed(
        ring.open(&genuine.bytes, &id.at_version(2)).await,
        "another record",
    );

    // Accepting confidentiality only opens the unsigned one — which is exactly the risk
    // the operator accepts — but never one whose signature does not verify.
    let lax = KeyRing::new(Arc::new(key(&z).accept_confidentiality_only()));
    let opened = lax.open(&unsigned.bytes, &id).await.expect("accepted");
    assert_eq!(opened.expose_secret(), b"{\"api_key\":\"sk-attacker\"}");
    expect_decrypt_failed(lax.open(&copied.bytes, &id).await, "still checked");
    assert!(lax.open(&genuine.bytes, &id).await.is_ok());
}

#[tokio::test]
async fn unsigned_records_need_the_confidentiality_only_opt_in_and_a_reseal_signs_them() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let vars = |lax: bool| {
        let mut vars = BTreeMap::from([
            ("STRONGROOM_KMS", "azure_kv".to_string()),
            ("STRONGROOM_AZURE_KEY_ID", s(&z, "/key_url")),
            ("AZURE_TENANT_ID", s(&z, "/tenant")),
            ("AZURE_CLIENT_ID", s(&z, "/client_id")),
            ("AZURE_CLIENT_SECRET", s(&z, "/client_secret")),
            ("STRONGROOM_AZURE_AUTHORITY", s(&z, "/authority")),
        ]);
        if lax {
            vars.insert("STRONGROOM_AZURE_CONFIDENTIALITY_ONLY", "1".into());
        }
        vars
    };
    let from_env = |lax: bool| {
        let vars = vars(lax);
        strongroom::crypto::key_wrapper_from_vars(move |n| vars.get(n).cloned()).expect("key")
    };
    let strict = from_env(false);
    let lax = from_env(true);
    let shown = format!("{lax:?}");
    assert!(shown.contains("confidentiality_only: true"), "{shown}");
    assert!(!shown.contains("CANARY"), "{shown}");

    // Records wrapped the way this backend did before signatures (section format 1).
    let store = Arc::new(MemoryStore::new());
    let admin = Principal::parse("system_admin:root").expect("principal");
    let old = Vault::builder()
        .store(store.clone())
        .key_wrapper(Arc::new(PublicKeyOnly {
            id: strict.key_id().to_string(),
            public_pem: s(&z, "/public_pem"),
            section: 1,
            tail: Vec::new(),
        }))
        .no_dek_cache()
        .build()
        .await
        .expect("vault");
    let mut ids = Vec::new();
    for i in 0..3 {
        let fields =
            BTreeMap::from([("api_key".to_string(), SecretString::from(format!("sk-{i}")))]);
        let info = old
            .create(
                &admin,
                NewCredential::new(format!("k{i}"), Scope::SystemWide, "openai", "", fields),
            )
            .await
            .expect("create");
        ids.push(info.id);
    }
    let on = |key: Arc<dyn KeyWrapper>| {
        Vault::builder()
            .store(store.clone())
            .key_wrapper(key)
            .no_dek_cache()
            .build()
    };
    let strict_vault = on(strict.clone()).await.expect("vault");
    let err = strict_vault
        .reveal(&admin, &ids[0])
        .await
        .expect_err("unsigned");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    // The opt-in reads them, and a re-seal of every record signs their data keys.
    let lax_vault = on(lax).await.expect("vault");
    let revealed = lax_vault.reveal(&admin, &ids[0]).await.expect("reveal");
    assert_eq!(revealed.fields["api_key"].expose_secret(), "sk-0");
    let report = lax_vault
        .reseal_credentials(
            &admin,
            ResealOptions {
                selection: ResealSelection::All,
                ..ResealOptions::default()
            },
        )
        .await
        .expect("reseal");
    assert!(
        report.complete && report.resealed == 3 && report.unopenable.is_empty(),
        "{report:?}"
    );
    // Now the strict key serves every one.
    for (i, id) in ids.iter().enumerate() {
        let revealed = strict_vault.reveal(&admin, id).await.expect("reveal");
        assert_eq!(
            revealed.fields["api_key"].expose_secret(),
            format!("sk-{i}")
        );
    }
}

#[tokio::test]
async fn a_key_that_may_not_sign_says_so() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let key = AzureKeyVaultKey::new(
        &s(&z, "/wrap_only_key_url"),
        s(&z, "/tenant"),
        s(&z, "/client_id"),
        s(&z, "/client_secret"),
        http(),
    )
    .expect("key")
    .with_authority(s(&z, "/authority"));
    let dek = DataKey::generate().expect("dek");
    match key.wrap(&dek, b"aad").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("sign"), "{reason}");
            assert!(
                reason.contains("STRONGROOM_AZURE_SIGNING_KEY_ID"),
                "{reason}"
            );
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
}
