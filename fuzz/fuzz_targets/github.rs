//! GitHub API responses: `github::user` (a PAT's owner), `github_app::installation_token`
//! (minting, narrowed and not) and `github_app::check_app`, each answered with the
//! responses written in the input (see `strongroom_fuzz`). The App's key is the test key
//! of tests/data/github_app/pkcs1.pem. Checks: no panic; errors never carry the PAT, even
//! when the server's message echoes it; a minted token is never in `Debug` output.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strongroom::integrations::github;
use strongroom::integrations::github_app::{
    check_app, installation_token, GithubApp, TokenNarrowing, GITHUB_API,
};
use strongroom::{ExposeSecret, SecretString};
use strongroom_fuzz::{assert_no_secret, block_on, Scripted};

const PAT: &str = "ghp_FUZZSECRETpat000000000000000000000000";

fn app() -> &'static GithubApp {
    static APP: OnceLock<GithubApp> = OnceLock::new();
    APP.get_or_init(|| {
        let pem = include_str!("../../tests/data/github_app/pkcs1.pem");
        GithubApp::new("123456", None, 42, SecretString::from(pem.to_string())).expect("app")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (flags, script) = text.split_once('\n').unwrap_or(("", text));
    let token = SecretString::from(PAT.to_string());
    block_on(async {
        let http = Scripted::from_text(script);
        match github::user(&http, github::DEFAULT_BASE_URL, &token).await {
            Ok(who) => assert!(!who.username.is_empty() && !who.id.is_empty()),
            Err(e) => assert_no_secret(&e.to_string(), &[PAT]),
        }
        if flags.contains("user-only") {
            return;
        }
        let narrow = TokenNarrowing {
            repositories: vec!["docs".into()],
            repository_ids: vec![7],
            permissions: BTreeMap::from([("contents".into(), "read".into())]),
        };
        for narrow in [TokenNarrowing::none(), narrow] {
            let http = Scripted::from_text(script);
            match installation_token(&http, GITHUB_API, app(), &narrow).await {
                Ok(minted) => {
                    let secret = minted.token.expose_secret();
                    assert!(!secret.is_empty());
                    if secret.len() >= 8 {
                        assert!(!format!("{minted:?}").contains(secret));
                    }
                }
                Err(e) => assert_no_secret(&e.to_string(), &[PAT]),
            }
        }
        let http = Scripted::from_text(script);
        if let Ok(info) = check_app(&http, GITHUB_API, app()).await {
            assert_eq!(info.id, 123456, "check_app accepted another App's id");
        }
    });
});
