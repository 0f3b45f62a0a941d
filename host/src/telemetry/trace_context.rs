//! The W3C Trace Context of an event: its `traceparent` (version `00`), taken from the
//! producer (an HTTP header on ingest, or a source's mapped column), kept with the event, and
//! handed on as a child to every outbound request of its deliveries, so that the receiver's
//! trace joins the producer's. Only the value's rules live here; the spans are `traces`'.

use std::fmt;

/// A valid `traceparent`: a trace id, the parent span's id and the trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, with
    /// neither id all zeros. A later version's value is read by its first four fields, as the
    /// specification asks; anything else is `None` (and then ignored, as a tracer would).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && rest.is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        let [flags] = decode_hex::<1>(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A context from its parts (as a tracer hands them), if both ids are valid.
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self {
            trace_id,
            span_id,
            flags: u8::from(sampled),
        })
    }

    /// The same trace, with a new span of `span_id` as the parent: what an outbound request
    /// carries when no tracer made a span for it.
    pub fn child(self, span_id: [u8; 8]) -> Self {
        Self {
            span_id: if span_id == [0; 8] {
                [0, 0, 0, 0, 0, 0, 0, 1]
            } else {
                span_id
            },
            ..self
        }
    }

    /// The same trace with a random new parent span.
    pub fn random_child(self) -> Self {
        self.child(rand::random())
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Whether the producer records this trace (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lower-case hex digits: what log lines carry.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_reads_and_writes_back_the_same() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tp.sampled());
        assert!(
            !TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled()
        );
    }

    #[test]
    fn malformed_values_are_not_contexts() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version is read by its first four fields.
        let later = TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").unwrap();
        assert_eq!(later.to_string(), GOOD);
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_parent() {
        let tp = TraceParent::parse(GOOD).unwrap();
        let child = tp.random_child();
        assert_eq!(child.trace_id(), tp.trace_id());
        assert_eq!(child.sampled(), tp.sampled());
        assert_ne!(child.span_id(), tp.span_id());
        assert_ne!(tp.child([0; 8]).span_id(), [0; 8]);
    }
}
