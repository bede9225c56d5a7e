//! Credential handlers: one per credential type. A handler owns the type's field schema, its
//! validation (errors name the field and the rule, never the value), where its fields inject
//! by default, and how the type expires. Each [`crate::Vault`] owns a [`HandlerRegistry`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

mod builtin;
pub(crate) mod formats;
mod keys;
mod rules;

pub use formats::FieldFormat;

/// A credential's fields by name (secret or not, all are sealed together).
pub type Fields = BTreeMap<String, SecretString>;

/// One field of a handler's schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldSpec {
    /// The field's name (`api_key`).
    pub name: String,
    /// What a person is shown (`API key`).
    pub label: String,
    /// A secret: prompted without echo, masked on display, scrubbed from logs. Non-secret
    /// fields (a user name, a region) are sealed all the same.
    pub secret: bool,
    /// Must be present and non-empty.
    pub required: bool,
    /// The shape the value must have.
    pub format: FieldFormat,
}

impl FieldSpec {
    /// A field; `required` and `secret` as given.
    pub fn new(
        name: &str,
        label: &str,
        format: FieldFormat,
        required: bool,
        secret: bool,
    ) -> FieldSpec {
        FieldSpec {
            name: name.to_string(),
            label: label.to_string(),
            secret,
            required,
            format,
        }
    }
}

/// How a credential type expires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum ExpiryRule {
    /// It does not expire by itself.
    Never,
    /// It expires at the time (Unix seconds) in this field, when the field is present.
    AtField {
        /// The field holding the expiry time.
        field: String,
    },
    /// An access token that expires at `expires_at` (Unix seconds) and can be renewed with
    /// the refresh token in `refresh_token`.
    Refreshable {
        /// The field holding the access token's expiry time.
        expires_at: String,
        /// The field holding the refresh token.
        refresh_token: String,
    },
}

impl ExpiryRule {
    /// The field that holds the expiry time, if any.
    pub fn expiry_field(&self) -> Option<&str> {
        match self {
            ExpiryRule::Never => None,
            ExpiryRule::AtField { field } => Some(field),
            ExpiryRule::Refreshable { expires_at, .. } => Some(expires_at),
        }
    }
}

/// A credential type.
///
/// Implement it for a type of your own and register it with
/// [`crate::VaultBuilder::handler`]; the built-in types are in [`HandlerRegistry::builtin`].
/// `validate` must never put a field's value in an error.
pub trait CredentialHandler: Send + Sync + fmt::Debug {
    /// The type id (`api_key`); providers name it as their `handler_type`.
    fn type_id(&self) -> &str;

    /// One line on what the type is for.
    fn description(&self) -> &str;

    /// The field schema.
    fn fields(&self) -> &[FieldSpec];

    /// Whether fields outside [`CredentialHandler::fields`] are accepted (`multi_field`,
    /// `custom`).
    fn open_schema(&self) -> bool {
        false
    }

    /// Checks a field set: the schema ([`check_schema`]) and the type's own rules.
    fn validate(&self, fields: &Fields) -> Result<()> {
        check_schema(self.fields(), self.open_schema(), fields)
    }

    /// Where each field goes by default when a credential is injected into an app config:
    /// `(field, path template)`, with `{block}` for the consuming block and `{name}` for the
    /// value of field `name` (`("token", "{block}.env.{env_token_var}")`).
    fn default_inject(&self) -> Vec<(String, String)> {
        self.fields()
            .iter()
            .map(|f| (f.name.clone(), format!("{{block}}.config.{}", f.name)))
            .collect()
    }

    /// How credentials of this type expire.
    fn expiry(&self) -> ExpiryRule {
        ExpiryRule::Never
    }
}

/// Checks `fields` against a schema: every required field present and non-empty, no field
/// outside the schema (unless `open`), and every value in its field's format. Errors name the
/// field and the rule.
pub fn check_schema(schema: &[FieldSpec], open: bool, fields: &Fields) -> Result<()> {
    for spec in schema {
        match fields.get(&spec.name) {
            None if spec.required => {
                return Err(Error::invalid(
                    spec.name.clone(),
                    format!("{} is required", spec.label),
                ))
            }
            None => {}
            Some(value) => spec
                .format
                .check(value.expose_secret())
                .map_err(|rule| Error::invalid(spec.name.clone(), rule))?,
        }
    }
    if !open {
        if let Some(extra) = fields
            .keys()
            .find(|name| !schema.iter().any(|s| s.name == **name))
        {
            let known: Vec<&str> = schema.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::invalid(
                extra.clone(),
                format!(
                    "`{extra}` is not a field of this credential type; its fields are {}",
                    known.join(", ")
                ),
            ));
        }
    }
    for (name, value) in fields {
        if !schema.iter().any(|s| s.name == *name) {
            FieldFormat::MultilineText
                .check(value.expose_secret())
                .map_err(|rule| Error::invalid(name.clone(), rule))?;
        }
    }
    Ok(())
}

/// The handlers a vault knows, by type id: the 19 built-in types plus any the host
/// registers.
#[derive(Clone)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn CredentialHandler>>,
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        HandlerRegistry::builtin()
    }
}

impl HandlerRegistry {
    /// A registry with no handlers.
    pub fn empty() -> HandlerRegistry {
        HandlerRegistry {
            handlers: BTreeMap::new(),
        }
    }

    /// A registry with the 19 built-in types.
    pub fn builtin() -> HandlerRegistry {
        let mut registry = HandlerRegistry::empty();
        for handler in builtin::all() {
            registry
                .handlers
                .insert(handler.type_id().to_string(), handler);
        }
        registry
    }

    /// Adds a handler. A type id that is already registered is an error (a host replaces a
    /// built-in type on purpose with [`HandlerRegistry::replace`]).
    pub fn register(&mut self, handler: Arc<dyn CredentialHandler>) -> Result<()> {
        let id = handler.type_id().to_string();
        crate::model::validate_id("handler type", &id)?;
        if self.handlers.contains_key(&id) {
            return Err(Error::AlreadyExists {
                what: format!("a handler for credential type `{id}`"),
            });
        }
        self.handlers.insert(id, handler);
        Ok(())
    }

    /// Adds a handler, replacing any handler of the same type id.
    pub fn replace(&mut self, handler: Arc<dyn CredentialHandler>) {
        self.handlers.insert(handler.type_id().to_string(), handler);
    }

    /// The handler of a type.
    pub fn get(&self, type_id: &str) -> Option<&Arc<dyn CredentialHandler>> {
        self.handlers.get(type_id)
    }

    /// The handler of a type, or an error listing the known types.
    pub fn require(&self, type_id: &str) -> Result<&Arc<dyn CredentialHandler>> {
        self.get(type_id).ok_or_else(|| {
            Error::invalid(
                "handler type",
                format!(
                    "`{type_id}` is not a known credential type; known types are {}",
                    self.type_ids().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// Every type id, in order.
    pub fn type_ids(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_registry_has_the_19_types() {
        let registry = HandlerRegistry::builtin();
        let ids: Vec<&str> = registry.type_ids().collect();
        assert_eq!(
            ids,
            [
                "api_key",
                "aws_access_key",
                "azure_ad",
                "basic_auth",
                "bearer_token",
                "client_certificate",
                "connection_string",
                "custom",
                "database_fields",
                "device_code",
                "file_upload",
                "gcp_service_account",
                "hmac_signing_secret",
                "mcp_http",
                "mcp_server",
                "multi_field",
                "oauth2",
                "oauth2_pkce",
                "ssh_key",
            ]
        );
    }
}
