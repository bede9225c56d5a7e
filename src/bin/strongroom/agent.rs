//! `strongroom agent …`: agents' integrations (link, list, unlink), what the credentials
//! path hands an agent, and its named secrets (see docs/INTEGRATIONS.md).
//!
//! No token is printed unless `--reveal` is given: a token shows as its first four
//! characters and `…`. A token the service rejects when linking exits 7 (nothing is stored);
//! a service that cannot be reached exits 1.

use strongroom::integrations::{Integration, IntegrationProvider};
use strongroom::NamedSource;

use super::*;

/// `strongroom agent`: the options every agent command takes, and the command.
#[derive(Args)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) urls: ServiceUrls,
    #[command(subcommand)]
    pub(crate) command: AgentCommand,
}

/// The services' API base URLs (defaults: GitHub.com, GitLab.com, api.telegram.org).
#[derive(Args)]
pub(crate) struct ServiceUrls {
    /// GitHub's API base URL (GitHub Enterprise Server: `https://HOST/api/v3`).
    #[arg(long, global = true, env = "STRONGROOM_GITHUB_URL")]
    pub(crate) github_url: Option<String>,
    /// GitLab's API base URL (self-managed: `https://HOST/api/v4`).
    #[arg(long, global = true, env = "STRONGROOM_GITLAB_URL")]
    pub(crate) gitlab_url: Option<String>,
    /// The Telegram Bot API base URL (a local Bot API server).
    #[arg(long, global = true, env = "STRONGROOM_TELEGRAM_URL")]
    pub(crate) telegram_url: Option<String>,
}

impl ServiceUrls {
    /// The base URLs given, by provider.
    pub(crate) fn given(&self) -> Vec<(IntegrationProvider, &str)> {
        [
            (IntegrationProvider::Github, &self.github_url),
            (IntegrationProvider::Gitlab, &self.gitlab_url),
            (IntegrationProvider::Telegram, &self.telegram_url),
        ]
        .into_iter()
        .filter_map(|(p, url)| url.as_deref().map(|u| (p, u)))
        .collect()
    }
}

#[derive(Subcommand)]
pub(crate) enum AgentCommand {
    /// An agent's integrations: list, link, unlink (system admins).
    #[command(subcommand)]
    Integration(IntegrationCommand),
    /// What the agent receives through the credentials path for PROVIDER (github, gitlab,
    /// telegram): the token masked unless --reveal. Audited. The agent itself (`--as
    /// agent:ID`) and system admins.
    Credentials {
        agent: String,
        provider: String,
        /// Print the token itself.
        #[arg(long)]
        reveal: bool,
    },
    /// The named secret NAME for the agent (e.g. `llmproxy:llm.api_key`): the agent's
    /// override (`agent:llmproxy.llm.api_key`) when it has one, else the org-level
    /// (system-wide) secret; masked unless --reveal. Audited. The agent itself and system
    /// admins.
    Secret {
        agent: String,
        name: String,
        /// Print the secret's values.
        #[arg(long)]
        reveal: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum IntegrationCommand {
    /// The agent's integrations (metadata only).
    List { agent: String },
    /// GitHub (personal access token).
    #[command(subcommand)]
    Github(TokenCommand),
    /// GitLab (personal, group or project access token).
    #[command(subcommand)]
    Gitlab(TokenCommand),
    /// Telegram (a bot the agent is reached through).
    #[command(subcommand)]
    Telegram(TelegramCommand),
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Check the token with the service, then store it for the agent (not agent-accessible).
    Link {
        agent: String,
        /// The token: VALUE, `-` (stdin), `@FILE`; omitted, a prompt without echo on a
        /// terminal.
        #[arg(long)]
        pat: Option<String>,
    },
    /// Remove the integration and its secrets.
    Unlink { agent: String },
}

#[derive(Subcommand)]
pub(crate) enum TelegramCommand {
    /// Check the bot token with getMe, then store it and the allowed users for the agent.
    Link {
        agent: String,
        /// The bot token: VALUE, `-` (stdin), `@FILE`; omitted, a prompt without echo on a
        /// terminal.
        #[arg(long)]
        bot_token: Option<String>,
        /// The Telegram user ids allowed to talk to the bot, comma-separated.
        #[arg(long)]
        allowed_users: String,
    },
    /// Remove the integration and its secrets.
    Unlink { agent: String },
}

impl AgentArgs {
    /// Does the command store something (and so may start a vault)?
    pub(crate) fn creates(&self) -> bool {
        matches!(
            &self.command,
            AgentCommand::Integration(
                IntegrationCommand::Github(TokenCommand::Link { .. })
                    | IntegrationCommand::Gitlab(TokenCommand::Link { .. })
                    | IntegrationCommand::Telegram(TelegramCommand::Link { .. })
            )
        )
    }
}

/// A token given as `--NAME VALUE|-|@FILE`, or prompted for when the option is omitted.
fn token_input(flag: &'static str, value: Option<&str>) -> Result<SecretString, Error> {
    let input = SecretInput {
        flag,
        name: flag.trim_start_matches("--"),
        spell: |name, form| format!("--{name} {form}"),
    };
    let mut stdin_taken = None;
    let text = input.read(value.unwrap_or("?"), &mut stdin_taken)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(flag, "the token is empty"));
    }
    Ok(SecretString::from(text.to_string()))
}

/// A token as printed without `--reveal`: its first four characters and `…` (nothing of
/// one shorter than 12 characters).
pub(crate) fn masked(token: &str) -> String {
    if token.chars().count() < 12 {
        return "…".into();
    }
    let head: String = token.chars().take(4).collect();
    format!("{head}…")
}

