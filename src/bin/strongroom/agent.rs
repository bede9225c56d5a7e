//! `strongroom agent …`: agents' integrations (link, list, unlink), what the credentials
//! path hands an agent, and its named secrets (see docs/INTEGRATIONS.md).
//!
//! No token is printed unless `--reveal` is given: a token shows as its first four
//! characters and `…`. A token the service rejects when linking exits 7 (nothing is stored);
//! a service that cannot be reached exits 1.

use strongroom::integrations::github_app::TokenNarrowing;
use strongroom::integrations::{Integration, IntegrationProvider};
use strongroom::{GithubAppLink, NamedSource, UnlinkReport};

use crate::credential_provider::{deprovision_json, print_deprovision};

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
    /// GitHub (a personal access token, or a GitHub App installation).
    #[command(subcommand)]
    Github(GithubCommand),
    /// GitLab (a personal, group or project access token, or an identity minted by a
    /// credential provider).
    #[command(subcommand)]
    Gitlab(GitlabCommand),
    /// Telegram (a bot the agent is reached through).
    #[command(subcommand)]
    Telegram(TelegramCommand),
}

#[derive(Subcommand)]
pub(crate) enum GithubCommand {
    /// Check the token with GitHub, then store it for the agent (not agent-accessible); or,
    /// with --app-id, check the App and the installation (a JWT signed with the private key,
    /// then an installation token), then store the key for the agent: the agent is handed
    /// installation tokens minted from it, never the key.
    Link {
        agent: String,
        /// The token: VALUE, `-` (stdin), `@FILE`; omitted (and no --app-id), a prompt
        /// without echo on a terminal.
        #[arg(long, conflicts_with = "app_id")]
        pat: Option<String>,
        /// GitHub App mode: the App's numeric id.
        #[arg(long, requires_all = ["installation_id", "private_key_file"])]
        app_id: Option<String>,
        /// The installation the agent acts through (App mode).
        #[arg(long, requires = "app_id")]
        installation_id: Option<u64>,
        /// The App's private key (`.pem`, App mode): refused unless only its owner can read
        /// it (`chmod 600`). Never printed.
        #[arg(long, requires = "app_id")]
        private_key_file: Option<PathBuf>,
        /// The App's client id, used as the JWTs' issuer (App mode).
        #[arg(long, requires = "app_id")]
        client_id: Option<String>,
        /// Narrow the agent's installation tokens to this repository (name without its
        /// owner; repeatable; App mode).
        #[arg(long = "repository", value_name = "NAME", requires = "app_id")]
        repositories: Vec<String>,
        /// Narrow the agent's installation tokens to this permission, `name=level` (e.g.
        /// `contents=read`; repeatable; App mode).
        #[arg(long = "permission", value_name = "NAME=LEVEL", requires = "app_id")]
        permissions: Vec<String>,
    },
    /// Remove the integration and its secrets.
    Unlink { agent: String },
}

