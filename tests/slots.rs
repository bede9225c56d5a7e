//! Slots, the compiler and the injector: compact and explicit refs, scope strictness through
//! slots, each compiler error and warning, deploy-time values refreshed after a change, one
//! audit row per injection, the development fallback, and no secret in Debug output.

use std::collections::BTreeMap;

use strongroom::config::{compile, AppConfig, CredentialSlot, Deployment, Severity, Slots};
use strongroom::{
    CredentialUpdate, ExposeSecret, NewCredential, Principal, Scope, ScopeKind, SecretString, Vault,
};

const CANARY: &str = "sk-CANARY-slots-71c0";

fn llm_slot() -> CredentialSlot {
    CredentialSlot::new("brain_credential", "LLM provider credential")
        .handler_types(["api_key", "bearer_token", "oauth2"])
        .providers(["openai", "anthropic", "deepseek"])
        .scopes_preferred([ScopeKind::PerUser, ScopeKind::SystemWide])
        .inject("api_key", "{block}.config.api_key")
        .inject("organization", "{block}.config.organization")
        .inject("base_url", "{block}.config.base_url")
}

fn slots() -> Slots {
    Slots::new().declare("brain", llm_slot())
}

fn key(v: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(v.to_string()))])
}

fn admin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}

const APP: &str = "
agents:
  - id: assistant
    brain:
      provider: openai
      model: gpt-4o
      credential: openai_main
  - id: researcher
    brain:
      provider: openai
      credential:
        ref: shared_openai
        scope: system_wide
        provider: openai
  - id: writer
    brain:
      provider: anthropic
      credential:
        ref: team_key
        scope: per_app_shared
      config:
        temperature: 0.3
";

async fn seeded() -> Vault {
    let vault = Vault::in_memory().await.expect("vault");
    vault
        .create(
            &admin(),
            NewCredential::new(
                "shared_openai",
                Scope::SystemWide,
                "openai",
                "",
                key("sk-shared-1"),
            ),
        )
        .await
        .expect("shared");
    let app_admin = Principal::parse("app_admin:crm:adm").expect("p");
    vault
        .create(
            &app_admin,
            NewCredential::new(
                "team_key",
                Scope::per_app_shared("crm").expect("s"),
                "anthropic",
                "",
                key("sk-ant-team-1"),
            ),
        )
        .await
        .expect("team");
    for user in ["alice", "bob"] {
        let p = Principal::parse(&format!("app_user:crm:{user}")).expect("p");
        let info = vault
            .create(
                &p,
                NewCredential::new(
                    "openai_main",
                    Scope::per_user(user).expect("s"),
                    "openai",
                    "",
                    key(&format!("{CANARY}-{user}")),
                ),
            )
            .await
            .expect("user key");
        vault.grant_add(&p, &info.id, "crm").await.expect("grant");
    }
    vault
}

#[test]
fn compact_and_explicit_refs_compile_to_a_manifest() {
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let vault_catalog =
        strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin());
    let m = compile("crm", &config, &slots(), &vault_catalog).expect("compiles");
    let got: Vec<(String, String, ScopeKind, Option<String>)> = m
        .entries
        .iter()
        .map(|e| {
            (
                e.block.to_string(),
                e.reference.name.clone(),
                e.reference.scope,
                e.reference.provider.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "agents[assistant].brain".into(),
                "openai_main".into(),
                ScopeKind::PerUser,
                None
            ),
            (
                "agents[researcher].brain".into(),
                "shared_openai".into(),
                ScopeKind::SystemWide,
                Some("openai".into())
            ),
            (
                "agents[writer].brain".into(),
                "team_key".into(),
                ScopeKind::PerAppShared,
                None
            ),
        ]
    );
    assert!(m.entries.iter().all(|e| e.slot.id == "brain_credential"));
    assert_eq!(m.entries[0].at.line, 7);
    // per_app_shared is not among the slot's preferred scopes: a warning, not an error.
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert_eq!(m.warnings[0].severity, Severity::Warning);
    assert!(m.warnings[0].message.contains("per_app_shared"));
}

