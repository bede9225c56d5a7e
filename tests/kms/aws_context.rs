//! AWS KMS (issue 16, items 3 and 4), against moto with the key states the KMS API
//! Reference documents (`tests/kms_credential_servers.py`): the encryption context carries a
//! digest of the record, not the record (CloudTrail logs it), and records wrapped the old
//! way still open; a disabled key, a key pending deletion and an alias re-pointed to another
//! key are `KeyUnavailable` with the service's reason, while a data key of another record
//! stays `DecryptFailed`.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};
use strongroom::crypto::kms::AwsKmsKey;
use strongroom::crypto::{BackendId, CheckpointSigner, InternalUse};
use strongroom::{DataKey, Error, ExposeSecret, KeyRing, KeyWrapper, RecordIdentity, Scope};

use super::s;
use super::standins::{call_json, credential_servers, CredentialServers, Recording};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn key(
    a: &serde_json::Value,
    id: &str,
    http: Arc<dyn strongroom::transport::HttpTransport>,
) -> AwsKmsKey {
    AwsKmsKey::new(
        id,
        s(a, "/region"),
        s(a, "/access_key_id"),
        s(a, "/secret_access_key"),
        None,
        http,
    )
    .expect("key")
    .with_endpoint(s(a, "/endpoint"))
}

/// Wraps the way strongroom did before the digest (encryption context
/// `{"strongroom-aad": base64(aad)}`, the bare ciphertext blob), through moto: records
/// sealed by it are records of the old format.
#[derive(Debug)]
struct FormatOneWrapper {
    id: String,
    key: String,
    admin: String,
}

#[async_trait]
impl KeyWrapper for FormatOneWrapper {
    fn backend_id(&self) -> BackendId {
        BackendId::AwsKms
    }
    fn key_id(&self) -> &str {
        &self.id
    }
    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        let answer = call_json(
            "POST",
            &format!("{}/aws-admin/EncryptFormat1", self.admin),
            &[],
            Some(serde_json::json!({
                "KeyId": self.key,
                "Plaintext": B64.encode(dek.expose_secret()),
                "Aad": B64.encode(aad),
            })),
        )
        .await;
        Ok(B64.decode(s(&answer, "/CiphertextBlob")).expect("base64"))
    }
    async fn unwrap(&self, _wrapped: &[u8], _aad: &[u8]) -> strongroom::Result<DataKey> {
        unreachable!("only wraps")
    }
    async fn derive_key(&self, _purpose: &str) -> strongroom::Result<DataKey> {
        unreachable!("only wraps")
    }
    async fn checkpoint_signer(
        &self,
        _proof: &InternalUse,
    ) -> strongroom::Result<Arc<dyn CheckpointSigner>> {
        unreachable!("only wraps")
    }
}

