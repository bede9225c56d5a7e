use super::*;

#[test]
fn positions_are_lines_columns_and_byte_offsets() {
    let text = "# é\nagents:\n  - id: a\n    brain: {provider: \"x\"}\n";
    let docs = parse("app.yaml", text).expect("parse");
    let agents = docs[0].get("agents").expect("agents");
    let Value::Seq(items) = &agents.value else {
        panic!("seq")
    };
    let brain = items[0].get("brain").expect("brain");
    assert!(brain.flow);
    let provider = brain.get("provider").expect("provider");
    assert_eq!(provider.as_str(), Some("x"));
    assert_eq!(provider.start.line, 4);
    assert_eq!(&text[provider.start.offset..provider.end.offset], "\"x\"");
}

#[test]
fn quoted_scalars_and_flow_collections_end_at_their_closing_character() {
    let text =
        "a: 'it''s' # c\nb: \"q\\\"x\"   # c\nc: {k: v}  # c\nd: [1, 2] # c\ne: &x 'y' # c\n";
    let docs = parse("e.yaml", text).expect("parse");
    for (key, want) in [
        ("a", "'it''s'"),
        ("b", "\"q\\\"x\""),
        ("c", "{k: v}"),
        ("d", "[1, 2]"),
        ("e", "&x 'y'"),
    ] {
        let v = docs[0].get(key).expect(key);
        assert_eq!(&text[v.start.offset..v.end.offset], want, "{key}");
        assert_eq!(v.end.line, v.start.line, "{key}");
        assert_eq!(v.end.column, v.start.column + want.len(), "{key}");
    }
}

#[test]
fn errors_name_file_line_and_column() {
    let err = parse("bad.yaml", "a: 1\nb: [1, 2\n").expect_err("bad");
    assert_eq!(err.file, "bad.yaml");
    assert!(err.line >= 2, "{err}");
    assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
}

#[test]
fn aliases_expand_and_bombs_are_refused() {
    let docs = parse("a.yaml", "x: &a {k: v}\ny: *a\n").expect("parse");
    assert!(docs[0].get("y").expect("y").alias.is_some());
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let err = parse("bomb.yaml", &bomb).expect_err("bomb");
    assert!(err.message.contains("million"), "{err}");
}

#[test]
fn nesting_past_the_cap_is_an_error_naming_the_place_not_a_stack_overflow() {
    // 15 KB of `- ` (the crash in the issue), a block mapping nested 3,000 deep, and a
    // flow sequence nested 10,000 deep.
    let seqs = format!("{}x\n", "- ".repeat(7_400));
    let err = parse("deep.yaml", &seqs).expect_err("too deep");
    assert_eq!((err.file.as_str(), err.line), ("deep.yaml", 1), "{err}");
    assert_eq!(err.column, 2 * MAX_DEPTH + 1, "{err}");
    assert!(err.message.contains("deeper than 128 levels"), "{err}");
    let maps: String = (0..3_000)
        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
        .collect();
    let err =
        parse("maps.yaml", &format!("{maps}{}x: 1\n", "  ".repeat(3_000))).expect_err("too deep");
    assert_eq!(err.line, MAX_DEPTH, "{err}");
    let flows = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse("flow.yaml", &flows).is_err());
    // At the cap it loads.
    let at_cap = format!("{}x\n", "- ".repeat(MAX_DEPTH - 1));
    assert_eq!(parse("ok.yaml", &at_cap).expect("at the cap").len(), 1);
}

#[test]
fn aliases_count_towards_the_nesting_cap() {
    let text = format!(
        "a: &a {}{}\nb: {}*a{}\n",
        "[".repeat(120),
        "]".repeat(120),
        "[".repeat(8),
        "]".repeat(8)
    );
    let err = parse("alias.yaml", &text).expect_err("too deep through aliases");
    assert!(err.message.contains("through this alias"), "{err}");
    assert_eq!((err.line, err.column), (2, 12), "{err}");
    let fits = format!("a: &a {}{}\nb: [*a]\n", "[".repeat(120), "]".repeat(120));
    assert!(parse("alias.yaml", &fits).is_ok());
}

#[test]
fn flow_style_is_seen_past_anchors_tags_and_line_breaks() {
    let text = "a: &x {\n  k: v\n}\nb: !!map {k: v}\nc: &y\n  {k: v}\nd: &s [\n  k: v,\n  {m: n}\n]\ne: &z\n  k: v\nf: !!seq\n  - 1\n";
    let docs = parse("f.yaml", text).expect("parse");
    let root = &docs[0];
    for key in ["a", "b", "c", "d"] {
        assert!(root.get(key).expect(key).flow, "{key}");
    }
    let Value::Seq(items) = &root.get("d").expect("d").value else {
        panic!("seq")
    };
    assert!(
        items.iter().all(|i| i.flow),
        "a pair in a flow sequence is flow"
    );
    assert!(!root.get("e").expect("e").flow);
    assert!(!root.get("f").expect("f").flow);
    assert_eq!(
        root.get("b").expect("b").tag.as_deref(),
        Some("tag:yaml.org,2002:map")
    );
}

#[test]
fn empty_block_scalars_with_an_indicator_before_a_document_marker_parse() {
    for (text, value) in [
        ("--- |1\n---\n", ""),
        ("--- >1-\n...\n", ""),
        ("--- |\n \n---\n", ""),
        ("--- |2+\n\n\n---\n", "\n\n"),
        ("--- !t &a |1 # note\n\n---\n", ""),
    ] {
        let docs = parse("s.yaml", text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(docs[0].as_str(), Some(value), "{text:?}");
        assert_eq!(docs[0].value, Value::Scalar(value.into(), Style::Block));
    }
    // Positions after the patched lines are the original text's.
    let text = "--- |2\n  \n---\nkey: '{{env.K}}'\n";
    let docs = parse("s.yaml", text).expect("parse");
    let v = docs[1].get("key").expect("key");
    assert_eq!((v.start.line, v.start.column), (4, 6));
    assert_eq!(&text[v.start.offset..v.end.offset], "'{{env.K}}'");
    // A real indentation error is still one.
    let err = parse("s.yaml", "a:\n  - |2\n x\n").expect_err("bad");
    assert!(err.to_string().starts_with("s.yaml:3:"), "{err}");
}

#[test]
fn merge_keys_are_applied_by_lookups() {
    let text = "base: &b {provider: openai, model: x}\nbrain:\n  <<: *b\n  model: y\n";
    let docs = parse("m.yaml", text).expect("parse");
    let brain = docs[0].get("brain").expect("brain");
    assert_eq!(brain.get("provider").and_then(Node::as_str), Some("openai"));
    assert_eq!(brain.get("model").and_then(Node::as_str), Some("y"));
    let keys: Vec<_> = brain
        .merged_entries()
        .iter()
        .map(|e| e.key.as_str().unwrap_or("?"))
        .collect();
    assert_eq!(keys, ["model", "provider"]);
}
