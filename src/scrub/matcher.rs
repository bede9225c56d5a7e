//! Finding registered forms in a text, fast when (as in almost every log line) there are
//! none.
//!
//! Every form is at least [`MIN_SECRET_LEN`] bytes long. A text is sampled every
//! [`STEP`] bytes: the 8-byte window at each sample is looked up in a [`WindowFilter`] (a
//! blocked Bloom filter — one 64-bit word per window — of the first [`STEP`] windows of
//! every form). An occurrence of a form is at least `WINDOW + STEP - 1` bytes long, so its
//! first sample falls within its first [`STEP`] bytes with a whole window inside it: the
//! filter never misses one. A sample the filter passes (a real occurrence, or a false
//! positive, well under 1% of samples with the filter's sizing) marks a short stretch of
//! text, and only those stretches are searched, by an Aho-Corasick automaton of every form
//! (overlapping matches, so that one form found inside another cannot hide it) and a
//! linear check of the forms registered since the automaton was built.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};

use super::encodings::{Form, Forms};
use super::MIN_SECRET_LEN;

/// Bytes in one filter window (one unaligned `u64` load).
pub(crate) const WINDOW: usize = 8;

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
    (0..STEP).filter_map(move |o| load(form, o))
}

fn load(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; WINDOW] = bytes.get(at..at + WINDOW)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// A blocked Bloom filter of 8-byte windows. Bits are only ever set (registration sets the
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

/// The automaton of every form known when it was built, and the filter of those forms
/// (and, from registration, of the forms registered since).
pub(crate) struct Built {
    automaton: Option<AhoCorasick>,
    pub(crate) filter: Arc<WindowFilter>,
}

impl Built {
    /// An automaton and a filter of `forms`, the filter with room for `headroom` more
    /// windows.
    pub(crate) fn new(forms: &[&[u8]], headroom: usize) -> Built {
        let filter = WindowFilter::with_capacity(forms.len() * STEP + headroom);
        for form in forms {
            for w in windows(form) {
                filter.insert(w);
            }
        }
        let automaton = if forms.is_empty() {
            None
        } else {
            // Standard semantics: the only kind that reports overlapping matches. A build
            // fails only past the automaton's size limits, far above the scrubber's bounds;
            // should it fail, every sample the filter passes is checked linearly instead.
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(forms)
                .ok()
        };
        Built {
            automaton,
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
}

/// What a text is searched against: a built automaton and the forms registered since.
pub(crate) struct Matcher {
    pub(crate) built: Arc<Built>,
    /// Forms registered since `built` (searched linearly), and — should the automaton have
    /// failed to build — the forms it was meant to hold.
    pub(crate) pending: Vec<Arc<Forms>>,
    /// The longest form in either.
    pub(crate) longest: usize,
}

impl Matcher {
    /// The byte ranges of `text` to redact: every occurrence of every form, overlapping
    /// ones merged, in order.
    pub(crate) fn find(&self, text: &[u8]) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        if text.len() < MIN_SECRET_LEN {
            return found;
        }
        let filter = &*self.built.filter;
        // Stretches of text to search: a sample at q that passes the filter can start an
        // occurrence anywhere in q - STEP + 1 ..= q, which ends by q + longest.
        let mut stretches: Vec<Range<usize>> = Vec::new();
        let last = text.len() - WINDOW;
        let mut q = 0;
        while q <= last {
            let chunk: [u8; WINDOW] = match text[q..q + WINDOW].try_into() {
                Ok(chunk) => chunk,
                Err(_) => break,
            };
            if filter.may_contain(u64::from_le_bytes(chunk)) {
                let start = q.saturating_sub(STEP - 1);
                let end = (q + self.longest).min(text.len());
                match stretches.last_mut() {
                    Some(prev) if prev.end >= start => prev.end = prev.end.max(end),
                    _ => stretches.push(start..end),
                }
            }
            q += STEP;
        }
        for stretch in stretches {
            if let Some(ac) = &self.built.automaton {
                let input = Input::new(text).range(stretch.clone());
                for m in ac.find_overlapping_iter(input) {
                    found.push(m.start()..m.end());
                }
            }
            for forms in &self.pending {
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

    fn matcher(values: &[&str], pending: &[&str]) -> Matcher {
        let built_forms: Vec<Form> = values
            .iter()
            .flat_map(|v| super::super::encodings::forms(v.as_bytes()))
            .collect();
        let refs: Vec<&[u8]> = built_forms.iter().map(|f| f.as_slice()).collect();
        let built = Arc::new(Built::new(&refs, 0));
        let wiped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pending: Vec<Arc<Forms>> = pending
            .iter()
            .map(|v| {
                let forms = Arc::new(Forms::new(v.as_bytes(), wiped.clone()));
                built.filter.insert_forms(forms.list.iter());
                forms
            })
            .collect();
        let longest = built_forms
            .iter()
            .chain(pending.iter().flat_map(|p| p.list.iter()))
            .map(|f| f.len())
            .max()
            .unwrap_or(0);
        Matcher {
            built,
            pending,
            longest,
        }
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
