//! Audit checkpoints authenticated by Google Cloud KMS: `cryptoKeyVersions.macSign` /
//! `macVerify` under a MAC key version ([`super::GcpKmsKey::with_mac_key`]).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;

use super::super::{json_request, B64};
use super::GcpClient;
use crate::crypto::CheckpointSigner;
use crate::error::Result;

/// A MAC key version in Google Cloud KMS that authenticates audit checkpoints: `macSign`
/// makes the tag, `macVerify` checks it (`docs/AUDIT.md`). Made by
/// [`super::GcpKmsKey::with_mac_key`].
pub(super) struct GcpKmsMacKey {
    pub(super) version: String,
    pub(super) id: String,
    pub(super) client: Arc<GcpClient>,
}

impl fmt::Debug for GcpKmsMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsMacKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CheckpointSigner for GcpKmsMacKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let bearer = self.client.bearer(&self.id).await?;
        let request = json_request(
            http::Method::POST,
            &self.client.url(&self.version, "macSign"),
            &serde_json::json!({ "data": B64.encode(message) }),
            &[("authorization", &bearer)],
        )?;
        let answer = self.client.call_json(&self.id, request).await?;
        super::super::b64_field(&answer, "/mac", &self.id)
    }

    async fn verify(&self, message: &[u8], tag: &[u8]) -> Result<bool> {
        // The sizes of the MAC algorithms Cloud KMS offers (HMAC with SHA-1, SHA-224,
        // SHA-256, SHA-384, SHA-512): any other tag was not made by it.
        if ![20, 28, 32, 48, 64].contains(&tag.len()) {
            return Ok(false);
        }
        let bearer = self.client.bearer(&self.id).await?;
        let request = json_request(
            http::Method::POST,
            &self.client.url(&self.version, "macVerify"),
            &serde_json::json!({ "data": B64.encode(message), "mac": B64.encode(tag) }),
            &[("authorization", &bearer)],
        )?;
        let answer = self.client.call_json(&self.id, request).await?;
        Ok(answer.get("success").and_then(|v| v.as_bool()) == Some(true))
    }
}
