//! `strongroom credential-provider …`: org-level GitLab credential providers that mint an
//! identity per agent (`agent integration gitlab link AGENT --provider NAME`): add, list,
//! remove, finish (clean up after crashed links) and rotate (provisioned tokens due within
//! seven days). See docs/INTEGRATIONS.md.
//!
//! The admin token is read from `-` (stdin), `@FILE`, the value itself, or a prompt without
//! echo; it is checked with GitLab (`GET /user`; refused: exit 7) and never printed.

use strongroom::integrations::gitlab_provider::{GitlabProviderConfig, Mode, Removal, Target};
use strongroom::{
    CredentialProviderInfo, DeprovisionReport, ProvisioningReport, RotationOutcome, RotationReport,
};

use super::*;

#[derive(Subcommand)]
pub(crate) enum CredentialProviderCommand {
    /// Register a GitLab credential provider (system admins).
    #[command(subcommand)]
    Gitlab(GitlabProviderCommand),
    /// The registered credential providers (no secret).
    List,
    /// Remove credential provider NAME; refused while an integration it provisioned exists
    /// (unlink those first).
    Remove { name: String },
    /// Clean up after crashed provisioned links: what a link that did not finish created at
    /// GitLab is removed (run the link again). Prints what was done.
    Finish,
    /// Rotate the provisioned GitLab tokens that expire within seven days.
    Rotate,
}

#[derive(Subcommand)]
pub(crate) enum GitlabProviderCommand {
    /// Register GitLab credential provider NAME: where it mints identities, what, and the
    /// admin token it mints them with (checked with GitLab, kept sealed).
    Add(GitlabAddArgs),
}

#[derive(Args)]
pub(crate) struct GitlabAddArgs {
    pub(crate) name: String,
    /// GitLab's API base URL (e.g. `https://gitlab.example.com/api/v4`).
    #[arg(long)]
    base_url: String,
    /// The top-level group service accounts are created in (id or path).
    #[arg(long, conflicts_with = "project", required_unless_present = "project")]
    group: Option<String>,
    /// The project access tokens are created in (id or path).
    #[arg(long)]
    project: Option<String>,
    /// What is minted per agent: `service_account` (needs --group) or
    /// `project_access_token` (needs --project).
    #[arg(long)]
    mode: String,
    /// A token scope (repeatable; default `read_api`).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// The tokens' lifetime in days (1–365; default 30).
    #[arg(long, default_value_t = 30)]
    expires_in_days: u32,
    /// A project access token's role: 10 Guest, 15 Planner, 20 Reporter, 30 Developer
    /// (default), 40 Maintainer, 50 Owner.
    #[arg(long)]
    access_level: Option<u32>,
    /// The admin token: VALUE, `-` (stdin), `@FILE`; omitted, a prompt without echo on a
    /// terminal.
    #[arg(long)]
    admin_token: Option<String>,
}

impl CredentialProviderCommand {
    /// Does the command store something (and so may start a vault)?
    pub(crate) fn creates(&self) -> bool {
        matches!(self, CredentialProviderCommand::Gitlab(_))
    }

    /// Does the command only read?
    pub(crate) fn reads_only(&self) -> bool {
        matches!(self, CredentialProviderCommand::List)
    }
}

impl GitlabAddArgs {
    fn config(&self) -> Result<GitlabProviderConfig, Error> {
        let target = match (&self.group, &self.project) {
            (Some(g), None) => Target::Group(g.clone()),
            (None, Some(p)) => Target::Project(p.clone()),
            _ => return Err(invalid("--group", "give one of --group and --project")),
        };
        let scopes = if self.scopes.is_empty() {
            vec!["read_api".to_string()]
        } else {
            self.scopes.clone()
        };
        let mode = match self.mode.as_str() {
            "service_account" => {
                if self.access_level.is_some() {
                    return Err(invalid(
                        "--access-level",
                        "only a project_access_token has a role",
                    ));
                }
                Mode::ServiceAccount {
                    scopes,
                    expires_in_days: self.expires_in_days,
                }
            }
            "project_access_token" => Mode::ProjectAccessToken {
                scopes,
                access_level: self.access_level.unwrap_or(30),
                expires_in_days: self.expires_in_days,
            },
            _ => {
                return Err(invalid(
                    "--mode",
                    "use service_account or project_access_token",
                ))
            }
        };
        let config = GitlabProviderConfig {
            base_url: self.base_url.clone(),
            target,
            mode,
        };
        config.validate()?;
        Ok(config)
    }
}

