//! OAuth token and error responses: each of `request_token` (authorization code, refresh
//! token), `poll_device` and `revoke` is sent to a transport that answers with the
//! responses written in the input (see `strongroom_fuzz`), under the provider quirks the
//! input's first line names (`slack`, `github`, `json`, `body`). Checks: no panic; a
//! refusal never carries the client secret, code, verifier or token the request sent (even
//! when the server's error echoes them); a success has a non-empty access token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::oauth::{
    poll_device, request_token, revoke, ClientAuth, ClientAuthMethod, DevicePoll, OAuthSpec,
    ResponseStyle, TokenGrant, TokenKind, TokenRequestFormat,
};
use strongroom::{ExposeSecret, SecretString};
use strongroom_fuzz::{assert_no_secret, block_on, Scripted};

const CLIENT_SECRET: &str = "FUZZSECRET-client-5d1e";
const CODE: &str = "FUZZSECRET-code-31c4";
const VERIFIER: &str = "FUZZSECRET-verifier-8e02";
const REFRESH: &str = "FUZZSECRET-refresh-0a9f";
const DEVICE: &str = "FUZZSECRET-device-c6b7";

fn spec(flags: &str) -> OAuthSpec {
    let mut spec = OAuthSpec::new("https://auth.example.com/token");
    spec.revocation_url = Some("https://auth.example.com/revoke".into());
    spec.device_authorization_url = Some("https://auth.example.com/device".into());
    if flags.contains("slack") {
        spec.response = ResponseStyle::Slack;
    } else if flags.contains("github") {
        spec.response = ResponseStyle::Github;
    }
    if flags.contains("json") {
        spec.token_request = TokenRequestFormat::Json;
    }
    if flags.contains("body") {
        spec.client_auth = ClientAuthMethod::Body;
    }
    spec
}

/// A refusal never carries what the request sent: the client secret and the grant's own
/// secrets. (A server may echo other text; the library cannot know it is secret.)
fn check_refusal(e: &impl std::fmt::Display, sent: &[&str]) {
    let mut secrets = vec![CLIENT_SECRET];
    secrets.extend_from_slice(sent);
    assert_no_secret(&e.to_string(), &secrets);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (flags, script) = text.split_once('\n').unwrap_or(("", text));
    let spec = spec(flags);
    let secret = SecretString::from(CLIENT_SECRET.to_string());
    let client = ClientAuth {
        client_id: "fuzz-client",
        client_secret: Some(&secret),
    };
    let code = SecretString::from(CODE.to_string());
    let verifier = SecretString::from(VERIFIER.to_string());
    let refresh = SecretString::from(REFRESH.to_string());
    let device = SecretString::from(DEVICE.to_string());
    let grants = [
        (
            TokenGrant::AuthorizationCode {
                code: &code,
                redirect_uri: "http://127.0.0.1:8080/callback",
                code_verifier: Some(&verifier),
            },
            &[CODE, VERIFIER][..],
        ),
        (
            TokenGrant::RefreshToken {
                refresh_token: &refresh,
            },
            &[REFRESH][..],
        ),
    ];
    block_on(async {
        for (grant, sent) in &grants {
            let http = Scripted::from_text(script);
            match request_token(&http, &spec, &client, grant).await {
                Ok(tokens) => {
                    assert!(!tokens.access_token.expose_secret().is_empty());
                    let token = tokens.access_token.expose_secret();
                    if token.len() >= 8 {
                        assert!(!format!("{tokens:?}").contains(token));
                    }
                }
                Err(e) => {
                    check_refusal(&e, sent);
                    check_refusal(&strongroom::Error::from(e), sent);
                }
            }
        }
        let http = Scripted::from_text(script);
        match poll_device(&http, &spec, &client, &device).await {
            Ok(DevicePoll::Done(tokens)) => {
                assert!(!tokens.access_token.expose_secret().is_empty())
            }
            Ok(_) => {}
            Err(e) => check_refusal(&e, &[DEVICE]),
        }
        for kind in [TokenKind::AccessToken, TokenKind::RefreshToken] {
            let http = Scripted::from_text(script);
            if let Err(e) = revoke(&http, &spec, &client, &refresh, kind).await {
                check_refusal(&e, &[REFRESH]);
            }
        }
    });
});
