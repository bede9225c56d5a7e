//! Format 1: `tests/data/envelope_vectors.json` was produced by the format-1 encoder
//! (which this code still is, given a version byte of 1) and
//! `tests/data/envelope_vectors_python.json` and `record_vectors.json` by the
//! independent Python encoder in `tests/independent_decoder.py`; they never change.
//! Format 2: `tests/data/envelope_vectors_v2.json` is produced by `regenerate_vectors`
//! below, `envelope_vectors_v2_python.json` and `record_vectors_v2.json` by the Python
//! encoder. This encoder must reproduce every file byte for byte (blobs and associated
//! data).
use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use super::*;
use crate::crypto::LocalKey;
use crate::model::{LifecycleState, RecordAad, Scope, ScopeKind, Timestamp};

#[derive(serde::Serialize, serde::Deserialize)]
struct Vector {
    name: String,
    master_key_hex: String,
    master_key_id: String,
    credential_id: String,
    scope_kind: String,
    owner: String,
    version: u64,
    dek_hex: String,
    nonce_hex: String,
    plaintext_hex: String,
    blob_hex: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Vectors<V> {
    description: String,
    vectors: Vec<V>,
}

fn arr<const N: usize>(hex_text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_text, &mut out).expect("hex of the right length");
    out
}

fn scope_of(kind: &str, owner: &str) -> Scope {
    Scope::from_parts(ScopeKind::parse(kind).expect("kind"), owner).expect("scope")
}

/// A format-1 vector, encoded as format 1 always was: the key's format-1 id and wrap.
fn encode_v1(v: &Vector) -> String {
    let master = LocalKey::from_bytes(&arr::<32>(&v.master_key_hex), "vector");
    assert_eq!(master.legacy_key_id(), v.master_key_id);
    let scope = scope_of(&v.scope_kind, &v.owner);
    let id = RecordIdentity::new(&v.credential_id, &scope, v.version);
    let dek = DataKey::from_bytes(arr::<32>(&v.dek_hex));
    let header3 = [FORMAT_V1, FLAG_KEY_COMMITTED, BackendId::Local.to_byte()];
    let wrapped = master
        .legacy()
        .wrap_sync(&dek, &wrap_aad(header3, &id))
        .expect("wrap");
    let plaintext = hex::decode(&v.plaintext_hex).expect("hex");
    let blob = assemble(
        header3,
        &v.master_key_id,
        &wrapped,
        &dek,
        &arr::<12>(&v.nonce_hex),
        &plaintext,
        &id,
    )
    .expect("assemble");
    hex::encode(blob)
}

fn data_path(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn read<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let text = std::fs::read_to_string(data_path(file)).expect("vectors file");
    serde_json::from_str(&text).expect("vectors parse")
}

/// Set to `1` to let `regenerate_vectors` rewrite `envelope_vectors_v2.json`.
const REGENERATE_VAR: &str = "STRONGROOM_REGENERATE_VECTORS";
const V1_DESCRIPTION: &str = "strongroom envelope format v1 known-answer vectors, written by \
                              the Rust encoder (regenerate_vectors in src/crypto/envelope.rs); \
                              see docs/FORMAT.md. master_key_hex, dek_hex and nonce_hex are \
                              fixed test patterns, not random draws: the master key is 00 01 \
                              ... 1f, and for the case at index i (from 0) every DEK byte is \
                              0xa0+i and every nonce byte 0xc0+i. A real seal draws the DEK \
                              and nonce from the operating system.";
const V2_DESCRIPTION: &str = "strongroom envelope format v2 known-answer vectors, written by \
                              the Rust encoder (regenerate_vectors in src/crypto/envelope.rs); \
                              see docs/FORMAT.md. master_key_hex, dek_hex and nonce_hex are \
                              fixed test patterns, not random draws: the master key is 00 01 \
                              ... 1f, and for the case at index i (from 0) every DEK byte is \
                              0x60+i and every nonce byte 0x80+i. A vector with \"format\": 1 \
                              is a version-1 blob whose data key was re-wrapped onto the \
                              format-2 id and wrap of its master key (what key rotation does \
                              to a version-1 blob); it has no namespace and no bound fields. \
                              A real seal draws the DEK and nonce from the operating system.";

