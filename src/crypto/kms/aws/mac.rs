//! Audit checkpoints authenticated by AWS KMS: `GenerateMac` / `VerifyMac` under an HMAC
//! KMS key ([`super::AwsKmsKey::with_mac_key`]).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;

use super::super::{secret_json, B64};
use super::client::AwsClient;
use crate::crypto::CheckpointSigner;
use crate::error::{Error, Result};

/// The MAC algorithm of checkpoint tags: HMAC-SHA256 (an `HMAC_256` key).
const MAC_ALGORITHM: &str = "HMAC_SHA_256";

/// An HMAC key in AWS KMS that authenticates audit checkpoints: `GenerateMac` makes the
/// tag, `VerifyMac` checks it (`docs/AUDIT.md`). Made by [`AwsKmsKey::with_mac_key`].
pub(super) struct AwsKmsMacKey {
    pub(super) key: String,
    pub(super) id: String,
    pub(super) client: Arc<AwsClient>,
}

impl fmt::Debug for AwsKmsMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsMacKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// `GenerateMac`.
#[derive(serde::Serialize)]
struct GenerateMacRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "MacAlgorithm")]
    algorithm: &'a str,
    #[serde(rename = "Message")]
    message: String,
}

/// `VerifyMac`.
#[derive(serde::Serialize)]
struct VerifyMacRequest<'a> {
    #[serde(rename = "KeyId")]
    key_id: &'a str,
    #[serde(rename = "MacAlgorithm")]
    algorithm: &'a str,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Mac")]
    mac: String,
}

#[async_trait]
impl CheckpointSigner for AwsKmsMacKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let request = GenerateMacRequest {
            key_id: &self.key,
            algorithm: MAC_ALGORITHM,
            message: B64.encode(message),
        };
        let body = secret_json(&request, self.key.len() + request.message.len())?;
        let answer = self
            .client
            .call(&self.id, "GenerateMac", &body, false)
            .await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| Error::KeyUnavailable {
                key_id: self.id.clone(),
                reason: "AWS KMS answered with a body that is not JSON".into(),
            })?;
        super::super::b64_field(&answer, "/Mac", &self.id)
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        // HMAC-SHA256 tags are 32 bytes; any other was not made with this algorithm.
        if tag.len() != 32 {
            return Ok(false);
        }
        let request = VerifyMacRequest {
            key_id: &self.key,
            algorithm: MAC_ALGORITHM,
            message: B64.encode(message),
            mac: B64.encode(tag),
        };
        let body = secret_json(
            &request,
            self.key.len() + request.message.len() + request.mac.len(),
        )?;
        match self.client.send(&self.id, "VerifyMac", &body).await? {
            Ok(answer) => {
                let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                Ok(answer.get("MacValid").and_then(|v| v.as_bool()) == Some(true))
            }
            // KMS answers a tag that does not verify with this exception (400).
            Err(fault) if fault.kind == "KMSInvalidMacException" => Ok(false),
            Err(fault) => Err(fault.into_error(&self.id, false)),
        }
    }
}
