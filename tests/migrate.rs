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

/// A small seeded generator (xorshift64*), so every run checks the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// One generated app config: its text and how many blocks are written in flow style.
struct Generated {
    text: String,
    flow_blocks: usize,
}

/// An app config in one of several YAML styles: block mappings indented by 2 or 4, agents
/// and tools as sequence items, a root-level block, flow-style configs and whole flow
/// blocks, anchors with aliases and merge keys, explicit `? key`s, comments, every scalar
/// style, GitHub Actions expressions, several documents, CRLF line ends and a byte order
/// mark.
fn generate(rng: &mut Rng) -> Generated {
    let u = if rng.chance(30) { "    " } else { "  " };
    let mut flow_blocks = 0;
    let mut n = 0;
    let template = |rng: &mut Rng, n: &mut usize| -> String {
        *n += 1;
        let kind = rng.pick(&["env", "secret"]);
        let name = format!("KEY_{n}");
        match rng.below(5) {
            0 => format!("'{{{{{kind}.{name}}}}}'"),
            1 => format!("\"{{{{{kind}.{name}}}}}\""),
            2 => format!("Bearer {{{{{kind}.{name}}}}}"),
            3 => format!("\"pre-{{{{{kind}.{name}}}}}-post\""),
            _ => format!("'{{{{{kind}.{name}}}}}' # old comment"),
        }
    };
    let providers = ["openai", "anthropic", "deepseek", "stripe"];
    let docs = 1 + rng.below(3);
    let mut out = Vec::new();
    for d in 0..docs {
        let mut doc = String::new();
        if rng.chance(20) {
            doc.push_str("# an app config\n");
        }
        if rng.chance(15) {
            // A root-level block.
            let p = rng.pick(&providers);
            doc.push_str(&format!(
                "provider: {p}\nconfig:\n{u}api_key: {}\n",
                template(rng, &mut n)
            ));
        }
        let mut anchors = Vec::new();
        for b in 0..1 + rng.below(4) {
            let p = rng.pick(&providers);
            let name = format!("block{d}_{b}");
            let t = template(rng, &mut n);
            match rng.below(10) {
                0 => {
                    // A whole flow block (reported, not rewritten).
                    flow_blocks += 1;
                    let anchor = if rng.chance(50) {
                        format!("&f{d}{b} ")
                    } else {
                        String::new()
                    };
                    doc.push_str(&format!(
                        "{name}: {anchor}{{provider: {p}, config: {{api_key: '{{{{env.F{d}{b}}}}}'}}}}\n"
                    ));
                }
                1 => {
                    // Agents: the brain of a sequence item.
                    doc.push_str(&format!(
                        "{name}:\n{u}- id: agent{d}{b}\n{u}  brain:\n{u}  {u}provider: {p}\n{u}  {u}config:\n{u}  {u}{u}api_key: {t}\n"
                    ));
                }
                2 => {
                    // Tools: the sequence item is the block.
                    doc.push_str(&format!(
                        "{name}:\n{u}- name: tool{d}{b}\n{u}  provider: {p}\n{u}  env:\n{u}  {u}TOKEN: {t}\n{u}  {u}CI: ${{{{ secrets.CI }}}}\n"
                    ));
                }
                3 => {
                    // An anchored block and an alias to it.
                    anchors.push(name.clone());
                    doc.push_str(&format!(
                        "{name}: &{name}\n{u}provider: {p}\n{u}config: {{api_key: '{{{{env.A{d}{b}}}}}'}}\n"
                    ));
                }
                4 if !anchors.is_empty() => {
                    let target = anchors[rng.below(anchors.len())].clone();
                    if rng.chance(50) {
                        doc.push_str(&format!("{name}: *{target}\n"));
                    } else {
                        doc.push_str(&format!("{name}:\n{u}<<: *{target}\n{u}model: m{b}\n"));
                    }
                }
                5 => {
                    // An explicit key, and a comment above the config.
                    doc.push_str(&format!(
                        "{name}:\n{u}provider: {p}\n{u}# the key\n{u}? config\n{u}: api_key: {t}\n"
                    ));
                }
                6 => {
                    // A folded block scalar, and a config anchored for a later alias.
                    doc.push_str(&format!(
                        "{name}:\n{u}provider: {p}\n{u}config: &c{d}{b}\n{u}{u}api_key: >-\n{u}{u}{u}{{{{env.FOLDED{d}{b}}}}}\n"
                    ));
                    doc.push_str(&format!(
                        "{name}_copy:\n{u}provider: {p}\n{u}config: *c{d}{b}\n"
                    ));
                }
                7 => {
                    // Already migrated: left alone.
                    doc.push_str(&format!(
                        "{name}:\n{u}provider: {p}\n{u}credential: {{ref: {p}_main, scope: per_user}}\n{u}config:\n{u}{u}api_key: {t}\n"
                    ));
                }
                _ => {
                    doc.push_str(&format!(
                        "{name}:\n{u}provider: {p}\n{u}model: \"m-{b}\"\n{u}config:\n{u}{u}api_key: {t}\n{u}{u}temperature: 0.{b}\n"
                    ));
                }
            }
        }
        out.push(doc);
    }
    let mut text = String::new();
    for (i, doc) in out.iter().enumerate() {
        if i > 0 || rng.chance(20) {
            text.push_str(if i > 0 && rng.chance(30) {
                "...\n---\n"
            } else {
                "---\n"
            });
        }
        text.push_str(doc);
    }
    if rng.chance(20) {
        text = text.replace('\n', "\r\n");
    }
    if rng.chance(15) {
        text.insert(0, '\u{feff}');
    }
    if rng.chance(10) {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Generated { text, flow_blocks }
}

/// Whether `migrated` holds `original`'s data plus only `credential:` mappings
/// (`{ref, scope: per_user, provider?}`) added to mappings that had none; the number added.
fn same_plus_credentials(
    original: &strongroom::config::yaml::Node,
    migrated: &strongroom::config::yaml::Node,
) -> Result<usize, String> {
    use strongroom::config::yaml::Value;
    match (&original.value, &migrated.value) {
        (Value::Scalar(a, sa), Value::Scalar(b, sb)) if a == b && sa == sb => Ok(0),
        (Value::Seq(a), Value::Seq(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .map(|(x, y)| same_plus_credentials(x, y))
            .sum(),
        (Value::Map(a), Value::Map(b)) => {
            let had = a.iter().any(|(k, _)| k.as_str() == Some("credential"));
            let mut added = 0;
            let kept: Vec<_> = b
                .iter()
                .filter(|(k, v)| {
                    let new = !had && k.as_str() == Some("credential");
                    if new {
                        added += 1;
                        assert_eq!(v.get("scope").and_then(|s| s.as_str()), Some("per_user"));
                        assert!(v.get("ref").is_some());
                    }
                    !new
                })
                .collect();
            if added > 1 || kept.len() != a.len() {
                return Err(format!("mapping at line {} changed", original.start.line));
            }
            let mut total = added;
            for ((ka, va), (kb, vb)) in a.iter().zip(kept) {
                total += same_plus_credentials(ka, kb)?;
                total += same_plus_credentials(va, vb)?;
            }
            Ok(total)
        }
        _ => Err(format!("node at line {} changed", original.start.line)),
    }
}

/// `migrated` is `original` with whole `credential:` blocks and fallback comments inserted:
/// nothing else changed, the line ends kept.
fn only_insertions(original: &str, migrated: &str) {
    let crlf = original.contains("\r\n");
    if crlf {
        assert!(!migrated.replace("\r\n", "").contains('\n'), "{migrated:?}");
    }
    let strip = |t: &str| -> String {
        t.trim_start_matches('\u{feff}')
            .replace(&format!("  {FALLBACK_COMMENT}"), "")
            .replace('\r', "")
    };
    assert_eq!(
        original.starts_with('\u{feff}'),
        migrated.starts_with('\u{feff}')
    );
    let (o, m) = (strip(original), strip(migrated));
    let o: Vec<&str> = o.lines().collect();
    let m: Vec<&str> = m.lines().collect();
    let mut i = 0;
    let mut j = 0;
    while j < m.len() {
        if i < o.len() && o[i] == m[j] {
            i += 1;
            j += 1;
            continue;
        }
        // An inserted block: `credential:`, then ref, scope and maybe provider, deeper.
        let indent = m[j].len() - m[j].trim_start().len();
        assert_eq!(
            m[j].trim_start(),
            "credential:",
            "line {}: {migrated}",
            j + 1
        );
        j += 1;
        let mut seen = Vec::new();
        while j < m.len() && m[j].len() - m[j].trim_start().len() > indent {
            let key = m[j].trim_start().split(':').next().unwrap_or("");
            if !matches!(key, "ref" | "scope" | "provider") || seen.contains(&key) {
                break;
            }
            seen.push(key);
            j += 1;
        }
        assert!(seen.starts_with(&["ref", "scope"]), "{migrated}");
    }
    assert_eq!(i, o.len(), "every original line is kept:\n{migrated}");
}

#[test]
fn generated_app_configs_in_many_styles_migrate_to_the_same_data_plus_checked_blocks() {
    use strongroom::config::{compile, AppConfig, Slots};
    let catalog =
        strongroom::catalog::Catalog::bundled(&strongroom::handlers::HandlerRegistry::builtin());
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut migrated_blocks = 0;
    let (mut crlf, mut bom, mut documents) = (0, 0, 0);
    for case in 0..400 {
        let g = generate(&mut rng);
        let text = &g.text;
        crlf += usize::from(text.contains("\r\n"));
        bom += usize::from(text.starts_with('\u{feff}'));
        documents += usize::from(text.contains("---"));
        let m =
            migrate_text("gen.yaml", text).unwrap_or_else(|e| panic!("case {case}: {e}\n{text}"));
        // Refusals are for flow blocks only.
        let flow_skips = m
            .skipped
            .iter()
            .filter(|d| d.message.contains("flow style"))
            .count();
        assert_eq!(
            flow_skips,
            m.skipped.len(),
            "case {case}: {:?}\n{text}",
            m.skipped
        );
        assert!(flow_skips <= g.flow_blocks, "case {case}");
        // Pure insertions; the result parses and holds the same data plus the blocks.
        only_insertions(text, &m.migrated);
        let before = strongroom::config::yaml::parse("gen.yaml", text).expect("parses");
        let after = strongroom::config::yaml::parse("gen.yaml", &m.migrated)
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{}", m.migrated));
        assert_eq!(before.len(), after.len());
        let added: usize = before
            .iter()
            .zip(&after)
            .map(|(a, b)| same_plus_credentials(a, b))
            .sum::<Result<usize, String>>()
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{text}\n{}", m.migrated));
        assert_eq!(added > 0, m.changed(), "case {case}");
        // The diff applies.
        assert_eq!(apply_diff(text, &m.diff()), m.migrated, "case {case}");
        // `yaml check` lists every migrated block, and only flow blocks still warn.
        let config = AppConfig::parse("gen.yaml", m.migrated.as_str()).expect("parse");
        let manifest = compile("app", &config, &Slots::new(), &catalog)
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{}", m.migrated));
        let listed: Vec<String> = manifest
            .entries
            .iter()
            .map(|e| e.block.to_string())
            .collect();
        for block in &m.blocks {
            assert!(
                listed.contains(block),
                "case {case}: {block} not in {listed:?}"
            );
        }
        let template_warnings = manifest
            .warnings
            .iter()
            .filter(|w| w.message.contains("inline"))
            .count();
        assert_eq!(
            template_warnings, flow_skips,
            "case {case}: {:?}",
            manifest.warnings
        );
        // A second run changes nothing.
        let again = migrate_text("gen.yaml", &m.migrated).expect("again");
        assert!(!again.changed(), "case {case}: {}", again.diff());
        migrated_blocks += m.blocks.len();
    }
    assert!(migrated_blocks > 400, "{migrated_blocks}");
    assert!(
        crlf > 40 && bom > 30 && documents > 200,
        "{crlf} {bom} {documents}"
    );
}
