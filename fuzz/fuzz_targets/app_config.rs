//! App-config YAML: any text as an app config. `AppConfig::parse` (the YAML reader),
//! `templates`, `compile` against declared slots and the bundled catalog, and for a config
//! that compiles, a deployment on an in-memory vault and a session start (the injector
//! writes credential fields into the tree at the slots' paths). Checks: no panic, and the
//! credentials' values never appear in the masked config, errors or `Debug` output (unless
//! the input itself holds them: errors quote the config's refs, which is no leak).
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strongroom::catalog::Catalog;
use strongroom::config::{compile, templates, AppConfig, CredentialSlot, Deployment, Slots};
use strongroom::handlers::HandlerRegistry;
use strongroom::{NewCredential, Principal, Scope, ScopeKind, SecretString, Vault};
use strongroom_fuzz::{assert_no_secret, block_on};

const SHARED: &str = "sk-FUZZCANARY-shared-4b1d";
const TEAM: &str = "sk-ant-FUZZCANARY-team-9c2e";
const ALICE: &str = "sk-FUZZCANARY-alice-77aa";

fn key(v: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(v.to_string()))])
}

fn slots() -> Slots {
    let llm = CredentialSlot::new("brain_credential", "LLM provider credential")
        .handler_types(["api_key", "bearer_token", "oauth2"])
        .providers(["openai", "anthropic", "deepseek"])
        .scopes_preferred([ScopeKind::PerUser, ScopeKind::SystemWide])
        .inject("api_key", "{block}.config.api_key")
        .inject("organization", "{block}.config.organization")
        .inject("base_url", "{block}.config.base_url");
    let tool = CredentialSlot::new("tool_credential", "Tool token")
        .inject("api_key", "{block}.env.TOKEN")
        .inject("token", "{block}.env.TOKEN");
    Slots::new()
        .declare("brain", llm)
        .declare("tools", tool.clone())
        .declare("mcp", tool)
}

/// A vault with a shared, a per-app and a per-user credential; replaced every 5,000 inputs
/// so that its audit log (in memory) stays small.
struct World {
    vault: Vault,
    uses: u32,
}

async fn world() -> World {
    let vault = Vault::in_memory().await.expect("vault");
    let admin = Principal::parse("system_admin:root").expect("principal");
    let creds = [
        (&admin, "shared_openai", Scope::SystemWide, "openai", SHARED),
        (
            &Principal::parse("app_admin:crm:adm").expect("principal"),
            "team_key",
            Scope::per_app_shared("crm").expect("scope"),
            "anthropic",
            TEAM,
        ),
    ];
    for (who, name, scope, provider, value) in creds {
        vault
            .create(
                who,
                NewCredential::new(name, scope, provider, "", key(value)),
            )
            .await
            .expect("credential");
    }
    let alice = Principal::parse("app_user:crm:alice").expect("principal");
    let info = vault
        .create(
            &alice,
            NewCredential::new(
                "openai_main",
                Scope::per_user("alice").expect("scope"),
                "openai",
                "",
                key(ALICE),
            ),
        )
        .await
        .expect("credential");
    vault
        .grant_add(&alice, &info.id, "crm")
        .await
        .expect("grant");
    World { vault, uses: 0 }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
    static CATALOG: Catalog = Catalog::bundled(&HandlerRegistry::builtin());
    static SLOTS: Slots = slots();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let canaries: Vec<&str> = [SHARED, TEAM, ALICE]
        .into_iter()
        .filter(|c| !text.contains(&c[c.len() - 10..]))
        .collect();
    let canaries = canaries.as_slice();
    let _ = templates(text);
    let config = match AppConfig::parse("fuzz.yaml", text) {
        Ok(config) => config,
        Err(e) => {
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
            return;
        }
    };
    let compiled =
        CATALOG.with(|catalog| SLOTS.with(|slots| compile("crm", &config, slots, catalog)));
    let manifest = match compiled {
        Ok(manifest) => manifest,
        Err(errors) => {
            let _ = errors.to_string();
            return;
        }
    };
    let vault = WORLD.with(|w| {
        let mut w = w.borrow_mut();
        if w.as_ref().is_none_or(|w| w.uses >= 5_000) {
            *w = Some(block_on(world()));
        }
        let world = w.as_mut().expect("world");
        world.uses += 1;
        world.vault.clone()
    });
    block_on(async {
        let deployment = match Deployment::new(&vault, manifest).await {
            Ok(d) => d,
            Err(e) => {
                assert_no_secret(&e.to_string(), canaries);
                return;
            }
        };
        assert_no_secret(&format!("{deployment:?}"), canaries);
        match deployment.start_session("alice").await {
            Ok(session) => {
                assert_no_secret(&format!("{session:?}"), canaries);
                let masked = serde_json::to_string(&session.masked()).expect("json");
                assert_no_secret(&masked, canaries);
            }
            Err(e) => assert_no_secret(&e.to_string(), canaries),
        }
    });
});