#[test]
fn encoder_reproduces_the_format_1_vectors() {
    for file in ["envelope_vectors.json", "envelope_vectors_python.json"] {
        let vectors: Vectors<Vector> = read(file);
        assert!(vectors.vectors.len() >= 4, "{file}");
        for v in &vectors.vectors {
            assert_eq!(encode_v1(v), v.blob_hex, "{file}: vector `{}`", v.name);
        }
    }
}

/// The bound fields of a vector, as JSON.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct BoundJson {
    name: String,
    provider: String,
    handler_type: String,
    state: String,
    agent_accessible: bool,
    expires_at: Option<i64>,
    metadata: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct VectorV2 {
    name: String,
    format: u8,
    master_key_hex: String,
    master_key_id: String,
    namespace: Option<String>,
    credential_id: String,
    scope_kind: String,
    owner: String,
    version: u64,
    bound: Option<BoundJson>,
    dek_hex: String,
    nonce_hex: String,
    plaintext_hex: String,
    wrap_aad_hex: String,
    data_aad_hex: String,
    blob_hex: String,
}

/// Encodes a format-2 vector (or a format-1 blob under the format-2 key, for
/// `"format": 1`); returns `(wrap aad, data aad, blob)` in hex.
fn encode_v2(v: &VectorV2) -> (String, String, String) {
    let master = LocalKey::from_bytes(&arr::<32>(&v.master_key_hex), "vector");
    assert_eq!(crate::crypto::KeyWrapper::key_id(&master), v.master_key_id);
    let scope = scope_of(&v.scope_kind, &v.owner);
    let state = v
        .bound
        .as_ref()
        .map(|b| LifecycleState::parse(&b.state).expect("state"));
    let bound = v.bound.as_ref().map(|b| BoundFields {
        name: &b.name,
        provider: &b.provider,
        handler_type: &b.handler_type,
        state: state.expect("state"),
        agent_accessible: b.agent_accessible,
        expires_at: b.expires_at.map(Timestamp),
        metadata: &b.metadata,
    });
    let mut id = RecordIdentity::new(&v.credential_id, &scope, v.version);
    if let Some(ns) = &v.namespace {
        id = id.in_namespace(ns);
    }
    if let Some(bound) = bound {
        id = id.with_bound(bound);
    }
    let header3 = [v.format, FLAG_KEY_COMMITTED, BackendId::Local.to_byte()];
    let wrap = wrap_aad(header3, &id);
    let data = data_aad(header3[0], header3[1], &id);
    let dek = DataKey::from_bytes(arr::<32>(&v.dek_hex));
    let wrapped = master.wrap_sync(&dek, &wrap).expect("wrap");
    let blob = assemble(
        header3,
        &v.master_key_id,
        &wrapped,
        &dek,
        &arr::<12>(&v.nonce_hex),
        &hex::decode(&v.plaintext_hex).expect("hex"),
        &id,
    )
    .expect("assemble");
    (hex::encode(wrap), hex::encode(data), hex::encode(blob))
}

#[test]
fn encoder_reproduces_the_format_2_vectors() {
    for file in [
        "envelope_vectors_v2.json",
        "envelope_vectors_v2_python.json",
    ] {
        let vectors: Vectors<VectorV2> = read(file);
        assert!(vectors.vectors.len() >= 4, "{file}");
        assert!(
            vectors
                .vectors
                .iter()
                .any(|v| v.format == 2 && v.bound.is_some()),
            "{file}: bound fields are covered"
        );
        for v in &vectors.vectors {
            let (wrap, data, blob) = encode_v2(v);
            assert_eq!(wrap, v.wrap_aad_hex, "{file}: `{}`: wrap aad", v.name);
            assert_eq!(data, v.data_aad_hex, "{file}: `{}`: data aad", v.name);
            assert_eq!(blob, v.blob_hex, "{file}: `{}`: blob", v.name);
        }
    }
}

#[derive(serde::Deserialize)]
struct RecordVector {
    name: String,
    #[serde(default)]
    format: Option<u8>,
    master_key_hex: String,
    master_key_id: String,
    #[serde(default)]
    namespace: Option<String>,
    kind: String,
    owner: String,
    key: String,
    version: u64,
    wrap_aad_hex: String,
    data_aad_hex: String,
    dek_hex: String,
    nonce_hex: String,
    plaintext_hex: String,
    blob_hex: String,
}