#[tokio::test]
async fn the_context_is_a_digest_and_records_of_the_old_form_open() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let recording = Recording::online();
    let aws = Arc::new(key(a, &s(a, "/alias"), recording.clone()));
    let aad = b"strongroom/record|cred-7|per_user|alice|1";
    let dek = DataKey::generate().expect("dek");
    let wrapped = aws.wrap(&dek, aad).await.expect("wrap");
    let sent = String::from_utf8(recording.sent()[0].body.clone()).expect("utf-8");
    // What CloudTrail would show: the digest, never the record's identity.
    assert!(!sent.contains(&B64.encode(aad)), "{sent}");
    assert!(!sent.contains("alice"), "{sent}");
    assert!(
        sent.contains(&format!(
            "\"EncryptionContext\":{{\"strongroom-aad-sha256\":\"{}\"}}",
            B64.encode(Sha256::digest(aad))
        )),
        "{sent}"
    );
    assert_eq!(&wrapped[..4], b"\x00SR\x02", "the format-2 marker");
    assert_eq!(
        aws.unwrap(&wrapped, aad)
            .await
            .expect("unwrap")
            .expose_secret(),
        dek.expose_secret()
    );
    // The digest still binds the record: another record's data does not unwrap, and the
    // blob read as format 1 (marker stripped) does not either.
    assert!(matches!(
        aws.unwrap(&wrapped, b"another record").await,
        Err(Error::DecryptFailed { .. })
    ));
    assert!(matches!(
        aws.unwrap(&wrapped[4..], aad).await,
        Err(Error::DecryptFailed { .. })
    ));

    // A whole record sealed the old way opens, and stays bound to its identity.
    let old = Arc::new(FormatOneWrapper {
        id: aws.key_id().to_string(),
        key: s(a, "/alias"),
        admin: s(&srv.info, "/base"),
    });
    let scope = Scope::per_user("alice").expect("scope");
    let id = RecordIdentity::new("cred-7", &scope, 1).in_namespace("kms-tests");
    let sealed = KeyRing::new(old)
        .seal(b"{\"api_key\":\"sk-old\"}", &id)
        .await
        .expect("seal the old way");
    let ring = KeyRing::new(aws.clone());
    let opened = ring.open(&sealed.bytes, &id).await.expect("open");
    assert_eq!(opened.expose_secret(), b"{\"api_key\":\"sk-old\"}");
    match ring.open(&sealed.bytes, &id.at_version(2)).await {
        Err(Error::DecryptFailed { .. }) => {}
        other => panic!("a moved old record must not open, got {other:?}"),
    }
    // Re-sealing writes the new form.
    let resealed = ring
        .seal(b"{\"api_key\":\"sk-old\"}", &id)
        .await
        .expect("seal");
    assert_eq!(
        ring.open(&resealed.bytes, &id)
            .await
            .expect("open")
            .expose_secret(),
        b"{\"api_key\":\"sk-old\"}"
    );
}

async fn admin(srv: &CredentialServers, op: &str, body: serde_json::Value) {
    srv.post(&format!("/aws-admin/{op}"), body).await;
}

fn unavailable(result: strongroom::Result<DataKey>, needle: &str) {
    match result {
        Err(Error::KeyUnavailable { key_id, reason }) => {
            assert!(key_id.starts_with("aws_kms:"), "{key_id}");
            assert!(reason.contains(needle), "{reason}");
        }
        Err(e) => panic!("expected KeyUnavailable ({needle}), got {e:?}"),
        Ok(_) => panic!("expected KeyUnavailable ({needle}), got a key"),
    }
}

#[tokio::test]
async fn operational_failures_are_key_unavailable_not_tampering() {
    let srv = credential_servers();
    let a = &srv.info["aws"];
    let first = s(a, "/key");
    let aws = key(a, &s(a, "/alias"), super::http());
    let dek = DataKey::generate().expect("dek");
    let wrapped = aws.wrap(&dek, b"r").await.expect("wrap");

    // The alias now names another key: KMS answers IncorrectKeyException.
    admin(
        &srv,
        "UpdateAlias",
        serde_json::json!({"AliasName": s(a, "/alias"), "TargetKeyId": s(a, "/second_key")}),
    )
    .await;
    unavailable(aws.unwrap(&wrapped, b"r").await, "IncorrectKeyException");
    admin(
        &srv,
        "UpdateAlias",
        serde_json::json!({"AliasName": s(a, "/alias"), "TargetKeyId": first}),
    )
    .await;
    aws.unwrap(&wrapped, b"r")
        .await
        .expect("the alias points back");

    // A disabled key: DisabledException, for unwrap and wrap.
    admin(&srv, "DisableKey", serde_json::json!({"KeyId": first})).await;
    unavailable(aws.unwrap(&wrapped, b"r").await, "DisabledException");
    match aws.wrap(&dek, b"r").await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("DisabledException"), "{reason}")
        }
        other => panic!("wrap under a disabled key: {other:?}"),
    }
    admin(&srv, "EnableKey", serde_json::json!({"KeyId": first})).await;
    aws.unwrap(&wrapped, b"r").await.expect("enabled again");

    // Another record's data key is still tampering.
    assert!(matches!(
        aws.unwrap(&wrapped, b"another record").await,
        Err(Error::DecryptFailed { .. })
    ));

    // Pending deletion: KMSInvalidStateException.
    admin(
        &srv,
        "ScheduleKeyDeletion",
        serde_json::json!({"KeyId": first}),
    )
    .await;
    unavailable(aws.unwrap(&wrapped, b"r").await, "KMSInvalidStateException");
}
