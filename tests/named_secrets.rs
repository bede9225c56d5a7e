//! Named secrets (`Vault::named_secret`): an org-level secret with a per-agent override,
//! for the names in `NAMED_SECRETS` only; everywhere else lookups stay strict.

use std::collections::BTreeMap;

use strongroom::vault::{agent_override_name, LLMPROXY_API_KEY};
use strongroom::{
    Action, ErrorKind, ExposeSecret, NamedSource, NewCredential, Outcome, Principal, Scope,
    SecretString, Vault,
};

const NAME: &str = LLMPROXY_API_KEY;
const OVERRIDE: &str = "agent:llmproxy.llm.api_key";

fn admin() -> Principal {
    Principal::parse("system_admin:ops").expect("p")
}

fn agent(id: &str) -> Principal {
    Principal::parse(&format!("agent:{id}")).expect("p")
}

fn key(value: &str) -> BTreeMap<String, SecretString> {
    let mut fields = BTreeMap::new();
    fields.insert("api_key".to_string(), SecretString::from(value.to_string()));
    fields
}

async fn put(vault: &Vault, name: &str, scope: Scope, value: &str, agent_accessible: bool) {
    let mut new = NewCredential::new(name, scope, "openai", "", key(value));
    new.agent_accessible = agent_accessible;
    vault.create(&admin(), new).await.expect("create");
}

async fn org(vault: &Vault, value: &str) {
    put(vault, NAME, Scope::SystemWide, value, true).await;
}

async fn own(vault: &Vault, id: &str, value: &str) {
    put(
        vault,
        OVERRIDE,
        Scope::per_agent(id).expect("scope"),
        value,
        true,
    )
    .await;
}

async fn value_for(vault: &Vault, actor: &Principal, id: &str) -> (NamedSource, String) {
    let got = vault.named_secret(actor, id, NAME).await.expect("named");
    let value = got.secret.fields["api_key"].expose_secret().to_string();
    (got.source, value)
}

async fn last_row(vault: &Vault) -> strongroom::AuditRecord {
    vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit")
        .pop()
        .expect("a row")
}

#[test]
fn the_override_name_is_the_table_s() {
    assert_eq!(agent_override_name(NAME).as_deref(), Some(OVERRIDE));
}

#[tokio::test]
async fn org_only_the_org_secret_wins() {
    let v = Vault::in_memory().await.expect("vault");
    org(&v, "sk-org").await;
    assert_eq!(
        value_for(&v, &agent("a1"), "a1").await,
        (NamedSource::Org, "sk-org".into())
    );
    // A system admin sees what the agent would get.
    assert_eq!(
        value_for(&v, &admin(), "a1").await,
        (NamedSource::Org, "sk-org".into())
    );
}

#[tokio::test]
async fn both_the_agent_s_override_wins() {
    let v = Vault::in_memory().await.expect("vault");
    org(&v, "sk-org").await;
    own(&v, "a1", "sk-a1").await;
    assert_eq!(
        value_for(&v, &agent("a1"), "a1").await,
        (NamedSource::Agent, "sk-a1".into())
    );
    assert_eq!(
        value_for(&v, &admin(), "a1").await,
        (NamedSource::Agent, "sk-a1".into())
    );
}

#[tokio::test]
async fn neither_is_not_found() {
    let v = Vault::in_memory().await.expect("vault");
    let e = v
        .named_secret(&agent("a1"), "a1", NAME)
        .await
        .expect_err("nothing to find");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(NAME), "{e}");
}

