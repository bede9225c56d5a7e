//! Integrations with outside services that hand the vault short-lived credentials.

pub mod github_app;
