//! `strongroom oauth …`: log a user in to an OAuth provider (authorization code with PKCE,
//! by hand or through a loopback listener; or the device flow), and refresh, inspect and
//! revoke the credential that results. The vault does the protocol (`Vault::oauth_*`); the
//! OAuth clients come from `$STRONGROOM_HOME/oauth_providers.toml`.
//!
//! Exit codes beyond the usual ones: 7 when the provider refused the credential (a device
//! login refused or lapsed, a refresh token refused), 8 when there is no verdict yet (a
//! refresh that failed and will be retried, or that runs elsewhere right now), 4 when the
//! user refused the login in the browser (`error=access_denied`).

use std::time::Duration;

use strongroom::vault::{DeviceStart, DeviceStatus, OAuthStart, RefreshOutcome};

use super::*;

/// The file OAuth clients are read from, in the home.
pub(crate) const OAUTH_CLIENTS_FILE: &str = "oauth_providers.toml";

#[derive(Subcommand)]
pub(crate) enum OauthCommand {
    /// Start a browser login (authorization code with PKCE): prints the URL to open, then
    /// (without --listen) the flow's `state`, which `oauth complete` needs. The state is a
    /// single-use login secret, valid for 10 minutes: whoever has it and the code the
    /// provider sends back can complete the login. With --listen, waits for the provider's
    /// redirect on a loopback address and completes the login itself.
    Start(StartArgs),
    /// Complete a browser login with the `state` from `oauth start` and the `code` the
    /// provider sent to the redirect URI; prints the new credential.
    Complete {
        /// The state `oauth start` printed; `-` reads it from stdin, `@FILE` from a file,
        /// `?` prompts for it.
        #[arg(long)]
        state: String,
        /// The `code` from the redirect; `-` reads it from stdin, `@FILE` from a file, `?`
        /// prompts for it (one of the two may read stdin).
        #[arg(long)]
        code: String,
    },
    /// Log in with the device flow: prints the user code and where to enter it, waits for
    /// the login to finish and prints the new credential. Exits 7 when the login was refused
    /// or lapsed.
    Device {
        /// The provider (its file needs an [oauth] table with a device_authorization_url).
        #[arg(long)]
        provider: String,
        /// The credential's name (`ref`) in your per_user scope (default: the provider's
        /// name).
        #[arg(long)]
        name: Option<String>,
        /// A scope to ask for (repeat it; default: the provider's scopes).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// Refresh an OAuth credential's tokens now. Exits 0 when refreshed, 7 when the
    /// provider refused the refresh token (the credential is now expired), 8 when the
    /// refresh failed and will be retried, or runs elsewhere right now.
    Refresh {
        /// Credential id.
        id: String,
    },
    /// Show an OAuth credential: its state, when its access token expires and how many
    /// seconds are left, and whether it holds a refresh token (field names, never values).
    Status {
        /// Credential id.
        id: String,
    },
    /// Revoke an OAuth credential: it becomes invalid at once, and its tokens are revoked at
    /// the provider when it has a revocation endpoint (refresh token first, best effort).
    Revoke {
        /// Credential id.
        id: String,
    },
}

#[derive(Args)]
pub(crate) struct StartArgs {
    /// The provider (its file needs an [oauth] table with an authorize_url; its client is
    /// the `[PROVIDER]` table of $STRONGROOM_HOME/oauth_providers.toml).
    #[arg(long)]
    pub(crate) provider: String,
    /// The credential's name (`ref`) in your per_user scope (default: the provider's name).
    #[arg(long)]
    name: Option<String>,
    /// Where the provider sends the browser back (default: the client's registered
    /// redirect_uri, which it must equal when one is registered).
    #[arg(long, value_name = "URI")]
    redirect_uri: Option<String>,
    /// A scope to ask for (repeat it; default: the provider's scopes).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Wait for the redirect on the redirect URI, which must be a loopback http URL
    /// (http://127.0.0.1:PORT/PATH or http://localhost:PORT/PATH), and complete the login:
    /// the state is then not printed.
    #[arg(long)]
    listen: bool,
    /// With --listen: give up after this many seconds (default, and at most: until the flow
    /// lapses, 10 minutes).
    #[arg(long, value_name = "SECS", requires = "listen")]
    listen_timeout: Option<u64>,
}

pub(crate) async fn oauth(
    vault: &Vault,
    actor: &Principal,
    cmd: OauthCommand,
    home: &Path,
    out: &Output,
) -> Result<u8, Error> {
    match cmd {
        OauthCommand::Start(args) => start(vault, actor, args, home, out).await,
        OauthCommand::Complete { state, code } => {
            let mut stdin_taken = None;
            let state =
                SecretString::from(flag_input("--state", "state").read(&state, &mut stdin_taken)?);
            let code =
                SecretString::from(flag_input("--code", "code").read(&code, &mut stdin_taken)?);
            out.info(&vault.oauth_complete(actor, &state, &code).await?, None);
            Ok(0)
        }
        OauthCommand::Device {
            provider,
            name,
            scopes,
        } => {
            let name = name.unwrap_or_else(|| provider.clone());
            let mut start = DeviceStart::new(provider, name);
            if !scopes.is_empty() {
                start.scopes = Some(scopes);
            }
            let flow = vault.oauth_device_start(actor, start).await?;
            if out.json {
                // One line, so a script can read it before the wait ends.
                let doc = serde_json::json!({
                    "credential": flow.credential.id,
                    "user_code": flow.user_code,
                    "verification_uri": flow.verification_uri,
                    "verification_uri_complete": flow.verification_uri_complete,
                    "expires_at": flow.expires_at.to_string(),
                    "interval": flow.interval,
                });
                println!("{doc}");
            } else {
                println!("user code:         {}", cell(&flow.user_code));
                println!("verification uri:  {}", cell(&flow.verification_uri));
                if let Some(complete) = &flow.verification_uri_complete {
                    println!("complete uri:      {}", cell(complete));
                }
                println!("credential:        {}", flow.credential.id);
                eprintln!(
                    "open the verification URI and enter the user code; waiting until {} \
                     (polling every {} s)…",
                    flow.expires_at, flow.interval
                );
            }
            let id = flow.credential.id.clone();
            match vault.oauth_device_wait(actor, &id).await? {
                DeviceStatus::Done(info) => {
                    out.info(&info, None);
                    Ok(0)
                }
                DeviceStatus::Denied => {
                    tell_failure(
                        out.json,
                        "access_denied",
                        &format!(
                            "the login was refused at the provider (access_denied); credential \
                             {id} is now invalid"
                        ),
                    );
                    Ok(7)
                }
                DeviceStatus::Expired => {
                    tell_failure(
                        out.json,
                        "expired_token",
                        &format!(
                            "the user code lapsed before the login was finished \
                             (expired_token); credential {id} is now invalid: run `oauth \
                             device` again"
                        ),
                    );
                    Ok(7)
                }
                // Pending and SlowDown end inside oauth_device_wait.
                _ => {
                    tell_failure(
                        out.json,
                        "other",
                        &format!("the device login of {id} did not end"),
                    );
                    Ok(1)
                }
            }
        }
        OauthCommand::Refresh { id: raw } => {
            let id = id(&raw)?;
            let outcome = vault.oauth_refresh(actor, &id).await?;
            let (name, code, text, extra) = match &outcome {
                RefreshOutcome::Refreshed {
                    version,
                    expires_at,
                } => (
                    "refreshed",
                    0,
                    format!(
                        "refreshed: version {version}, expires_at {}",
                        expires_at.map_or_else(|| "not reported".to_string(), |t| t.to_string())
                    ),
                    serde_json::json!({
                        "version": version,
                        "expires_at": expires_at.map(|t| t.to_string()),
                    }),
                ),
                RefreshOutcome::NotDue => (
                    "not_due",
                    0,
                    "not refreshed: it was refreshed just before (no longer due)".to_string(),
                    serde_json::json!({}),
                ),
                RefreshOutcome::Busy => (
                    "busy",
                    8,
                    "busy: a refresh of this credential is under way elsewhere; try again \
                     shortly"
                        .to_string(),
                    serde_json::json!({}),
                ),
                RefreshOutcome::Retrying { reason } => (
                    "retrying",
                    8,
                    format!(
                        "retrying: the refresh failed ({}); the credential stays usable while \
                         its access token is valid, and a later refresh tries again",
                        one_line(reason)
                    ),
                    serde_json::json!({ "reason": reason }),
                ),
                RefreshOutcome::Expired { reason } => (
                    "expired",
                    7,
                    format!(
                        "expired: the provider refused the refresh ({}); the credential is now \
                         expired: log in again",
                        one_line(reason)
                    ),
                    serde_json::json!({ "reason": reason }),
                ),
                _ => (
                    "other",
                    1,
                    "the refresh ended in an outcome this CLI does not know".to_string(),
                    serde_json::json!({}),
                ),
            };
            if out.json {
                let mut doc = serde_json::json!({ "id": id, "outcome": name });
                if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), extra)
                {
                    doc.extend(extra);
                }
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                println!("{text}");
            }
            Ok(code)
        }
        OauthCommand::Status { id: raw } => {
            let info = vault.oauth_status(actor, &id(&raw)?).await?;
            status(&info, Timestamp::now(), out);
            Ok(0)
        }
        OauthCommand::Revoke { id: raw } => {
            let info = vault.oauth_revoke(actor, &id(&raw)?).await?;
            if out.json {
                out.info(&info, None);
            } else {
                println!(
                    "revoked {}: state {} (version {})",
                    info.id, info.state, info.version
                );
            }
            Ok(0)
        }
    }
}

