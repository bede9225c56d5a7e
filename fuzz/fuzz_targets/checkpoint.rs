//! Checkpoint parsing: JSON lines of checkpoints (what a checkpoint sink or the CLI's
//! checkpoint file holds), each parsed as a `Checkpoint` and then checked against a chain
//! of 20 rows in a `MemoryStore`: the tag (`check_checkpoint`, under the master key's HMAC
//! checkpoint key and a fuzz key whose tag is the bytes `fuzz`), `verify_against` with all
//! of them, and `still_holds` for each. Checks: parsing round-trips, a checkpoint that
//! matches the chain passes, and one that does not is reported.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use strongroom::audit::ProblemKind;
use strongroom::{
    Action, AuditChain, AuditEvent, AuditTarget, Batch, ChainHead, Checkpoint, KeyRing, LocalKey,
    MemoryStore, Store, Timestamp,
};
use strongroom_fuzz::{block_on, AcceptingSigner, ACCEPTING_KEY_ID};

struct Fixture {
    chain: AuditChain,
    hashes: Vec<[u8; 32]>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        block_on(async {
            let store = Arc::new(MemoryStore::new());
            for i in 0..20 {
                let event = AuditEvent::new("fuzz", Action::Create, AuditTarget::none())
                    .detail("n", i.to_string())
                    .at(Timestamp(1_764_000_000_000 + i));
                store
                    .commit(Batch::events(vec![event]))
                    .await
                    .expect("commit");
            }
            let rows = store.audit_range(1, 100).await.expect("rows");
            let key = Arc::new(LocalKey::from_bytes(&[7; 32], "fuzz"));
            let chain = AuditChain::new(store, KeyRing::new(key))
                .with_retired_checkpoint_key(Arc::new(AcceptingSigner));
            Fixture {
                chain,
                hashes: rows.iter().map(|r| r.hash).collect(),
            }
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let mut checkpoints = Vec::new();
    for line in text.lines().take(16) {
        let Ok(cp) = serde_json::from_str::<Checkpoint>(line) else {
            continue;
        };
        let json = serde_json::to_string(&cp).expect("a checkpoint serialises");
        let back: Checkpoint = serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, cp);
        checkpoints.push(cp);
    }
    block_on(async {
        let mut all_authentic = true;
        let mut all_match = true;
        for cp in &checkpoints {
            let authentic = match f.chain.check_checkpoint(cp).await {
                Ok(ok) => ok,
                Err(e) => {
                    assert!(e.to_string().contains("key"), "{e}");
                    all_authentic = false;
                    continue;
                }
            };
            all_authentic &= authentic;
            let held = f.chain.still_holds(cp).await.expect("still_holds reads");
            let matches = cp.seq >= 1 && f.hashes.get((cp.seq - 1) as usize) == Some(&cp.head_hash);
            all_match &= matches;
            if !authentic {
                assert_eq!(held.map(|p| p.kind), Some(ProblemKind::ForgedCheckpoint));
            } else {
                assert_eq!(held.is_none(), matches, "still_holds for {cp:?}");
            }
        }
        match f.chain.verify_against(&checkpoints).await {
            Ok(report) => {
                if all_authentic {
                    assert_eq!(report.is_ok(), all_match, "{report:?} for {checkpoints:?}");
                } else {
                    assert!(!report.is_ok());
                }
            }
            Err(e) => assert!(!all_authentic, "verify_against failed: {e}"),
        }
    });
    // The head of the chain, signed by the fuzz key, always holds.
    let head = ChainHead {
        seq: f.hashes.len() as u64,
        hash: f.hashes[f.hashes.len() - 1],
    };
    let good = Checkpoint {
        seq: head.seq,
        head_hash: head.hash,
        time: Timestamp(0),
        key_id: ACCEPTING_KEY_ID.to_string(),
        mac: b"fuzz".to_vec(),
    };
    block_on(async {
        assert!(f
            .chain
            .verify_against(&[good])
            .await
            .expect("verify")
            .is_ok());
    });
});
