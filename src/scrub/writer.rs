//! Writers that scrub what passes through them.

use std::io::{self, Write};

use zeroize::Zeroize;

use super::Scrubber;

/// Past this many buffered bytes, a [`ScrubbingWriter`] writes out up to its last newline
/// (so that a long-lived writer does not grow without bound).
const SPILL: usize = 64 * 1024;

/// An [`io::Write`] that scrubs what is written to it ([`Scrubber::writer`]).
///
/// Bytes are held until [`flush`](Write::flush), the writer's drop, or past 64 KiB (up to
/// the last newline), then scrubbed as one text and written to the inner writer: a value
/// split over several `write` calls — as a formatter may write one event piece by piece —
/// is still found. The held bytes are overwritten with zeros once written.
pub struct ScrubbingWriter<W: Write> {
    scrubber: Scrubber,
    inner: W,
    held: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for ScrubbingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubbingWriter")
            .field("held", &self.held.len())
            .finish()
    }
}

impl Scrubber {
    /// Wraps `inner` so that everything written through it is scrubbed first.
    pub fn writer<W: Write>(&self, inner: W) -> ScrubbingWriter<W> {
        ScrubbingWriter {
            scrubber: self.clone(),
            inner,
            held: Vec::with_capacity(1024),
        }
    }

    /// Wraps a `tracing-subscriber` `MakeWriter` (`std::io::stderr`, a file appender, ...)
    /// so that every event the fmt layer formats is scrubbed before it is written:
    ///
    /// ```
    /// let scrubber = strongroom::scrub::Scrubber::global();
    /// let subscriber = tracing_subscriber::fmt()
    ///     .with_writer(scrubber.wrap(std::io::stderr))
    ///     .finish();
    /// # drop(subscriber);
    /// ```
    #[cfg(feature = "subscriber")]
    pub fn wrap<M>(&self, inner: M) -> ScrubbingMakeWriter<M> {
        ScrubbingMakeWriter {
            scrubber: self.clone(),
            inner,
        }
    }
}

impl<W: Write> ScrubbingWriter<W> {
    /// Scrubs and writes the first `n` held bytes, then wipes them.
    fn emit(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let result = {
            let out = self.scrubber.scrub_bytes(&self.held[..n]);
            self.inner.write_all(&out)
        };
        self.held[..n].zeroize();
        self.held.drain(..n);
        result
    }
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.held.len() + buf.len() > self.held.capacity() {
            // Grow into a new buffer and wipe the old one (growth in place would leave the
            // old bytes behind).
            let mut grown =
                Vec::with_capacity((self.held.len() + buf.len()).max(2 * self.held.capacity()));
            grown.extend_from_slice(&self.held);
            self.held.zeroize();
            self.held = grown;
        }
        self.held.extend_from_slice(buf);
        if self.held.len() > SPILL {
            if let Some(nl) = self.held.iter().rposition(|&b| b == b'\n') {
                self.emit(nl + 1)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit(self.held.len())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for ScrubbingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
        self.held.zeroize();
    }
}

/// A `tracing-subscriber` `MakeWriter` whose writers scrub ([`Scrubber::wrap`]).
#[cfg(feature = "subscriber")]
#[derive(Debug)]
pub struct ScrubbingMakeWriter<M> {
    scrubber: Scrubber,
    inner: M,
}

#[cfg(feature = "subscriber")]
impl<'a, M> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbingMakeWriter<M>
where
    M: tracing_subscriber::fmt::MakeWriter<'a>,
{
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        self.scrubber.writer(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        self.scrubber.writer(self.inner.make_writer_for(meta))
    }
}
