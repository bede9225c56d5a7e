//! The log scrubber: registered values and their encodings redacted in tracing output
//! written through its writer, short values refused, the bounds (count, age) keeping memory
//! flat and wiping what is forgotten, and no window between a registration and the
//! automaton's rebuild.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use strongroom::scrub::{Scrubber, ScrubberConfig, MIN_SECRET_LEN, REDACTED};

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Runs `f` with a TRACE-level fmt subscriber writing through `scrubber` into a buffer.
fn logged(scrubber: &Scrubber, f: impl FnOnce()) -> String {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(scrubber.wrap(capture.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    capture.text()
}

fn percent(value: &str, lower: bool) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else if lower {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every encoding of a registered value, written by an application's own log calls, comes
/// out of the subscriber redacted; the text around it is kept.
#[test]
fn a_registered_value_is_redacted_in_every_encoding_in_tracing_output() {
    let scrubber = Scrubber::new(ScrubberConfig::default());
    let secret = "tok/en+Value:42 \"quoted\" é-9f3a";
    assert!(scrubber.register(secret));
    let json = serde_json::to_string(secret).expect("json");
    let json = &json[1..json.len() - 1];
    let basic = STANDARD.encode(format!("alice:{secret}"));
    let encodings: Vec<(&str, String)> = vec![
        ("raw", secret.to_string()),
        ("base64", STANDARD.encode(secret)),
        ("base64 no pad", STANDARD_NO_PAD.encode(secret)),
        ("base64url", URL_SAFE.encode(secret)),
        ("base64url no pad", URL_SAFE_NO_PAD.encode(secret)),
        ("basic auth", basic.clone()),
        ("percent", percent(secret, false)),
        ("percent lower", percent(secret, true)),
        ("json", json.to_string()),
        ("debug", format!("{secret:?}")),
        ("hex", hex::encode(secret)),
        ("HEX", hex::encode_upper(secret)),
    ];
    let out = logged(&scrubber, || {
        for (name, text) in &encodings {
            tracing::info!(encoding = name, "before <{text}> after");
            tracing::trace!(field = %text, "as a field");
            tracing::debug!(field = ?text, "as a debug field");
        }
    });
    for (name, text) in &encodings {
        assert!(!out.contains(text.as_str()), "{name} leaked: {out}");
        assert!(
            out.contains(&format!("encoding=\"{name}\""))
                || out.contains(&format!("encoding={name}")),
            "the line of {name} was written: {out}"
        );
    }
    // No part of the value survives, however it was escaped (`?` of an escaped form
    // escapes it twice).
    for part in ["Value", "quoted", "9f3a", "56616c7565", "VmFsdWU"] {
        assert!(!out.contains(part), "{part} in: {out}");
    }
    assert!(out.contains(&format!("before <{REDACTED}")), "{out}");
    // Of a Basic header at most the characters that also carry "alice:" remain.
    assert!(!out.contains(&basic[8..basic.len() - 4]), "{out}");
    assert_eq!(
        out.lines().count(),
        encodings.len() * 3,
        "one line per event: {out}"
    );
}

#[test]
fn short_values_are_not_registered_and_ordinary_text_is_untouched() {
    let scrubber = Scrubber::new(ScrubberConfig::default());
    let short = "a".repeat(MIN_SECRET_LEN - 1);
    assert!(!scrubber.register("password"));
    assert!(!scrubber.register(&short));
    assert!(!scrubber.register(""));
    assert_eq!(scrubber.stats().too_short, 3);
    assert_eq!(scrubber.stats().values, 0);
    let text = format!("the password is {short} and admin");
    assert!(matches!(scrubber.scrub(&text), Cow::Borrowed(_)));
    // Exactly the minimum is registered.
    let edge = "b".repeat(MIN_SECRET_LEN);
    assert!(scrubber.register(&edge));
    assert_eq!(
        scrubber.scrub(&format!("x{edge}y")),
        format!("x{REDACTED}y")
    );
    // A text with nothing registered in it is handed back as it is.
    assert!(matches!(
        scrubber.scrub("nothing to see here, 0123456789abcdef"),
        Cow::Borrowed(_)
    ));
}

/// A value is redacted from the moment `register` returns: before any rebuild, while one
/// runs in another thread, and after.
#[test]
fn no_window_between_registration_and_rebuild() {
    let scrubber = Scrubber::new(ScrubberConfig::default());
    for i in 0..2000 {
        scrubber.register(&format!("seed-value-{i:06}-xyz"));
    }
    scrubber.rebuild();
    let builder = {
        let s = scrubber.clone();
        std::thread::spawn(move || {
            for _ in 0..5 {
                s.rebuild();
            }
        })
    };
    for i in 0..3000 {
        let value = format!("fresh-{i:05}-{}", i * 7919);
        assert!(scrubber.register(&value));
        let line = format!(
            "request done token={value} and base64={}",
            STANDARD.encode(&value)
        );
        let out = scrubber.scrub(&line);
        assert!(
            !out.contains(&value) && !out.contains(&STANDARD.encode(&value)),
            "{i}: {out}"
        );
    }
    builder.join().expect("builder");
    scrubber.rebuild();
    let stats = scrubber.stats();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.values, 5000);
    assert!(stats.builds >= 2);
    assert_eq!(
        scrubber.scrub("x fresh-00000-0 y seed-value-001999-xyz z"),
        format!("x {REDACTED} y {REDACTED} z")
    );
}

/// The count bound forgets the oldest values; memory stays flat over many waves; what is
/// forgotten is overwritten with zeros (counted as it happens).
#[test]
fn the_count_bound_keeps_memory_flat_and_wipes_what_it_forgets() {
    let scrubber = Scrubber::new(ScrubberConfig::default().max_values(500));
    let value = |wave: usize, i: usize| format!("wave{wave:03}-value-{i:05}-q");
    let mut first = None;
    for wave in 0..8 {
        for i in 0..500 {
            scrubber.register(&value(wave, i));
        }
        scrubber.rebuild();
        let stats = scrubber.stats();
        assert_eq!(stats.values, 500, "wave {wave}");
        assert_eq!(stats.pending, 0);
        let (forms, filter, automaton) =
            *first.get_or_insert((stats.form_bytes, stats.filter_bytes, stats.automaton_bytes));
        assert!(
            stats.form_bytes <= forms * 11 / 10,
            "wave {wave}: {stats:?}"
        );
        assert!(stats.filter_bytes <= filter, "wave {wave}: {stats:?}");
        assert!(
            stats.automaton_bytes <= automaton * 11 / 10,
            "wave {wave}: {stats:?}"
        );
        // The previous wave is forgotten (no longer redacted), this one is not.
        if wave > 0 {
            let old = value(wave - 1, 7);
            assert_eq!(scrubber.scrub(&old), old, "wave {wave}");
        }
        assert_eq!(scrubber.scrub(&value(wave, 7)), REDACTED);
    }
    let stats = scrubber.stats();
    assert_eq!(stats.forgotten, 7 * 500);
    // Every forgotten value's forms were wiped once the matcher holding them went: 3,500
    // values of one shape, so exactly seven times what 500 live ones hold.
    assert_eq!(stats.wiped_bytes, 7 * stats.form_bytes as u64, "{stats:?}");
    let live = stats.form_bytes as u64;
    scrubber.forget_all();
    let after = scrubber.stats();
    assert_eq!(after.values, 0);
    assert_eq!(after.wiped_bytes, stats.wiped_bytes + live);
    assert_eq!(scrubber.scrub(&value(7, 7)), value(7, 7));
}

/// Registering a value again keeps it: the oldest *registration* is forgotten first.
#[test]
fn registering_again_keeps_a_value() {
    let scrubber = Scrubber::new(ScrubberConfig::default().max_values(3));
    let v = |i: usize| format!("kept-value-{i}-abcdef");
    for i in 0..3 {
        scrubber.register(&v(i));
    }
    scrubber.register(&v(0));
    scrubber.register(&v(3));
    scrubber.rebuild();
    assert_eq!(scrubber.stats().values, 3);
    assert_eq!(scrubber.scrub(&v(0)), REDACTED, "re-registered, kept");
    assert_eq!(scrubber.scrub(&v(1)), v(1), "the oldest registration went");
}

/// The age bound: a value not registered again within `max_age` is forgotten by the
/// background thread, with no call to the scrubber.
#[test]
fn the_age_bound_forgets_in_the_background() {
    let scrubber = Scrubber::new(ScrubberConfig::default().max_age(Duration::from_millis(60)));
    assert!(scrubber.register("short-lived-secret-value"));
    assert_eq!(scrubber.stats().values, 1);
    let mut waited = Duration::ZERO;
    while scrubber.stats().values > 0 && waited < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    let stats = scrubber.stats();
    assert_eq!(stats.values, 0, "{stats:?}");
    assert_eq!(stats.forgotten, 1);
    // Rebuilt without it, and its forms wiped.
    while scrubber.stats().wiped_bytes == 0 && waited < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    assert!(scrubber.stats().wiped_bytes > 0);
    assert_eq!(
        scrubber.scrub("short-lived-secret-value"),
        "short-lived-secret-value"
    );
}

/// The plain writer: a value split over several writes is still found; a long-lived
/// writer writes out at line ends past 64 KiB; a flush writes everything held.
#[test]
fn the_writer_scrubs_across_writes() {
    let scrubber = Scrubber::new(ScrubberConfig::default());
    scrubber.register("split-across-writes-secret");
    let capture = Capture::default();
    {
        let mut w = scrubber.writer(capture.clone());
        w.write_all(b"a split-across-").expect("write");
        w.write_all(b"writes-secret b\n").expect("write");
        w.flush().expect("flush");
        assert_eq!(capture.text(), format!("a {REDACTED} b\n"));
        let line = "x".repeat(1000) + "\n";
        for _ in 0..70 {
            w.write_all(line.as_bytes()).expect("write");
        }
        assert!(capture.text().len() > 64 * 1024, "written out past 64 KiB");
        w.write_all(b"tail split-across-writes-secret")
            .expect("write");
    }
    let text = capture.text();
    assert!(
        text.ends_with(&format!("tail {REDACTED}")),
        "written on drop"
    );
    assert!(!text.contains("writes-secret"));
}

/// The process-wide scrubber is one instance.
#[test]
fn the_global_scrubber_is_shared() {
    let a = Scrubber::global();
    let b = Scrubber::global();
    a.register("global-scrubber-value-1");
    assert_eq!(b.scrub("global-scrubber-value-1"), REDACTED);
}
