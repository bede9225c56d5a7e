//! Every vault operation runs in a `vault` span carrying its operation, principal,
//! credential id, scope, outcome and duration — and never a secret. A canary pushed
//! through create, resolve, reveal and a batch injection with tracing at TRACE shows up in
//! no log line, even with the raw (unscrubbed) writer; and the vault registered it with
//! its scrubber, so a host's own log line carrying it is redacted.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use strongroom::scrub::{Scrubber, ScrubberConfig, REDACTED};
use strongroom::vault::ResolveItem;
use strongroom::{
    CredentialRef, ExposeSecret, LocalKey, MemoryStore, NewCredential, Principal, ResolveContext,
    Scope, SecretString, Vault,
};
use tracing_subscriber::fmt::format::FmtSpan;

const CANARY: &str = "sk-CANARY-trace-7d1f0c9a4e2b";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn subscriber(
    writer: impl for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(writer)
        .finish()
}

async fn vault(scrubber: &Scrubber) -> Vault {
    Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .scrubber(scrubber.clone())
        .build()
        .await
        .expect("vault")
}

fn fields() -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(CANARY))])
}

/// The `vault{...}` close line of operation `op`.
fn close_line<'a>(out: &'a str, op: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!("op=\"{op}\"")) && l.contains("close"))
        .unwrap_or_else(|| panic!("no closed span of {op}:\n{out}"))
}

/// The canary at TRACE through a real create, resolve, reveal and injection: no log line
/// carries it in any encoding, even written raw; every span carries its fields.
#[tokio::test]
async fn spans_carry_the_fields_and_never_the_secret() {
    let scrubber = Scrubber::new(ScrubberConfig::default());
    let raw = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(raw.clone()));
    let vault = vault(&scrubber).await;
    let scope = Scope::per_app_per_user("crm", "u1").expect("scope");
    let owner = Principal::parse("app_user:crm:u1").expect("principal");
    let runtime = Principal::parse("runtime:crm:u1").expect("principal");
    let ctx = ResolveContext::of(&runtime).expect("ctx");
    let info = vault
        .create(
            &owner,
            NewCredential::new("openai_main", scope.clone(), "openai", "api_key", fields()),
        )
        .await
        .expect("create");
    let reference = CredentialRef::explicit("openai_main", scope.kind(), None);
    let resolved = vault
        .resolve(&runtime, &reference, &ctx)
        .await
        .expect("resolve");
    assert_eq!(resolved.fields["api_key"].expose_secret(), CANARY);
    let revealed = vault.reveal(&owner, &info.id).await.expect("reveal");
    assert_eq!(revealed.fields["api_key"].expose_secret(), CANARY);
    let injected = vault
        .resolve_many(&runtime, &ctx, &[ResolveItem::new(&reference)])
        .await
        .expect("inject");
    assert_eq!(injected[0].fields["api_key"].expose_secret(), CANARY);
    // A denial and a miss: outcomes by kind.
    let viewer = Principal::parse("viewer:v").expect("principal");
    vault.reveal(&viewer, &info.id).await.expect_err("denied");
    let other = strongroom::CredentialId::generate();
    vault.get(&owner, &other).await.expect_err("missing");

    let out = raw.text();
    let hex = hex::encode(CANARY);
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(CANARY);
    for needle in [CANARY, "CANARY-trace", hex.as_str(), b64.as_str()] {
        assert!(!out.contains(needle), "{needle} in the log:\n{out}");
    }
    let id = info.id.to_string();
    let scope_text = scope.to_string();
    for (op, principal) in [
        ("create", "app_user:crm:u1"),
        ("resolve", "runtime:crm:u1"),
        ("reveal", "app_user:crm:u1"),
        ("resolve_many", "runtime:crm:u1"),
    ] {
        let line = close_line(&out, op);
        assert!(line.contains(&format!("principal={principal}")), "{line}");
        assert!(line.contains("outcome=\"ok\""), "{line}");
        assert!(line.contains("duration_us="), "{line}");
        // A batch names many credentials: its span has no single id or scope.
        if op != "resolve_many" {
            assert!(line.contains(&format!("scope={scope_text}")), "{line}");
        }
        if op != "resolve_many" && op != "create" {
            assert!(line.contains(&format!("credential_id={id}")), "{line}");
        }
    }
    let denied = out
        .lines()
        .find(|l| l.contains("principal=viewer:v") && l.contains("close"))
        .expect("the denied reveal's span");
    assert!(
        denied.contains("op=\"reveal\"") && denied.contains("outcome=PermissionDenied"),
        "{denied}"
    );
    let missing = close_line(&out, "get");
    assert!(
        missing.contains("outcome=NotFound") && missing.contains(&format!("credential_id={other}")),
        "{missing}"
    );

    // The vault registered the canary when it unsealed it: a host's own careless log line
    // written through the scrubber comes out redacted.
    let scrubbed = Capture::default();
    {
        let _inner = tracing::subscriber::set_default(subscriber(scrubber.wrap(scrubbed.clone())));
        tracing::error!(token = %CANARY, basic = %base64::engine::general_purpose::STANDARD.encode(format!("u:{CANARY}")), "oops");
    }
    let text = scrubbed.text();
    assert!(
        !text.contains("CANARY-trace") && text.contains(REDACTED),
        "{text}"
    );
    assert!(scrubber.stats().values >= 1);
}

/// The vault's scrubber is the one its builder was given (shared), or the global one.
#[tokio::test]
async fn the_vault_exposes_its_scrubber() {
    let shared = Scrubber::new(ScrubberConfig::default());
    let vault = vault(&shared).await;
    vault.scrubber().register("registered-through-the-vault");
    assert_eq!(shared.scrub("registered-through-the-vault"), REDACTED);
    let default = Vault::in_memory().await.expect("vault");
    default.scrubber().register("registered-in-the-global-one");
    assert_eq!(
        Scrubber::global().scrub("registered-in-the-global-one"),
        REDACTED
    );
}
