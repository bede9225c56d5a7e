//! Who calls Key Vault, and how its token is got: the credential forms of the Azure SDKs'
//! `EnvironmentCredential`, `WorkloadIdentityCredential` and `ManagedIdentityCredential`,
//! kept small. Written from Microsoft's references: the client-credentials grant with a
//! secret or a client assertion (a certificate-signed JWT with the certificate's `x5t`, or
//! the workload identity's federated token), the IMDS token endpoint
//! (`/metadata/identity/oauth2/token`, `Metadata: true`) and App Service's
//! (`IDENTITY_ENDPOINT`, `X-IDENTITY-HEADER`).

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::super::B64URL;
use crate::error::{Error, Result};

/// The public cloud's sign-in host (`AZURE_AUTHORITY_HOST` changes it).
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The instance metadata service (`AZURE_POD_IDENTITY_AUTHORITY_HOST` changes it).
pub const IMDS_HOST: &str = "http://169.254.169.254";

/// How strongroom signs in to Microsoft Entra ID for Key Vault.
#[derive(Clone)]
pub enum AzureCredential {
    /// An app registration's client secret (`AZURE_CLIENT_SECRET`).
    ClientSecret {
        /// The directory (tenant) id.
        tenant: String,
        /// The application (client) id.
        client_id: String,
        /// The secret.
        secret: SecretString,
    },
    /// An app registration's certificate (`AZURE_CLIENT_CERTIFICATE_PATH`): each token
    /// request carries a JWT signed with the certificate's RSA key (RS256, `x5t` header).
    ClientCertificate {
        /// The directory (tenant) id.
        tenant: String,
        /// The application (client) id.
        client_id: String,
        /// The certificate, DER.
        certificate: Vec<u8>,
        /// Its private key, PEM (PKCS#8 or PKCS#1).
        key_pem: SecretString,
    },
    /// Workload identity (AKS): the federated token in `AZURE_FEDERATED_TOKEN_FILE`, read
    /// again at every token request (it is rotated), as the client assertion.
    WorkloadIdentity {
        /// The directory (tenant) id.
        tenant: String,
        /// The application (client) id.
        client_id: String,
        /// The federated token file.
        token_file: PathBuf,
    },
    /// A managed identity through the instance metadata service (VMs, AKS node identity,
    /// Container Apps' IMDS form): `{host}/metadata/identity/oauth2/token`.
    ManagedIdentity {
        /// `http://169.254.169.254`, or `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
        host: String,
        /// A user-assigned identity's client id; none for the system-assigned one.
        client_id: Option<String>,
    },
    /// A managed identity on App Service or Azure Functions (`IDENTITY_ENDPOINT`,
    /// `IDENTITY_HEADER`).
    AppServiceIdentity {
        /// `IDENTITY_ENDPOINT`.
        endpoint: String,
        /// `IDENTITY_HEADER`.
        header: SecretString,
        /// A user-assigned identity's client id; none for the system-assigned one.
        client_id: Option<String>,
    },
}

