//! Integrations with external services: credential providers that mint per-agent identities.

pub mod gitlab_provider;
