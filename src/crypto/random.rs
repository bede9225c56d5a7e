//! The random bytes of every seal (a data key and a nonce): a ChaCha20 generator per thread,
//! seeded from the operating system, that erases its key as it goes and reseeds itself in a
//! forked child before it hands out a single byte there.
//!
//! **Why not one `getrandom` call per seal.** Each call is a system call: about 0.45–0.6 µs
//! here, the largest single cost of a 64-byte seal. The generator costs a ChaCha20 block
//! per 64 bytes and a copy.
//!
//! **Construction** ("fast key erasure", D. J. Bernstein, 2017): the state is a 256-bit key.
//! A refill runs ChaCha20 under that key (nonce 0, used once) over a [`BUFFER`]-byte buffer;
//! its first 32 bytes become the next key, the rest is handed out, and every byte handed out
//! is zeroed in the buffer at once. So the memory holds neither the key that produced an
//! earlier output nor the output itself: reading it later reveals no data key already
//! drawn. Fresh OS entropy replaces the key every [`RESEED_AFTER`] bytes and in every
//! thread's first draw.
//!
//! **Fork.** A child process inherits a copy of the parent's memory, generator included;
//! drawing from that copy would repeat the parent's next data keys and nonces. Every draw
//! checks two things before using the state, and reseeds from the OS if either changed:
//!
//! - the process id (`std::process::id()`, a `getpid` system call, ≈ 0.15 µs here) against
//!   the one the state was seeded in: it catches every way of making a process, raw
//!   `clone` system calls included. Its blind spot is a pid reused for a descendant of a
//!   process that never drew, once the original holder has exited.
//! - the fork counter of `forkguard` (its `atfork` flavour: a `pthread_atfork` child
//!   handler, registered by that crate, bumps a process-wide counter; we forbid `unsafe`
//!   ourselves so we cannot register one): it catches every `fork()` through the C library
//!   whatever the pids, which covers the pid check's blind spot.
//!
//! OpenSSL 3's DRBG relies on the first check alone (its `fork_id` is `getpid()`); the two
//! together leave only a raw `clone` system call whose child also reuses the pid of a
//! process that drew from the same state, which we do not guard against.

use std::cell::RefCell;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Bytes of keystream made per refill: 32 of them are the next key, the rest are handed out
/// (20 seals of 44 bytes).
pub(crate) const BUFFER: usize = 928;
/// Fresh OS entropy replaces the key after this many bytes handed out.
pub(crate) const RESEED_AFTER: u64 = 1 << 20;

struct Generator {
    key: Zeroizing<[u8; 32]>,
    buf: Zeroizing<[u8; BUFFER]>,
    /// The next unused byte of `buf`; `BUFFER` when it is used up.
    pos: usize,
    /// Bytes handed out since the last reseed.
    since_seed: u64,
    /// The process the state was seeded in.
    pid: u32,
    fork: forkguard::Guard,
}

impl Generator {
    fn new() -> Result<Generator> {
        let mut g = Generator {
            key: Zeroizing::new([0u8; 32]),
            buf: Zeroizing::new([0u8; BUFFER]),
            pos: BUFFER,
            since_seed: 0,
            pid: 0,
            fork: forkguard::Guard::try_new().map_err(|e| os_failure(&e.to_string()))?,
        };
        g.reseed()?;
        Ok(g)
    }

    /// A new key from the OS; the buffer (made under the old key) is dropped.
    fn reseed(&mut self) -> Result<()> {
        os_fill(self.key.as_mut())?;
        self.buf.as_mut_slice().zeroize();
        self.pos = BUFFER;
        self.since_seed = 0;
        self.pid = std::process::id();
        // Forks before this seed are behind us.
        let _ = self.fork.detected_fork();
        Ok(())
    }

    /// The next buffer under the current key, whose first 32 bytes replace the key.
    fn refill(&mut self) {
        self.buf.as_mut_slice().zeroize();
        let mut stream = ChaCha20::new(self.key.as_ref().into(), &[0u8; 12].into());
        stream.apply_keystream(self.buf.as_mut());
        self.key.copy_from_slice(&self.buf[..32]);
        self.buf[..32].zeroize();
        self.pos = 32;
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        // Both checks run on every draw (see the module comment).
        let forked = self.fork.detected_fork();
        if forked || self.pid != std::process::id() || self.since_seed >= RESEED_AFTER {
            self.reseed()?;
        }
        let mut done = 0;
        while done < out.len() {
            if self.pos == BUFFER {
                self.refill();
            }
            let n = (out.len() - done).min(BUFFER - self.pos);
            let taken = &mut self.buf[self.pos..self.pos + n];
            out[done..done + n].copy_from_slice(taken);
            taken.zeroize();
            self.pos += n;
            done += n;
        }
        self.since_seed += out.len() as u64;
        Ok(())
    }
}

