//! Finding registered forms in a text, fast when (as in almost every log line) there are
//! none.
//!
//! Every form is at least [`MIN_SECRET_LEN`] bytes long. A text is sampled every
//! [`STEP`] bytes: the 6-byte window at each sample is looked up in a [`WindowFilter`] (a
//! blocked Bloom filter — one 64-bit word per window — of the first [`STEP`] windows of
//! every form). An occurrence of a form is at least `WINDOW + STEP - 1` bytes long, so its
//! first sample falls within its first [`STEP`] bytes with a whole window inside it: the
//! filter never misses one. A sample the filter passes (a real occurrence, or a false
//! positive, well under 1% of samples with the filter's sizing) is looked up in an exact
//! set of those windows; only a real hit marks a short stretch of text to search, by an
//! Aho-Corasick automaton of every form's first bytes (overlapping matches, so that one
//! form found inside another cannot hide it; each match confirmed against the whole form)
//! and a linear check of the forms registered since the automaton was built.
//!
//! With nothing registered the same loop runs over an empty 8 KiB filter: the work per
//! byte is the same shape, which is what the benchmark compares.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};

use super::encodings::{Form, Forms};
use super::MIN_SECRET_LEN;

/// Bytes in one filter window (held in a `u64`). Six bytes of a secret-like text are
/// rare enough in log text (a chance of about one in a few million per sample to hit a
/// window of 10,000 values) and leave a longer stride between samples than eight.
pub(crate) const WINDOW: usize = 6;

/// Bytes between two samples of a text: the longest stride that still puts a whole window
/// inside every form's first `STEP` bytes.
pub(crate) const STEP: usize = MIN_SECRET_LEN - WINDOW + 1;

/// Filter bits set per window (all in one 64-bit word).
const BITS_PER_WINDOW: u32 = 4;

/// At most this many windows per filter word when the filter is built (about 0.1% false
/// positives at 2-4 per word).
const WINDOWS_PER_WORD: usize = 4;

/// The smallest filter (8 KiB).
const MIN_WORDS: usize = 1024;

/// The first [`STEP`] windows of a form (the forms are never shorter than
/// `WINDOW + STEP - 1`).
pub(crate) fn windows(form: &[u8]) -> impl Iterator<Item = u64> + '_ {
    (0..STEP).filter_map(move |o| load_checked(form, o))
}

/// The exact-set keys of a form: at each of its first [`STEP`] offsets, the 8 bytes there
/// when the form is that long, else the [`WINDOW`] bytes. Six bytes of hex are common in
/// logs (digests, ids) and a hex form's six-byte windows would send many samples to a
/// search: the longer key keeps those to a real occurrence.
pub(crate) fn keys(form: &[u8]) -> impl Iterator<Item = u64> + '_ {
    (0..STEP).filter_map(move |o| long_key(form, o).or_else(|| load_checked(form, o)))
}

/// The 8 bytes at `at`, when there are 8.
#[inline(always)]
fn long_key(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

fn load_checked(bytes: &[u8], at: usize) -> Option<u64> {
    let mut chunk = [0u8; 8];
    chunk[..WINDOW].copy_from_slice(bytes.get(at..at + WINDOW)?);
    Some(u64::from_le_bytes(chunk))
}

/// The window at `at` (the caller has checked that it lies within `bytes`).
#[inline(always)]
fn load(bytes: &[u8], at: usize) -> u64 {
    let mut chunk = [0u8; 8];
    chunk[..WINDOW].copy_from_slice(&bytes[at..at + WINDOW]);
    u64::from_le_bytes(chunk)
}

/// A blocked Bloom filter of 6-byte windows. Bits are only ever set (registration sets the
/// bits of a new value's forms in the filter in use); a rebuild makes a new one.
pub(crate) struct WindowFilter {
    words: Box<[AtomicU64]>,
    shift: u32,
}

impl WindowFilter {
    /// A filter sized for `windows` windows.
    pub(crate) fn with_capacity(windows: usize) -> WindowFilter {
        let words = windows
            .div_ceil(WINDOWS_PER_WORD)
            .max(MIN_WORDS)
            .next_power_of_two();
        WindowFilter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            shift: 64 - words.trailing_zeros(),
        }
    }

    /// The filter's size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    #[inline(always)]
    fn slot(&self, window: u64) -> (usize, u64) {
        let h = window.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let word = (h >> self.shift) as usize;
        let g = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut mask = 0u64;
        for i in 0..BITS_PER_WINDOW {
            mask |= 1 << ((g >> (40 + 6 * i)) & 63);
        }
        (word, mask)
    }

    /// Adds a window.
    pub(crate) fn insert(&self, window: u64) {
        let (word, mask) = self.slot(window);
        self.words[word].fetch_or(mask, Ordering::Relaxed);
    }

    /// Adds the windows of every form.
    pub(crate) fn insert_forms<'a>(&self, forms: impl IntoIterator<Item = &'a Form>) {
        for form in forms {
            for w in windows(form) {
                self.insert(w);
            }
        }
    }

    #[inline(always)]
    fn may_contain(&self, window: u64) -> bool {
        let (word, mask) = self.slot(window);
        self.words[word].load(Ordering::Relaxed) & mask == mask
    }
}

