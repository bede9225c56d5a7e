//! The envelope decoder: any bytes as a sealed blob. Structure parsing
//! (`crypto::envelope::parse`), then the whole open path of a key ring holding the
//! known-answer vectors' master key (key-id lookup, the local key's unwrap, the commitment
//! check, AES-GCM), for a credential identity and a record identity, and a re-wrap under a
//! second key. Seeds: the blobs of tests/data/*_vectors*.json. Nothing may panic; an error
//! must say what was wrong, and whatever fails to parse must fail to open.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strongroom::crypto::envelope;
use strongroom::{KeyRing, LocalKey, RecordAad, RecordIdentity, Scope};
use strongroom_fuzz::block_on;

struct Rings {
    ring: KeyRing,
    rewrapper: KeyRing,
}

fn rings() -> &'static Rings {
    static RINGS: std::sync::OnceLock<Rings> = std::sync::OnceLock::new();
    RINGS.get_or_init(|| {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let vectors = Arc::new(LocalKey::from_bytes(&bytes, "known-answer vectors"));
        let other = Arc::new(LocalKey::from_bytes(&[0x42; 32], "fuzz"));
        Rings {
            ring: KeyRing::new(vectors.clone()),
            rewrapper: KeyRing::new(other).with_retired(vectors),
        }
    })
}

fuzz_target!(|blob: &[u8]| {
    let parsed = envelope::parse(blob, &|| "a fuzzed blob".to_string());
    if let Err(e) = &parsed {
        assert!(e.to_string().contains("sealed blob"), "{e}");
    }
    let rings = rings();
    let system = Scope::SystemWide;
    let alice = Scope::per_user("alice").expect("scope");
    let identities = [
        RecordIdentity::new("cred-0001", &system, 1),
        RecordIdentity::new("cred-0005", &alice, 7),
    ];
    block_on(async {
        for id in &identities {
            let opened = rings.ring.open(blob, id).await;
            if parsed.is_err() {
                assert!(opened.is_err(), "a blob that does not parse opened");
            }
            let rewrapped = rings.rewrapper.rewrap_blob(blob, id).await;
            if let Ok(Some(sealed)) = rewrapped {
                // Re-wrapping changes only the wrapped data key: the blob opens under the
                // new ring exactly when it opened under the old one, to the same bytes.
                // (The payload is not decrypted to re-wrap: a blob whose ciphertext was
                // altered is re-wrapped and still fails to open.)
                let again = rings.rewrapper.open(&sealed.bytes, id).await;
                let before = rings.ring.open(blob, id).await;
                match (again, before) {
                    (Ok(a), Ok(b)) => {
                        use secrecy::ExposeSecret;
                        assert_eq!(a.expose_secret(), b.expose_secret());
                    }
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!(
                        "a re-wrapped blob does not open as before: {:?} / {:?}",
                        a.err(),
                        b.err()
                    ),
                }
            }
        }
        let aad = RecordAad::new(
            "lease",
            "refresh",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            1,
        );
        let opened = rings.ring.open_record(blob, &aad).await;
        if parsed.is_err() {
            assert!(opened.is_err(), "a record body that does not parse opened");
        }
    });
});
