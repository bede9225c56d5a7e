//! Azure Key Vault key versions and credentials against the stand-ins of
//! `tests/kms_azure_server.py` (written from the Key Vault keys REST reference, api-version
//! 7.4, the Microsoft identity platform's client-credentials and certificate-credentials
//! references, and the managed-identity IMDS and App Service references): records keep
//! opening after the key is rotated (each data key records the version that wrapped it); a
//! disabled version is `KeyUnavailable`; certificate, workload-identity and managed-identity
//! credentials; the token scope of sovereign clouds and Managed HSM.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::crypto::kms::AzureKeyVaultKey;
use strongroom::transport::{Bytes, HttpTransport};
use strongroom::{DataKey, Error, ExposeSecret, KeyRing, KeyWrapper, RecordIdentity, Scope};

use super::{http, s, servers};

/// A token for the stand-in's management calls (rotate, disable), as the client would get.
async fn token(z: &serde_json::Value) -> String {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        s(z, "/client_id"),
        s(z, "/client_secret")
    );
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        s(z, "/authority"),
        s(z, "/tenant")
    );
    let answer = send(
        "POST",
        &url,
        Bytes::from(form),
        "application/x-www-form-urlencoded",
        None,
    )
    .await;
    s(&answer.1, "/access_token")
}

async fn send(
    method: &str,
    url: &str,
    body: Bytes,
    content_type: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type);
    if let Some(t) = bearer {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let answer = http()
        .send(request.body(body).expect("request"))
        .await
        .expect("stand-in answers");
    (
        answer.status().as_u16(),
        serde_json::from_slice(answer.body()).unwrap_or(serde_json::Value::Null),
    )
}

fn from_vars(vars: BTreeMap<&'static str, String>) -> Arc<dyn KeyWrapper> {
    strongroom::crypto::key_wrapper_from_vars(move |n| vars.get(n).cloned()).expect("key")
}

fn base_vars(z: &serde_json::Value, key_url: String) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("STRONGROOM_KMS", "azure_kv".to_string()),
        ("STRONGROOM_AZURE_KEY_ID", key_url),
        ("AZURE_AUTHORITY_HOST", s(z, "/authority")),
    ])
}

async fn round_trip(key: &dyn KeyWrapper) -> strongroom::Result<()> {
    let dek = DataKey::generate().expect("dek");
    let wrapped = key.wrap(&dek, b"aad").await?;
    let back = key.unwrap(&wrapped, b"aad").await?;
    assert_eq!(back.expose_secret(), dek.expose_secret());
    Ok(())
}

fn refused_token(result: strongroom::Result<()>, needle: &str) {
    match result {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("access token"), "{reason}");
            assert!(reason.contains(needle), "{needle}: {reason}");
            assert!(!reason.contains("CANARY"), "{reason}");
        }
        other => panic!("expected a refused token, got {other:?}"),
    }
}

/// The version that wrapped a format-3 Azure section (docs/FORMAT.md), from a sealed blob.
fn wrapping_version(blob: &[u8]) -> String {
    let w = usize::from(u16::from_be_bytes([blob[3], blob[4]]));
    let section = &blob[5..5 + w];
    let section = &section[1 + usize::from(section[0])..];
    assert_eq!(section[0], 3, "format-3 section");
    let len = usize::from(section[1]);
    String::from_utf8(section[2..2 + len].to_vec()).expect("utf-8")
}

