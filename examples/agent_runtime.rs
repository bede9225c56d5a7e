//! An agent runtime: an app config with three agents whose blocks consume credential slots
//! in different scopes, compiled against the slots a module declares, deployed (shared
//! credentials resolved once), and two user sessions started, each with its own
//! credentials injected. The configs are printed with the secrets masked.
//!
//! Run it with `cargo run --example agent_runtime`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::model::ScopeKind;
use strongroom::{LocalKey, NewCredential, Principal, Scope, SecretString, SqliteStore, Vault};

const APP_YAML: &str = r#"# support-bot: three agents, three scopes
agents:
  - id: assistant            # each user brings their own OpenAI key
    brain:
      provider: openai
      model: gpt-4o
      backend: openai_compat
      credential: openai_main          # compact form: per_user
  - id: researcher           # one Anthropic key for the whole installation
    brain:
      provider: anthropic
      model: claude-sonnet
      credential:
        ref: anthropic_shared
        scope: system_wide
        provider: anthropic
  - id: triage               # one DeepSeek key for this app
    brain:
      provider: deepseek
      model: deepseek-chat
      credential:
        ref: deepseek_team
        scope: per_app_shared
      config:
        temperature: 0.2
tools:
  - id: github
    mcp:
      command: npx
      args: ["-y", "@modelcontextprotocol/server-github"]
      credential:
        ref: github
        scope: per_app_per_user
        provider: github_pat
"#;

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let home = tempfile::tempdir()?;
    let vault = Vault::builder()
        .store(Arc::new(SqliteStore::open(home.path().join("vault.db"))?))
        .key_wrapper(Arc::new(LocalKey::generate()?))
        .build()
        .await?;

    // The modules of the runtime declare the slots their blocks consume.
    let slots = Slots::new()
        .declare(
            "brain",
            CredentialSlot::new("brain_credential", "LLM provider credential")
                .handler_types(["api_key", "bearer_token", "oauth2"])
                .providers(["openai", "anthropic", "deepseek"])
                .scopes_preferred([
                    ScopeKind::PerUser,
                    ScopeKind::SystemWide,
                    ScopeKind::PerAppShared,
                ])
                .inject("api_key", "{block}.config.api_key")
                .inject("organization", "{block}.config.organization")
                .required(true),
        )
        .declare(
            "mcp",
            CredentialSlot::new("mcp_token", "MCP server token")
                .handler_types(["bearer_token"])
                .inject("token", "{block}.env.GITHUB_PERSONAL_ACCESS_TOKEN"),
        );

    // Credentials: shared ones by admins, per-user ones by the users (with a grant).
    let admin = Principal::parse("system_admin:root")?;
    let app_admin = Principal::parse("app_admin:support-bot:ops")?;
    vault
        .create(
            &admin,
            NewCredential::new(
                "anthropic_shared",
                Scope::SystemWide,
                "anthropic",
                "",
                fields(&[("api_key", "sk-ant-shared-0001")]),
            ),
        )
        .await?;
    vault
        .create(
            &app_admin,
            NewCredential::new(
                "deepseek_team",
                Scope::per_app_shared("support-bot")?,
                "deepseek",
                "",
                fields(&[("api_key", "sk-deepseek-team-0002")]),
            ),
        )
        .await?;
    for user in ["alice", "bob"] {
        let me = Principal::parse(&format!("app_user:support-bot:{user}"))?;
        let key = vault
            .create(
                &me,
                NewCredential::new(
                    "openai_main",
                    Scope::per_user(user)?,
                    "openai",
                    "",
                    fields(&[("api_key", &format!("sk-proj-{user}-0003"))]),
                ),
            )
            .await?;
        vault.grant_add(&me, &key.id, "support-bot").await?;
        vault
            .create(
                &me,
                NewCredential::new(
                    "github",
                    Scope::per_app_per_user("support-bot", user)?,
                    "github_pat",
                    "",
                    fields(&[("token", &format!("ghp_{user}0004"))]),
                ),
            )
            .await?;
    }

    // Compile, deploy, start two sessions.
    let config = AppConfig::parse("support-bot.yaml", APP_YAML)?;
    let manifest = compile("support-bot", &config, &slots, &vault.catalog())?;
    println!("manifest:");
    for entry in &manifest.entries {
        let when = if entry.at_deploy() {
            "deploy"
        } else {
            "session start"
        };
        println!("  {} -> resolved at {when}", entry.describe());
    }
    for warning in &manifest.warnings {
        println!("  {warning}");
    }
    let deployment = Deployment::new(&vault, manifest).await?;
    for user in ["alice", "bob"] {
        let session = deployment.start_session(user).await?;
        println!(
            "\nsession of {user} ({} values injected, shown masked):",
            session.injected_count()
        );
        println!("{}", serde_json::to_string_pretty(&session.masked()[0])?);
    }

    let report = vault.verify_audit(&admin).await?;
    println!(
        "\naudit chain: {} rows, intact: {}",
        report.rows,
        report.is_ok()
    );
    Ok(())
}
