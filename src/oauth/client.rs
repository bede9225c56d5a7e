//! The host's OAuth clients, one per provider: the client id, the secret (inline or held as a
//! vault credential) and the redirect URI, from `oauth_providers.toml`.
//!
//! ```toml
//! [google_oauth]
//! client_id = "1234.apps.googleusercontent.com"
//! client_secret = "..."
//! redirect_uri = "http://127.0.0.1:8765/callback"
//!
//! [github_oauth]
//! client_id = "Iv1.abc"
//! client_secret_credential = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"  # the id of a credential holding it
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::CredentialId;

/// Where a confidential client's secret is.
#[derive(Clone)]
pub enum ClientSecret {
    /// The secret itself (from `client_secret`).
    Inline(SecretString),
    /// A vault credential that holds it (from `client_secret_credential`).
    Credential(CredentialId),
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientSecret::Inline(_) => f.write_str("Inline([REDACTED])"),
            ClientSecret::Credential(id) => f.debug_tuple("Credential").field(id).finish(),
        }
    }
}

/// One provider's OAuth client.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// The client id the provider issued.
    pub client_id: String,
    /// The secret of a confidential client; `None` for a public client (PKCE only).
    pub client_secret: Option<ClientSecret>,
    /// Where the provider sends the browser back, when the host has one.
    pub redirect_uri: Option<String>,
}

/// The OAuth clients, by provider name.
#[derive(Debug, Clone, Default)]
pub struct OAuthClients {
    clients: BTreeMap<String, OAuthClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientToml {
    client_id: toml::Spanned<String>,
    client_secret: Option<SecretString>,
    client_secret_credential: Option<toml::Spanned<String>>,
    redirect_uri: Option<toml::Spanned<String>>,
}

impl OAuthClients {
    /// An empty registry.
    pub fn new() -> OAuthClients {
        OAuthClients::default()
    }

    /// Adds (or replaces) the client of `provider`.
    pub fn insert(&mut self, provider: impl Into<String>, client: OAuthClient) {
        self.clients.insert(provider.into(), client);
    }

    /// The client of `provider`.
    pub fn get(&self, provider: &str) -> Option<&OAuthClient> {
        self.clients.get(provider)
    }

    /// The providers that have a client, in name order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// Reads `oauth_providers.toml`: one table per provider name with `client_id`, then
    /// `client_secret` or `client_secret_credential` (not both; neither for a public
    /// client), and `redirect_uri`. A missing file is an empty registry. On unix, a file
    /// group or others may read or write is refused (it may hold client secrets).
    pub fn load(path: &Path) -> Result<OAuthClients> {
        let shown = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OAuthClients::new()),
            Err(e) => return Err(Error::io(&shown, e)),
        };
        check_private(&meta, path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(&shown, e))?;
        OAuthClients::parse(&shown, &text)
    }

    /// Parses the text of an `oauth_providers.toml` named `file` in errors.
    fn parse(file: &str, text: &str) -> Result<OAuthClients> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = crate::catalog::line_col(text, span.start);
            Error::config(format!("{file}:{line}:{column}: {message}"))
        };
        let tables: BTreeMap<String, toml::Spanned<ClientToml>> = toml::from_str(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), without_values(e.message())))?;
        let mut clients = OAuthClients::new();
        for (provider, table) in tables {
            let span = table.span();
            let t = table.into_inner();
            if t.client_id.get_ref().trim().is_empty() {
                return Err(at(
                    t.client_id.span(),
                    format!("[{provider}] client_id must not be empty"),
                ));
            }
            let client_secret = match (t.client_secret, t.client_secret_credential) {
                (Some(_), Some(_)) => {
                    return Err(at(
                        span,
                        format!(
                            "[{provider}] sets both client_secret and client_secret_credential; \
                             keep one"
                        ),
                    ))
                }
                (Some(secret), None) => Some(ClientSecret::Inline(secret)),
                (None, Some(id)) => {
                    let span = id.span();
                    Some(ClientSecret::Credential(
                        CredentialId::new(id.into_inner()).map_err(|e| at(span, e.to_string()))?,
                    ))
                }
                (None, None) => None,
            };
            let redirect_uri = match t.redirect_uri {
                None => None,
                Some(uri) => {
                    if url::Url::parse(uri.get_ref()).is_err() {
                        return Err(at(
                            uri.span(),
                            format!(
                                "[{provider}] redirect_uri must be an absolute URL \
                                 (http://127.0.0.1:8765/callback)"
                            ),
                        ));
                    }
                    Some(uri.into_inner())
                }
            };
            clients.insert(
                provider,
                OAuthClient {
                    client_id: t.client_id.into_inner(),
                    client_secret,
                    redirect_uri,
                },
            );
        }
        Ok(clients)
    }
}