#[tokio::test]
async fn records_keep_opening_after_the_key_is_rotated() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let url = s(&z, "/versionless_key_url");
    let make = || {
        Arc::new(
            AzureKeyVaultKey::new(
                &url,
                s(&z, "/tenant"),
                s(&z, "/client_id"),
                s(&z, "/client_secret"),
                http(),
            )
            .expect("key")
            .with_authority(s(&z, "/authority")),
        ) as Arc<dyn KeyWrapper>
    };
    let scope = Scope::per_user("alice").expect("scope");
    let id1 = RecordIdentity::new("cred-1", &scope, 1).in_namespace("azure-versions");
    let id2 = RecordIdentity::new("cred-2", &scope, 1).in_namespace("azure-versions");
    let before = make();
    let ring = KeyRing::new(before.clone());
    let old = ring.seal(b"{\"k\":\"before\"}", &id1).await.expect("seal");
    assert_eq!(wrapping_version(&old.bytes), "v1");

    // Key Vault rotates the key (a rotation policy, or `az keyvault key rotate`).
    let bearer = token(&z).await;
    let base = s(&z, "/key_url").replace("/keys/master/v1", "");
    let (status, rotated) = send(
        "POST",
        &format!("{base}/keys/master/rotate?api-version=7.4"),
        Bytes::new(),
        "application/json",
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_version = s(&rotated, "/key/kid")
        .rsplit('/')
        .next()
        .expect("v")
        .to_string();
    // As the real service: the new version does not unwrap what the old one wrapped.
    let (status, wrapped) = send(
        "POST",
        &format!("{base}/keys/master/v1/wrapkey?api-version=7.4"),
        Bytes::from(
            r#"{"alg":"RSA-OAEP-256","value":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}"#,
        ),
        "application/json",
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 200);
    let body = format!(
        r#"{{"alg":"RSA-OAEP-256","value":"{}"}}"#,
        s(&wrapped, "/value")
    );
    let (status, refused) = send(
        "POST",
        &format!("{base}/keys/master/unwrapkey?api-version=7.4"),
        Bytes::from(body),
        "application/json",
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 400, "{refused}");

    // The same process and a new one both open the old record and seal new ones with the
    // new version.
    let after = make();
    for key in [before.clone(), after.clone()] {
        let ring = KeyRing::new(key);
        let opened = ring
            .open(&old.bytes, &id1)
            .await
            .expect("opens after rotation");
        assert_eq!(opened.expose_secret(), b"{\"k\":\"before\"}");
    }
    let ring = KeyRing::new(after.clone());
    let new = ring.seal(b"{\"k\":\"after\"}", &id2).await.expect("seal");
    assert_eq!(wrapping_version(&new.bytes), new_version);
    assert_eq!(
        ring.open(&new.bytes, &id2)
            .await
            .expect("open")
            .expose_secret(),
        b"{\"k\":\"after\"}"
    );

    // The old version disabled: an operational failure, not tampering.
    let (status, _) = send(
        "PATCH",
        &format!("{base}/keys/master/v1?api-version=7.4"),
        Bytes::from(r#"{"attributes":{"enabled":false}}"#),
        "application/json",
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 200);
    let fresh = KeyRing::new(make());
    match fresh.open(&old.bytes, &id1).await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("disabled"), "{reason}")
        }
        other => panic!("a disabled key version must be KeyUnavailable, got {other:?}"),
    }
    assert!(fresh.open(&new.bytes, &id2).await.is_ok());
    // A pinned URL of another version than the one the record names is refused when the
    // wrap answer names another version.
    let pinned = AzureKeyVaultKey::new(
        &format!("{base}/keys/master/{new_version}"),
        s(&z, "/tenant"),
        s(&z, "/client_id"),
        s(&z, "/client_secret"),
        http(),
    )
    .expect("key")
    .with_authority(s(&z, "/authority"));
    round_trip(&pinned).await.expect("a pinned version works");
}