#[tokio::test]
async fn another_agent_s_override_is_never_used() {
    let v = Vault::in_memory().await.expect("vault");
    org(&v, "sk-org").await;
    own(&v, "a2", "sk-a2").await;
    assert_eq!(
        value_for(&v, &agent("a1"), "a1").await,
        (NamedSource::Org, "sk-org".into())
    );
    // And an agent may not ask on another's behalf (audited).
    let e = v
        .named_secret(&agent("a1"), "a2", NAME)
        .await
        .expect_err("another agent");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let row = last_row(&v).await;
    assert_eq!(row.event.outcome, Outcome::Denied);
    // Nor may anyone else.
    for who in ["app_admin:crm:ann", "runtime:crm:u1", "viewer:vic"] {
        let who = Principal::parse(who).expect("p");
        let e = v.named_secret(&who, "a2", NAME).await.expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{who}");
    }
}

#[tokio::test]
async fn an_unrelated_name_does_not_fall_back() {
    let v = Vault::in_memory().await.expect("vault");
    put(&v, "openai_main", Scope::SystemWide, "sk-org", true).await;
    put(&v, "llmproxy:other", Scope::SystemWide, "sk-org", true).await;
    // Not a named secret: refused, whatever exists.
    for name in ["openai_main", "llmproxy:other", OVERRIDE] {
        let e = v
            .named_secret(&agent("a1"), "a1", name)
            .await
            .expect_err("not a named secret");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name}");
    }
    // The agent's secrets path stays strict: the org-level named secret is not there.
    org(&v, "sk-org").await;
    for name in [NAME, OVERRIDE, "openai_main"] {
        let e = v
            .agent_secret(&agent("a1"), name)
            .await
            .expect_err("strict");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{name}");
    }
}

#[tokio::test]
async fn the_audit_row_says_which_won() {
    let v = Vault::in_memory().await.expect("vault");
    org(&v, "sk-org").await;
    value_for(&v, &agent("a1"), "a1").await;
    let row = last_row(&v).await;
    assert_eq!(row.event.action, Action::Resolve);
    assert_eq!(row.event.outcome, Outcome::Success);
    assert_eq!(
        row.event.details.get("source").map(String::as_str),
        Some("org")
    );
    own(&v, "a1", "sk-a1").await;
    value_for(&v, &agent("a1"), "a1").await;
    let row = last_row(&v).await;
    assert_eq!(
        row.event.details.get("source").map(String::as_str),
        Some("agent")
    );
    assert_eq!(row.event.actor, "agent:a1");
    // A system admin's read is a reveal.
    value_for(&v, &admin(), "a1").await;
    let row = last_row(&v).await;
    assert_eq!(row.event.action, Action::Reveal);
    assert_eq!(
        row.event.details.get("source").map(String::as_str),
        Some("agent")
    );
    // No secret in any row.
    for row in v.store().audit_range(1, usize::MAX).await.expect("audit") {
        let text = format!("{:?}", row.event);
        assert!(
            !text.contains("sk-org") && !text.contains("sk-a1"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_secret_not_agent_accessible_is_refused_to_the_agent() {
    let v = Vault::in_memory().await.expect("vault");
    // The override exists but is not agent-accessible: refused, no quiet fall back.
    put(&v, NAME, Scope::SystemWide, "sk-org", true).await;
    put(
        &v,
        OVERRIDE,
        Scope::per_agent("a1").expect("s"),
        "sk-a1",
        false,
    )
    .await;
    let e = v
        .named_secret(&agent("a1"), "a1", NAME)
        .await
        .expect_err("not agent-accessible");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let row = last_row(&v).await;
    assert_eq!(row.event.outcome, Outcome::Denied);
    assert_eq!(
        row.event.details.get("source").map(String::as_str),
        Some("agent")
    );
    assert_eq!(
        row.event.details.get("reason").map(String::as_str),
        Some("not agent-accessible")
    );
    // The org-level one likewise.
    let v = Vault::in_memory().await.expect("vault");
    put(&v, NAME, Scope::SystemWide, "sk-org", false).await;
    let e = v
        .named_secret(&agent("a1"), "a1", NAME)
        .await
        .expect_err("not agent-accessible");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    // A system admin may still read it.
    assert_eq!(
        value_for(&v, &admin(), "a1").await,
        (NamedSource::Org, "sk-org".into())
    );
}
