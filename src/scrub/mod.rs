//! The log scrubber: every plaintext value the vault unseals, mints or refreshes is
//! registered here, and log text that carries one — as it is, or in a common encoding — is
//! redacted before it is written.
//!
//! - [`Scrubber::scrub`] / [`Scrubber::scrub_bytes`] redact a text for any sink.
//! - [`Scrubber::writer`] wraps an [`std::io::Write`]; [`Scrubber::wrap`] wraps a
//!   `tracing-subscriber` `MakeWriter` (feature `subscriber`), so that every formatted
//!   event is redacted before it reaches the terminal or the file. (A `tracing` layer can
//!   only observe events; redaction has to happen where the bytes are written.)
//!
//! What is looked for: the value itself; base64 and base64url, padded or not, and the part
//! of a longer base64 text that encodes the value alone (`Authorization: Basic` of
//! `user:password`); percent-encoded (either case of hex, `+` for a space); JSON-escaped
//! (as serde_json writes it, and ASCII-only with `\uXXXX`); `Debug`-escaped; hex in lower
//! and upper case. Each occurrence is replaced by [`REDACTED`].
//!
//! Bounds: values shorter than [`MIN_SECRET_LEN`] bytes are not registered (they would
//! redact ordinary words); at most [`ScrubberConfig::max_values`] values are kept (the
//! oldest registration is forgotten first) and none longer than
//! [`ScrubberConfig::max_age`] since it was last registered. A forgotten value's forms are
//! overwritten with zeros when the last matcher holding them is dropped.
//!
//! How it stays fast: see `matcher.rs`. A registration adds the value's forms to the
//! matcher in use at once (a short list searched linearly, plus the sampling filter), so a
//! value is redacted from the moment `register` returns; a background thread rebuilds the
//! Aho-Corasick automaton of every form off the hot path and swaps it in.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

mod encodings;
mod matcher;
mod writer;

use encodings::Forms;
use matcher::{Built, Matcher, PendingChunk, STEP};
#[cfg(feature = "subscriber")]
pub use writer::ScrubbingMakeWriter;
pub use writer::ScrubbingWriter;

/// Values shorter than this many bytes are not registered: a short value would redact
/// ordinary words and numbers in every log line (and a value this short is guessable
/// anyway). Every form the scrubber looks for is at least this long.
pub const MIN_SECRET_LEN: usize = 10;

/// What a registered value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Bounds of a [`Scrubber`]'s memory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScrubberConfig {
    /// At most this many values are kept; registering one more forgets the value registered
    /// (or re-registered) longest ago. Default 16,384.
    pub max_values: usize,
    /// A value not registered again for this long is forgotten. Default 24 hours.
    pub max_age: Duration,
    /// Whether a background thread rebuilds the automaton after registrations and forgets
    /// aged values (default `true`). Without it, both happen only when the host calls
    /// [`Scrubber::rebuild`] (registered values are redacted either way; the linear list
    /// of values registered since the last build just grows until then).
    pub background: bool,
}

impl Default for ScrubberConfig {
    fn default() -> Self {
        ScrubberConfig {
            max_values: 16_384,
            max_age: Duration::from_secs(24 * 3600),
            background: true,
        }
    }
}

impl ScrubberConfig {
    /// Sets [`ScrubberConfig::max_values`] (at least 1).
    pub fn max_values(mut self, n: usize) -> Self {
        self.max_values = n.max(1);
        self
    }

    /// Sets [`ScrubberConfig::background`].
    pub fn background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// Sets [`ScrubberConfig::max_age`].
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }
}

/// What a [`Scrubber`] holds now (counts and sizes; never a value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScrubberStats {
    /// Values registered and not forgotten.
    pub values: usize,
    /// Their forms (the value and its encodings), in bytes.
    pub form_bytes: usize,
    /// Values registered since the automaton in use was built (searched linearly).
    pub pending: usize,
    /// Automatons built so far.
    pub builds: u64,
    /// Values forgotten so far (bounds, age or [`Scrubber::forget_all`]).
    pub forgotten: u64,
    /// Bytes of forms overwritten with zeros so far.
    pub wiped_bytes: u64,
    /// Values refused for being shorter than [`MIN_SECRET_LEN`].
    pub too_short: u64,
    /// Size of the sampling filter in use, in bytes.
    pub filter_bytes: usize,
    /// Heap size of the automaton in use, in bytes.
    pub automaton_bytes: usize,
}

/// The log scrubber (see the [module documentation](self)). Cheap to clone: clones share
/// one set of registered values.
#[derive(Clone)]
pub struct Scrubber {
    shared: Arc<Shared>,
}