thread_local! {
    static GENERATOR: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// Fills `buf` with random bytes from this thread's generator (module comment), seeding it
/// from the OS on first use, after a fork and every [`RESEED_AFTER`] bytes.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    GENERATOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Only reachable by a reentrant call (none exists): the OS never fails us here.
            return os_fill(buf);
        };
        match slot.as_mut() {
            Some(g) => g.fill(buf),
            None => {
                let mut g = Generator::new()?;
                g.fill(buf)?;
                *slot = Some(g);
                Ok(())
            }
        }
    })
}

/// Fills `buf` from the operating system's CSPRNG (one system call).
pub(crate) fn os_fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| os_failure(&e.to_string()))
}

fn os_failure(detail: &str) -> Error {
    Error::KeyUnavailable {
        key_id: "os-random".into(),
        reason: format!("the operating system's random number generator failed: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws never repeat, across refills and reseeds, and consumed bytes are gone from
    /// the buffer.
    #[test]
    fn draws_are_distinct_and_erased_from_the_buffer() {
        let mut g = Generator::new().expect("seeded");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let mut draw = [0u8; 44];
            g.fill(&mut draw).expect("draw");
            assert!(seen.insert(draw), "a draw repeated");
            assert!(
                g.buf[..g.pos].iter().all(|b| *b == 0),
                "handed-out bytes stay zeroed"
            );
            assert!(!g.buf[g.pos..].iter().all(|b| *b == 0) || g.pos == BUFFER);
        }
        // A draw longer than the buffer spans refills.
        let mut long = vec![0u8; 3 * BUFFER];
        g.fill(&mut long).expect("draw");
        assert!(long.chunks(32).all(|c| c.iter().any(|b| *b != 0)));
    }

    /// The key after a refill is not the key before it, and the buffer's first 32 bytes
    /// (the new key) are never handed out.
    #[test]
    fn a_refill_replaces_the_key_and_keeps_it_out_of_the_output() {
        let mut g = Generator::new().expect("seeded");
        let before = *g.key;
        let mut first = [0u8; 16];
        g.fill(&mut first).expect("draw");
        assert_ne!(*g.key, before);
        // Recompute what the refill made from `before`: the output starts at byte 32.
        let mut expect = [0u8; 64];
        ChaCha20::new((&before).into(), &[0u8; 12].into()).apply_keystream(&mut expect);
        assert_eq!(&expect[..32], &*g.key);
        assert_eq!(&expect[32..48], &first);
    }

    /// A state whose pid is not this process's (what a forked child inherits) reseeds
    /// before its next draw instead of continuing the sequence.
    #[test]
    fn another_pid_forces_a_reseed() {
        let mut g = Generator::new().expect("seeded");
        let mut a = [0u8; 32];
        g.fill(&mut a).expect("draw");
        let mut twin = Generator {
            key: g.key.clone(),
            buf: g.buf.clone(),
            pos: g.pos,
            since_seed: g.since_seed,
            pid: g.pid,
            fork: forkguard::Guard::try_new().expect("guard"),
        };
        let mut next = [0u8; 32];
        g.fill(&mut next).expect("draw");
        let mut same = [0u8; 32];
        twin.fill(&mut same).expect("draw");
        assert_eq!(next, same, "a copied state continues the same sequence");
        twin.pid = twin.pid.wrapping_add(1);
        let mut after_fork = [0u8; 32];
        twin.fill(&mut after_fork).expect("draw");
        g.fill(&mut next).expect("draw");
        assert_ne!(after_fork, next, "a state from another pid reseeded");
        assert_eq!(twin.pid, std::process::id());
    }

    #[test]
    fn reseeds_after_the_byte_budget() {
        let mut g = Generator::new().expect("seeded");
        g.since_seed = RESEED_AFTER;
        let key = *g.key;
        let mut a = [0u8; 8];
        g.fill(&mut a).expect("draw");
        assert_eq!(g.since_seed, 8);
        let mut expect = [0u8; 40];
        ChaCha20::new((&key).into(), &[0u8; 12].into()).apply_keystream(&mut expect);
        assert_ne!(&expect[32..], &a, "not the old key's continuation");
    }
}
