//! Every handler's validation (the 19 built-in types): a field set read from the input,
//! checked by the type's `validate` (schema, formats, and the type's own rules: PEM keys and
//! certificates, SSH keys, URLs, JSON, ...), and by each bundled provider of that type.
//!
//! Input: the type id on the first line (or, when the line names no type, the first byte
//! picks one), then field values separated by NUL bytes: the i-th value is the i-th field
//! of the type's schema, values past the schema go to fields `extra0`, `extra1`, ...; an
//! empty value leaves the field out. A value `name=\x01value` names its field.
//!
//! Checks: no panic, and a refusal never quotes a secret field's value (one marked by a
//! `~`, `^` or `|`, so that a value that happens to be part of the message's own text is
//! not taken for a leak).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strongroom::catalog::Catalog;
use strongroom::handlers::{Fields, HandlerRegistry};
use strongroom::SecretString;
use strongroom_fuzz::assert_no_secret;

thread_local! {
    static REGISTRY: HandlerRegistry = HandlerRegistry::builtin();
    static CATALOG: Catalog = Catalog::bundled(&HandlerRegistry::builtin());
}

/// Whether a value is distinctive enough that finding it in a message means the message
/// quoted it: at least 8 characters, one of them a `~`, `^` or `|` (which no message's own
/// text uses, while a plain value like `postgres://user:p` may be the start of an example
/// the message gives).
fn distinctive(value: &str) -> bool {
    value.chars().count() >= 8 && value.contains(['~', '^', '|'])
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    REGISTRY.with(|registry| {
        let ids: Vec<&str> = registry.type_ids().collect();
        let (first, rest) = text.split_once('\n').unwrap_or(("", &text));
        let (type_id, rest) = match ids.iter().find(|id| **id == first) {
            Some(id) => (*id, rest),
            None => (
                ids[data.first().copied().unwrap_or(0) as usize % ids.len()],
                &*text,
            ),
        };
        let handler = registry.get(type_id).expect("registered");
        let schema = handler.fields();
        let mut fields: Fields = BTreeMap::new();
        let mut secrets = Vec::new();
        for (i, value) in rest.split('\0').enumerate().take(32) {
            if value.is_empty() {
                continue;
            }
            let (name, value) = match value.split_once("=\u{1}") {
                Some((name, value)) => (name.to_string(), value),
                None => match schema.get(i) {
                    Some(spec) => (spec.name.clone(), value),
                    None => (format!("extra{}", i - schema.len()), value),
                },
            };
            let secret = schema
                .iter()
                .find(|s| s.name == name)
                .is_none_or(|s| s.secret);
            if secret && distinctive(value) {
                secrets.push(value.to_string());
            }
            fields.insert(name, SecretString::from(value.to_string()));
        }
        // A refusal may quote a field's name (an unknown field): a value that is part of
        // a name is not taken for a leak.
        let secrets: Vec<&str> = secrets
            .iter()
            .map(String::as_str)
            .filter(|v| !fields.keys().any(|name| name.contains(v)))
            .collect();
        if let Err(e) = handler.validate(&fields) {
            assert_no_secret(&e.to_string(), &secrets);
            assert_no_secret(&format!("{e:?}"), &secrets);
        }
        let _ = handler.default_inject();
        let _ = handler.expiry();
        CATALOG.with(|catalog| {
            for provider in catalog.providers().filter(|p| p.handler_type == type_id) {
                if let Err(e) = provider.check_fields(&fields) {
                    assert_no_secret(&e.to_string(), &secrets);
                }
            }
        });
    });
});