fn errors_of(yaml: &str, slots: &Slots) -> Vec<String> {
    let config = AppConfig::parse("app.yaml", yaml).expect("parse");
    let catalog =
        strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin());
    match compile("crm", &config, slots, &catalog) {
        Ok(m) => panic!("compiled: {:?}", m.entries),
        Err(e) => e.errors.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn each_compiler_error_names_file_line_and_column() {
    // A provider the slot does not accept.
    let e = errors_of(
        "brain:\n  credential:\n    ref: k\n    scope: system_wide\n    provider: stripe\n",
        &slots(),
    );
    assert!(
        e.iter().any(
            |m| m.starts_with("app.yaml:3:") && m.contains("does not accept provider `stripe`")
        ),
        "{e:?}"
    );
    // A provider whose handler type the slot does not accept.
    let only_keys = Slots::new().declare(
        "brain",
        CredentialSlot::new("s", "S")
            .handler_types(["api_key"])
            .inject("api_key", "{block}.config.api_key"),
    );
    let e = errors_of(
        "brain:\n  credential: {ref: k, provider: github_oauth}\n",
        &only_keys,
    );
    assert!(
        e.iter().any(|m| m.contains("gives `oauth2` credentials")),
        "{e:?}"
    );
    // A required slot with no credential.
    let required = Slots::new().declare("brain", llm_slot().required(true));
    let e = errors_of(
        "agents:\n  - id: a\n    brain:\n      model: gpt-4o\n",
        &required,
    );
    assert!(
        e.iter().any(|m| m.starts_with("app.yaml:4:7:")
            && m.contains("needs a credential for slot `brain_credential`")),
        "{e:?}"
    );
    // An inject path that does not resolve (config is a string).
    let e = errors_of("brain:\n  credential: k\n  config: none\n", &slots());
    assert!(e.iter().any(|m| m.contains("does not resolve")), "{e:?}");
    let bad_path = Slots::new().declare(
        "brain",
        CredentialSlot::new("s", "S").inject("api_key", "config.api_key"),
    );
    let e = errors_of("brain:\n  credential: k\n", &bad_path);
    assert!(
        e.iter().any(|m| m.contains("must start with `{block}`")),
        "{e:?}"
    );
    // A malformed credential value and an unknown scope.
    let e = errors_of("brain:\n  credential:\n    scope: per_user\n", &slots());
    assert!(e.iter().any(|m| m.contains("needs `ref: NAME`")), "{e:?}");
    let e = errors_of("brain:\n  credential: {ref: k, scope: global}\n", &slots());
    assert!(
        e.iter()
            .any(|m| m.starts_with("app.yaml:2:") && m.contains("unknown scope `global`")),
        "{e:?}"
    );
    // A slot id no module declares for this block.
    let e = errors_of("brain:\n  credential: {ref: k, slot: nope}\n", &slots());
    assert!(e.iter().any(|m| m.contains("names slot `nope`")), "{e:?}");
}

#[test]
fn inline_templates_without_a_credential_block_warn_and_point_at_the_migrator() {
    let config = AppConfig::parse(
        "old.yaml",
        "brain:\n  provider: deepseek\n  config:\n    api_key: \"{{env.DEEPSEEK_API_KEY}}\"\n",
    )
    .expect("parse");
    let catalog =
        strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin());
    let m = compile("crm", &config, &slots(), &catalog).expect("compiles");
    assert!(m.entries.is_empty());
    assert_eq!(m.warnings.len(), 1);
    let w = m.warnings[0].to_string();
    assert!(w.starts_with("old.yaml:4:14: warning:"), "{w}");
    assert!(
        w.contains("strongroom yaml migrate-credentials old.yaml --write"),
        "{w}"
    );
}

#[test]
fn a_yaml_error_names_file_line_and_column() {
    let err = AppConfig::parse("app.yaml", "agents:\n  - id: a\n   brain: x\n").expect_err("bad");
    assert!(err.to_string().contains("app.yaml:3:"), "{err}");
}

