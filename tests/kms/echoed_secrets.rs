//! A KMS endpoint (or a proxy in front of it) that answers an error echoing the whole
//! request — headers and body — must not carry the request's secrets into the vault's
//! errors: the data key of an AWS `Encrypt`, a GCP `encrypt`, a Vault transit `encrypt` and
//! an Azure `wrapkey` (in base64, base64url, hex), the AppRole `secret_id`, the Azure client
//! secret (form-encoded), the bearer and Vault tokens, the AWS session token. A small HTTP
//! server on 127.0.0.1 answers every call the test does not route with a 400 (or 500)
//! whose JSON `message`, `errors[0]` and `error.message` (or XML `<Message>`, read as text by
//! all but AWS) are the request. The server serves `echoed_credentials.rs` too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use strongroom::crypto::kms::{
    AwsKmsKey, AzureKeyVaultKey, GcpKmsKey, SecretSource, VaultAuth, VaultTransitKey,
};
use strongroom::{DataKey, Error, KeyWrapper};

use super::http;

/// A canned answer for `(method, path)`, or `None` to echo the request in an error.
pub(super) type Route = dyn Fn(&str, &str) -> Option<(u16, String)> + Send + Sync;

/// How the echoing server writes the request it echoes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Shape {
    /// A JSON error: `message`, `errors[0]`, `error.message`.
    Json,
    /// An XML error's `<Message>` (AWS's authentication layer and STS answer so), read as
    /// text by all but AWS.
    Xml,
    /// A JSON error whose `message` is the request folded into lines of 40 characters, as
    /// a proxy or a log line may fold it: no run is long enough to be cut by its length.
    Folded,
    /// The JSON `Code` of an EC2 instance metadata credentials answer.
    Code,
}

pub(super) struct Echo {
    pub(super) url: String,
    pub(super) echoed: Arc<AtomicUsize>,
    /// The bodies of the requests echoed, in order.
    pub(super) bodies: Arc<Mutex<Vec<String>>>,
}

/// Starts the echoing server: `status` for the echoes, written as `shape` says.
pub(super) fn echo_server(status: u16, shape: Shape, route: Box<Route>) -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let echoed = Arc::new(AtomicUsize::new(0));
    let count = echoed.clone();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).to_string();
            let mut first = head.split_whitespace();
            let (method, path) = (
                first.next().unwrap_or("").to_string(),
                first.next().unwrap_or("").to_string(),
            );
            let (code, answer) = route(&method, &path).unwrap_or_else(|| {
                count.fetch_add(1, Ordering::SeqCst);
                seen.lock().expect("bodies").push(body.clone());
                let dump = format!("{body}\n{head}");
                let json = |dump: &str| {
                    serde_json::json!({
                        "__type": "ValidationException",
                        "message": dump,
                        "errors": [dump],
                        "error": {"message": dump, "status": "INVALID_ARGUMENT", "code": "BadParameter"},
                    })
                    .to_string()
                };
                match shape {
                    Shape::Json => (status, json(&dump)),
                    Shape::Xml => (status, format!("<Error><Message>{dump}</Message></Error>")),
                    Shape::Folded => {
                        let chars: Vec<char> = dump.chars().collect();
                        let lines: Vec<String> =
                            chars.chunks(40).map(|c| c.iter().collect()).collect();
                        (status, json(&lines.join("\n")))
                    }
                    Shape::Code => (status, serde_json::json!({ "Code": dump }).to_string()),
                }
            });
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Echo {
        url,
        echoed,
        bodies,
    }
}

/// The forms of the data key a request carries or a peer may re-encode.
fn key_forms(dek: &DataKey) -> Vec<String> {
    let k = dek.expose_secret();
    vec![
        base64::engine::general_purpose::STANDARD.encode(k),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k),
        hex::encode(k),
    ]
}

/// The error (Display and Debug) holds no 12-character piece of any of `secrets`, and the
/// server did echo a request.
pub(super) fn clean<T: std::fmt::Debug>(
    what: &str,
    result: strongroom::Result<T>,
    secrets: &[String],
    echo: &Echo,
) {
    let error = match result {
        Err(e) => e,
        Ok(v) => panic!("{what}: the echoing server must fail the call, got {v:?}"),
    };
    assert!(
        echo.echoed.load(Ordering::SeqCst) > 0,
        "{what}: no request was echoed ({error})"
    );
    assert!(
        matches!(
            error,
            Error::KeyUnavailable { .. } | Error::DecryptFailed { .. }
        ),
        "{what}: {error:?}"
    );
    let shown = format!("{error} {error:?}");
    for secret in secrets {
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(12) {
            let piece: String = w.iter().collect();
            assert!(
                !shown.contains(&piece),
                "{what}: `{piece}` of a secret in: {shown}"
            );
        }
    }
    // The reason is still there to read, with the secret cut out.
    assert!(
        shown.contains("[…]"),
        "{what}: nothing was redacted: {shown}"
    );
}