fn info_json(info: &CredentialProviderInfo) -> serde_json::Value {
    let mut value = serde_json::json!({
        "name": info.name,
        "kind": "gitlab",
        "config": serde_json::to_value(&info.config).unwrap_or_default(),
        "created_at": info.created_at.as_millis(),
    });
    times_as_rfc3339(&mut value, &["created_at"]);
    value
}

fn target_text(t: &Target) -> String {
    match t {
        Target::Group(g) => format!("group {g}"),
        Target::Project(p) => format!("project {p}"),
    }
}

fn mode_text(m: &Mode) -> String {
    match m {
        Mode::ServiceAccount {
            scopes,
            expires_in_days,
        } => format!(
            "service_account, scopes {}, {expires_in_days} days",
            scopes.join(",")
        ),
        Mode::ProjectAccessToken {
            scopes,
            access_level,
            expires_in_days,
        } => format!(
            "project_access_token, scopes {}, access level {access_level}, {expires_in_days} days",
            scopes.join(",")
        ),
    }
}

fn print_info(info: &CredentialProviderInfo) {
    println!("name:       {}", cell(&info.name));
    println!("base url:   {}", cell(&info.config.base_url));
    println!("target:     {}", cell(target_text(&info.config.target)));
    println!("mode:       {}", cell(mode_text(&info.config.mode)));
    println!("created at: {}", info.created_at);
}

fn removal_text(outcome: &Result<Removal, String>) -> String {
    match outcome {
        Ok(Removal::AlreadyGone) => "already gone".into(),
        Ok(_) => "removed".into(),
        Err(e) => format!("FAILED: {e}"),
    }
}

/// A deprovisioning as JSON: the provider, whether every step worked, and the steps.
pub(crate) fn deprovision_json(d: &DeprovisionReport) -> serde_json::Value {
    let steps: Vec<_> = d
        .steps
        .iter()
        .map(|s| match &s.outcome {
            Ok(r) => serde_json::json!({
                "what": s.what,
                "ok": true,
                "outcome": if *r == Removal::AlreadyGone { "already_gone" } else { "removed" },
            }),
            Err(e) => serde_json::json!({ "what": s.what, "ok": false, "error": e }),
        })
        .collect();
    serde_json::json!({
        "provider": d.provider,
        "complete": d.complete(),
        "steps": steps,
    })
}

/// A deprovisioning as text, one line a step, each line starting with `indent`.
pub(crate) fn print_deprovision(d: &DeprovisionReport, indent: &str) {
    println!(
        "{indent}deprovisioned at credential provider {}: {}",
        cell(&d.provider),
        if d.complete() {
            "complete"
        } else {
            "INCOMPLETE"
        }
    );
    for s in &d.steps {
        println!(
            "{indent}  {}: {}",
            cell(&s.what),
            cell(removal_text(&s.outcome))
        );
    }
}

fn print_finish(r: &ProvisioningReport, out: &Output) -> u8 {
    let failed = r.recovered.iter().any(|i| !i.resolved);
    if out.json {
        let recovered: Vec<_> = r
            .recovered
            .iter()
            .map(|i| {
                serde_json::json!({
                    "agent": i.agent,
                    "resolved": i.resolved,
                    "cleanup": deprovision_json(&i.cleanup),
                })
            })
            .collect();
        let doc = serde_json::json!({ "recovered": recovered, "in_progress": r.in_progress });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        if r.recovered.is_empty() && r.in_progress.is_empty() {
            println!("no leftover provisioning");
        }
        for i in &r.recovered {
            println!(
                "agent {}: {}",
                cell(&i.agent),
                if i.resolved {
                    "cleaned up (link it again)"
                } else {
                    "cleanup FAILED (run finish again)"
                }
            );
            print_deprovision(&i.cleanup, "  ");
        }
        for agent in &r.in_progress {
            println!("agent {}: a link may be under way; left alone", cell(agent));
        }
    }
    u8::from(failed)
}

