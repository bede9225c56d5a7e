//! The template migrator: any text through `migrate_text`. Checks what its documentation
//! promises: a file that does not parse is an error and nothing changes; the result parses;
//! running it again changes nothing; the diff is empty exactly when nothing changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongroom::config::migrate::migrate_text;
use strongroom::config::yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let migration = match migrate_text("fuzz.yaml", text) {
        Ok(m) => m,
        Err(e) => {
            assert!(
                yaml::parse("fuzz.yaml", text).is_err(),
                "refused a file that parses: {e}"
            );
            return;
        }
    };
    assert_eq!(migration.original, text);
    let diff = migration.diff();
    assert_eq!(diff.is_empty(), !migration.changed());
    if migration.changed() {
        let docs = yaml::parse("fuzz.yaml", &migration.migrated)
            .unwrap_or_else(|e| panic!("the migrated text does not parse: {e}"));
        let _ = docs;
        let again = migrate_text("fuzz.yaml", &migration.migrated)
            .unwrap_or_else(|e| panic!("the migrated text does not migrate: {e}"));
        assert!(
            !again.changed(),
            "a second run changed the file again:\n{}",
            again.diff()
        );
    }
});
