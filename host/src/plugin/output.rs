//! The guest's standard output and standard error, captured per invocation so that what a
//! language runtime prints when it fails (a JavaScript exception's message, a Python
//! traceback, a Rust panic message) reaches the attempt's error and `plugin run`. Each
//! stream keeps only its last [`TAIL_BYTES`]: a plugin that prints without end costs the
//! host a fixed amount of memory, and a write never fails or blocks the guest.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much of each stream is kept: its last this many bytes.
pub(crate) const TAIL_BYTES: usize = 4096;

/// How much a guest may write in one `write` call (the stream's permit); writes of any
/// total size are accepted, only the tail is kept.
const WRITE_PERMIT: usize = 64 * 1024;

/// The end of what a guest wrote to one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The last bytes written (at most [`TAIL_BYTES`]), as UTF-8 with invalid sequences
    /// replaced.
    pub text: String,
    /// How many bytes before `text` were not kept.
    pub dropped: u64,
}

impl Tail {
    /// Whether the guest wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.dropped == 0
    }

    /// At most the last `max` bytes of the text, on one line: lines trimmed, empty lines
    /// dropped, joined with ` | `, with `…` in front when anything was cut.
    pub fn one_line(&self, max: usize) -> String {
        let joined = self
            .text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if joined.len() <= max && self.dropped == 0 {
            return joined;
        }
        let mut start = joined.len().saturating_sub(max);
        while !joined.is_char_boundary(start) {
            start += 1;
        }
        format!("…{}", &joined[start..])
    }
}

/// The guest's stdout and stderr of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutput {
    pub stdout: Tail,
    pub stderr: Tail,
}

/// One captured stream: a shared, bounded buffer that keeps the most recent bytes. Clones
/// write to the same buffer (the WASI context holds one, the invocation another).
#[derive(Debug, Clone, Default)]
pub(crate) struct TailPipe {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl TailPipe {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn push(&self, data: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the last TAIL_BYTES of `data` can survive.
        let skip = data.len().saturating_sub(TAIL_BYTES);
        buf.dropped += skip as u64;
        let data = &data[skip..];
        let overflow = (buf.bytes.len() + data.len()).saturating_sub(TAIL_BYTES);
        buf.bytes.drain(..overflow);
        buf.dropped += overflow as u64;
        buf.bytes.extend(data);
    }

    /// What has been written since the last `take`, and forgets it: the next invocation of
    /// a reused instance starts with empty streams.
    pub(crate) fn take(&self) -> Tail {
        let tail = self.tail();
        let mut buf = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        buf.bytes.clear();
        buf.dropped = 0;
        tail
    }

    /// What has been written so far.
    pub(crate) fn tail(&self) -> Tail {
        let buf = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (a, b) = buf.bytes.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let mut dropped = buf.dropped;
        let mut start = 0;
        // A cut in the middle of a UTF-8 sequence: start at the next character.
        if dropped > 0 {
            while start < bytes.len() && start < 3 && (bytes[start] & 0b1100_0000) == 0b1000_0000 {
                start += 1;
            }
            dropped += start as u64;
        }
        Tail {
            text: String::from_utf8_lossy(&bytes[start..]).into_owned(),
            dropped,
        }
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_the_bound() {
        let pipe = TailPipe::new();
        pipe.push(b"Error: boom 42\n");
        pipe.push(b"    at deliver\n");
        let tail = pipe.tail();
        assert_eq!(tail.text, "Error: boom 42\n    at deliver\n");
        assert_eq!(tail.dropped, 0);
        assert_eq!(tail.one_line(1000), "Error: boom 42 |     at deliver");
    }

    #[test]
    fn keeps_only_the_last_bytes_of_an_endless_writer() {
        let pipe = TailPipe::new();
        let clone = pipe.clone();
        for i in 0..10_000 {
            clone.push(format!("line {i}\n").as_bytes());
        }
        clone.push(&vec![b'x'; 3 * TAIL_BYTES]);
        clone.push(b"\nValueError: boom 42\n");
        let tail = pipe.tail();
        assert_eq!(tail.text.len(), TAIL_BYTES);
        assert!(tail.text.ends_with("ValueError: boom 42\n"));
        let written: u64 =
            (0..10_000).map(|i| format!("line {i}\n").len() as u64).sum::<u64>() + 3 * TAIL_BYTES as u64 + 21;
        assert_eq!(tail.dropped + tail.text.len() as u64, written);
        let line = tail.one_line(30);
        assert!(line.starts_with('…') && line.ends_with("ValueError: boom 42"), "{line}");
    }

    #[test]
    fn a_cut_inside_a_character_starts_at_the_next_one() {
        let pipe = TailPipe::new();
        pipe.push("é".repeat(TAIL_BYTES).as_bytes()); // two bytes each
        pipe.push("x".as_bytes());
        let tail = pipe.tail();
        assert!(!tail.text.contains('\u{FFFD}'), "no replacement character");
        assert!(tail.text.ends_with("éx"));
        assert_eq!(tail.dropped + tail.text.len() as u64, 2 * TAIL_BYTES as u64 + 1);
    }

    #[test]
    fn one_line_cuts_on_a_character_boundary() {
        let tail = Tail {
            text: "ü".repeat(100),
            dropped: 0,
        };
        let line = tail.one_line(51);
        assert!(line.starts_with('…'));
        assert_eq!(line.trim_start_matches('…'), "ü".repeat(25));
    }
}