/// A TOML error message without the value it quotes (`invalid type: string "…"`), which
/// may be a client secret in the wrong place.
fn without_values(message: &str) -> String {
    let message = message.trim().replace('\n', " ");
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let expected = rest
                .find(", expected")
                .map(|i| &rest[i..])
                .unwrap_or_default();
            return format!("{}{expected}", prefix.trim_end_matches([' ', ':']));
        }
    }
    message
}

#[cfg(unix)]
fn check_private(meta: &std::fs::Metadata, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::config(format!(
            "refusing {}: group or others may read or write it (mode {mode:04o}), and it holds \
             OAuth client secrets; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_meta: &std::fs::Metadata, _path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("oauth_providers.toml");
        std::fs::write(&path, text).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        path
    }

    const GOOD: &str = r#"
[google_oauth]
client_id = "id-1"
client_secret = "canary-secret-value"
redirect_uri = "http://127.0.0.1:8765/callback"

[github_oauth]
client_id = "id-2"
client_secret_credential = "gh_client"

[public_app]
client_id = "id-3"
"#;

    #[test]
    fn a_private_file_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clients = OAuthClients::load(&write(dir.path(), GOOD, 0o600)).expect("loads");
        let google = clients.get("google_oauth").expect("google");
        assert_eq!(google.client_id, "id-1");
        assert_eq!(
            google.redirect_uri.as_deref(),
            Some("http://127.0.0.1:8765/callback")
        );
        match &google.client_secret {
            Some(ClientSecret::Inline(s)) => assert_eq!(s.expose_secret(), "canary-secret-value"),
            other => panic!("inline secret expected, got {other:?}"),
        }
        match &clients.get("github_oauth").expect("github").client_secret {
            Some(ClientSecret::Credential(id)) => assert_eq!(id.as_str(), "gh_client"),
            other => panic!("credential expected, got {other:?}"),
        }
        assert!(clients
            .get("public_app")
            .expect("public")
            .client_secret
            .is_none());
        assert_eq!(clients.providers().count(), 3);
        let shown = format!("{clients:?}");
        assert!(!shown.contains("canary-secret-value"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), GOOD, 0o644);
        let e = OAuthClients::load(&path).expect_err("0644 refused");
        let m = e.to_string();
        assert!(
            m.contains("chmod 600") && m.contains("oauth_providers.toml"),
            "{m}"
        );
        assert!(!m.contains("canary-secret-value"));
    }

    #[test]
    fn a_missing_file_is_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clients = OAuthClients::load(&dir.path().join("nope.toml")).expect("empty");
        assert_eq!(clients.providers().count(), 0);
    }

    #[test]
    fn both_secrets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[p]\nclient_id = \"x\"\nclient_secret = \"canary-secret-value\"\n\
                    client_secret_credential = \"c\"\n";
        let e = OAuthClients::load(&write(dir.path(), text, 0o600)).expect_err("both");
        let m = e.to_string();
        assert!(
            m.contains("both client_secret and client_secret_credential"),
            "{m}"
        );
        assert!(m.contains("oauth_providers.toml:"), "{m}");
        assert!(!m.contains("canary-secret-value"));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[p]\nclient_id = \"x\"\nclient_secrt = \"canary-secret-value\"\n";
        let e = OAuthClients::load(&write(dir.path(), text, 0o600)).expect_err("unknown");
        let m = e.to_string();
        assert!(m.contains("client_secrt") && m.contains(":3:"), "{m}");
        assert!(!m.contains("canary-secret-value"), "{m}");
    }

    #[test]
    fn a_malformed_file_names_file_line_and_column_but_no_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A secret at the top level, outside any provider table.
        let text = "client_secret = \"canary-secret-value\"\n";
        let e = OAuthClients::load(&write(dir.path(), text, 0o600)).expect_err("malformed");
        let m = e.to_string();
        assert!(m.contains("oauth_providers.toml:1:"), "{m}");
        assert!(!m.contains("canary-secret-value"), "{m}");
        let e = OAuthClients::load(&write(dir.path(), "[p\n", 0o600)).expect_err("syntax");
        assert!(e.to_string().contains("oauth_providers.toml:1:"), "{e}");
    }
}
