//! AWS KMS: `Encrypt` / `Decrypt` (JSON protocol, `TrentService`), SigV4-signed with the
//! `aws-sigv4` crate. The record is bound through the encryption context, which KMS
//! authenticates with the ciphertext: `{"strongroom-aad-sha256": base64(SHA-256(aad))}` —
//! a digest, because CloudTrail logs the context in plaintext (data keys wrapped before
//! carried `{"strongroom-aad": base64(aad)}` and still unwrap; `docs/FORMAT.md`). Audit
//! checkpoints are authenticated with `GenerateMac` / `VerifyMac` under an HMAC key of the
//! same account ([`AwsKmsKey::with_mac_key`]).
//!
//! Credentials come from the host ([`AwsKmsKey::new`]) or from the standard AWS chain
//! ([`AwsKmsKey::from_environment`]: environment, shared profiles, web identity, the
//! container endpoint, EC2 instance metadata; see `credentials.rs`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{no_derive, parse_secret, secret_json, secret_to_dek, SecretText, B64};
use crate::crypto::{BackendId, CheckpointSigner, DataKey, InternalUse, KeyWrapper};
use crate::error::{Error, Result};
use crate::transport::HttpTransport;

mod chain;
mod client;
mod credentials;
mod mac;

use super::unavailable;
use chain::dns_suffix;
use client::AwsClient;
use credentials::CredentialProvider;

/// The first bytes of a wrapped data key whose encryption context is the digest of the
/// record (format 2). AWS KMS ciphertext blobs begin with a format byte that is not 0x00
/// (0x01 today), so a blob without this marker is one wrapped before (format 1, the
/// context holding the record's associated data itself).
const CONTEXT_V2: [u8; 4] = [0x00, b'S', b'R', 0x02];

/// The encryption-context key of format 2 (a digest) and of format 1 (read only).
const CONTEXT_KEY_V2: &str = "strongroom-aad-sha256";
const CONTEXT_KEY_V1: &str = "strongroom-aad";

/// A master key in AWS KMS (a key id, ARN or alias).
pub struct AwsKmsKey {
    key: String,
    id: String,
    client: Arc<AwsClient>,
    mac_key: Option<String>,
}

impl fmt::Debug for AwsKmsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKey")
            .field("key", &self.key)
            .field("region", &self.client.region)
            .field("endpoint", &self.client.endpoint)
            .field("credentials", self.client.credentials.source())
            .field("mac_key", &self.mac_key)
            .finish_non_exhaustive()
    }
}

fn check_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() || key.len() > 240 {
        return Err(Error::invalid(what, "must be 1 to 240 characters"));
    }
    Ok(())
}

fn check_region(region: &str) -> Result<()> {
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::invalid(
            "AWS region",
            "must be a region code such as eu-west-1",
        ));
    }
    Ok(())
}

/// The KMS endpoint of a region: `https://kms.<region>.amazonaws.com/`, or
/// `…amazonaws.com.cn/` in the China partition (`cn-north-1`, `cn-northwest-1`).
fn default_endpoint(region: &str) -> String {
    format!("https://kms.{region}.{}/", dns_suffix(region))
}