#[tokio::test]
async fn aws_kms_errors_echoing_encrypt_and_decrypt_hold_no_secret() {
    let session = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKENvalue0123456789".to_string();
    for (status, shape) in [(400, Shape::Json), (400, Shape::Xml)] {
        let echo = echo_server(status, shape, Box::new(|_, _| None));
        let key = AwsKmsKey::new(
            "alias/strongroom",
            "eu-west-1",
            "AKIAEXAMPLEKEYID0001",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some(session.clone()),
            http(),
        )
        .expect("key")
        .with_endpoint(echo.url.clone());
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(session.clone());
        secrets.push("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into());
        clean("AWS Encrypt", key.wrap(&dek, b"aad").await, &secrets, &echo);
        let blob = vec![1u8; 200];
        let before = echo.echoed.load(Ordering::SeqCst);
        let unwrapped = key.unwrap(&blob, b"aad").await;
        assert!(
            echo.echoed.load(Ordering::SeqCst) > before,
            "Decrypt was not sent"
        );
        clean(
            "AWS Decrypt",
            unwrapped,
            std::slice::from_ref(&session),
            &echo,
        );
    }
}

#[tokio::test]
async fn gcp_kms_errors_echoing_encrypt_hold_no_secret() {
    let token = "ya29.a0AfH6SMBexampleACCESStokenVALUE-0123456789_abcdef".to_string();
    for (status, shape) in [(400, Shape::Json), (400, Shape::Xml), (500, Shape::Json)] {
        let echo = echo_server(status, shape, Box::new(|_, _| None));
        let key = GcpKmsKey::with_access_token(
            "projects/p/locations/global/keyRings/r/cryptoKeys/k",
            token.clone(),
            http(),
        )
        .expect("key")
        .with_endpoint(echo.url.clone());
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(token.clone());
        clean("GCP encrypt", key.wrap(&dek, b"aad").await, &secrets, &echo);
    }
}

#[tokio::test]
async fn vault_errors_echoing_transit_and_approle_hold_no_secret() {
    let token = "hvs.CAESIJexampleVAULTtokenVALUE0123456789abcdefGHIJ".to_string();
    let role_id = "6f1c0a4e-9d8b-4f6e-a2c1-5b7d3e9f0a12".to_string();
    let secret_id = "a9b8c7d6-e5f4-4321-9fed-cba987654321".to_string();
    // A 500 is retried, then given up on: that error is clean too.
    for (status, shape) in [(400, Shape::Json), (400, Shape::Xml), (500, Shape::Json)] {
        // Transit encrypt with a token.
        let echo = echo_server(
            status,
            shape,
            Box::new(|m, p| {
                (m == "GET" && p.contains("/keys/")).then(|| {
                    (
                        200,
                        r#"{"data":{"derived":true,"type":"aes256-gcm96"}}"#.to_string(),
                    )
                })
            }),
        );
        let key = VaultTransitKey::new(echo.url.clone(), "strongroom", token.clone(), http())
            .expect("key");
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(token.clone());
        clean(
            "Vault transit encrypt",
            key.wrap(&dek, b"aad").await,
            &secrets,
            &echo,
        );

        // An AppRole login the server refuses, echoing role_id and secret_id.
        let echo = echo_server(status, shape, Box::new(|_, _| None));
        let key = VaultTransitKey::new(echo.url.clone(), "strongroom", "", http())
            .expect("key")
            .with_auth(VaultAuth::AppRole {
                mount: "approle".into(),
                role_id: SecretSource::value(role_id.clone()),
                secret_id: SecretSource::value(secret_id.clone()),
            });
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(secret_id.clone());
        secrets.push(role_id.clone());
        clean(
            "Vault AppRole login",
            key.wrap(&dek, b"aad").await,
            &secrets,
            &echo,
        );
    }
}

#[tokio::test]
async fn azure_errors_echoing_the_token_request_and_wrapkey_hold_no_secret() {
    let client_secret = "Az~Q8.sEcReT_v4l+ue/with=odd~chars-0123456789".to_string();
    let access = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.exampleAZUREaccess".to_string();
    let form: String = url::form_urlencoded::byte_serialize(client_secret.as_bytes()).collect();
    for shape in [Shape::Json, Shape::Xml] {
        // The token endpoint refuses, echoing the form with the client secret.
        let echo = echo_server(400, shape, Box::new(|_, _| None));
        let key = AzureKeyVaultKey::new(
            &format!("{}/keys/k/0123456789abcdef", echo.url),
            "tenant-1",
            "client-1",
            client_secret.clone(),
            http(),
        )
        .expect("key")
        .with_authority(echo.url.clone());
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(client_secret.clone());
        secrets.push(form.clone());
        clean(
            "Azure token request",
            key.wrap(&dek, b"aad").await,
            &secrets,
            &echo,
        );

        // The token is granted; wrapkey fails, echoing the key and the bearer token.
        let answer = serde_json::json!({
            "access_token": access, "token_type": "Bearer", "expires_in": 3600,
        })
        .to_string();
        let echo = echo_server(
            400,
            shape,
            Box::new(move |_, p| p.contains("/oauth2/").then(|| (200, answer.clone()))),
        );
        let key = AzureKeyVaultKey::new(
            &format!("{}/keys/k/0123456789abcdef", echo.url),
            "tenant-1",
            "client-1",
            client_secret.clone(),
            http(),
        )
        .expect("key")
        .with_authority(echo.url.clone());
        let dek = DataKey::generate().expect("dek");
        let mut secrets = key_forms(&dek);
        secrets.push(client_secret.clone());
        secrets.push(access.clone());
        clean(
            "Azure wrapkey",
            key.wrap(&dek, b"aad").await,
            &secrets,
            &echo,
        );
    }
}
