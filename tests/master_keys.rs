//! Master-key sources: `STRONGROOM_KMS` selection, the env key, the key file and its
//! permission rule, and clear errors for malformed keys.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use strongroom::crypto::{key_wrapper_from_vars, ENV_HOME, ENV_KMS, ENV_MASTER_KEY};
use strongroom::{ErrorKind, KeyWrapper, LocalKey};
use subtle::ConstantTimeEq;

const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn master_key_variable_selects_env_when_kms_is_unset() {
    let home = tempfile::tempdir().expect("tempdir");
    let home_s = home.path().to_str().expect("utf8");
    let key = key_wrapper_from_vars(vars(&[(ENV_MASTER_KEY, KEY_B64), (ENV_HOME, home_s)]))
        .expect("env key");
    let expected = LocalKey::from_env_value(KEY_B64).expect("key");
    assert_eq!(key.key_id(), expected.key_id());
    assert!(
        !home.path().join("master.key").exists(),
        "env selection creates no file"
    );
    // Padded base64url and surrounding whitespace are accepted too.
    let padded = format!(" {KEY_B64}=\n");
    let key = key_wrapper_from_vars(vars(&[(ENV_MASTER_KEY, &padded)])).expect("padded");
    assert_eq!(key.key_id(), expected.key_id());
}

#[test]
fn file_is_the_default_and_is_created_private() {
    let home = tempfile::tempdir().expect("tempdir");
    let sr_home = home.path().join("nested").join(".strongroom");
    let v = vars(&[(ENV_HOME, sr_home.to_str().expect("utf8"))]);
    let first = key_wrapper_from_vars(&v).expect("creates the key file");
    let path = sr_home.join("master.key");
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let dir_mode = std::fs::metadata(&sr_home)
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "key folder mode");
    let again = key_wrapper_from_vars(&v).expect("reloads");
    assert_eq!(
        first.key_id(),
        again.key_id(),
        "the same key on the second load"
    );
    // HOME/.strongroom when STRONGROOM_HOME is unset.
    let from_home = key_wrapper_from_vars(vars(&[("HOME", home.path().to_str().expect("utf8"))]))
        .expect("home");
    assert!(home.path().join(".strongroom/master.key").exists());
    assert_ne!(from_home.key_id(), first.key_id());
    // STRONGROOM_KMS=file wins over a set master key variable.
    let explicit = key_wrapper_from_vars(vars(&[
        (ENV_KMS, "file"),
        (ENV_MASTER_KEY, KEY_B64),
        (ENV_HOME, sr_home.to_str().expect("utf8")),
    ]))
    .expect("file");
    assert_eq!(explicit.key_id(), first.key_id());
}

#[test]
fn a_group_or_world_readable_key_file_is_refused() {
    let home = tempfile::tempdir().expect("tempdir");
    let v = vars(&[(ENV_HOME, home.path().to_str().expect("utf8"))]);
    key_wrapper_from_vars(&v).expect("create");
    let path = home.path().join("master.key");
    for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = key_wrapper_from_vars(&v).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "mode {mode:o}");
        let msg = err.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains("master.key"),
            "{msg}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    key_wrapper_from_vars(&v).expect("owner-only read is fine");
}

#[test]
fn malformed_keys_name_their_source() {
    let cases = [
        ("not base64 !!!", "not valid base64url"),
        ("AAEC", "3 bytes"),
    ];
    for (value, expect) in cases {
        let err = key_wrapper_from_vars(vars(&[(ENV_MASTER_KEY, value)])).expect_err("bad key");
        assert_eq!(err.kind(), ErrorKind::Config);
        let msg = err.to_string();
        assert!(
            msg.contains(ENV_MASTER_KEY) && msg.contains(expect),
            "{msg}"
        );
    }
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("master.key");
    std::fs::write(&path, format!("{KEY_B64}AAAA\n")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = key_wrapper_from_vars(vars(&[(ENV_HOME, home.path().to_str().expect("utf8"))]))
        .expect_err("bad file");
    let msg = err.to_string();
    assert!(
        msg.contains(path.to_str().expect("utf8")) && msg.contains("35 bytes"),
        "{msg}"
    );
    assert!(
        !msg.contains(KEY_B64),
        "the error must not echo the key: {msg}"
    );
}

#[test]
fn unknown_and_unbuilt_backends_are_clear_errors() {
    let err = key_wrapper_from_vars(vars(&[(ENV_KMS, "hsm")])).expect_err("unknown");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("`hsm` is not a known backend"),
        "{err}"
    );
    for name in ["aws_kms", "gcp_kms", "azure_kv", "vault"] {
        let err = key_wrapper_from_vars(vars(&[(ENV_KMS, name)])).expect_err("unbuilt");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = key_wrapper_from_vars(vars(&[(ENV_KMS, "env")])).expect_err("env without key");
    assert!(err.to_string().contains(ENV_MASTER_KEY), "{err}");
    let err = key_wrapper_from_vars(vars(&[])).expect_err("no home");
    assert!(err.to_string().contains(ENV_HOME), "{err}");
}

#[tokio::test]
async fn derived_keys_differ_by_purpose_and_are_stable() {
    let a = LocalKey::from_env_value(KEY_B64).expect("key");
    let b = LocalKey::from_env_value(KEY_B64).expect("key");
    let x = a.derive_key("one").await.expect("derive");
    let same = b.derive_key("one").await.expect("derive");
    assert_eq!(x.expose_secret(), same.expose_secret());
    assert!(bool::from(x.ct_eq(&same)), "compared in constant time");
    let two = a.derive_key("two").await.expect("derive");
    assert_ne!(x.expose_secret(), two.expose_secret());
    assert_ne!(x.expose_secret(), &[0u8; 32]);
}
