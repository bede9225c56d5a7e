//! The template migrator: round trips that keep every byte outside the inserted lines,
//! idempotence, and files it cannot parse left untouched.

use std::path::Path;

use strongroom::config::migrate::{migrate_file, migrate_text, FileOutcome, FALLBACK_COMMENT};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/yaml")
            .join(name),
    )
    .expect("fixture")
}

/// The migrated text with the inserted lines and comments taken out again.
fn without_insertions(migrated: &str) -> String {
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    for line in migrated.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skipping {
            if indent > level && !line.trim().is_empty() {
                continue;
            }
            skipping = None;
        }
        if line.trim_start().starts_with("credential:") {
            skipping = Some(indent);
            continue;
        }
        out.push_str(&line.replace(&format!("  {FALLBACK_COMMENT}"), ""));
    }
    out
}

#[test]
fn the_documents_example_migrates_as_shown() {
    let before = "brain:\n  provider: deepseek\n  backend: openai_compat\n  config:\n    api_key: \"{{env.DEEPSEEK_API_KEY}}\"\n";
    let m = migrate_text("app.yaml", before).expect("migrate");
    assert_eq!(
        m.migrated,
        "brain:\n  provider: deepseek\n  backend: openai_compat\n  credential:\n    ref: deepseek_main\n    scope: per_user\n    provider: deepseek\n  config:\n    api_key: \"{{env.DEEPSEEK_API_KEY}}\"  # dev-only fallback\n"
    );
    assert_eq!(m.blocks, vec!["brain".to_string()]);
    let diff = m.diff();
    assert!(diff.contains("+  credential:"), "{diff}");
    assert!(diff.starts_with("--- a/app.yaml"), "{diff}");
}

#[test]
fn a_file_with_comments_anchors_documents_and_odd_quoting_keeps_every_other_byte() {
    let before = fixture("legacy_app.yaml");
    let m = migrate_text("legacy_app.yaml", &before).expect("migrate");
    println!("{}", m.migrated);
    assert!(m.changed());
    assert_eq!(without_insertions(&m.migrated), before);
    // The aliased brain is migrated once, through its anchor; the flow-style config is
    // inside a block-style brain, so it migrates.
    assert_eq!(
        m.blocks,
        vec![
            "agents[assistant].brain",
            "agents[researcher].brain",
            "tools[0].mcp",
            "(document 2) webhook.signing",
        ]
    );
    assert!(m.migrated.contains("      credential:\n        ref: openai_main\n        scope: per_user\n        provider: openai\n      config: {api_key: '{{secret.OPENAI_KEY}}'}"), "{}", m.migrated);
    assert!(
        m.migrated.contains("      # keys for the model\n"),
        "comment kept"
    );
    // It parses, and a second run changes nothing.
    let again = migrate_text("legacy_app.yaml", &m.migrated).expect("migrate again");
    assert!(!again.changed(), "{}", again.diff());
}

#[test]
fn crlf_files_stay_crlf() {
    let before =
        "brain:\r\n  provider: openai\r\n  config:\r\n    api_key: '{{env.OPENAI_API_KEY}}'\r\n";
    let m = migrate_text("w.yaml", before).expect("migrate");
    assert!(
        m.migrated
            .contains("  credential:\r\n    ref: openai_main\r\n"),
        "{:?}",
        m.migrated
    );
    assert!(
        !m.migrated.replace("\r\n", "").contains('\n'),
        "{:?}",
        m.migrated
    );
    assert!(!migrate_text("w.yaml", &m.migrated)
        .expect("again")
        .changed());
}

#[test]
fn flow_blocks_are_reported_not_rewritten() {
    let before =
        "agents:\n  - id: a\n    brain: {provider: openai, config: {api_key: '{{env.K}}'}}\n";
    let m = migrate_text("f.yaml", before).expect("migrate");
    assert!(!m.changed());
    assert_eq!(m.skipped.len(), 1);
    assert!(
        m.skipped[0].message.contains("flow style"),
        "{}",
        m.skipped[0]
    );
    assert_eq!(m.skipped[0].line, 3);
}

#[test]
fn blocks_with_a_credential_and_files_without_templates_are_left_alone() {
    for text in [
        "brain:\n  provider: openai\n  credential: openai_main\n  config:\n    api_key: '{{env.K}}'\n",
        "brain:\n  provider: openai\n  model: gpt-4o\n",
        "",
        "# only a comment\n",
    ] {
        let m = migrate_text("x.yaml", text).expect("migrate");
        assert!(!m.changed(), "{text:?}: {}", m.diff());
    }
}

#[test]
fn an_unparseable_file_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = "brain:\n  provider: openai\n  config: [unclosed\n    api_key: '{{env.K}}'\n";
    std::fs::write(&bad, text).expect("write");
    match migrate_file(&bad, true) {
        FileOutcome::Failed(message) => {
            assert!(message.contains("bad.yaml:"), "{message}");
            assert!(message.contains("left unchanged"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&bad).expect("read"), text);

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "brain:\n  provider: openai\n  config:\n    api_key: '{{env.K}}'\n",
    )
    .expect("write");
    assert!(matches!(migrate_file(&good, true), FileOutcome::Changed(_)));
    assert!(std::fs::read_to_string(&good)
        .expect("read")
        .contains("credential:"));
    assert!(matches!(
        migrate_file(&good, true),
        FileOutcome::Unchanged(_)
    ));
}