#[tokio::test]
async fn deploy_then_sessions_inject_each_users_credentials_with_one_audit_row_each() {
    let vault = seeded().await;
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let before = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit")
        .len();
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let after_deploy = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    // Two shared refs resolved at deploy: two rows, by the app's runtime.
    let deploy_rows: Vec<_> = after_deploy[before..].iter().collect();
    assert_eq!(deploy_rows.len(), 2);
    assert!(deploy_rows
        .iter()
        .all(|r| r.event.action == strongroom::Action::Inject && r.event.actor == "runtime:crm:*"));

    let alice = deployment.start_session("alice").await.expect("alice");
    let docs = alice.expose();
    let agents = &docs[0]["agents"];
    assert_eq!(
        agents[0]["brain"]["config"]["api_key"],
        format!("{CANARY}-alice")
    );
    assert_eq!(agents[1]["brain"]["config"]["api_key"], "sk-shared-1");
    assert_eq!(agents[2]["brain"]["config"]["api_key"], "sk-ant-team-1");
    assert_eq!(
        agents[2]["brain"]["config"]["temperature"], 0.3,
        "other values kept"
    );
    assert_eq!(alice.injected_count(), 3);
    let rows = vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit");
    let session_rows: Vec<_> = rows[after_deploy.len()..].iter().collect();
    assert_eq!(session_rows.len(), 3, "one row per injection");
    assert!(session_rows
        .iter()
        .all(|r| r.event.actor == "runtime:crm:alice"));
    assert!(session_rows
        .iter()
        .any(|r| r.event.details.get("block").map(String::as_str)
            == Some("agents[assistant].brain")
            && r.event.details.get("slot").map(String::as_str) == Some("brain_credential")));

    let bob = deployment.start_session("bob").await.expect("bob");
    assert_eq!(
        bob.expose()[0]["agents"][0]["brain"]["config"]["api_key"],
        format!("{CANARY}-bob")
    );

    // Secrets stay out of Debug and masked output.
    let shown = format!("{alice:?} {:?}", alice.masked());
    assert!(!shown.contains("CANARY"), "{shown}");
    assert!(!shown.contains("sk-shared-1"), "{shown}");
    assert!(shown.contains("********"));
    assert!(!format!("{deployment:?}").contains("sk-"));
    for row in vault
        .store()
        .audit_range(1, usize::MAX)
        .await
        .expect("audit")
    {
        assert!(!format!("{row:?}").contains("CANARY"));
    }

    // One slot of one block.
    let fields = deployment
        .resolve_slot("alice", "agents[assistant].brain", "brain_credential")
        .await
        .expect("slot");
    assert_eq!(fields["api_key"].expose_secret(), format!("{CANARY}-alice"));
    let err = deployment
        .resolve_slot("alice", "agents[nobody].brain", "brain_credential")
        .await
        .expect_err("no such block");
    assert!(err.to_string().contains("agents[assistant].brain"), "{err}");
}

#[tokio::test]
async fn deploy_time_values_are_refreshed_after_the_credential_changes() {
    let vault = seeded().await;
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let s1 = deployment.start_session("alice").await.expect("s1");
    assert_eq!(
        s1.expose()[0]["agents"][1]["brain"]["config"]["api_key"],
        "sk-shared-1"
    );
    let shared = vault
        .list(&admin(), &strongroom::CredentialFilter::default())
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.name == "shared_openai")
        .expect("shared");
    vault
        .update(
            &admin(),
            &shared.id,
            shared.version,
            CredentialUpdate {
                fields: Some(key("sk-shared-2")),
                ..CredentialUpdate::default()
            },
        )
        .await
        .expect("rotate");
    let s2 = deployment.start_session("alice").await.expect("s2");
    assert_eq!(
        s2.expose()[0]["agents"][1]["brain"]["config"]["api_key"],
        "sk-shared-2"
    );
}