impl AwsKmsKey {
    /// The KMS key `key` (id, ARN or `alias/...`) in `region`, with these credentials (used
    /// as given: a host that hands temporary credentials here replaces the key when they
    /// expire; [`AwsKmsKey::from_environment`] refreshes them itself).
    pub fn new(
        key: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AwsKmsKey> {
        let key = key.into();
        let region = region.into();
        check_key(&key, "KMS key id")?;
        check_region(&region)?;
        let credentials = CredentialProvider::fixed(
            "given",
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
            http.clone(),
        );
        Ok(AwsKmsKey::with_client(key, region, None, credentials, http))
    }

    /// The KMS key `key` (id, ARN or `alias/...`), with the region, endpoint and credentials
    /// found the way the AWS SDKs find them, reading variables through `var` (the process
    /// environment: `|n| std::env::var(n).ok()`):
    ///
    /// - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, else the profile's `region`;
    /// - endpoint: `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, else the region's
    ///   (`kms.<region>.amazonaws.com`, `.amazonaws.com.cn` in China);
    /// - credentials: the environment, the shared profile, web identity, the container
    ///   endpoint, EC2 instance metadata (IMDSv2), the first that is configured;
    ///   temporary credentials are fetched again five minutes before they expire.
    ///
    /// Nothing is fetched here; the first KMS call fetches the credentials.
    pub fn from_environment(
        key: impl Into<String>,
        var: &dyn Fn(&str) -> Option<String>,
        http: Arc<dyn HttpTransport>,
    ) -> Result<AwsKmsKey> {
        let key = key.into();
        check_key(&key, "KMS key id")?;
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
        let found = chain::find(var, region.as_deref(), http.clone())?;
        let region = region.or(found.region).ok_or_else(|| {
            Error::config(
                "AWS KMS needs a region: AWS_REGION (or AWS_DEFAULT_REGION, or `region` in the \
                 AWS profile)",
            )
        })?;
        check_region(&region)?;
        let endpoint = get("AWS_ENDPOINT_URL_KMS").or_else(|| get("AWS_ENDPOINT_URL"));
        Ok(AwsKmsKey::with_client(
            key,
            region,
            endpoint,
            found.provider,
            http,
        ))
    }

    fn with_client(
        key: String,
        region: String,
        endpoint: Option<String>,
        credentials: CredentialProvider,
        http: Arc<dyn HttpTransport>,
    ) -> AwsKmsKey {
        let endpoint = match endpoint {
            Some(e) if e.ends_with('/') => e,
            Some(e) => format!("{e}/"),
            None => default_endpoint(&region),
        };
        AwsKmsKey {
            id: format!("aws_kms:{key}"),
            key,
            client: Arc::new(AwsClient {
                endpoint,
                region,
                credentials,
                http,
            }),
            mac_key: None,
        }
    }

    /// Sends requests to `endpoint` instead of the region's (a VPC endpoint, or a local
    /// KMS-compatible server in tests). Call it before the key is used.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> AwsKmsKey {
        let mut endpoint = endpoint.into();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        match Arc::get_mut(&mut self.client) {
            Some(client) => client.endpoint = endpoint,
            None => tracing::warn!("AwsKmsKey::with_endpoint after the key was shared; ignored"),
        }
        self
    }

    /// Authenticates audit checkpoints with the HMAC KMS key `mac_key` (id, ARN or alias of a
    /// key with key spec `HMAC_256` and key usage `GENERATE_VERIFY_MAC`), called with the same
    /// credentials: `GenerateMac` / `VerifyMac` with `HMAC_SHA_256` (`docs/AUDIT.md`). An
    /// encryption key makes no MACs, so without one this key offers no checkpoint key.
    pub fn with_mac_key(mut self, mac_key: impl Into<String>) -> Result<AwsKmsKey> {
        let mac_key = mac_key.into();
        check_key(&mac_key, "KMS HMAC key id")?;
        self.mac_key = Some(mac_key);
        Ok(self)
    }
}

/// The encryption context of format 2: the digest of the record's associated data, which
/// KMS binds to the ciphertext and CloudTrail shows.
fn context_v2(aad: &[u8]) -> Context {
    Context {
        key: CONTEXT_KEY_V2,
        value: B64.encode(Sha256::digest(aad)),
    }
}

/// The encryption context of format 1 (data keys wrapped before): the associated data
/// itself, base64.
fn context_v1(aad: &[u8]) -> Context {
    Context {
        key: CONTEXT_KEY_V1,
        value: B64.encode(aad),
    }
}

/// An encryption context of one entry.
struct Context {
    key: &'static str,
    value: String,
}

impl serde::Serialize for Context {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.key, &self.value)?;
        map.end()
    }
}

/// `Encrypt`: the plaintext is the data key.
#[derive(serde::Serialize)]
struct EncryptRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "Plaintext")]
    plaintext: &'a str,
    #[serde(rename = "EncryptionContext")]
    context: Context,
}

#[derive(serde::Serialize)]
struct DecryptRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "CiphertextBlob")]
    ciphertext: String,
    #[serde(rename = "EncryptionContext")]
    context: Context,
}

/// `Decrypt`'s answer: the data key.
#[derive(serde::Deserialize)]
struct DecryptAnswer<'a> {
    #[serde(rename = "Plaintext", borrow)]
    plaintext: SecretText<'a>,
}

#[async_trait]
impl KeyWrapper for AwsKmsKey {
    fn backend_id(&self) -> BackendId {
        BackendId::AwsKms
    }