struct Shared {
    config: ScrubberConfig,
    /// Keys the digests by which values are recognised when registered again.
    digest_key: [u8; 32],
    registry: Mutex<Registry>,
    /// The matcher in use; replaced (never changed in place) under the registry lock.
    current: RwLock<Arc<Matcher>>,
    /// One rebuild at a time.
    building: Mutex<()>,
    /// Wakes the background thread (started on the first registration).
    worker: Mutex<Option<mpsc::Sender<()>>>,
    wiped: Arc<AtomicU64>,
    forgotten: AtomicU64,
    too_short: AtomicU64,
    builds: AtomicU64,
}

struct Live {
    digest: [u8; 32],
    at: Instant,
    forms: Arc<Forms>,
}

#[derive(Default)]
struct Registry {
    /// Registration order (oldest first).
    live: BTreeMap<u64, Live>,
    by_digest: HashMap<[u8; 32], u64>,
    next_seq: u64,
    /// Registered since the automaton in use was built.
    pending: Vec<Arc<Forms>>,
    /// Something was forgotten since the automaton in use was built.
    forgot: bool,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("Scrubber")
            .field("values", &stats.values)
            .field("pending", &stats.pending)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::new(ScrubberConfig::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scrubber {
    /// A scrubber with nothing registered.
    pub fn new(config: ScrubberConfig) -> Scrubber {
        let mut digest_key = [0u8; 32];
        // A fixed key only weakens the digests (kept in memory, never written) to plain
        // SHA-256; the scrubber works the same.
        let _ = getrandom::fill(&mut digest_key);
        let empty = Matcher::new(Arc::new(Built::new(Vec::new(), 0)), Vec::new());
        Scrubber {
            shared: Arc::new(Shared {
                config,
                digest_key,
                registry: Mutex::new(Registry::default()),
                current: RwLock::new(Arc::new(empty)),
                building: Mutex::new(()),
                worker: Mutex::new(None),
                wiped: Arc::new(AtomicU64::new(0)),
                forgotten: AtomicU64::new(0),
                too_short: AtomicU64::new(0),
                builds: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide scrubber: what a vault registers its values with unless its builder
    /// was given another ([`crate::VaultBuilder::scrubber`]), so a host that installs
    /// `Scrubber::global().wrap(...)` as its log writer covers every vault it builds.
    pub fn global() -> &'static Scrubber {
        static GLOBAL: OnceLock<Scrubber> = OnceLock::new();
        GLOBAL.get_or_init(Scrubber::default)
    }

    /// The bounds this scrubber keeps.
    pub fn config(&self) -> &ScrubberConfig {
        &self.shared.config
    }

    /// Registers a secret value: from when this returns, every text scrubbed carries
    /// [`REDACTED`] where the value or one of its encodings was. A value already registered
    /// is kept longer (it counts as registered now). Returns `false`, registering nothing,
    /// for a value shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn register(&self, value: &str) -> bool {
        let value = value.as_bytes();
        if value.len() < MIN_SECRET_LEN {
            self.shared.too_short.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.shared.digest_key)
            .chain_update(value)
            .finalize()
            .into();
        let now = Instant::now();
        let mut reg = lock(&self.shared.registry);
        let seq = reg.next_seq;
        reg.next_seq += 1;
        if let Some(old) = reg.by_digest.insert(digest, seq) {
            if let Some(mut live) = reg.live.remove(&old) {
                live.at = now;
                reg.live.insert(seq, live);
                return true;
            }
        }
        let forms = Arc::new(Forms::new(value, self.shared.wiped.clone()));
        reg.live.insert(
            seq,
            Live {
                digest,
                at: now,
                forms: forms.clone(),
            },
        );
        reg.pending.push(forms.clone());
        self.forget_over_bounds(&mut reg, now);
        // The new value joins the matcher in use now, under the registry lock (so that a
        // rebuild finishing meanwhile cannot drop it).
        let current = self.current();
        current.built.filter.insert_forms(forms.list.iter());
        let pending = PendingChunk::push(&current.pending, forms);
        self.install(Matcher::new(current.built.clone(), pending));
        drop(reg);
        self.wake_worker();
        true
    }

    /// [`Scrubber::register`] of a secret string.
    pub fn register_secret(&self, value: &SecretString) -> bool {
        self.register(value.expose_secret())
    }

    /// `text` with every registered value (and its encodings) replaced by [`REDACTED`];
    /// borrowed when there was none.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Every form is ASCII or the whole UTF-8 value, so the cuts fall between
            // characters; lossy is only a guard.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// [`Scrubber::scrub`] of bytes.
    pub fn scrub_bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let matcher = self.current();
        let ranges = matcher.find(text);
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for r in ranges {
            out.extend_from_slice(&text[at..r.start]);
            out.extend_from_slice(REDACTED.as_bytes());
            at = r.end;
        }
        out.extend_from_slice(&text[at..]);
        Cow::Owned(out)
    }

    /// What the scrubber holds now.
    pub fn stats(&self) -> ScrubberStats {
        let (values, form_bytes, pending) = {
            let reg = lock(&self.shared.registry);
            let bytes = reg.live.values().map(|l| l.forms.bytes()).sum();
            (reg.live.len(), bytes, reg.pending.len())
        };
        let current = self.current();
        ScrubberStats {
            values,
            form_bytes,
            pending,
            builds: self.shared.builds.load(Ordering::Relaxed),
            forgotten: self.shared.forgotten.load(Ordering::Relaxed),
            wiped_bytes: self.shared.wiped.load(Ordering::Relaxed),
            too_short: self.shared.too_short.load(Ordering::Relaxed),
            filter_bytes: current.built.filter.bytes(),
            automaton_bytes: current.built.automaton_bytes(),
        }
    }

    /// Forgets values past the bounds (age included) and, when anything was registered or
    /// forgotten since the last build, builds the automaton now, in this thread. The
    /// scrubber does this in the background on its own; this is for a host that wants the
    /// work done at a time of its choosing (and for tests and benchmarks).
    pub fn rebuild(&self) {
        let _one = lock(&self.shared.building);
        let (all, taken) = {
            let mut reg = lock(&self.shared.registry);
            self.forget_over_bounds(&mut reg, Instant::now());
            if reg.pending.is_empty() && !reg.forgot {
                return;
            }
            reg.forgot = false;
            let all: Vec<Arc<Forms>> = reg.live.values().map(|l| l.forms.clone()).collect();
            (all, reg.pending.len())
        };
        // Room in the filter for about a quarter more values before the next build.
        let forms: usize = all.iter().map(|f| f.list.len()).sum();
        let headroom = forms / 4 * STEP + 1024;
        let built = Arc::new(Built::new(all.clone(), headroom));
        let mut reg = lock(&self.shared.registry);
        reg.pending.drain(..taken);
        let mut pending = reg.pending.clone();
        if !built.has_automaton() {
            pending.extend(all);
        }
        for forms in &pending {
            built.filter.insert_forms(forms.list.iter());
        }
        self.install(Matcher::new(built, PendingChunk::chunks(&pending)));
        self.shared.builds.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every value (the matcher in use is replaced by an empty one at once).
    pub fn forget_all(&self) {
        let _one = lock(&self.shared.building);
        let mut reg = lock(&self.shared.registry);
        let n = reg.live.len() as u64;
        reg.live.clear();
        reg.by_digest.clear();
        reg.pending.clear();
        reg.forgot = false;
        self.shared.forgotten.fetch_add(n, Ordering::Relaxed);
        self.install(Matcher::new(
            Arc::new(Built::new(Vec::new(), 0)),
            Vec::new(),
        ));
    }

    fn current(&self) -> Arc<Matcher> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps `matcher` in (the caller holds the registry lock).
    fn install(&self, matcher: Matcher) {
        let old = std::mem::replace(
            &mut *self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            Arc::new(matcher),
        );
        // Dropped outside the write lock: may wipe forgotten forms.
        drop(old);
    }

    /// Drops the oldest values past `max_values` and those older than `max_age`.
    fn forget_over_bounds(&self, reg: &mut Registry, now: Instant) {
        let config = &self.shared.config;
        let mut n = 0;
        while let Some(entry) = reg.live.first_entry() {
            let too_many = reg.by_digest.len() > config.max_values;
            if !too_many && now.duration_since(entry.get().at) <= config.max_age {
                break;
            }
            let live = entry.remove();
            reg.by_digest.remove(&live.digest);
            n += 1;
        }
        if n > 0 {
            reg.forgot = true;
            self.shared.forgotten.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Starts the background thread on first use, and wakes it.
    fn wake_worker(&self) {
        if !self.shared.config.background {
            return;
        }
        let mut worker = lock(&self.shared.worker);
        if let Some(tx) = worker.as_ref() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&self.shared);
        let every = (self.shared.config.max_age / 4).clamp(Duration::from_millis(10), MAX_NAP);
        let spawned = std::thread::Builder::new()
            .name("strongroom-scrub".into())
            .spawn(move || background(weak, rx, every));
        // Without the thread, values stay in the linear list until `rebuild` is called:
        // still redacted, only slower.
        if spawned.is_ok() {
            let _ = tx.send(());
            *worker = Some(tx);
        }
    }
}

/// The longest the background thread sleeps between two looks at the age bound.
const MAX_NAP: Duration = Duration::from_secs(60);

/// The background thread: rebuilds after registrations (coalesced, and resting three times
/// as long as a build took, so that a stream of new values costs at most a quarter of a
/// core) and forgets aged values. Ends when the scrubber is dropped.
fn background(shared: Weak<Shared>, wake: mpsc::Receiver<()>, every: Duration) {
    loop {
        match wake.recv_timeout(every) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while wake.try_recv().is_ok() {}
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let started = Instant::now();
        Scrubber { shared }.rebuild();
        std::thread::sleep(started.elapsed().saturating_mul(3));
    }
}