fn shown(token: &str, reveal: bool) -> String {
    if reveal {
        token.to_string()
    } else {
        masked(token)
    }
}

fn integration_json(i: &Integration) -> serde_json::Value {
    let mut value = serde_json::to_value(i).unwrap_or_default();
    times_as_rfc3339(&mut value, &["linked_at"]);
    value
}

fn print_integrations(list: &[Integration], out: &Output) {
    if out.json {
        let value: Vec<_> = list.iter().map(integration_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    if list.is_empty() {
        println!("no integrations");
        return;
    }
    println!(
        "{:<10} {:<12} {:<24} {:<24} LINKED BY",
        "PROVIDER", "AUTH", "USERNAME", "LINKED AT"
    );
    for i in list {
        println!(
            "{:<10} {:<12} {:<24} {:<24} {}",
            i.provider.as_str(),
            i.auth_type.as_str(),
            cell(&i.username),
            i.linked_at.to_string(),
            cell(&i.linked_by)
        );
    }
}

fn print_linked(verb: &str, i: &Integration, out: &Output) {
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&integration_json(i)).unwrap_or_default()
        );
    } else {
        println!(
            "{verb} {} for agent {}: {} ({})",
            i.provider.as_str(),
            cell(&i.agent),
            cell(&i.username),
            i.auth_type.as_str()
        );
    }
}

pub(crate) async fn agent(
    vault: &Vault,
    actor: &Principal,
    args: AgentArgs,
    out: &Output,
) -> Result<u8, Error> {
    match args.command {
        AgentCommand::Integration(cmd) => integration(vault, actor, cmd, out).await,
        AgentCommand::Credentials {
            agent,
            provider,
            reveal,
        } => {
            let provider = IntegrationProvider::parse(&provider)?;
            let c = vault.credentials_for(actor, &agent, provider).await?;
            let token = shown(c.token.expose_secret(), reveal);
            if out.json {
                let doc = serde_json::json!({
                    "agent": c.agent,
                    "provider": c.provider.as_str(),
                    "auth_type": c.auth_type.as_str(),
                    "username": c.username,
                    "token": token,
                    "revealed": reveal,
                    "expires_at": c.expires_at.map(|t| t.to_string()),
                    "allowed_users": c.allowed_users,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("agent:         {}", cell(&c.agent));
                println!("provider:      {}", c.provider.as_str());
                println!("auth type:     {}", c.auth_type.as_str());
                println!("username:      {}", cell(&c.username));
                println!("token:         {}", cell(&token));
                if let Some(at) = c.expires_at {
                    println!("expires at:    {at}");
                }
                if !c.allowed_users.is_empty() {
                    let users: Vec<String> =
                        c.allowed_users.iter().map(ToString::to_string).collect();
                    println!("allowed users: {}", users.join(","));
                }
            }
            Ok(0)
        }
        AgentCommand::Secret {
            agent,
            name,
            reveal,
        } => {
            let got = vault.named_secret(actor, &agent, &name).await?;
            let info = &got.secret.info;
            let fields: BTreeMap<&str, String> = got
                .secret
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), shown(v.expose_secret(), reveal)))
                .collect();
            let source = match got.source {
                NamedSource::Agent => "agent",
                _ => "org",
            };
            if out.json {
                let doc = serde_json::json!({
                    "agent": agent,
                    "name": name,
                    "source": source,
                    "credential": info.name,
                    "id": info.id.to_string(),
                    "scope": info.scope.to_string(),
                    "provider": info.provider,
                    "fields": fields,
                    "revealed": reveal,
                });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("source:     {source}");
                println!("credential: {} ({})", cell(&info.name), cell(&info.scope));
                println!("id:         {}", info.id);
                for (k, v) in &fields {
                    println!("{:<11} {}", format!("{}:", cell(k)), cell(v));
                }
            }
            Ok(0)
        }
    }
}

async fn integration(
    vault: &Vault,
    actor: &Principal,
    cmd: IntegrationCommand,
    out: &Output,
) -> Result<u8, Error> {
    let (verb, done) = match cmd {
        IntegrationCommand::List { agent } => {
            print_integrations(&vault.integrations(actor, &agent).await?, out);
            return Ok(0);
        }
        IntegrationCommand::Github(TokenCommand::Link { agent, pat }) => {
            let token = token_input("--pat", pat.as_deref())?;
            let linked = vault.link_github_token(actor, &agent, token).await;
            ("linked", linked?)
        }
        IntegrationCommand::Gitlab(TokenCommand::Link { agent, pat }) => {
            let token = token_input("--pat", pat.as_deref())?;
            let linked = vault.link_gitlab_token(actor, &agent, token).await;
            ("linked", linked?)
        }
        IntegrationCommand::Telegram(TelegramCommand::Link {
            agent,
            bot_token,
            allowed_users,
        }) => {
            let token = token_input("--bot-token", bot_token.as_deref())?;
            let linked = vault
                .link_telegram(actor, &agent, token, &allowed_users)
                .await;
            ("linked", linked?)
        }
        IntegrationCommand::Github(TokenCommand::Unlink { agent }) => (
            "unlinked",
            vault
                .unlink(actor, &agent, IntegrationProvider::Github)
                .await?,
        ),
        IntegrationCommand::Gitlab(TokenCommand::Unlink { agent }) => (
            "unlinked",
            vault
                .unlink(actor, &agent, IntegrationProvider::Gitlab)
                .await?,
        ),
        IntegrationCommand::Telegram(TelegramCommand::Unlink { agent }) => (
            "unlinked",
            vault
                .unlink(actor, &agent, IntegrationProvider::Telegram)
                .await?,
        ),
    };
    print_linked(verb, &done, out);
    Ok(0)
}