#[tokio::test]
async fn scopes_stay_strict_through_slots_and_errors_name_block_slot_ref_and_scope() {
    let vault = seeded().await;
    // carol has no per_user openai_main; a system_wide credential of that name exists.
    vault
        .create(
            &admin(),
            NewCredential::new(
                "openai_main",
                Scope::SystemWide,
                "openai",
                "",
                key("sk-system"),
            ),
        )
        .await
        .expect("system openai_main");
    let config = AppConfig::parse("app.yaml", APP).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let err = deployment
        .start_session("carol")
        .await
        .expect_err("no per_user key");
    let message = err.to_string();
    assert!(
        message.contains("block agents[assistant].brain"),
        "{message}"
    );
    assert!(message.contains("slot brain_credential"), "{message}");
    assert!(message.contains("ref openai_main (per_user)"), "{message}");
    assert!(!message.contains("sk-system"), "{message}");
    assert_eq!(err.kind(), strongroom::ErrorKind::NotFound);

    // A per_app_shared ref never finds another app's shared credential.
    let other = "brain:\n  credential: {ref: team_key, scope: per_app_shared}\n";
    let config = AppConfig::parse("other.yaml", other).expect("parse");
    let m = compile("billing", &config, &slots(), &vault.catalog()).expect("compiles");
    let err = Deployment::new(&vault, m)
        .await
        .expect_err("crm's key is not billing's");
    assert!(
        err.to_string().contains("ref team_key (per_app_shared)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stored_credential_the_slot_does_not_accept_fails_the_deploy() {
    let vault = seeded().await;
    vault
        .create(
            &admin(),
            NewCredential::new(
                "payments",
                Scope::SystemWide,
                "stripe",
                "",
                BTreeMap::from([(
                    "secret_key".to_string(),
                    SecretString::from("sk_live_x".to_string()),
                )]),
            ),
        )
        .await
        .expect("stripe");
    // The ref names no provider, so only the vault entry can tell.
    let config = AppConfig::parse(
        "app.yaml",
        "brain:\n  credential: {ref: payments, scope: system_wide}\n",
    )
    .expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let err = Deployment::new(&vault, m)
        .await
        .expect_err("stripe in an LLM slot");
    assert!(
        err.to_string()
            .contains("`stripe` credential, which slot `brain_credential` does not accept"),
        "{err}"
    );
    // A provider cross-check in the ref fails against the vault entry.
    let config = AppConfig::parse(
        "app.yaml",
        "brain:\n  credential: {ref: shared_openai, scope: system_wide, provider: anthropic}\n",
    )
    .expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let err = Deployment::new(&vault, m)
        .await
        .expect_err("provider mismatch");
    assert!(err.to_string().contains("provider `anthropic`"), "{err}");
}

#[tokio::test]
async fn inline_templates_are_used_only_in_development_mode() {
    let vault = Vault::in_memory().await.expect("vault");
    let yaml = "brain:\n  provider: openai\n  credential: openai_main\n  config:\n    api_key: \"{{env.STRONGROOM_TEST_DEV_KEY}}\"\n";
    let config = AppConfig::parse("dev.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    assert!(m.entries[0].has_fallback);
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let err = deployment
        .start_session("dana")
        .await
        .expect_err("no credential, no dev mode");
    assert!(
        err.to_string().contains("ref openai_main (per_user)"),
        "{err}"
    );

    std::env::set_var("STRONGROOM_TEST_DEV_KEY", "sk-dev-from-env");
    let dev = deployment.with_dev_fallback(true);
    let s = dev.start_session("dana").await.expect("dev fallback");
    assert_eq!(
        s.expose()[0]["brain"]["config"]["api_key"],
        "sk-dev-from-env"
    );
    assert!(!format!("{s:?}").contains("sk-dev-from-env"));
}

#[tokio::test]
async fn a_session_of_twenty_slots_writes_twenty_audit_rows() {
    let vault = Vault::in_memory().await.expect("vault");
    let user = Principal::parse("app_user:crm:erin").expect("p");
    let mut yaml = String::from("agents:\n");
    for i in 0..20 {
        let info = vault
            .create(
                &user,
                NewCredential::new(
                    format!("key{i}"),
                    Scope::per_user("erin").expect("s"),
                    "openai",
                    "",
                    key(&format!("sk-{i}")),
                ),
            )
            .await
            .expect("create");
        vault
            .grant_add(&user, &info.id, "crm")
            .await
            .expect("grant");
        yaml.push_str(&format!(
            "  - id: a{i}\n    brain:\n      credential: key{i}\n"
        ));
    }
    let config = AppConfig::parse("big.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let head = vault
        .store()
        .chain_head()
        .await
        .expect("head")
        .map_or(0, |h| h.seq);
    let s = deployment.start_session("erin").await.expect("session");
    for i in 0..20 {
        assert_eq!(
            s.expose()[0]["agents"][i]["brain"]["config"]["api_key"],
            format!("sk-{i}")
        );
    }
    let after = vault
        .store()
        .chain_head()
        .await
        .expect("head")
        .map_or(0, |h| h.seq);
    assert_eq!(after - head, 20);
}

/// A master key whose service is down for unwraps.
#[derive(Debug)]
struct Outage(strongroom::LocalKey);

#[async_trait::async_trait]
impl strongroom::KeyWrapper for Outage {
    fn backend_id(&self) -> strongroom::crypto::BackendId {
        self.0.backend_id()
    }
    fn key_id(&self) -> &str {
        self.0.key_id()
    }
    async fn wrap(&self, dek: &strongroom::DataKey, aad: &[u8]) -> strongroom::Result<Vec<u8>> {
        self.0.wrap(dek, aad).await
    }
    async fn unwrap(&self, _: &[u8], _: &[u8]) -> strongroom::Result<strongroom::DataKey> {
        Err(strongroom::Error::KeyUnavailable {
            key_id: "kms:test".into(),
            reason: "no answer from kms.internal:443".into(),
        })
    }
    async fn derive_key(&self, purpose: &str) -> strongroom::Result<strongroom::DataKey> {
        self.0.derive_key(purpose).await
    }
}

#[tokio::test]
async fn a_master_key_outage_keeps_its_kind_and_names_the_block() {
    let vault = Vault::builder()
        .store(std::sync::Arc::new(strongroom::MemoryStore::new()))
        .key_wrapper(std::sync::Arc::new(Outage(
            strongroom::LocalKey::generate().expect("key"),
        )))
        .no_dek_cache()
        .build()
        .await
        .expect("vault");
    let user = Principal::parse("app_user:crm:fay").expect("p");
    let info = vault
        .create(
            &user,
            NewCredential::new(
                "openai_main",
                Scope::per_user("fay").expect("s"),
                "openai",
                "",
                key("sk-fay"),
            ),
        )
        .await
        .expect("create");
    vault
        .grant_add(&user, &info.id, "crm")
        .await
        .expect("grant");
    let config =
        AppConfig::parse("app.yaml", "brain:\n  credential: openai_main\n").expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let err = deployment.start_session("fay").await.expect_err("kms down");
    assert_eq!(err.kind(), strongroom::ErrorKind::KeyUnavailable, "{err}");
    assert!(
        err.to_string()
            .contains("block brain, slot brain_credential"),
        "{err}"
    );
}

/// A config nested as deep as the loader allows, with a credential and a template at the
/// bottom (its scalars at exactly the maximum depth once migrated).
fn deepest_config() -> String {
    let depth = strongroom::config::yaml::MAX_DEPTH - 5;
    let mut yaml = String::new();
    for i in 0..depth {
        yaml.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    let pad = "  ".repeat(depth);
    yaml.push_str(&format!(
        "{pad}brain:\n{pad}  credential: {{ref: openai_main, scope: system_wide}}\n{pad}  config:\n{pad}    api_key: '{{{{env.K}}}}'\n{pad}  other:\n{pad}    provider: openai\n{pad}    config:\n{pad}      api_key: '{{{{env.K}}}}'\n"
    ));
    yaml
}

#[test]
fn the_deepest_config_the_loader_accepts_compiles_migrates_and_injects_on_a_small_stack() {
    let work = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            let yaml = deepest_config();
            let m = strongroom::config::migrate::migrate_text("deep.yaml", &yaml).expect("migrate");
            assert_eq!(m.blocks.len(), 1, "{:?}", m.skipped);
            let config = AppConfig::parse("deep.yaml", m.migrated.as_str()).expect("parse");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let vault = Vault::in_memory().await.expect("vault");
                vault
                    .create(
                        &admin(),
                        NewCredential::new(
                            "openai_main",
                            Scope::SystemWide,
                            "openai",
                            "",
                            key("sk-deep"),
                        ),
                    )
                    .await
                    .expect("create");
                let manifest =
                    compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
                assert_eq!(manifest.entries.len(), 2);
                let deployment = Deployment::new(&vault, manifest).await.expect("deploy");
                let s = deployment.start_session("alice").await;
                assert!(s.is_err(), "the migrated ref is per_user; alice has none");
            });
        })
        .expect("spawn");
    work.join().expect("no stack overflow");
}

fn catalog() -> strongroom::catalog::Catalog {
    strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin())
}

