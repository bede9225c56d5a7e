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
            "tools[github].mcp",
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

/// Applies a unified diff to `original` (checking every context and removed line).
fn apply_diff(original: &str, diff: &str) -> String {
    let old: Vec<&str> = original.split_inclusive('\n').collect();
    let lines: Vec<&str> = diff.split('\n').collect();
    let mut out = String::new();
    let mut next = 0; // the next old line to copy
    let mut i = 0;
    while i < lines.len() && !lines[i].starts_with("@@") {
        i += 1;
    }
    while i < lines.len() {
        let header = lines[i];
        if header.is_empty() {
            break;
        }
        assert!(header.starts_with("@@ -"), "hunk header: {header:?}");
        let old_start: usize = header[4..]
            .split([',', ' '])
            .next()
            .and_then(|n| n.parse().ok())
            .expect("old start");
        let hunk_old_len: usize = header[4..]
            .split(' ')
            .next()
            .and_then(|r| r.split_once(',').map_or(Some(1), |(_, l)| l.parse().ok()))
            .expect("old length");
        let first = if hunk_old_len == 0 {
            old_start
        } else {
            old_start - 1
        };
        while next < first {
            out.push_str(old[next]);
            next += 1;
        }
        i += 1;
        while i < lines.len() && !lines[i].starts_with("@@") && !lines[i].is_empty() {
            let mut text = format!("{}\n", &lines[i][1..]);
            if lines.get(i + 1) == Some(&"\\ No newline at end of file") {
                text.pop();
            }
            match lines[i].as_bytes()[0] {
                b' ' | b'-' => {
                    assert_eq!(old[next], text, "line {} of the original", next + 1);
                    if lines[i].starts_with(' ') {
                        out.push_str(&text);
                    }
                    next += 1;
                }
                b'+' => out.push_str(&text),
                other => panic!("diff line {:?} ({other})", lines[i]),
            }
            i += 1;
            if lines.get(i) == Some(&"\\ No newline at end of file") {
                i += 1;
            }
        }
    }
    for line in &old[next..] {
        out.push_str(line);
    }
    out
}

#[test]
fn anchored_or_tagged_flow_collections_are_reported_not_broken() {
    for before in [
        "brain: &b {\n  provider: openai,\n  config: {api_key: '{{env.K}}'}\n}\n",
        "brain: !!map {\n  provider: openai,\n  config: {api_key: '{{env.K}}'}\n}\n",
        "brain: &b\n  {provider: openai, config: {api_key: '{{env.K}}'}}\n",
        "brain: &b {provider: openai, config: {api_key: '{{env.K}}'}}\n",
        "tools: &t [\n  provider: openai,\n  {config: {api_key: '{{env.K}}'}}\n]\n",
        "tools: !!seq [\n  {provider: openai,\n   config: {api_key: '{{env.K}}'}}\n]\n",
    ] {
        let m = migrate_text("f.yaml", before).expect("migrate");
        assert!(!m.changed(), "{before}\n{}", m.migrated);
        assert!(
            m.skipped.iter().all(|d| d.message.contains("flow style")),
            "{before}: {:?}",
            m.skipped
        );
        assert!(!m.skipped.is_empty(), "{before}");
    }
}

#[test]
fn explicit_keys_single_key_items_and_a_byte_order_mark_get_a_line_to_insert_before() {
    let cases = [
        (
            "brain:\n  provider: openai\n  ? config\n  : api_key: '{{env.K}}'\n",
            "brain:\n  provider: openai\n  credential:\n    ref: openai_main\n    scope: per_user\n    provider: openai\n  ? config\n  : api_key: '{{env.K}}'  # dev-only fallback\n",
        ),
        (
            "brain:\n  ? config\n  : api_key: '{{env.K}}'\n",
            "brain:\n  credential:\n    ref: k\n    scope: per_user\n  ? config\n  : api_key: '{{env.K}}'  # dev-only fallback\n",
        ),
        (
            "tools:\n  - env: {K: '{{env.K}}'}\n  - env: {K: '{{env.J}}'}\n",
            "tools:\n  - env: {K: '{{env.K}}'}\n    credential:\n      ref: k\n      scope: per_user\n  - env: {K: '{{env.J}}'}\n    credential:\n      ref: j\n      scope: per_user\n",
        ),
        (
            "tools:\n  - env: {K: '{{env.K}}'}",
            "tools:\n  - env: {K: '{{env.K}}'}\n    credential:\n      ref: k\n      scope: per_user",
        ),
        (
            "\u{feff}config:\n  api_key: '{{env.K}}'\nprovider: openai\n",
            "\u{feff}credential:\n  ref: openai_main\n  scope: per_user\n  provider: openai\nconfig:\n  api_key: '{{env.K}}'  # dev-only fallback\nprovider: openai\n",
        ),
    ];
    for (before, after) in cases {
        let m = migrate_text("x.yaml", before).expect("migrate");
        assert!(m.skipped.is_empty(), "{before}: {:?}", m.skipped);
        assert_eq!(m.migrated, after, "{before}");
        assert_eq!(apply_diff(before, &m.diff()), after, "{}", m.diff());
        assert!(!migrate_text("x.yaml", after).expect("again").changed());
    }
}

#[test]
fn diff_headers_name_relative_paths_cleanly_and_absolute_paths_as_they_are() {
    let text = "brain:\n  provider: openai\n  config:\n    api_key: '{{env.K}}'\n";
    let header = |file: &str| {
        let diff = migrate_text(file, text).expect("migrate").diff();
        diff.lines().take(2).map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        header("./apps/app.yaml"),
        ["--- a/apps/app.yaml", "+++ b/apps/app.yaml"]
    );
    assert_eq!(
        header("apps/./x/app.yaml"),
        ["--- a/apps/x/app.yaml", "+++ b/apps/x/app.yaml"]
    );
    assert_eq!(
        header("/srv/apps/app.yaml"),
        ["--- /srv/apps/app.yaml", "+++ /srv/apps/app.yaml"]
    );
}

#[test]
fn the_diff_is_a_minimal_unified_diff_that_applies() {
    let before = fixture("legacy_app.yaml");
    let m = migrate_text("legacy_app.yaml", &before).expect("migrate");
    let ours = m.diff();
    assert_eq!(apply_diff(&before, &ours), m.migrated);
    // The same hunks a general line diff finds.
    let general = similar::TextDiff::from_lines(&before, &m.migrated)
        .unified_diff()
        .context_radius(3)
        .header("a/legacy_app.yaml", "b/legacy_app.yaml")
        .to_string();
    assert_eq!(ours, general);
    // Far-apart changes make separate hunks; a missing final line break is marked.
    let mut text: String = (0..30).map(|i| format!("k{i}: v\n")).collect();
    text.push_str("brain:\n  provider: openai\n  config:\n    api_key: '{{env.K}}'");
    let text = format!("a:\n  provider: x\n  config:\n    api_key: '{{{{env.A}}}}'\n{text}");
    let m = migrate_text("t.yaml", &text).expect("migrate");
    let diff = m.diff();
    assert_eq!(diff.matches("\n@@ ").count(), 2, "{diff}");
    assert!(diff.contains("\\ No newline at end of file"), "{diff}");
    assert_eq!(apply_diff(&text, &diff), m.migrated);
}
