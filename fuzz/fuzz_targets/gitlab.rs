//! GitLab API responses: `gitlab::user` (a PAT's owner) and every call of the GitLab
//! credential provider (service accounts, their tokens, project access tokens, finding
//! them page by page, revocation, deletion, rotation), each answered with the responses
//! written in the input (see `strongroom_fuzz`). Checks: no panic; errors never carry the
//! admin token or the PAT, even when GitLab's message echoes them; an issued token is
//! never in `Debug` output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::integrations::gitlab;
use strongroom::integrations::gitlab_provider::{
    create_project_access_token, create_service_account, create_service_account_token,
    delete_service_account, find_project_token, find_service_account, revoke_token, rotate_token,
    GitlabProviderConfig, IssuedToken, Mode, Target, TokenRef,
};
use strongroom::{ExposeSecret, Result, SecretString};
use strongroom_fuzz::{assert_no_secret, block_on, Scripted};

const ADMIN: &str = "glpat-FUZZSECRETadmin00000";
const PAT: &str = "glpat-FUZZSECRETuser000000";
const SECRETS: &[&str] = &[ADMIN, PAT];

fn configs() -> (GitlabProviderConfig, GitlabProviderConfig) {
    let base_url = "https://gitlab.example.com/api/v4".to_string();
    (
        GitlabProviderConfig {
            base_url: base_url.clone(),
            target: Target::Group("acme".into()),
            mode: Mode::ServiceAccount {
                scopes: vec!["api".into()],
                expires_in_days: 30,
            },
        },
        GitlabProviderConfig {
            base_url,
            target: Target::Project("acme/api".into()),
            mode: Mode::ProjectAccessToken {
                scopes: vec!["read_api".into()],
                access_level: 30,
                expires_in_days: 30,
            },
        },
    )
}

fn check<T>(result: &Result<T>) {
    if let Err(e) = result {
        assert_no_secret(&e.to_string(), SECRETS);
        assert_no_secret(&format!("{e:?}"), SECRETS);
    }
}

fn check_issued(result: &Result<IssuedToken>) {
    check(result);
    if let Ok(issued) = result {
        let token = issued.token.expose_secret();
        if token.len() >= 8 {
            assert!(!format!("{issued:?}").contains(token));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else {
        return;
    };
    let admin = SecretString::from(ADMIN.to_string());
    let pat = SecretString::from(PAT.to_string());
    let (group, project) = configs();
    let date = time::Date::from_calendar_date(2030, time::Month::January, 31).expect("date");
    let scopes = vec!["api".to_string()];
    let http = || Scripted::from_text(script);
    block_on(async {
        check(&gitlab::user(&http(), gitlab::DEFAULT_BASE_URL, &pat).await);
        check(&create_service_account(&http(), &group, &admin, "agent-1").await);
        check(&find_service_account(&http(), &group, &admin, "svc_agent_1").await);
        check_issued(
            &create_service_account_token(&http(), &group, &admin, 5, "agent 1", &scopes, date)
                .await,
        );
        let sa = TokenRef::ServiceAccount {
            user_id: 5,
            token_id: 6,
        };
        check(&revoke_token(&http(), &group, &admin, &sa).await);
        check(&delete_service_account(&http(), &group, &admin, 5).await);
        check_issued(&rotate_token(&http(), &group, &admin, &sa, date).await);
        check_issued(
            &create_project_access_token(&http(), &project, &admin, "agent 1", &scopes, 30, date)
                .await,
        );
        check(&find_project_token(&http(), &project, &admin, "agent 1").await);
        let pt = TokenRef::ProjectAccessToken { token_id: 9 };
        check(&revoke_token(&http(), &project, &admin, &pt).await);
        check_issued(&rotate_token(&http(), &project, &admin, &pt, date).await);
    });
});