#[tokio::test]
async fn certificate_workload_and_managed_identity_credentials() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let dir = tempfile::tempdir().expect("dir");
    let app = |vars: &mut BTreeMap<&'static str, String>| {
        vars.insert("AZURE_TENANT_ID", s(&z, "/tenant"));
        vars.insert("AZURE_CLIENT_ID", s(&z, "/client_id"));
    };

    // Certificate credentials: a JWT signed with the certificate's key, its x5t.
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, s(&z, "/certificate_pem")).expect("write");
    let mut vars = base_vars(&z, s(&z, "/key_url"));
    app(&mut vars);
    vars.insert("AZURE_CLIENT_CERTIFICATE_PATH", cert.display().to_string());
    let key = from_vars(vars.clone());
    assert!(!format!("{key:?}").contains("PRIVATE"), "{key:?}");
    round_trip(key.as_ref())
        .await
        .expect("certificate credentials");
    // Another certificate (not registered for the app) is refused.
    let other = dir.path().join("other.pem");
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys/");
    let pem = std::fs::read_to_string(format!("{keys}rsa_cert.pem")).expect("cert")
        + &std::fs::read_to_string(format!("{keys}rsa_pkcs8.pem")).expect("key");
    std::fs::write(&other, pem).expect("write");
    vars.insert("AZURE_CLIENT_CERTIFICATE_PATH", other.display().to_string());
    refused_token(round_trip(from_vars(vars).as_ref()).await, "x5t");

    // Workload identity: the federated token file as the client assertion, read afresh.
    let federated = dir.path().join("azure-identity-token");
    std::fs::write(&federated, s(&z, "/federated_token")).expect("write");
    let mut vars = base_vars(&z, s(&z, "/key_url"));
    app(&mut vars);
    vars.insert(
        "AZURE_FEDERATED_TOKEN_FILE",
        federated.display().to_string(),
    );
    round_trip(from_vars(vars.clone()).as_ref())
        .await
        .expect("workload identity");
    std::fs::write(&federated, "eyJub3QtZmVkZXJhdGVk.x.y").expect("write");
    refused_token(round_trip(from_vars(vars).as_ref()).await, "not a JWT");

    // Managed identity through IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST points at it).
    let mut vars = base_vars(&z, s(&z, "/key_url"));
    vars.insert("AZURE_POD_IDENTITY_AUTHORITY_HOST", s(&z, "/imds"));
    vars.insert("AZURE_CLIENT_ID", s(&z, "/mi_client_id"));
    round_trip(from_vars(vars.clone()).as_ref())
        .await
        .expect("IMDS managed identity");
    vars.insert("AZURE_CLIENT_ID", "another-identity".into());
    refused_token(
        round_trip(from_vars(vars).as_ref()).await,
        "Identity not found",
    );

    // App Service's managed identity.
    let mut vars = base_vars(&z, s(&z, "/key_url"));
    vars.insert("IDENTITY_ENDPOINT", s(&z, "/identity_endpoint"));
    vars.insert("IDENTITY_HEADER", s(&z, "/identity_header"));
    round_trip(from_vars(vars.clone()).as_ref())
        .await
        .expect("App Service managed identity");
    vars.insert("IDENTITY_HEADER", "wrong-header".into());
    refused_token(round_trip(from_vars(vars).as_ref()).await, "401");

    // A client secret without its tenant names what is missing.
    let mut vars = base_vars(&z, s(&z, "/key_url"));
    vars.insert("AZURE_CLIENT_SECRET", "x".into());
    let err =
        strongroom::crypto::key_wrapper_from_vars(|n| vars.get(n).cloned()).expect_err("no tenant");
    assert!(err.to_string().contains("AZURE_TENANT_ID"), "{err}");
}

/// Sends every `https://HOST/...` request to the stand-in instead, saying which host it was
/// for (`X-Original-Host`), as DNS would for a real cloud: the client is exercised with the
/// real host names of sovereign clouds and Managed HSM.
#[derive(Debug)]
struct ToStandIn {
    base: String,
    inner: Arc<dyn HttpTransport>,
}