#[derive(Subcommand)]
pub(crate) enum GitlabCommand {
    /// Check the token with GitLab, then store it for the agent (not agent-accessible); or,
    /// with --provider, have credential provider NAME mint an identity for the agent (a
    /// service account and its token, or a project access token; `strongroom
    /// credential-provider`).
    Link {
        agent: String,
        /// The token: VALUE, `-` (stdin), `@FILE`; omitted (and no --provider), a prompt
        /// without echo on a terminal.
        #[arg(long, conflicts_with = "provider")]
        pat: Option<String>,
        /// The credential provider that mints the agent's identity.
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
    /// Remove the integration and its secrets; a provisioned identity is deprovisioned at
    /// GitLab (its token revoked, its service account deleted) and the steps are printed.
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
                IntegrationCommand::Github(GithubCommand::Link { .. })
                    | IntegrationCommand::Gitlab(GitlabCommand::Link { .. })
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

/// A GitHub App's private key from `path`: refused (exit 2) unless it is a regular file only
/// its owner can access, as master key files are (keysel.rs). Never printed.
fn private_key(path: &Path) -> Result<SecretString, Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() || mode & 0o077 != 0 {
        return Err(Error::Config {
            message: format!(
                "refusing {}: {}; it holds a GitHub App's private key, so only its owner may \
                 read or change it: run `chmod 600 {}`",
                path.display(),
                if meta.is_file() {
                    format!("group or others can access it (mode {mode:04o})")
                } else {
                    "it is not a regular file".into()
                },
                path.display()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    if text.trim().is_empty() {
        return Err(invalid("--private-key-file", "the file is empty"));
    }
    Ok(SecretString::from(text))
}

/// Prints what an unlink did: the integration, and the deprovisioning of a provisioned one
/// (exit 1 when a remote step failed: the integration is gone, something at GitLab may
/// be left).
fn print_unlink_report(report: &UnlinkReport, out: &Output) -> u8 {
    let complete = report.deprovision.as_ref().is_none_or(|d| d.complete());
    if out.json {
        let mut doc = integration_json(&report.integration);
        if let serde_json::Value::Object(map) = &mut doc {
            map.insert(
                "deprovision".into(),
                report
                    .deprovision
                    .as_ref()
                    .map_or(serde_json::Value::Null, deprovision_json),
            );
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_linked("unlinked", &report.integration, out);
        if let Some(d) = &report.deprovision {
            print_deprovision(d, "  ");
        }
    }
    if complete {
        0
    } else {
        1
    }
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
        IntegrationCommand::Github(GithubCommand::Link {
            agent,
            pat,
            app_id: Some(app_id),
            installation_id,
            private_key_file,
            client_id,
            repositories,
            permissions,
        }) => {
            let (Some(installation_id), Some(key_file)) = (installation_id, private_key_file)
            else {
                return Err(invalid(
                    "--app-id",
                    "give --installation-id and --private-key-file with it",
                ));
            };
            drop(pat);
            let mut narrowing = TokenNarrowing::none();
            narrowing.repositories = repositories;
            for p in &permissions {
                let (name, level) = p
                    .split_once('=')
                    .filter(|(n, l)| !n.trim().is_empty() && !l.trim().is_empty())
                    .ok_or_else(|| {
                        invalid("--permission", "give it as name=level (e.g. contents=read)")
                    })?;
                narrowing
                    .permissions
                    .insert(name.trim().to_string(), level.trim().to_string());
            }
            let pem = private_key(&key_file)?;
            let mut link = GithubAppLink::new(app_id, installation_id, pem).narrowing(narrowing);
            if let Some(client_id) = client_id {
                link = link.client_id(client_id);
            }
            ("linked", vault.link_github_app(actor, &agent, link).await?)
        }
        IntegrationCommand::Github(GithubCommand::Link { agent, pat, .. }) => {
            let token = token_input("--pat", pat.as_deref())?;
            let linked = vault.link_github_token(actor, &agent, token).await;
            ("linked", linked?)
        }
        IntegrationCommand::Gitlab(GitlabCommand::Link {
            agent,
            provider: Some(provider),
            ..
        }) => (
            "linked",
            vault
                .link_gitlab_provisioned(actor, &agent, &provider)
                .await?,
        ),
        IntegrationCommand::Gitlab(GitlabCommand::Link { agent, pat, .. }) => {
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
        IntegrationCommand::Github(GithubCommand::Unlink { agent }) => (
            "unlinked",
            vault
                .unlink(actor, &agent, IntegrationProvider::Github)
                .await?,
        ),
        IntegrationCommand::Gitlab(GitlabCommand::Unlink { agent }) => {
            let report = vault
                .unlink_provisioned(actor, &agent, IntegrationProvider::Gitlab)
                .await?;
            return Ok(print_unlink_report(&report, out));
        }
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
