//! The GitLab calls: provisioning (service accounts, their tokens, project access tokens,
//! finding what a crashed run made), deprovisioning and rotation.

use super::*;

/// Creates the service account for `agent_id` in the configured top-level group
/// (`POST /groups/:id/service_accounts`, body `{"name", "username"}`). The username is
/// [`GitlabProviderConfig::service_account_username`]; a name already taken is an
/// [`Error::InvalidInput`] naming GitLab's message (use [`find_service_account`] first when
/// resuming a crashed run).
pub async fn create_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    agent_id: &str,
) -> Result<ServiceAccount> {
    let group = group_of(cfg)?;
    let username = cfg.service_account_username(agent_id)?;
    let body = serde_json::json!({
        "name": display_name(agent_id),
        "username": username,
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!("{}/service_accounts", group.path()),
        Some(&body),
    )?;
    let op = Op::new("create a service account in", group);
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    let account: AccountAnswer = parse(cfg, &op, response.body())?;
    Ok(ServiceAccount {
        id: account.id,
        username: account.username,
    })
}

/// Finds the service account named `username` in the configured group
/// (`GET /groups/:id/service_accounts`, every page); the match ignores ASCII case, as
/// GitLab's usernames do.
pub async fn find_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    username: &str,
) -> Result<Option<ServiceAccount>> {
    let group = group_of(cfg)?;
    let op = Op::new("list the service accounts of", group);
    for page in 1..=MAX_PAGES {
        let request = build(
            cfg,
            admin_token,
            http::Method::GET,
            &format!(
                "{}/service_accounts?per_page={PER_PAGE}&page={page}",
                group.path()
            ),
            None,
        )?;
        let response = exchange(http, cfg, admin_token, &op, request).await?;
        let accounts: Vec<AccountAnswer> = parse(cfg, &op, response.body())?;
        if let Some(found) = accounts
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(username))
        {
            return Ok(Some(ServiceAccount {
                id: found.id,
                username: found.username.clone(),
            }));
        }
        if is_last_page(&response, accounts.len()) {
            break;
        }
    }
    Ok(None)
}

/// Creates a personal access token for service account `user_id`
/// (`POST /groups/:id/service_accounts/:user_id/personal_access_tokens`, body
/// `{"name", "scopes", "expires_at": "YYYY-MM-DD"}`).
pub async fn create_service_account_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    user_id: u64,
    name: &str,
    scopes: &[String],
    expires_at: Date,
) -> Result<IssuedToken> {
    let group = group_of(cfg)?;
    check_token_name(name)?;
    check_scopes(scopes)?;
    let body = serde_json::json!({
        "name": name,
        "scopes": scopes,
        "expires_at": format_date(expires_at),
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!(
            "{}/service_accounts/{user_id}/personal_access_tokens",
            group.path()
        ),
        Some(&body),
    )?;
    let op = Op::new(
        format!("create a token for service account {user_id} in"),
        group,
    );
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}

/// Creates a project access token in the configured project
/// (`POST /projects/:id/access_tokens`, body `{"name", "scopes", "access_level",
/// "expires_at"}`).
pub async fn create_project_access_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    name: &str,
    scopes: &[String],
    access_level: u32,
    expires_at: Date,
) -> Result<IssuedToken> {
    let project = project_of(cfg)?;
    check_token_name(name)?;
    check_scopes(scopes)?;
    check_access_level(access_level)?;
    let body = serde_json::json!({
        "name": name,
        "scopes": scopes,
        "access_level": access_level,
        "expires_at": format_date(expires_at),
    });
    let request = build(
        cfg,
        admin_token,
        http::Method::POST,
        &format!("{}/access_tokens", project.path()),
        Some(&body),
    )?;
    let op = Op::new("create an access token in", project);
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}

/// Finds the newest active (not revoked) project access token named `name`
/// (`GET /projects/:id/access_tokens`, every page). `None` when there is none: a revoked
/// token of that name needs no cleanup.
pub async fn find_project_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    name: &str,
) -> Result<Option<ProjectToken>> {
    let project = project_of(cfg)?;
    let op = Op::new("list the access tokens of", project);
    let mut best: Option<ProjectToken> = None;
    for page in 1..=MAX_PAGES {
        let request = build(
            cfg,
            admin_token,
            http::Method::GET,
            &format!(
                "{}/access_tokens?per_page={PER_PAGE}&page={page}",
                project.path()
            ),
            None,
        )?;
        let response = exchange(http, cfg, admin_token, &op, request).await?;
        let tokens: Vec<TokenListAnswer> = parse(cfg, &op, response.body())?;
        let count = tokens.len();
        for t in tokens {
            if t.name != name || t.revoked || !t.active.unwrap_or(true) {
                continue;
            }
            if best.as_ref().is_some_and(|b| b.id >= t.id) {
                continue;
            }
            best = Some(ProjectToken {
                id: t.id,
                name: t.name,
                user_id: t.user_id,
                active: t.active.unwrap_or(true),
                revoked: t.revoked,
                expires_at: t.expires_at.as_deref().and_then(parse_date),
                scopes: t.scopes,
                access_level: t.access_level,
            });
        }
        if is_last_page(&response, count) {
            break;
        }
    }
    Ok(best)
}

