//! Provider TOML: any text as a provider file of the drop-in folder
//! (`strongroom::fuzzing::parse_provider`, what `Catalog::load` does per file). A refusal
//! must name the file and a line and column inside the text; a provider that loads must
//! name a registered handler type and check an empty field set without panicking.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strongroom::handlers::HandlerRegistry;

thread_local! {
    static REGISTRY: HandlerRegistry = HandlerRegistry::builtin();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    REGISTRY.with(|registry| {
        match strongroom::fuzzing::parse_provider(registry, "fuzz.toml", text) {
            Ok(provider) => {
                assert!(registry.get(&provider.handler_type).is_some());
                let _ = provider.check_fields(&BTreeMap::new());
                let _ = serde_json::to_string(&provider).expect("a provider serialises");
            }
            Err(problem) => {
                assert_eq!(problem.file, "fuzz.toml");
                assert!(problem.line >= 1 && problem.column >= 1, "{problem:?}");
                assert!(
                    problem.line <= text.lines().count().max(1) + 1,
                    "line {} is past the end: {problem:?}",
                    problem.line
                );
                let _ = problem.to_string();
            }
        }
    });
});