/// The record associated-data domain, checked against `record_vectors.json` (format 1)
/// and `record_vectors_v2.json` (format 2), which the independent Python encoder wrote
/// from `docs/FORMAT.md`: the associated data byte for byte, and the whole sealed body.
#[test]
fn encoder_reproduces_the_record_body_vectors() {
    for file in ["record_vectors.json", "record_vectors_v2.json"] {
        let vectors: Vectors<RecordVector> = read(file);
        assert!(vectors.vectors.len() >= 3, "{file}");
        for v in &vectors.vectors {
            let format = v.format.unwrap_or(FORMAT_V1);
            let master = LocalKey::from_bytes(&arr::<32>(&v.master_key_hex), "vector");
            let mut aad = RecordAad::new(&v.kind, &v.owner, &v.key, v.version);
            if let Some(ns) = &v.namespace {
                aad = aad.in_namespace(ns);
            }
            let header3 = [format, FLAG_KEY_COMMITTED, BackendId::Local.to_byte()];
            let wrap = record_wrap_aad(header3, &aad);
            assert_eq!(
                hex::encode(&wrap),
                v.wrap_aad_hex,
                "{file}: {}: wrap aad",
                v.name
            );
            assert_eq!(
                hex::encode(record_data_aad(header3[0], header3[1], &aad)),
                v.data_aad_hex,
                "{file}: {}: data aad",
                v.name
            );
            let dek = DataKey::from_bytes(arr::<32>(&v.dek_hex));
            let wrapped = if format == FORMAT_V1 {
                assert_eq!(master.legacy_key_id(), v.master_key_id);
                master.legacy().wrap_sync(&dek, &wrap).expect("wrap")
            } else {
                assert_eq!(crate::crypto::KeyWrapper::key_id(&master), v.master_key_id);
                master.wrap_sync(&dek, &wrap).expect("wrap")
            };
            let blob = assemble(
                header3,
                &v.master_key_id,
                &wrapped,
                &dek,
                &arr::<12>(&v.nonce_hex),
                &hex::decode(&v.plaintext_hex).expect("hex"),
                &aad,
            )
            .expect("assemble");
            assert_eq!(hex::encode(blob), v.blob_hex, "{file}: {}: blob", v.name);
        }
    }
}

/// The worked example of `docs/FORMAT.md` "Record bodies", byte for byte (format 1 and 2).
#[test]
fn record_associated_data_reads_as_documented() {
    let aad = RecordAad::new("lease", "refresh", "cred-1", 2);
    let tail = [
        &[0, 0, 0, 5][..],
        b"lease",
        &[0, 0, 0, 7],
        b"refresh",
        &[0, 0, 0, 6],
        b"cred-1",
        &[0, 0, 0, 0, 0, 0, 0, 2],
    ]
    .concat();
    let v1 = [&b"strongroom/record-data/v1"[..], &[0x01, 0x01], &tail].concat();
    assert_eq!(record_data_aad(1, 1, &aad), v1);
    let wrap = [
        &b"strongroom/record-wrap/v1"[..],
        &[0x01, 0x01, 0x01],
        &tail,
    ]
    .concat();
    assert_eq!(record_wrap_aad([1, 1, 1], &aad), wrap);
    let ns = [&[0, 0, 0, 7][..], b"default"].concat();
    let v2 = [&b"strongroom/v2/record/data"[..], &[0x02, 0x01], &ns, &tail].concat();
    assert_eq!(record_data_aad(2, 1, &aad), v2);
    // The credential domain never yields the same bytes: the labels differ at byte 11
    // (format 1) or byte 14 (format 2), and the formats at byte 11.
    assert_ne!(&WRAP_AAD_LABEL_V1[..12], &RECORD_WRAP_AAD_LABEL_V1[..12]);
    assert_ne!(&DATA_AAD_LABEL_V1[..12], &RECORD_DATA_AAD_LABEL_V1[..12]);
    assert_ne!(&WRAP_AAD_LABEL[..15], &RECORD_WRAP_AAD_LABEL[..15]);
    assert_ne!(&DATA_AAD_LABEL[..15], &RECORD_DATA_AAD_LABEL[..15]);
    for v2 in [WRAP_AAD_LABEL, DATA_AAD_LABEL, RECORD_WRAP_AAD_LABEL] {
        for v1 in [
            WRAP_AAD_LABEL_V1,
            DATA_AAD_LABEL_V1,
            RECORD_WRAP_AAD_LABEL_V1,
        ] {
            assert_ne!(v2[11], v1[11]);
        }
    }
}

