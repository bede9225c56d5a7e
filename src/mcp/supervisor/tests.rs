//! The config built from a credential's fields.

#[test]
fn an_mcp_server_credential_becomes_a_config() {
    let mut fields = crate::handlers::Fields::new();
    let put = |f: &mut crate::handlers::Fields, k: &str, v: &str| {
        f.insert(k.to_string(), SecretString::from(v.to_string()));
    };
    put(&mut fields, "command", "/usr/bin/mcp-notion");
    put(&mut fields, "args", r#"["--stdio"]"#);
    put(
        &mut fields,
        "env",
        r#"{"LOG_LEVEL":"info","NOTION_TOKEN":"stale-CANARY"}"#,
    );
    put(&mut fields, "env_token_var", "NOTION_TOKEN");
    let config = StdioServerConfig::from_fields(&fields).expect("config");
    assert_eq!(config.program, PathBuf::from("/usr/bin/mcp-notion"));
    assert_eq!(config.args, vec!["--stdio"]);
    assert_eq!(config.token_var, "NOTION_TOKEN");
    assert_eq!(
        config.env.len(),
        1,
        "the token variable comes from the source only"
    );
    assert!(!format!("{config:?}").contains("CANARY"));
    put(&mut fields, "args", "--stdio");
    let err = StdioServerConfig::from_fields(&fields).expect_err("args");
    assert!(err.to_string().contains("args"));
    fields.remove("command");
    assert!(StdioServerConfig::from_fields(&fields).is_err());
}

use super::*;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;

fn config(token_var: &str) -> StdioServerConfig {
    StdioServerConfig {
        token_var: token_var.to_owned(),
        ..StdioServerConfig::new("/bin/true")
    }
}

#[test]
fn the_default_token_variable_is_mcp_token() {
    assert_eq!(StdioServerConfig::default().token_var, "MCP_TOKEN");
    assert_eq!(
        StdioServerConfig::default().stop_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(
        StdioServerConfig::default().restart_backoff,
        Duration::from_secs(1)
    );
    assert!(config("MCP_TOKEN").validate().is_ok());
}

#[test]
fn token_var_must_be_an_environment_variable_name() {
    for good in ["MCP_TOKEN", "_X", "github_token", "A1"] {
        assert!(config(good).validate().is_ok(), "{good}");
    }
    for bad in ["", "1ABC", "MCP-TOKEN", "A B", "A=B", "TOKEN\n", "Ä"] {
        let err = config(bad).validate().expect_err(bad);
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if field == "token_var"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn env_may_not_set_the_token_variable_or_bad_names() {
    let mut c = config("MCP_TOKEN");
    c.env.insert("MCP_TOKEN".into(), "secret-canary".into());
    let err = c.validate().expect_err("token var in env");
    assert!(!err.to_string().contains("secret-canary"));
    let mut c = config("MCP_TOKEN");
    c.env.insert("BAD-NAME".into(), "v".into());
    assert!(c.validate().is_err());
    let mut c = config("MCP_TOKEN");
    c.inherit_env.push("BAD NAME".into());
    assert!(c.validate().is_err());
}

#[test]
fn program_and_backoff_are_checked() {
    assert!(StdioServerConfig::default().validate().is_err());
    let mut c = config("MCP_TOKEN");
    c.restart_backoff = Duration::ZERO;
    assert!(c.validate().is_err());
    let mut c = config("MCP_TOKEN");
    c.max_restart_backoff = Duration::from_millis(1);
    assert!(c.validate().is_err());
}

#[test]
fn debug_shows_env_names_not_values() {
    let mut c = config("MCP_TOKEN");
    c.env.insert("API_KEY".into(), "secret-canary".into());
    let text = format!("{c:?}");
    assert!(text.contains("API_KEY"));
    assert!(!text.contains("secret-canary"));
}