    fn key_id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let plaintext = zeroize::Zeroizing::new(B64.encode(dek.expose_secret()));
        let request = EncryptRequest {
            key_id: &self.key,
            plaintext: plaintext.as_str(),
            context: context_v2(aad),
        };
        let body = secret_json(
            &request,
            self.key.len() + plaintext.len() + request.context.value.len(),
        )?;
        let answer = self.client.call(&self.id, "Encrypt", &body, false).await?;
        let answer: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| unavailable(&self.id, "AWS KMS answered with a body that is not JSON"))?;
        let blob = super::b64_field(&answer, "/CiphertextBlob", &self.id)?;
        if blob.starts_with(&CONTEXT_V2[..1]) {
            // A blob starting 0x00 could not be told from a marked one when read back.
            return Err(unavailable(
                &self.id,
                "AWS KMS answered a ciphertext blob in a form strongroom does not know",
            ));
        }
        let mut wrapped = Vec::with_capacity(CONTEXT_V2.len() + blob.len());
        wrapped.extend_from_slice(&CONTEXT_V2);
        wrapped.extend_from_slice(&blob);
        Ok(wrapped)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        let (blob, context) = match wrapped.strip_prefix(&CONTEXT_V2[..]) {
            Some(blob) => (blob, context_v2(aad)),
            None => (wrapped, context_v1(aad)),
        };
        let request = DecryptRequest {
            key_id: &self.key,
            ciphertext: B64.encode(blob),
            context,
        };
        let body = secret_json(
            &request,
            self.key.len() + request.ciphertext.len() + request.context.value.len(),
        )?;
        let answer = self.client.call(&self.id, "Decrypt", &body, true).await?;
        let answer: DecryptAnswer<'_> = parse_secret(&answer, &self.id, "base64 `Plaintext`")?;
        secret_to_dek(&answer.plaintext, &B64, &self.id)
    }

    async fn derive_key(&self, _purpose: &str) -> Result<DataKey> {
        Err(no_derive(&self.id))
    }

    async fn checkpoint_signer(&self, _proof: &InternalUse) -> Result<Arc<dyn CheckpointSigner>> {
        match &self.mac_key {
            Some(key) => Ok(Arc::new(mac::AwsKmsMacKey {
                id: format!("aws_kms_mac:{key}"),
                key: key.clone(),
                client: self.client.clone(),
            })),
            None => Err(unavailable(
                &self.id,
                "an AWS KMS encryption key makes no MACs, so it offers no audit \
                 checkpoint key: give it an HMAC key (STRONGROOM_AWS_KMS_MAC_KEY_ID, \
                 AwsKmsKey::with_mac_key) or give the vault an audit key of its own \
                 (STRONGROOM_AUDIT_KEY, VaultBuilder::checkpoint_key)",
            )),
        }
    }
}

/// The `aws_kms` backend of [`super::from_vars`]: `STRONGROOM_AWS_KMS_KEY_ID`, the standard
/// AWS variables ([`AwsKmsKey::from_environment`]), `STRONGROOM_AWS_KMS_ENDPOINT` (before
/// `AWS_ENDPOINT_URL_KMS`) and `STRONGROOM_AWS_KMS_MAC_KEY_ID`.
pub(crate) fn from_vars(
    var: &dyn Fn(&str) -> Option<String>,
    http: Arc<dyn HttpTransport>,
) -> Result<AwsKmsKey> {
    let key = var("STRONGROOM_AWS_KMS_KEY_ID")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::config(
                "STRONGROOM_KMS=aws_kms needs STRONGROOM_AWS_KMS_KEY_ID (see docs/DEPLOYMENT.md)",
            )
        })?;
    let mut key = AwsKmsKey::from_environment(key, var, http)?;
    if let Some(endpoint) = var("STRONGROOM_AWS_KMS_ENDPOINT").filter(|v| !v.is_empty()) {
        key = key.with_endpoint(endpoint);
    }
    if let Some(mac) = var("STRONGROOM_AWS_KMS_MAC_KEY_ID").filter(|v| !v.is_empty()) {
        key = key.with_mac_key(mac)?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_holds_a_digest_not_the_record() {
        let aad = b"strongroom/v2|cred-1|per_user|alice|1";
        let json = serde_json::to_string(&context_v2(aad)).expect("json");
        assert!(json.starts_with("{\"strongroom-aad-sha256\":\""), "{json}");
        assert!(!json.contains(&B64.encode(aad)), "{json}");
        let json = serde_json::to_string(&context_v1(aad)).expect("json");
        assert_eq!(
            json,
            format!("{{\"strongroom-aad\":\"{}\"}}", B64.encode(aad))
        );
    }

    #[test]
    fn china_regions_get_the_cn_endpoint() {
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://kms.cn-north-1.amazonaws.com.cn/"
        );
        assert_eq!(
            default_endpoint("us-east-1"),
            "https://kms.us-east-1.amazonaws.com/"
        );
    }
}