/// An exact set of windows (open addressing), what a sample the filter passes is checked
/// against before any search.
pub(crate) struct WindowSet {
    slots: Box<[u64]>,
    /// The window of zero bytes (the empty-slot marker) is in the set.
    zero: bool,
}

impl WindowSet {
    pub(crate) fn new<'a>(forms: impl Iterator<Item = &'a Form> + Clone) -> WindowSet {
        let n = forms.clone().count() * STEP;
        let mut set = WindowSet {
            slots: vec![0u64; (2 * n).max(8).next_power_of_two()].into_boxed_slice(),
            zero: false,
        };
        for form in forms {
            for key in keys(form) {
                set.insert(key);
            }
        }
        set
    }

    #[inline(always)]
    fn home(&self, window: u64) -> usize {
        (window.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize & (self.slots.len() - 1)
    }

    fn insert(&mut self, window: u64) {
        if window == 0 {
            self.zero = true;
            return;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(window);
        while self.slots[i] != 0 && self.slots[i] != window {
            i = (i + 1) & mask;
        }
        self.slots[i] = window;
    }

    /// Whether a sample of `text` at `q` whose window is `window` is a key of the set.
    #[inline]
    fn hit(&self, text: &[u8], q: usize, window: u64) -> bool {
        self.contains(window) || long_key(text, q).is_some_and(|k| self.contains(k))
    }

    pub(crate) fn contains(&self, window: u64) -> bool {
        if window == 0 {
            return self.zero;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(window);
        loop {
            match self.slots[i] {
                0 => return false,
                w if w == window => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

/// The automaton of every form known when it was built, and the filter of those forms
/// (and, from registration, of the forms registered since).
///
/// The automaton holds each form's first [`PREFIX`] bytes; a match is confirmed by
/// comparing the whole form, so the automaton stays small (and quick to build) however
/// long the values are.
pub(crate) struct Built {
    automaton: Option<AhoCorasick>,
    /// Pattern id -> (index in `forms`, index of the form).
    owners: Vec<(u32, u16)>,
    forms: Vec<Arc<Forms>>,
    exact: WindowSet,
    pub(crate) filter: Arc<WindowFilter>,
}

/// Bytes of each form the automaton holds.
const PREFIX: usize = 24;

impl Built {
    /// An automaton, exact window set and filter of the forms of `values`, the filter with
    /// room for `headroom` more windows.
    pub(crate) fn new(values: Vec<Arc<Forms>>, headroom: usize) -> Built {
        let all = || values.iter().flat_map(|f| f.list.iter());
        let filter = WindowFilter::with_capacity(all().count() * STEP + headroom);
        filter.insert_forms(all());
        let exact = WindowSet::new(all());
        let mut owners = Vec::new();
        let mut prefixes: Vec<&[u8]> = Vec::new();
        for (i, forms) in values.iter().enumerate() {
            for (k, form) in forms.list.iter().enumerate() {
                owners.push((i as u32, k as u16));
                prefixes.push(&form[..form.len().min(PREFIX)]);
            }
        }
        let automaton = if prefixes.is_empty() {
            None
        } else {
            // Standard semantics: the only kind that reports overlapping matches (and
            // every pattern of a shared prefix). A build fails only past the automaton's
            // size limits, far above the scrubber's bounds; should it fail, the scrubber
            // searches these forms linearly instead.
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&prefixes)
                .ok()
        };
        drop(prefixes);
        Built {
            automaton,
            owners,
            forms: values,
            exact,
            filter: Arc::new(filter),
        }
    }

    /// The automaton's heap size in bytes.
    pub(crate) fn automaton_bytes(&self) -> usize {
        self.automaton.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    /// Whether the automaton was built (it is absent for no forms, or if building failed).
    pub(crate) fn has_automaton(&self) -> bool {
        self.automaton.is_some()
    }

    /// Every form occurrence in `text` whose first [`PREFIX`] bytes lie in `stretch`.
    fn search(&self, text: &[u8], stretch: Range<usize>, found: &mut Vec<Range<usize>>) {
        let Some(ac) = &self.automaton else { return };
        for m in ac.find_overlapping_iter(Input::new(text).range(stretch)) {
            let (i, k) = self.owners[m.pattern().as_usize()];
            let form = &self.forms[i as usize].list[k as usize];
            if text[m.start()..].starts_with(form) {
                found.push(m.start()..m.start() + form.len());
            }
        }
    }
}

/// Up to [`CHUNK`] values registered since the automaton was built, with the set of their
/// forms' windows. Pending values are kept in chunks so that a registration copies only
/// the last chunk, whatever the number pending.
pub(crate) struct PendingChunk {
    pub(crate) forms: Vec<Arc<Forms>>,
    windows: WindowSet,
    /// The longest form in the chunk.
    longest: usize,
}

/// Values per [`PendingChunk`].
const CHUNK: usize = 64;

impl PendingChunk {
    fn new(forms: Vec<Arc<Forms>>) -> PendingChunk {
        let windows = WindowSet::new(forms.iter().flat_map(|f| f.list.iter()));
        let longest = forms
            .iter()
            .flat_map(|f| f.list.iter().map(|form| form.len()))
            .max()
            .unwrap_or(0);
        PendingChunk {
            forms,
            windows,
            longest,
        }
    }

    /// `forms` in chunks.
    pub(crate) fn chunks(forms: &[Arc<Forms>]) -> Vec<Arc<PendingChunk>> {
        forms
            .chunks(CHUNK)
            .map(|c| Arc::new(PendingChunk::new(c.to_vec())))
            .collect()
    }

    /// `pending` with `forms` added (the last chunk copied, or a new one).
    pub(crate) fn push(pending: &[Arc<PendingChunk>], forms: Arc<Forms>) -> Vec<Arc<PendingChunk>> {
        let mut out = pending.to_vec();
        match out.last() {
            Some(last) if last.forms.len() < CHUNK => {
                let mut list = last.forms.clone();
                list.push(forms);
                *out.last_mut().expect("a last chunk") = Arc::new(PendingChunk::new(list));
            }
            _ => out.push(Arc::new(PendingChunk::new(vec![forms]))),
        }
        out
    }
}

/// What a text is searched against: a built automaton and the forms registered since.
pub(crate) struct Matcher {
    pub(crate) built: Arc<Built>,
    /// Values registered since `built` (searched linearly), and — should the automaton
    /// have failed to build — the values it was meant to hold.
    pub(crate) pending: Vec<Arc<PendingChunk>>,
}

/// Merges `start..end` into the last stretch when they touch, or adds it.
#[inline]
fn add_stretch(stretches: &mut Vec<Range<usize>>, start: usize, end: usize) {
    match stretches.last_mut() {
        Some(prev) if prev.end >= start => prev.end = prev.end.max(end),
        _ => stretches.push(start..end),
    }
}

impl Matcher {
    /// A matcher of `built` and the `pending` values.
    pub(crate) fn new(built: Arc<Built>, pending: Vec<Arc<PendingChunk>>) -> Matcher {
        Matcher { built, pending }
    }

    /// The byte ranges of `text` to redact: every occurrence of every form, overlapping
    /// ones merged, in order.
    pub(crate) fn find(&self, text: &[u8]) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        if text.len() < MIN_SECRET_LEN {
            return found;
        }
        let filter = &*self.built.filter;
        // Stretches of text to search: a sample at q whose window is a form's window can
        // start an occurrence anywhere in q - STEP + 1 ..= q.
        let mut built_stretches: Vec<Range<usize>> = Vec::new();
        let mut pending_stretches: Vec<(usize, Range<usize>)> = Vec::new();
        let mut candidate = |q: usize, w: u64| {
            let start = q.saturating_sub(STEP - 1);
            if self.built.exact.hit(text, q, w) {
                add_stretch(&mut built_stretches, start, (q + PREFIX).min(text.len()));
            }
            for (c, chunk) in self.pending.iter().enumerate() {
                if chunk.windows.hit(text, q, w) {
                    let end = (q + chunk.longest).min(text.len());
                    pending_stretches.push((c, start..end));
                }
            }
        };
        let n = text.len();
        let mut q = 0;
        // Four samples a round: independent loads, one branch.
        while q + 3 * STEP + WINDOW <= n {
            let w = [
                load(text, q),
                load(text, q + STEP),
                load(text, q + 2 * STEP),
                load(text, q + 3 * STEP),
            ];
            let hits = [
                filter.may_contain(w[0]),
                filter.may_contain(w[1]),
                filter.may_contain(w[2]),
                filter.may_contain(w[3]),
            ];
            if hits[0] | hits[1] | hits[2] | hits[3] {
                for i in 0..4 {
                    if hits[i] {
                        candidate(q + i * STEP, w[i]);
                    }
                }
            }
            q += 4 * STEP;
        }
        while q + WINDOW <= n {
            let w = load(text, q);
            if filter.may_contain(w) {
                candidate(q, w);
            }
            q += STEP;
        }
        for stretch in built_stretches {
            self.built.search(text, stretch, &mut found);
        }
        for (c, stretch) in pending_stretches {
            for forms in &self.pending[c].forms {
                for form in &forms.list {
                    find_linear(text, &stretch, form, &mut found);
                }
            }
        }
        merge(found)
    }
}

/// Every occurrence of `form` starting in `stretch` and ending within it.
fn find_linear(text: &[u8], stretch: &Range<usize>, form: &[u8], found: &mut Vec<Range<usize>>) {
    let hay = &text[stretch.clone()];
    if hay.len() < form.len() {
        return;
    }
    for (i, w) in hay.windows(form.len()).enumerate() {
        if w == form {
            found.push(stretch.start + i..stretch.start + i + form.len());
        }
    }
}

/// Sorts and merges overlapping or touching ranges.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    if ranges.len() < 2 {
        return ranges;
    }
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if prev.end >= r.start => prev.end = prev.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn the_window_set_is_exact() {
        let forms: Vec<Form> = [&b"abcdefghij"[..], &[0u8; 12][..]]
            .iter()
            .map(|f| Zeroizing::new(f.to_vec()))
            .collect();
        let set = WindowSet::new(forms.iter());
        // 8-byte keys where the form is long enough, the 6-byte window after that.
        let text = b"abcdefghij";
        for q in 0..STEP {
            assert!(set.hit(text, q, load(text, q)), "{q}");
        }
        assert!(set.contains(long_key(b"abcdefgh", 0).expect("8")));
        assert!(!set.contains(load(b"abcdef", 0)), "keyed by 8 bytes");
        assert!(
            set.contains(load(b"efghij", 0)),
            "offset 4: 6 bytes left of 8"
        );
        assert!(set.contains(0));
        // A window past the first STEP, and windows no form has.
        assert!(!set.hit(b"fghijkl", 0, load(b"fghijk", 0)));
        assert!(!set.hit(b"abcdefgX", 0, load(b"abcdef", 0)));
    }

    fn matcher(values: &[&str], pending: &[&str]) -> Matcher {
        let wiped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let held = |v: &&str| Arc::new(Forms::new(v.as_bytes(), wiped.clone()));
        let built = Arc::new(Built::new(values.iter().map(held).collect(), 0));
        let pending: Vec<Arc<Forms>> = pending.iter().map(held).collect();
        for forms in &pending {
            built.filter.insert_forms(forms.list.iter());
        }
        Matcher::new(built, PendingChunk::chunks(&pending))
    }

    #[test]
    fn finds_a_value_at_every_offset_and_at_both_ends() {
        let secret = "0123456789abcdefXYZ";
        let m = matcher(&[secret], &[]);
        let p = matcher(&[], &[secret]);
        for pad in 0..40 {
            let text = format!("{}{secret}{}", "-".repeat(pad), "+".repeat(pad % 7));
            for m in [&m, &p] {
                assert_eq!(
                    m.find(text.as_bytes()),
                    vec![pad..pad + secret.len()],
                    "{text}"
                );
            }
        }
        // Exactly the value, and a value of exactly the minimum length.
        assert_eq!(m.find(secret.as_bytes()), vec![0..secret.len()]);
        let short = "abcdefghij";
        assert_eq!(short.len(), MIN_SECRET_LEN);
        let s = matcher(&[short], &[]);
        for pad in 0..12 {
            let text = format!("{}{short}", " ".repeat(pad));
            assert_eq!(s.find(text.as_bytes()), vec![pad..pad + short.len()]);
        }
    }

    #[test]
    fn overlapping_occurrences_are_all_covered() {
        // The second value starts inside the first: both are redacted as one stretch.
        let a = "AAAAAAAAAAxyzxyzxyz";
        let b = "xyzxyzxyzBBBBBBBBBBBB";
        let m = matcher(&[a, b], &[]);
        let text = "..AAAAAAAAAAxyzxyzxyzBBBBBBBBBBBB..";
        assert_eq!(m.find(text.as_bytes()), vec![2..text.len() - 2]);
    }

    #[test]
    fn a_text_without_values_yields_nothing() {
        let m = matcher(&["a-long-registered-value"], &["another-registered-value"]);
        let text = "an ordinary log line, a-long-registered-valu and another-registered-valu";
        assert!(m.find(text.as_bytes()).is_empty());
        let form: Form = Zeroizing::new(b"abc".to_vec());
        let mut found = Vec::new();
        find_linear(b"ab", &(0..2), &form, &mut found);
        assert!(found.is_empty());
    }
}