/// The worked example of `docs/FORMAT.md` "Associated data" (format 2), byte for byte.
#[test]
fn credential_associated_data_reads_as_documented() {
    let scope = Scope::per_user("alice").expect("scope");
    let metadata = BTreeMap::from([("base_url".to_string(), "https://x.test".to_string())]);
    let bound = BoundFields {
        name: "openai_main",
        provider: "openai",
        handler_type: "api_key",
        state: LifecycleState::Valid,
        agent_accessible: true,
        expires_at: Some(Timestamp(1_700_000_000_000)),
        metadata: &metadata,
    };
    let id = RecordIdentity::new("c1", &scope, 3)
        .in_namespace("prod")
        .with_bound(bound);
    let identity = [
        &[0, 0, 0, 4][..],
        b"prod",
        &[0, 0, 0, 2],
        b"c1",
        &[0, 0, 0, 8],
        b"per_user",
        &[0, 0, 0, 5],
        b"alice",
        &[0, 0, 0, 0, 0, 0, 0, 3],
    ]
    .concat();
    let fields = [
        &b"strongroom/v2/credential/bound-fields"[..],
        &[0x01],
        &[0, 0, 0, 11],
        b"openai_main",
        &[0, 0, 0, 6],
        b"openai",
        &[0, 0, 0, 7],
        b"api_key",
        &[0, 0, 0, 5],
        b"valid",
        &[0x01],
        &[0x01],
        &1_700_000_000_000i64.to_be_bytes(),
        &[0, 0, 0, 1],
        &[0, 0, 0, 8],
        b"base_url",
        &[0, 0, 0, 14],
        b"https://x.test",
    ]
    .concat();
    let digest: [u8; 32] = Sha256::digest(&fields).into();
    assert_eq!(bound_digest(Some(&bound)), digest);
    let data = [
        &b"strongroom/v2/credential/data"[..],
        &[0x02, 0x01],
        &identity,
        &digest,
    ]
    .concat();
    assert_eq!(data_aad(2, 1, &id), data);
    let wrap = [
        &b"strongroom/v2/credential/wrap"[..],
        &[0x02, 0x01, 0x01],
        &identity,
    ]
    .concat();
    assert_eq!(wrap_aad([2, 1, 1], &id), wrap);
    // Format 1 ignores the namespace and the bound fields.
    let plain = RecordIdentity::new("c1", &scope, 3);
    assert_eq!(data_aad(1, 1, &id), data_aad(1, 1, &plain));
    assert_eq!(wrap_aad([1, 1, 1], &id), wrap_aad([1, 1, 1], &plain));
    let none: [u8; 32] =
        Sha256::digest([&b"strongroom/v2/credential/bound-fields"[..], &[0x00]].concat()).into();
    assert_eq!(bound_digest(None), none);
}

fn seal_with(
    master: &LocalKey,
    dek: &DataKey,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    id: &RecordIdentity<'_>,
) -> Vec<u8> {
    let header3 = [
        FORMAT_VERSION,
        FLAG_KEY_COMMITTED,
        BackendId::Local.to_byte(),
    ];
    let wrapped = master.wrap_sync(dek, &wrap_aad(header3, id)).expect("wrap");
    let key_id = crate::crypto::KeyWrapper::key_id(master);
    assemble(header3, key_id, &wrapped, dek, &nonce, plaintext, id).expect("assemble")
}