fn print_rotation(r: &RotationReport, out: &Output) -> u8 {
    let mut failed = false;
    let rows: Vec<(String, &str, serde_json::Value, String)> = r
        .tokens
        .iter()
        .map(|(id, outcome)| {
            let (what, extra, text) = match outcome {
                RotationOutcome::Rotated {
                    version,
                    expires_at,
                } => (
                    "rotated",
                    serde_json::json!({
                        "version": version,
                        "expires_at": expires_at.to_rfc3339().unwrap_or_default(),
                    }),
                    format!("version {version}, expires {expires_at}"),
                ),
                RotationOutcome::Busy => (
                    "busy",
                    serde_json::Value::Null,
                    "another rotation holds it".into(),
                ),
                RotationOutcome::NotDue => (
                    "not_due",
                    serde_json::Value::Null,
                    "rotated just before".into(),
                ),
                RotationOutcome::Failed(e) => {
                    failed = true;
                    (
                        "failed",
                        serde_json::json!({ "error": e }),
                        format!("FAILED: {e} (the old token is kept)"),
                    )
                }
                _ => ("other", serde_json::Value::Null, String::new()),
            };
            (id.to_string(), what, extra, text)
        })
        .collect();
    if out.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(id, what, extra, _)| {
                let mut v = serde_json::json!({ "credential": id, "outcome": what });
                if let (serde_json::Value::Object(m), serde_json::Value::Object(e)) =
                    (&mut v, extra)
                {
                    m.extend(e.clone());
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if rows.is_empty() {
        println!("no provisioned token is due");
    } else {
        for (id, what, _, text) in &rows {
            println!("{id} {what}: {}", cell(text));
        }
    }
    u8::from(failed)
}

pub(crate) async fn credential_provider(
    vault: &Vault,
    actor: &Principal,
    cmd: CredentialProviderCommand,
    out: &Output,
) -> Result<u8, Error> {
    match cmd {
        CredentialProviderCommand::Gitlab(GitlabProviderCommand::Add(args)) => {
            let config = args.config()?;
            let input = SecretInput {
                flag: "--admin-token",
                name: "admin-token",
                spell: |name, form| format!("--{name} {form}"),
            };
            let mut stdin_taken = None;
            let text = input.read(args.admin_token.as_deref().unwrap_or("?"), &mut stdin_taken)?;
            let text = text.trim();
            if text.is_empty() {
                return Err(invalid("--admin-token", "the token is empty"));
            }
            let token = SecretString::from(text.to_string());
            let info = vault
                .add_credential_provider(actor, &args.name, config, token)
                .await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info_json(&info)).unwrap_or_default()
                );
            } else {
                println!("added credential provider {}", cell(&info.name));
                print_info(&info);
            }
            Ok(0)
        }
        CredentialProviderCommand::List => {
            let list = vault.list_credential_providers(actor).await?;
            if out.json {
                let doc: Vec<_> = list.iter().map(info_json).collect();
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else if list.is_empty() {
                println!("no credential providers");
            } else {
                println!("{:<20} {:<24} {:<40} MODE", "NAME", "TARGET", "BASE URL");
                for i in &list {
                    println!(
                        "{:<20} {:<24} {:<40} {}",
                        cell(&i.name),
                        cell(target_text(&i.config.target)),
                        cell(&i.config.base_url),
                        cell(mode_text(&i.config.mode))
                    );
                }
            }
            Ok(0)
        }
        CredentialProviderCommand::Remove { name } => {
            let info = vault.remove_credential_provider(actor, &name).await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info_json(&info)).unwrap_or_default()
                );
            } else {
                println!("removed credential provider {}", cell(&info.name));
            }
            Ok(0)
        }
        CredentialProviderCommand::Finish => {
            let report = vault.finish_provisioning(actor).await?;
            Ok(print_finish(&report, out))
        }
        CredentialProviderCommand::Rotate => {
            // Rotation runs as the vault's own service principal; the CLI first checks that
            // the operator may manage credential providers at all (system admins).
            vault.list_credential_providers(actor).await?;
            let report = vault.rotate_provisioned_tokens(Timestamp::now()).await?;
            Ok(print_rotation(&report, out))
        }
    }
}