impl fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredential::ClientSecret {
                tenant, client_id, ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant", tenant)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            AzureCredential::ClientCertificate {
                tenant, client_id, ..
            } => f
                .debug_struct("ClientCertificate")
                .field("tenant", tenant)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            AzureCredential::WorkloadIdentity {
                tenant,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant", tenant)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            AzureCredential::ManagedIdentity { host, client_id } => f
                .debug_struct("ManagedIdentity")
                .field("host", host)
                .field("client_id", client_id)
                .finish(),
            AzureCredential::AppServiceIdentity {
                endpoint,
                client_id,
                ..
            } => f
                .debug_struct("AppServiceIdentity")
                .field("endpoint", endpoint)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

/// One PEM block of `text` with this label, decoded.
fn pem_block(text: &str, label: &str) -> Option<Zeroizing<Vec<u8>>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: Zeroizing<String> = Zeroizing::new(
        text[start..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

/// The private key block of a PEM file, as PEM text.
fn key_block(text: &str) -> Option<&str> {
    for label in ["PRIVATE KEY", "RSA PRIVATE KEY"] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let stop = start + text[start..].find(&end)? + end.len();
            return Some(&text[start..stop]);
        }
    }
    None
}

impl AzureCredential {
    /// Certificate credentials from a PEM file's text holding the certificate and its
    /// unencrypted RSA private key (what `AZURE_CLIENT_CERTIFICATE_PATH` names; a PFX file
    /// is converted with `openssl pkcs12 -in cert.pfx -out cert.pem -nodes`).
    pub fn from_certificate_pem(
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        pem: &str,
    ) -> Result<AzureCredential> {
        let certificate = pem_block(pem, "CERTIFICATE").ok_or_else(|| {
            Error::invalid(
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "holds no PEM CERTIFICATE block (a PEM file with the certificate and its key)",
            )
        })?;
        let key = key_block(pem).ok_or_else(|| {
            Error::invalid(
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "holds no unencrypted PRIVATE KEY or RSA PRIVATE KEY block",
            )
        })?;
        jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes()).map_err(|_| {
            Error::invalid(
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "its private key is not an RSA key that reads",
            )
        })?;
        Ok(AzureCredential::ClientCertificate {
            tenant: tenant.into(),
            client_id: client_id.into(),
            certificate: certificate.to_vec(),
            key_pem: SecretString::from(key.to_string()),
        })
    }

    /// The tenant and client id of a credential that signs in with Entra ID.
    pub(super) fn app(&self) -> Option<(&str, &str)> {
        match self {
            AzureCredential::ClientSecret {
                tenant, client_id, ..
            }
            | AzureCredential::ClientCertificate {
                tenant, client_id, ..
            }
            | AzureCredential::WorkloadIdentity {
                tenant, client_id, ..
            } => Some((tenant, client_id)),
            _ => None,
        }
    }

    /// The form of a client-credentials token request to `token_url` for `scope`.
    pub(super) fn token_form(&self, token_url: &str, scope: &str) -> Result<Zeroizing<String>> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("scope", scope);
        match self {
            AzureCredential::ClientSecret {
                client_id, secret, ..
            } => {
                form.append_pair("client_id", client_id)
                    .append_pair("client_secret", secret.expose_secret());
            }
            AzureCredential::ClientCertificate {
                client_id,
                certificate,
                key_pem,
                ..
            } => {
                let assertion = certificate_assertion(client_id, certificate, key_pem, token_url)?;
                form.append_pair("client_id", client_id)
                    .append_pair("client_assertion_type", ASSERTION_TYPE)
                    .append_pair("client_assertion", &assertion);
            }
            AzureCredential::WorkloadIdentity {
                client_id,
                token_file,
                ..
            } => {
                let raw = Zeroizing::new(
                    std::fs::read_to_string(token_file)
                        .map_err(|e| Error::io(token_file.display(), e))?,
                );
                form.append_pair("client_id", client_id)
                    .append_pair("client_assertion_type", ASSERTION_TYPE)
                    .append_pair("client_assertion", raw.trim());
            }
            AzureCredential::ManagedIdentity { .. }
            | AzureCredential::AppServiceIdentity { .. } => {
                return Err(Error::config(
                    "a managed identity does not use the token form",
                ));
            }
        }
        Ok(Zeroizing::new(form.finish()))
    }
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client assertion for certificate credentials: RS256 over `{aud: token URL, iss = sub
/// = client id, jti, nbf, exp (10 minutes)}` with the certificate's SHA-1 thumbprint in
/// `x5t` (Microsoft identity platform, "certificate credentials").
fn certificate_assertion(
    client_id: &str,
    certificate: &[u8],
    key_pem: &SecretString,
    token_url: &str,
) -> Result<Zeroizing<String>> {
    let thumbprint = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t = Some(B64URL.encode(thumbprint.as_ref()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut jti = [0u8; 16];
    crate::crypto::fill_random(&mut jti)?;
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": hex::encode(jti),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose_secret().as_bytes())
        .map_err(|_| Error::config("the Azure client certificate's key does not read"))?;
    jsonwebtoken::encode(&header, &claims, &key)
        .map(Zeroizing::new)
        .map_err(|_| Error::config("cannot sign the Azure client assertion"))
}

/// The token scope (and managed-identity resource) of a Key Vault or Managed HSM host:
/// each cloud's own, found from the host's domain; the public cloud's Key Vault for a host
/// of none (a private endpoint's custom name, a test server).
pub(super) fn scope_for_host(host: &str) -> String {
    const RESOURCES: [(&[&str], &str); 7] = [
        (
            &["vault.azure.net", "vaultcore.azure.net"],
            "https://vault.azure.net",
        ),
        (
            &["vault.azure.cn", "vaultcore.azure.cn"],
            "https://vault.azure.cn",
        ),
        (
            &["vault.usgovcloudapi.net", "vaultcore.usgovcloudapi.net"],
            "https://vault.usgovcloudapi.net",
        ),
        (
            &["vault.microsoftazure.de"],
            "https://vault.microsoftazure.de",
        ),
        (&["managedhsm.azure.net"], "https://managedhsm.azure.net"),
        (&["managedhsm.azure.cn"], "https://managedhsm.azure.cn"),
        (
            &["managedhsm.usgovcloudapi.net"],
            "https://managedhsm.usgovcloudapi.net",
        ),
    ];
    let host = host.to_ascii_lowercase();
    RESOURCES
        .iter()
        .find(|(suffixes, _)| suffixes.iter().any(|s| host.ends_with(&format!(".{s}"))))
        .map(|(_, resource)| format!("{resource}/.default"))
        .unwrap_or_else(|| "https://vault.azure.net/.default".to_string())
}

/// The sign-in host of the cloud a Key Vault host is in (when `AZURE_AUTHORITY_HOST` is
/// not set).
pub(super) fn authority_for_host(host: &str) -> &'static str {
    let host = host.to_ascii_lowercase();
    if host.ends_with(".azure.cn") {
        "https://login.chinacloudapi.cn"
    } else if host.ends_with(".usgovcloudapi.net") {
        "https://login.microsoftonline.us"
    } else if host.ends_with(".microsoftazure.de") {
        "https://login.microsoftonline.de"
    } else {
        PUBLIC_AUTHORITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_follows_the_cloud_of_the_key() {
        for (host, scope) in [
            ("kv.vault.azure.net", "https://vault.azure.net/.default"),
            ("kv.vault.azure.cn", "https://vault.azure.cn/.default"),
            (
                "kv.vault.usgovcloudapi.net",
                "https://vault.usgovcloudapi.net/.default",
            ),
            (
                "hsm.managedhsm.azure.net",
                "https://managedhsm.azure.net/.default",
            ),
            (
                "kv.privatelink.vaultcore.azure.net",
                "https://vault.azure.net/.default",
            ),
            ("127.0.0.1", "https://vault.azure.net/.default"),
        ] {
            assert_eq!(scope_for_host(host), scope, "{host}");
        }
        assert_eq!(
            authority_for_host("kv.vault.azure.cn"),
            "https://login.chinacloudapi.cn"
        );
        assert_eq!(authority_for_host("kv.vault.azure.net"), PUBLIC_AUTHORITY);
    }

    #[test]
    fn a_certificate_file_needs_both_blocks() {
        let err = AzureCredential::from_certificate_pem("t", "c", "nothing").expect_err("empty");
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    }
}