/// A data key reached some other way than through its own record's wrap (a memory
/// dump, a cache, a key backend that ignores associated data) opens no other record's
/// payload, and its own blob cannot be re-pointed to another record: the payload key
/// and the commitment are derived from the key, the nonce and the associated data, and
/// the commitment is checked before anything is decrypted.
#[test]
fn a_lifted_data_key_opens_no_other_record_and_cannot_be_re_pointed() {
    let master = LocalKey::from_bytes(&[7u8; 32], "test");
    let scope = Scope::per_user("alice").expect("scope");
    let (ida, idb) = (
        RecordIdentity::new("a", &scope, 1),
        RecordIdentity::new("b", &scope, 1),
    );
    let dek_a = DataKey::from_bytes([0xa1; 32]);
    let dek_b = DataKey::from_bytes([0xb2; 32]);
    let a = seal_with(&master, &dek_a, [1; 12], b"secret a", &ida);
    let b = seal_with(&master, &dek_b, [2; 12], b"secret b", &idb);
    let parse = |blob| parse(blob, &|| "test".into()).expect("parse");
    let opened = open_with_key(&dek_a, &parse(&a), &ida).expect("a opens with its key");
    assert_eq!(opened.expose_secret(), b"secret a");

    // A's key on B's blob.
    let e = open_with_key(&dek_a, &parse(&b), &idb).expect_err("refused");
    assert!(matches!(e, Error::DecryptFailed { .. }), "{e}");
    // A's key and A's whole blob, read as B: refused by the commitment, before the
    // payload is touched (the message says so).
    let e = open_with_key(&dek_a, &parse(&a), &idb).expect_err("refused");
    assert!(e.to_string().contains("commitment does not match"), "{e}");
    // Even one data key used for two records (as a careless re-seal might) keeps them
    // apart: A's payload, nonce and commitment in B's place do not open as B.
    let b_same_key = seal_with(&master, &dek_a, [3; 12], b"secret b", &idb);
    let w = u16::from_be_bytes([b_same_key[3], b_same_key[4]]) as usize;
    let mut spliced = b_same_key.clone();
    spliced[5 + w..].copy_from_slice(&a[5 + w..]);
    let e = open_with_key(&dek_a, &parse(&spliced), &idb).expect_err("refused");
    assert!(e.to_string().contains("commitment does not match"), "{e}");
    // The data key is not the payload key: AES-GCM under the data key itself opens
    // nothing.
    let p = parse(&a);
    let (ct, tag) = p.ciphertext.split_at(p.ciphertext.len() - TAG_LEN);
    let mut buf = ct.to_vec();
    assert!(Aes256Gcm::new(dek_a.expose_secret().into())
        .decrypt_in_place_detached(
            Nonce::from_slice(p.nonce),
            &data_aad(2, 1, &ida),
            &mut buf,
            Tag::from_slice(tag)
        )
        .is_err());
}