fn blocks_of(yaml: &str) -> Vec<String> {
    let config = AppConfig::parse("app.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &Slots::new(), &catalog()).expect("compiles");
    m.entries.iter().map(|e| e.describe()).collect()
}

fn warnings_of(yaml: &str) -> Vec<String> {
    let config = AppConfig::parse("app.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &Slots::new(), &catalog()).expect("compiles");
    m.warnings.iter().map(|d| d.to_string()).collect()
}

#[test]
fn sequence_items_and_the_root_mapping_are_blocks_named_by_id_name_or_index() {
    let yaml = "\
credential: {ref: root_key, scope: system_wide}
tools:
  - id: t
    provider: openai
    credential: {ref: k1, scope: system_wide}
  - name: search
    credential: k2
  - credential: k3
  - name: dup
    credential: k4
  - name: dup
    credential: k5
spec:
  containers:
    - name: app
      credential: k6
jobs:
  build:
    steps:
      - name: Run tests
        credential: k7
---
credential: k8
";
    assert_eq!(
        blocks_of(yaml),
        [
            "block (root), slot default, ref root_key (system_wide)",
            "block tools[t], slot default, ref k1 (system_wide)",
            "block tools[search], slot default, ref k2 (per_user)",
            "block tools[2], slot default, ref k3 (per_user)",
            "block tools[3], slot default, ref k4 (per_user)",
            "block tools[4], slot default, ref k5 (per_user)",
            "block spec.containers[app], slot default, ref k6 (per_user)",
            "block jobs.build.steps[Run tests], slot default, ref k7 (per_user)",
            "block (document 2) (root), slot default, ref k8 (per_user)",
        ]
    );
    // An invalid credential in a sequence item is an error, not skipped.
    let e = errors_of(
        "tools:\n  - id: t\n    credential: {ref: k, scope: global}\n",
        &Slots::new(),
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("app.yaml:3:") && m.contains("unknown scope `global`")),
        "{e:?}"
    );
    // A slot declared for `tools` applies to its items.
    let required = Slots::new().declare("tools", llm_slot().required(true));
    let e = errors_of("tools:\n  - id: t\n    model: x\n", &required);
    assert!(
        e.iter()
            .any(|m| m.contains("block tools[t] needs a credential")),
        "{e:?}"
    );
}

#[tokio::test]
async fn credentials_are_injected_into_sequence_items_and_the_root_mapping() {
    let vault = seeded().await;
    let yaml = "\
credential: {ref: shared_openai, scope: system_wide, provider: openai}
agents:
  - id: helper
    credential: {ref: shared_openai, scope: system_wide}
    config: {temperature: 0.1}
";
    let config = AppConfig::parse("app.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &Slots::new(), &vault.catalog()).expect("compiles");
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let s = deployment.start_session("alice").await.expect("session");
    let doc = &s.expose()[0];
    assert_eq!(doc["config"]["api_key"], "sk-shared-1");
    assert_eq!(doc["agents"][0]["config"]["api_key"], "sk-shared-1");
    assert_eq!(doc["agents"][0]["config"]["temperature"], 0.1);
    let fields = deployment
        .resolve_slot("alice", "agents[helper]", "default")
        .await
        .expect("by name");
    assert_eq!(fields["api_key"].expose_secret(), "sk-shared-1");
    deployment
        .resolve_slot("alice", "(root)", "default")
        .await
        .expect("the root block");
}

#[test]
fn a_block_the_migrator_writes_into_a_sequence_item_is_then_compiled_and_the_warning_goes() {
    let before = "\
tools:
  - id: t
    provider: openai
    env:
      OPENAI_API_KEY: '{{env.OPENAI_API_KEY}}'
provider: anthropic
config:
  api_key: '{{secret.ANTHROPIC}}'
";
    let w = warnings_of(before);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("app.yaml:5:23: warning: block tools[t] uses"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("app.yaml:8:12: warning: block (root) uses"),
        "{w:?}"
    );
    let m = strongroom::config::migrate::migrate_text("app.yaml", before).expect("migrate");
    assert_eq!(m.blocks, ["tools[t]", "(root)"]);
    assert!(warnings_of(&m.migrated).is_empty());
    assert_eq!(
        blocks_of(&m.migrated),
        [
            "block (root), slot default, ref anthropic_main (per_user)",
            "block tools[t], slot default, ref openai_main (per_user)",
        ]
    );
}

#[test]
fn github_actions_expressions_and_spaced_braces_are_not_templates() {
    use strongroom::config::templates;
    assert_eq!(templates("${{ env.TOKEN }}"), []);
    assert_eq!(templates("${{env.TOKEN}}"), []);
    assert_eq!(templates("${{ secrets.X }} and {{ env.Y }}"), []);
    assert_eq!(templates("{{ .Values.key }}"), []);
    assert_eq!(
        templates("Bearer {{secret.GH_TOKEN}} {{env.A-b.c}} ${{env.NO}} {{{env.Z}}}"),
        [("secret", "GH_TOKEN"), ("env", "A-b.c"), ("env", "Z")]
    );
    let workflow = "\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - name: deploy
        env:
          TOKEN: ${{ secrets.DEPLOY_TOKEN }}
          HOME_DIR: ${{env.HOME}}
        run: ./deploy.sh
";
    assert!(warnings_of(workflow).is_empty());
    let m = strongroom::config::migrate::migrate_text("ci.yml", workflow).expect("migrate");
    assert!(!m.changed(), "{}", m.diff());
}

#[test]
fn a_template_reached_through_an_alias_is_reported_and_migrated_for_its_block() {
    let before = "\
a:
  provider: openai
  config: &c
    api_key: '{{env.K}}'
b:
  provider: anthropic
  config: *c
";
    let w = warnings_of(before);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[1].starts_with("app.yaml:7:11: warning: block b uses inline")
            && w[1].contains("reached through this alias"),
        "{w:?}"
    );
    let m = strongroom::config::migrate::migrate_text("app.yaml", before).expect("migrate");
    assert_eq!(m.blocks, ["a", "b"]);
    assert_eq!(
        m.migrated
            .matches(strongroom::config::migrate::FALLBACK_COMMENT)
            .count(),
        1,
        "one comment on the one template: {}",
        m.migrated
    );
    assert!(warnings_of(&m.migrated).is_empty());
    assert_eq!(blocks_of(&m.migrated).len(), 2);
}

#[test]
fn credentials_and_templates_under_a_non_scalar_key_are_reported() {
    let e = errors_of("? [x]\n: brain:\n    credential: k\n", &Slots::new());
    assert!(
        e.iter()
            .any(|m| m.starts_with("app.yaml:1:3: error:") && m.contains("not a scalar")),
        "{e:?}"
    );
    let w = warnings_of("? {a: 1}\n: config:\n    api_key: '{{env.K}}'\n");
    assert!(
        w.iter()
            .any(|m| m.starts_with("app.yaml:1:3: warning:") && m.contains("not a scalar")),
        "{w:?}"
    );
    let m = strongroom::config::migrate::migrate_text(
        "app.yaml",
        "? [x]\n: config:\n    api_key: '{{env.K}}'\n",
    )
    .expect("migrate");
    assert!(!m.changed());
    assert!(
        m.skipped[0].message.contains("not a scalar"),
        "{:?}",
        m.skipped
    );
}

#[tokio::test]
async fn merge_keys_are_the_merging_mappings_own_keys_in_names_and_injection() {
    let vault = seeded().await;
    let yaml = "\
defaults: &defaults
  provider: openai
  credential: {ref: shared_openai, scope: system_wide}
  config: {temperature: 0.5}
agents:
  - id: a
    brain:
      <<: *defaults
      model: gpt-4o
";
    let config = AppConfig::parse("app.yaml", yaml).expect("parse");
    let m = compile("crm", &config, &slots(), &vault.catalog()).expect("compiles");
    let names: Vec<String> = m.entries.iter().map(|e| e.block.to_string()).collect();
    assert_eq!(names, ["defaults", "agents[a].brain"]);
    let deployment = Deployment::new(&vault, m).await.expect("deploy");
    let s = deployment.start_session("alice").await.expect("session");
    let brain = &s.expose()[0]["agents"][0]["brain"];
    assert_eq!(brain["config"]["api_key"], "sk-shared-1");
    assert_eq!(brain["config"]["temperature"], 0.5);
    assert_eq!(brain["model"], "gpt-4o");
    assert!(brain.get("<<").is_none(), "{brain}");

    let w = warnings_of(
        "base: &b\n  provider: openai\n  config:\n    api_key: '{{env.K}}'\nbrain:\n  <<: *b\n",
    );
    assert!(w.iter().all(|m| !m.contains("<<")), "{w:?}");
    assert!(w.iter().any(|m| m.contains("block brain uses")), "{w:?}");
}