#[async_trait::async_trait]
impl HttpTransport for ToStandIn {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> strongroom::Result<http::Response<Bytes>> {
        let (mut parts, body) = request.into_parts();
        let host = parts.uri.host().expect("host").to_string();
        let prefix = if host.starts_with("login.") {
            "/azure"
        } else {
            ""
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = format!("{}{prefix}{path}", self.base).parse().expect("uri");
        parts
            .headers
            .insert("x-original-host", host.parse().expect("header"));
        self.inner
            .send(http::Request::from_parts(parts, body))
            .await
    }
}

#[tokio::test]
async fn the_token_scope_and_sign_in_host_follow_the_key_s_cloud() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let transport: Arc<dyn HttpTransport> = Arc::new(ToStandIn {
        base: s(&srv.info, "/base"),
        inner: http(),
    });
    for url in [
        "https://kv1.vault.azure.cn/keys/master",
        "https://kv1.vault.usgovcloudapi.net/keys/master",
        "https://hsm1.managedhsm.azure.net/keys/master",
        "https://kv1.vault.azure.net/keys/master",
    ] {
        let key = AzureKeyVaultKey::new(
            url,
            s(&z, "/tenant"),
            s(&z, "/client_id"),
            s(&z, "/client_secret"),
            transport.clone(),
        )
        .expect("key");
        round_trip(&key)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    let answer = send(
        "GET",
        &format!("{}/test/azure/stats", s(&srv.info, "/base")),
        Bytes::new(),
        "application/json",
        None,
    )
    .await
    .1;
    let scopes: Vec<&str> = answer["token_requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["scope"].as_str())
        .collect();
    assert_eq!(
        scopes,
        [
            "https://vault.azure.cn/.default",
            "https://vault.usgovcloudapi.net/.default",
            "https://managedhsm.azure.net/.default",
            "https://vault.azure.net/.default",
        ]
    );
    // A key in China's cloud with a public-cloud scope forced: Key Vault refuses the token.
    let forced = AzureKeyVaultKey::new(
        "https://kv1.vault.azure.cn/keys/master",
        s(&z, "/tenant"),
        s(&z, "/client_id"),
        s(&z, "/client_secret"),
        transport,
    )
    .expect("key")
    .with_scope("https://vault.azure.net/.default");
    match round_trip(&forced).await {
        Err(Error::KeyUnavailable { reason, .. }) => {
            assert!(reason.contains("audience"), "{reason}")
        }
        other => panic!("expected KeyUnavailable, got {other:?}"),
    }
}

/// A format-2 section, made the way the code before key versions made it (docs/FORMAT.md,
/// "Azure Key Vault sections": no `WV`, the v2 labels), through the stand-in's own
/// `wrapkey` and `sign` with key version `v1`.
async fn format_2_section(z: &serde_json::Value, dek: &[u8], aad: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bearer = token(z).await;
    let url = s(z, "/key_url");
    let mut k = [0u8; 32];
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut k).expect("random");
    getrandom::fill(&mut nonce).expect("random");
    let op = |op: &str, alg: &str, value: Vec<u8>| {
        let url = format!("{url}/{op}?api-version=7.4");
        let body = serde_json::json!({"alg": alg, "value": b64.encode(value)}).to_string();
        let bearer = bearer.clone();
        async move {
            let (status, answer) = send(
                "POST",
                &url,
                Bytes::from(body),
                "application/json",
                Some(&bearer),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s(&answer, "/value"))
                .expect("base64url")
        }
    };
    let w = op("wrapkey", "RSA-OAEP-256", k.to_vec()).await;
    let sealed = aes_gcm::Aes256Gcm::new_from_slice(&k)
        .expect("key")
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: dek,
                aad: &[b"strongroom/azure-kv/v2".as_slice(), aad].concat(),
            },
        )
        .expect("seal");
    let mut u = vec![2u8];
    u.extend_from_slice(&(w.len() as u16).to_be_bytes());
    u.extend_from_slice(&w);
    u.extend_from_slice(&nonce);
    u.extend_from_slice(&sealed);
    u.push(2);
    u.extend_from_slice(b"v1");
    let mut m = b"strongroom/azure-kv/v2/signature".to_vec();
    m.extend_from_slice(&(u.len() as u32).to_be_bytes());
    m.extend_from_slice(&u);
    m.extend_from_slice(aad);
    let signature = op("sign", "RS256", sha2::Sha256::digest(&m).to_vec()).await;
    u.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    u.extend_from_slice(&signature);
    u
}

#[tokio::test]
async fn format_2_sections_still_open_also_after_a_rotation() {
    let srv = servers();
    let z = srv.info["azure"].clone();
    let dek = DataKey::generate().expect("dek");
    let section = format_2_section(&z, dek.expose_secret(), b"aad-2").await;
    let make = || {
        AzureKeyVaultKey::new(
            &s(&z, "/versionless_key_url"),
            s(&z, "/tenant"),
            s(&z, "/client_id"),
            s(&z, "/client_secret"),
            http(),
        )
        .expect("key")
        .with_authority(s(&z, "/authority"))
    };
    let key = make();
    assert_eq!(
        key.unwrap(&section, b"aad-2")
            .await
            .expect("format 2")
            .expose_secret(),
        dek.expose_secret()
    );
    assert!(matches!(
        key.unwrap(&section, b"another record").await,
        Err(Error::DecryptFailed { .. })
    ));
    // After a rotation, the version that signed (the wrapping key's) unwraps it.
    let base = s(&z, "/key_url").replace("/keys/master/v1", "");
    let (status, _) = send(
        "POST",
        &format!("{base}/keys/master/rotate?api-version=7.4"),
        Bytes::new(),
        "application/json",
        Some(&token(&z).await),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        make()
            .unwrap(&section, b"aad-2")
            .await
            .expect("format 2 after a rotation")
            .expose_secret(),
        dek.expose_secret()
    );
}