/// Rebuilds `tests/data/envelope_vectors_v2.json` from the cases below, and checks that
/// the format-1 file `envelope_vectors.json` is still what its cases produce (that file
/// never changes). Run alone, or by `cargo test -- --include-ignored`, it only compares.
/// It rewrites the format-2 file only when `STRONGROOM_REGENERATE_VECTORS` is `1`:
///
/// ```text
/// STRONGROOM_REGENERATE_VECTORS=1 cargo test --lib regenerate_vectors -- --ignored
/// ```
///
/// Only for a deliberate format change (which also needs a new format version); check
/// the result against the independent Python decoder (`python3 tests/independent_decoder.py`),
/// which must still pass.
#[test]
#[ignore]
fn regenerate_vectors() {
    let master_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let master = LocalKey::from_bytes(&arr::<32>(master_hex), "vector");
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        u64,
        Vec<u8>,
    );
    let cases: [Case; 4] = [
        (
            "empty payload, system_wide",
            "cred-0001",
            "system_wide",
            "",
            1,
            vec![],
        ),
        (
            "64-byte secret, per_user",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "per_user",
            "alice",
            3,
            b"sk-proj-CANARY-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN".to_vec(),
        ),
        (
            "JSON fields, per_app_per_user",
            "cred-0003",
            "per_app_per_user",
            "crm/bob@example.com",
            42,
            br#"{"api_key":"sk_live_51Hxyz","webhook_secret":"whsec_\u00e9t\u00e9"}"#.to_vec(),
        ),
        (
            "binary payload, per_agent",
            "cred-0004",
            "per_agent",
            "agent-7",
            u64::MAX,
            (0..=255u8).collect(),
        ),
    ];
    let v1: Vec<Vector> = cases
        .iter()
        .enumerate()
        .map(|(i, (name, cid, kind, owner, version, plaintext))| {
            let b = i as u8;
            let mut v = Vector {
                name: name.to_string(),
                master_key_hex: master_hex.into(),
                master_key_id: master.legacy_key_id().to_string(),
                credential_id: cid.to_string(),
                scope_kind: kind.to_string(),
                owner: owner.to_string(),
                version: *version,
                dek_hex: hex::encode([0xA0 + b; 32]),
                nonce_hex: hex::encode([0xC0 + b; 12]),
                plaintext_hex: hex::encode(plaintext),
                blob_hex: String::new(),
            };
            v.blob_hex = encode_v1(&v);
            v
        })
        .collect();
    let v1_text = serde_json::to_string_pretty(&Vectors {
        description: V1_DESCRIPTION.into(),
        vectors: v1,
    })
    .expect("json")
        + "\n";
    let v1_path = data_path("envelope_vectors.json");
    assert!(
        std::fs::read_to_string(&v1_path).expect("vectors file") == v1_text,
        "{v1_path} differs from what its cases produce: the format-1 encoder changed"
    );

    let bound = |name: &str,
                 provider: &str,
                 handler_type: &str,
                 state: &str,
                 agent_accessible: bool,
                 expires_at: Option<i64>,
                 metadata: &[(&str, &str)]| BoundJson {
        name: name.into(),
        provider: provider.into(),
        handler_type: handler_type.into(),
        state: state.into(),
        agent_accessible,
        expires_at,
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    type CaseV2 = (
        &'static str,
        u8,
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static str,
        u64,
        Option<BoundJson>,
        Vec<u8>,
    );
    let cases: Vec<CaseV2> = vec![
        (
            "v2: empty payload, system_wide, default namespace, no bound fields",
            2,
            Some("default"),
            "cred-0001",
            "system_wide",
            "",
            1,
            None,
            vec![],
        ),
        (
            "v2: 64-byte secret, per_user, bound fields",
            2,
            Some("prod"),
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "per_user",
            "alice",
            3,
            Some(bound(
                "openai_main",
                "openai",
                "api_key",
                "valid",
                false,
                None,
                &[],
            )),
            b"sk-proj-CANARY-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN".to_vec(),
        ),
        (
            "v2: JSON fields, per_app_per_user, metadata base_url and expiry",
            2,
            Some("tenant-a/eu"),
            "cred-0003",
            "per_app_per_user",
            "crm/bob@example.com",
            42,
            Some(bound(
                "stripe_main",
                "stripe",
                "api_key",
                "filled",
                true,
                Some(1_893_456_000_000),
                &[
                    ("account", "acme"),
                    ("base_url", "https://api.example.com/v1"),
                ],
            )),
            br#"{"api_key":"sk_live_51Hxyz","webhook_secret":"whsec_\u00e9t\u00e9"}"#.to_vec(),
        ),
        (
            "v2: binary payload, per_agent, version 2^64-1, unicode namespace",
            2,
            Some("zoë/Ωμέγα"),
            "cred-0004",
            "per_agent",
            "agent-7",
            u64::MAX,
            Some(bound(
                "gh",
                "github_pat",
                "bearer_token",
                "invalid",
                true,
                Some(-1),
                &[("z", ""), ("é", "ü")],
            )),
            (0..=255u8).collect(),
        ),
        (
            "format 1 blob re-wrapped onto the format-2 key id",
            1,
            None,
            "cred-0005",
            "per_user",
            "alice",
            7,
            None,
            b"re-wrapped".to_vec(),
        ),
    ];
    let key_id = crate::crypto::KeyWrapper::key_id(&master).to_string();
    let vectors = cases
        .into_iter()
        .enumerate()
        .map(
            |(i, (name, format, namespace, cid, kind, owner, version, bound, plaintext))| {
                let b = i as u8;
                let mut v = VectorV2 {
                    name: name.into(),
                    format,
                    master_key_hex: master_hex.into(),
                    master_key_id: key_id.clone(),
                    namespace: namespace.map(str::to_string),
                    credential_id: cid.into(),
                    scope_kind: kind.into(),
                    owner: owner.into(),
                    version,
                    bound,
                    dek_hex: hex::encode([0x60 + b; 32]),
                    nonce_hex: hex::encode([0x80 + b; 12]),
                    plaintext_hex: hex::encode(plaintext),
                    wrap_aad_hex: String::new(),
                    data_aad_hex: String::new(),
                    blob_hex: String::new(),
                };
                (v.wrap_aad_hex, v.data_aad_hex, v.blob_hex) = encode_v2(&v);
                v
            },
        )
        .collect();
    let text = serde_json::to_string_pretty(&Vectors {
        description: V2_DESCRIPTION.into(),
        vectors,
    })
    .expect("json")
        + "\n";
    let path = data_path("envelope_vectors_v2.json");
    if std::env::var_os(REGENERATE_VAR).is_some_and(|v| v == "1") {
        std::fs::write(&path, text).expect("write vectors");
        println!("{REGENERATE_VAR}=1: rewrote {path}");
        return;
    }
    println!("{REGENERATE_VAR} is not 1: comparing {path}, not writing it");
    let on_disk = std::fs::read_to_string(&path).expect("vectors file");
    assert!(
        on_disk == text,
        "{path} differs from what the cases produce; if the change is deliberate, rerun \
         with {REGENERATE_VAR}=1 to rewrite it"
    );
}
