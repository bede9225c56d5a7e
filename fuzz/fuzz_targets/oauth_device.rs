//! OAuth device authorization responses (RFC 8628): `start_device` reads the first
//! response of the input (see `strongroom_fuzz`), and when it succeeds, `poll_device` with
//! the device code it got reads the next ones until the flow ends. Checks: no panic; a
//! started flow has a user code, an http(s) verification URI and an interval of at least
//! one second; `Debug` never shows the device code; refusals carry no client secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::oauth::{
    poll_device, start_device, ClientAuth, DevicePoll, OAuthSpec, ResponseStyle,
};
use strongroom::{ExposeSecret, SecretString};
use strongroom_fuzz::{assert_no_secret, block_on, Scripted};

const CLIENT_SECRET: &str = "FUZZSECRET-client-5d1e";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (flags, script) = text.split_once('\n').unwrap_or(("", text));
    let mut spec = OAuthSpec::new("https://auth.example.com/token");
    spec.device_authorization_url = Some("https://auth.example.com/device".into());
    if flags.contains("github") {
        spec.response = ResponseStyle::Github;
    }
    let secret = SecretString::from(CLIENT_SECRET.to_string());
    let public = flags.contains("public");
    let client = ClientAuth {
        client_id: "fuzz-client",
        client_secret: (!public).then_some(&secret),
    };
    let scopes = vec!["read".to_string(), "write".to_string()];
    let http = Scripted::from_text(script);
    block_on(async {
        let started = match start_device(&http, &spec, &client, &scopes).await {
            Ok(started) => started,
            Err(e) => {
                assert_no_secret(&e.to_string(), &[CLIENT_SECRET]);
                return;
            }
        };
        assert!(!started.user_code.is_empty());
        assert!(started.interval >= 1);
        assert!(started
            .verification_uri
            .to_ascii_lowercase()
            .starts_with("http"));
        let code = started.device_code.expose_secret().to_string();
        assert!(!code.is_empty());
        let shown = [
            started.user_code.as_str(),
            started.verification_uri.as_str(),
            started.verification_uri_complete.as_deref().unwrap_or(""),
        ];
        if code.len() >= 8 && !shown.iter().any(|s| s.contains(&code)) {
            assert!(!format!("{started:?}").contains(&code));
        }
        for _ in 0..8 {
            match poll_device(&http, &spec, &client, &started.device_code).await {
                Ok(DevicePoll::Pending | DevicePoll::SlowDown) => continue,
                Ok(_) => break,
                Err(e) => {
                    let secrets: Vec<&str> = [CLIENT_SECRET, code.as_str()]
                        .into_iter()
                        .filter(|s| s.len() >= 12)
                        .collect();
                    assert_no_secret(&e.to_string(), &secrets);
                    break;
                }
            }
        }
    });
});
