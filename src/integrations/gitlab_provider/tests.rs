//! Unit tests of the module above.

use super::*;

const ADMIN: &str = "admin-CANARY-tok-9f3b";

fn group_cfg() -> GitlabProviderConfig {
    GitlabProviderConfig {
        base_url: "https://gitlab.example.com/api/v4/".into(),
        target: Target::Group("acme".into()),
        mode: Mode::ServiceAccount {
            scopes: vec!["read_api".into(), "read_repository".into()],
            expires_in_days: 30,
        },
    }
}

fn project_cfg() -> GitlabProviderConfig {
    GitlabProviderConfig {
        base_url: "https://gitlab.example.com/api/v4".into(),
        target: Target::Project("acme/backend/api".into()),
        mode: Mode::ProjectAccessToken {
            scopes: vec!["api".into()],
            access_level: 30,
            expires_in_days: 365,
        },
    }
}

fn admin() -> SecretString {
    SecretString::from(ADMIN.to_string())
}

fn date(y: i32, m: u8, d: u8) -> Date {
    Date::from_calendar_date(y, Month::try_from(m).expect("month"), d).expect("date")
}

fn invalid_field(r: Result<()>) -> String {
    match r {
        Err(Error::InvalidInput { field, .. }) => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn valid_configs_pass() {
    group_cfg().validate().expect("group");
    project_cfg().validate().expect("project");
    let mut c = group_cfg();
    c.base_url = "http://127.0.0.1:8080/api/v4".into();
    c.validate().expect("loopback http");
    c.target = Target::Group("12345".into());
    c.validate().expect("numeric id");
    let mut p = project_cfg();
    for level in [10, 15, 20, 30, 40, 50] {
        if let Mode::ProjectAccessToken { access_level, .. } = &mut p.mode {
            *access_level = level;
        }
        p.validate().expect("level");
    }
    let mut all = group_cfg();
    if let Mode::ServiceAccount { scopes, .. } = &mut all.mode {
        *scopes = KNOWN_SCOPES.iter().map(|s| s.to_string()).collect();
    }
    all.validate().expect("every documented scope");
}

#[test]
fn bad_configs_name_the_field() {
    let mut c = group_cfg();
    c.base_url = "http://gitlab.example.com/api/v4".into();
    assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");
    c.base_url = "not a url".into();
    assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");
    c.base_url = "https://u:p@gitlab.example.com/api/v4".into();
    assert_eq!(invalid_field(c.validate()), "gitlab provider base_url");

    let mut c = group_cfg();
    c.target = Target::Group("acme/sub".into());
    let e = c.validate().expect_err("subgroup");
    assert!(e.to_string().contains("top-level group"), "{e}");
    c.target = Target::Group(" acme".into());
    assert_eq!(invalid_field(c.validate()), "gitlab provider target");
    c.target = Target::Project("acme/api".into());
    let e = c.validate().expect_err("project target");
    assert!(e.to_string().contains("needs a group target"), "{e}");

    let mut p = project_cfg();
    p.target = Target::Group("acme".into());
    let e = p.validate().expect_err("group target");
    assert!(e.to_string().contains("needs a project target"), "{e}");

    for (scopes, days, level) in [
        (vec![], 30, 30),
        (vec!["sudo".to_string()], 30, 30),
        (vec!["api".to_string(), "api".to_string()], 30, 30),
        (vec!["api".to_string()], 0, 30),
        (vec!["api".to_string()], 366, 30),
        (vec!["api".to_string()], 30, 35),
        (vec!["api".to_string()], 30, 60),
    ] {
        let p = GitlabProviderConfig {
            mode: Mode::ProjectAccessToken {
                scopes: scopes.clone(),
                access_level: level,
                expires_in_days: days,
            },
            ..project_cfg()
        };
        let field = invalid_field(p.validate());
        assert!(field.starts_with("gitlab provider "), "{field}");
    }
    let e = GitlabProviderConfig {
        mode: Mode::ServiceAccount {
            scopes: vec!["sudo".into()],
            expires_in_days: 1,
        },
        ..group_cfg()
    }
    .validate()
    .expect_err("sudo");
    assert!(e.to_string().contains("`sudo` is not a GitLab token scope"));
}

#[test]
fn config_round_trips_through_json() {
    let json = serde_json::to_string(&project_cfg()).expect("json");
    assert!(json.contains(r#""mode":"project_access_token""#), "{json}");
    assert!(json.contains(r#""project":"acme/backend/api""#), "{json}");
    let back: GitlabProviderConfig = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, project_cfg());
}

#[test]
fn expiry_date_adds_the_configured_days() {
    assert_eq!(
        group_cfg().expiry_date(date(2025, 12, 15)).expect("date"),
        date(2026, 1, 14)
    );
    assert_eq!(format_date(date(2026, 1, 4)), "2026-01-04");
    assert_eq!(parse_date("2026-01-04"), Some(date(2026, 1, 4)));
    assert_eq!(parse_date("2026-02-30"), None);
    assert_eq!(parse_date("soon"), None);
}

#[test]
fn usernames_follow_gitlab_rules_and_are_stable() {
    let cfg = group_cfg();
    let a = cfg.service_account_username("agent-1").expect("name");
    assert_eq!(a, cfg.service_account_username("agent-1").expect("again"));
    assert!(a.starts_with("strongroom-agent-1-"), "{a}");
    assert_ne!(a, cfg.service_account_username("agent-2").expect("other"));
    let other_group = GitlabProviderConfig {
        target: Target::Group("other".into()),
        ..group_cfg()
    };
    assert_ne!(
        a,
        other_group.service_account_username("agent-1").expect("x")
    );
    for agent in [
        "agent-1",
        "Agent One!",
        "__weird..name--",
        "ünïcödé agent",
        "日本",
        "a",
        ".git",
        "x.atom",
        "-",
        &"long-agent-name-".repeat(10),
        "UPPER_case.dots-and-dashes_123",
    ] {
        let name = cfg.service_account_username(agent).expect("name");
        assert!(is_valid_username(&name), "{agent:?} gave {name:?}");
        assert!(name.len() <= 56, "{name}");
    }
    assert_eq!(
        cfg.service_account_username("日本").expect("x").len(),
        "strongroom-".len() + 12
    );
    assert!(cfg.service_account_username("").is_err());
    assert!(cfg.service_account_username("a\nb").is_err());
}

#[test]
fn username_rules() {
    for ok in ["a", "a1", "a_b.c-d", "sidney.jones", "x9"] {
        assert!(is_valid_username(ok), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "a..b",
        "a._b",
        "a b",
        "a/b",
        "repo.git",
        "feed.atom",
        "ü",
    ] {
        assert!(!is_valid_username(bad), "{bad}");
    }
}

#[test]
fn token_names_are_deterministic_and_tame() {
    let name = token_name("agent-1").expect("name");
    assert!(name.starts_with("strongroom agent agent-1 "), "{name}");
    assert_eq!(name, token_name("agent-1").expect("again"));
    let tame = token_name("a<b>/c").expect("name");
    assert!(tame.starts_with("strongroom agent a-b--c "), "{tame}");
    // Ids whose labels read alike still name different tokens.
    let (colon, dash) = (
        token_name("bot:1").expect("name"),
        token_name("bot-1").expect("name"),
    );
    assert_ne!(colon, dash);
    assert!(token_name(" ").is_err());
}

#[test]
fn paths_are_url_encoded() {
    assert_eq!(encode_segment("group/sub"), "group%2Fsub");
    assert_eq!(encode_segment("a b&c"), "a%20b%26c");
    assert_eq!(encode_segment("123"), "123");
    assert_eq!(
        Target::Project("acme/backend/api".into()).path(),
        "/projects/acme%2Fbackend%2Fapi"
    );
}

#[test]
fn requests_carry_the_admin_token_and_json() {
    let cfg = project_cfg();
    let body = serde_json::json!({"name": "n", "scopes": ["api"]});
    let req = build(
        &cfg,
        &admin(),
        http::Method::POST,
        &format!("{}/access_tokens", cfg.target.path()),
        Some(&body),
    )
    .expect("request");
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().to_string(),
        "https://gitlab.example.com/api/v4/projects/acme%2Fbackend%2Fapi/access_tokens"
    );
    let token = req.headers().get("PRIVATE-TOKEN").expect("header");
    assert_eq!(token.to_str().expect("ascii"), ADMIN);
    assert!(token.is_sensitive());
    assert_eq!(
        req.headers().get("content-type").expect("ct"),
        "application/json"
    );
    let sent: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
    assert_eq!(sent, body);

    // The trailing slash of base_url is dropped; GETs carry no body or content type.
    let get = build(
        &group_cfg(),
        &admin(),
        http::Method::GET,
        "/groups/acme/service_accounts?per_page=100&page=1",
        None,
    )
    .expect("request");
    assert_eq!(
        get.uri().to_string(),
        "https://gitlab.example.com/api/v4/groups/acme/service_accounts?per_page=100&page=1"
    );
    assert!(get.body().is_empty());
    assert!(get.headers().get("content-type").is_none());

    let bad = SecretString::from("bad\ntoken".to_string());
    let e = build(&cfg, &bad, http::Method::GET, "/x", None).expect_err("header");
    assert!(!e.to_string().contains("bad\ntoken"));
    let empty = SecretString::from(String::new());
    assert!(build(&cfg, &empty, http::Method::GET, "/x", None).is_err());
}

#[test]
fn status_mapping() {
    let cfg = group_cfg();
    let op = Op::new("create a service account in", &cfg.target);
    let kind =
        |status: u16, body: &str| status_error(&cfg, &admin(), &op, status, body.as_bytes()).kind();
    use crate::error::ErrorKind;
    assert_eq!(
        kind(401, r#"{"message":"401 Unauthorized"}"#),
        ErrorKind::Config
    );
    assert_eq!(
        kind(403, r#"{"message":"403 Forbidden"}"#),
        ErrorKind::Config
    );
    assert_eq!(
        kind(404, r#"{"message":"404 Group Not Found"}"#),
        ErrorKind::NotFound
    );
    assert_eq!(kind(400, r#"{"message":"bad"}"#), ErrorKind::InvalidInput);
    assert_eq!(kind(422, "not json"), ErrorKind::InvalidInput);
    assert_eq!(kind(409, "{}"), ErrorKind::AlreadyExists);
    assert_eq!(kind(429, ""), ErrorKind::Transport);
    assert_eq!(kind(500, "oops"), ErrorKind::Transport);
    assert_eq!(kind(503, ""), ErrorKind::Transport);
    assert_eq!(kind(302, ""), ErrorKind::Config);

    let e = status_error(&cfg, &admin(), &op, 401, b"{}").to_string();
    assert!(e.contains("gitlab.example.com"), "{e}");
    assert!(e.contains("admin token"), "{e}");
    assert!(e.contains("group `acme`"), "{e}");
}

#[test]
fn gitlab_messages_are_flattened_scrubbed_and_short() {
    let body = format!(
        r#"{{"message":{{"username":["has already been taken"],"token":["glpat-AbC123xyz is bad","{ADMIN} leaked"]}}}}"#
    );
    let m = gitlab_message(body.as_bytes(), &admin());
    assert!(m.contains("username has already been taken"), "{m}");
    assert!(!m.contains("glpat-"), "{m}");
    assert!(!m.contains(ADMIN), "{m}");
    assert!(m.contains("[REDACTED]"), "{m}");

    let old_style = r#"{"error":"token Zx9Qw8Er7Ty6Ui5Op4As3Df is invalid\u0007"}"#;
    let m = gitlab_message(old_style.as_bytes(), &admin());
    assert_eq!(m, "token [REDACTED] is invalid");

    let long = format!(r#"{{"message":"{}"}}"#, "word ".repeat(100));
    let m = gitlab_message(long.as_bytes(), &admin());
    assert!(m.chars().count() <= MAX_MESSAGE, "{}", m.chars().count());

    // A derived username is not mistaken for a token.
    let m = gitlab_message(
        br#"{"message":"strongroom-agent-1-0123456789ab exists"}"#,
        &admin(),
    );
    assert_eq!(m, "strongroom-agent-1-0123456789ab exists");
    assert_eq!(gitlab_message(b"<html>", &admin()), "");
}

#[test]
fn issued_token_debug_hides_the_token() {
    let t = IssuedToken {
        id: 7,
        user_id: Some(71),
        name: "n".into(),
        token: SecretString::from("glpat-CANARY-secret".to_string()),
        expires_at: date(2026, 1, 1),
    };
    let shown = format!("{t:?}");
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");
}

#[test]
fn issued_answers_parse_and_require_a_token_and_date() {
    let cfg = project_cfg();
    let op = Op::new("create an access token in", &cfg.target);
    let ok = http::Response::new(Bytes::from_static(
        br#"{"id":58,"user_id":166,"name":"t","token":"glpat-x","expires_at":"2021-01-31","scopes":["api"]}"#,
    ));
    let t = issued(&cfg, &op, ok).expect("token");
    assert_eq!((t.id, t.user_id), (58, Some(166)));
    assert_eq!(t.token.expose_secret(), "glpat-x");
    assert_eq!(t.expires_at, date(2021, 1, 31));
    let no_date = http::Response::new(Bytes::from_static(
        br#"{"id":58,"token":"glpat-x","expires_at":null}"#,
    ));
    assert!(issued(&cfg, &op, no_date).is_err());
    let no_token = http::Response::new(Bytes::from_static(br#"{"id":58}"#));
    let e = issued(&cfg, &op, no_token).expect_err("no token");
    assert_eq!(e.kind(), crate::error::ErrorKind::Transport);
}