// ---------------------------------------------------------------------------------------
// Deprovisioning and rotation.

/// Revokes an issued token. A service account's token goes through
/// `DELETE /groups/:id/service_accounts/:user_id/personal_access_tokens/:token_id`
/// (GitLab 17.11 and later); when that answers 404, through
/// `DELETE /personal_access_tokens/:id` (older instances; needs an administrator token),
/// whose 404 means the token is gone. A project access token goes through
/// `DELETE /projects/:id/access_tokens/:token_id`.
pub async fn revoke_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    token: &TokenRef,
) -> Result<Removal> {
    cfg.validate()?;
    match *token {
        TokenRef::ServiceAccount { user_id, token_id } => {
            let group = group_of(cfg)?;
            let op = Op::new(
                format!("revoke token {token_id} of service account {user_id} in"),
                group,
            );
            if removal(
                http,
                cfg,
                admin_token,
                &op,
                &format!(
                    "{}/service_accounts/{user_id}/personal_access_tokens/{token_id}",
                    group.path()
                ),
            )
            .await?
                == Removal::Removed
            {
                return Ok(Removal::Removed);
            }
            removal(
                http,
                cfg,
                admin_token,
                &op,
                &format!("/personal_access_tokens/{token_id}"),
            )
            .await
        }
        TokenRef::ProjectAccessToken { token_id } => {
            let project = project_of(cfg)?;
            let op = Op::new(format!("revoke access token {token_id} of"), project);
            removal(
                http,
                cfg,
                admin_token,
                &op,
                &format!("{}/access_tokens/{token_id}", project.path()),
            )
            .await
        }
    }
}

/// Deletes service account `user_id` (`DELETE /groups/:id/service_accounts/:user_id`),
/// which also ends all its tokens. GitLab deletes users in the background, so the account
/// may still be listed for a short while.
pub async fn delete_service_account(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    user_id: u64,
) -> Result<Removal> {
    let group = group_of(cfg)?;
    let op = Op::new(format!("delete service account {user_id} of"), group);
    removal(
        http,
        cfg,
        admin_token,
        &op,
        &format!("{}/service_accounts/{user_id}", group.path()),
    )
    .await
}

/// Rotates an issued token through the admin-side endpoints
/// (`POST /groups/:id/service_accounts/:user_id/personal_access_tokens/:token_id/rotate`
/// or `POST /projects/:id/access_tokens/:token_id/rotate`, body `{"expires_at"}`): GitLab
/// revokes the old token and returns a new one with a new id, which the caller must keep.
/// Rotating a token that was already revoked makes GitLab revoke its whole family.
pub async fn rotate_token(
    http: &dyn HttpTransport,
    cfg: &GitlabProviderConfig,
    admin_token: &SecretString,
    token: &TokenRef,
    expires_at: Date,
) -> Result<IssuedToken> {
    cfg.validate()?;
    let body = serde_json::json!({ "expires_at": format_date(expires_at) });
    let (op, path) = match *token {
        TokenRef::ServiceAccount { user_id, token_id } => {
            let group = group_of(cfg)?;
            (
                Op::new(
                    format!("rotate token {token_id} of service account {user_id} in"),
                    group,
                ),
                format!(
                    "{}/service_accounts/{user_id}/personal_access_tokens/{token_id}/rotate",
                    group.path()
                ),
            )
        }
        TokenRef::ProjectAccessToken { token_id } => {
            let project = project_of(cfg)?;
            (
                Op::new(format!("rotate access token {token_id} of"), project),
                format!("{}/access_tokens/{token_id}/rotate", project.path()),
            )
        }
    };
    let request = build(cfg, admin_token, http::Method::POST, &path, Some(&body))?;
    let response = exchange(http, cfg, admin_token, &op, request).await?;
    issued(cfg, &op, response)
}