/// A secret given through an option of its own (`--state -`).
fn flag_input<'a>(flag: &'a str, name: &'a str) -> SecretInput<'a> {
    SecretInput {
        flag,
        name,
        spell: |name, form| format!("--{name} {form}"),
    }
}

/// `oauth status`: the credential with its expiry in seconds and whether it can be
/// refreshed.
fn status(info: &CredentialInfo, now: Timestamp, out: &Output) {
    let seconds_left = info
        .expires_at
        .map(|at| at.0.saturating_sub(now.0).max(0) / 1000);
    let has_refresh = info.field_names.iter().any(|n| n == "refresh_token");
    if out.json {
        let mut value = serde_json::to_value(info).unwrap_or_default();
        times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
        value["seconds_left"] = serde_json::json!(seconds_left);
        value["has_refresh_token"] = serde_json::json!(has_refresh);
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    println!("id:            {}", cell(&info.id));
    println!("name:          {}", cell(&info.name));
    println!(
        "provider:      {} ({})",
        cell(&info.provider),
        cell(&info.handler_type)
    );
    println!("scope:         {}", cell(&info.scope));
    println!("state:         {}", info.state);
    println!("version:       {}", info.version);
    match (info.expires_at, seconds_left) {
        (Some(at), Some(left)) => {
            println!("expires_at:    {at}");
            println!("seconds_left:  {left}");
        }
        _ => println!("expires_at:    (not reported by the provider)"),
    }
    println!("refresh_token: {}", if has_refresh { "yes" } else { "no" });
    println!("fields:        {}", cell(info.field_names.join(", ")));
}

/// `oauth start`.
async fn start(
    vault: &Vault,
    actor: &Principal,
    args: StartArgs,
    home: &Path,
    out: &Output,
) -> Result<u8, Error> {
    let StartArgs {
        provider,
        name,
        redirect_uri,
        scopes,
        listen,
        listen_timeout,
    } = args;
    // With --listen, the loopback address is checked and bound before a flow is started.
    let listener = if listen {
        let uri = match &redirect_uri {
            Some(uri) => uri.clone(),
            None => registered_redirect(home, &provider)?,
        };
        Some(Loopback::bind(&uri).await?)
    } else {
        None
    };
    let mut start = OAuthStart::new(provider.clone(), name.unwrap_or(provider));
    if let Some(uri) = redirect_uri {
        start = start.redirect_uri(uri);
    }
    if !scopes.is_empty() {
        start = start.scopes(scopes);
    }
    let started = vault.oauth_start(actor, start).await?;
    let Some(listener) = listener else {
        if out.json {
            let doc = serde_json::json!({
                "authorize_url": started.authorize_url,
                "state": started.state.expose_secret(),
                "expires_at": started.expires_at.to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        } else {
            println!("{}", started.authorize_url);
            println!("state: {}", started.state.expose_secret());
            eprintln!(
                "open the URL in a browser; the provider sends it back to the redirect URI with \
                 a `code`: run `strongroom oauth complete --state STATE --code CODE` before {} \
                 (the state is a single-use login secret: keep it to yourself)",
                started.expires_at
            );
        }
        return Ok(0);
    };
    if out.json {
        // One line, so a script can read it while the command waits.
        let doc = serde_json::json!({
            "authorize_url": started.authorize_url,
            "expires_at": started.expires_at.to_string(),
            "listening": listener.uri,
        });
        println!("{doc}");
    } else {
        println!("{}", started.authorize_url);
        eprintln!(
            "open the URL in a browser; waiting for the provider's redirect to {} until {}…",
            listener.uri, started.expires_at
        );
    }
    let lapses = Duration::from_millis(
        u64::try_from(started.expires_at.0.saturating_sub(Timestamp::now().0)).unwrap_or(0),
    );
    let wait = listen_timeout.map_or(lapses, |s| Duration::from_secs(s).min(lapses));
    let callback = match tokio::time::timeout(wait, listener.callback(&started.state)).await {
        Ok(callback) => callback?,
        Err(_) => {
            tell_failure(
                out.json,
                "timeout",
                &format!(
                    "no redirect reached {} within {} s; nothing was stored (start the login \
                     again)",
                    listener.uri,
                    wait.as_secs()
                ),
            );
            return Ok(1);
        }
    };
    drop(listener);
    let state_matches = callback.state_matches;
    if callback.state.is_some() && !state_matches {
        tell_failure(
            out.json,
            "invalid_input",
            "the redirect carried a `state` other than this login's: it was not started here \
             (or was forged), so it is refused; nothing was stored",
        );
        return Ok(2);
    }
    if let Some(error) = &callback.error {
        let code = error.chars().take(64).collect::<String>();
        let description = callback
            .error_description
            .as_deref()
            .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let (kind, exit) = match code.as_str() {
            "access_denied" => ("permission_denied", 4),
            "temporarily_unavailable" | "server_error" => ("transport", 8),
            _ => ("config", 2),
        };
        tell_failure(
            out.json,
            kind,
            &format!("the provider did not complete the login: {code}{description}"),
        );
        return Ok(exit);
    }
    let (Some(code), true) = (&callback.code, state_matches) else {
        tell_failure(
            out.json,
            "invalid_input",
            "the redirect carried no `code` or no `state`; nothing was stored (start the login \
             again)",
        );
        return Ok(2);
    };
    out.info(
        &vault.oauth_complete(actor, &started.state, code).await?,
        None,
    );
    Ok(0)
}

/// The redirect URI registered for `provider` in the home's oauth_providers.toml.
fn registered_redirect(home: &Path, provider: &str) -> Result<String, Error> {
    let clients = strongroom::oauth::OAuthClients::load(&home.join(OAUTH_CLIENTS_FILE))?;
    clients
        .get(provider)
        .and_then(|c| c.redirect_uri.clone())
        .ok_or_else(|| {
            invalid(
                "--redirect-uri",
                &format!(
                    "--listen needs a redirect URI to listen on: pass --redirect-uri \
                     http://127.0.0.1:PORT/callback, or register `redirect_uri` under \
                     [{provider}] in $STRONGROOM_HOME/{OAUTH_CLIENTS_FILE}"
                ),
            )
        })
}

mod loopback;
use loopback::Loopback;
