//! The names of the bundled providers and their handler types. The TOML provider catalog
//! (with field schemas and live verification) replaces this list; until then it lets the
//! CLI refuse a provider it has never heard of and pick the handler type.

/// `(provider, handler type)` for every bundled provider.
pub const BUILTIN_PROVIDERS: &[(&str, &str)] = &[
    ("anthropic", "api_key"),
    ("aws", "aws_access_key"),
    ("azure_openai", "multi_field"),
    ("deepseek", "api_key"),
    ("discord_oauth", "oauth2"),
    ("gcp", "gcp_service_account"),
    ("github_app", "multi_field"),
    ("github_copilot", "device_code"),
    ("github_oauth", "oauth2"),
    ("github_pat", "bearer_token"),
    ("gitlab", "bearer_token"),
    ("google_oauth", "oauth2_pkce"),
    ("mockprovider", "api_key"),
    ("mongodb", "connection_string"),
    ("notion", "oauth2"),
    ("openai", "api_key"),
    ("postgres", "database_fields"),
    ("redis", "connection_string"),
    ("slack_oauth", "oauth2"),
    ("stripe", "multi_field"),
    ("telegram", "bearer_token"),
];

/// The handler type of a bundled provider.
pub fn handler_type_of(provider: &str) -> Option<&'static str> {
    BUILTIN_PROVIDERS
        .iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, handler)| *handler)
}
