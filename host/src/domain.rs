//! The outbox's vocabulary: identifiers, statuses and outcomes, as validated newtypes and
//! enums with explicit string mappings. Every other module speaks in these types; the
//! strings they map to are what the database stores and the API shows.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Milliseconds since the Unix epoch (UTC). All persisted times use this unit.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Formats [`Millis`] as an RFC 3339 UTC timestamp with millisecond precision.
pub fn format_ms(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses a time given as RFC 3339 (`2026-11-28T10:00:00Z`) or as milliseconds since the
/// Unix epoch.
pub fn parse_time(s: &str) -> Result<Millis, InvalidValue> {
    if let Ok(ms) = s.parse::<Millis>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as Millis)
        .ok_or_else(|| {
            InvalidValue(format!(
                "`{s}` is not a time: use RFC 3339 or milliseconds since the epoch"
            ))
        })
}

/// A value that failed validation, with a message fit for an API error body.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// The id of an accepted event: a UUIDv7, so ids sort by acceptance time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidValue(format!("`{s}` is not a valid event id (a UUID)")))
    }
}

/// The name of a target: lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter or digit, at most 64 characters. It is the manifest's file stem.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TargetName(String);

impl TargetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TargetName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        let starts_well = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if starts_well && s.len() <= 64 && s.chars().all(valid_char) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "`{s}` is not a valid target name: use 1-64 of a-z, 0-9, `-`, `_`, starting with a letter or digit"
            )))
        }
    }
}

/// An event type such as `order.created`: 1-255 of ASCII letters, digits and `.` `_` `-` `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(String);

impl EventType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventType {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
        if s.is_empty() {
            Err(InvalidValue("`type` must not be empty".into()))
        } else if s.len() > 255 || !s.chars().all(ok) {
            Err(InvalidValue(format!(
                "`type` `{s}` is invalid: use at most 255 of letters, digits, `.`, `_`, `-`, `:`"
            )))
        } else {
            Ok(Self(s))
        }
    }
}

impl From<EventType> for String {
    fn from(t: EventType) -> String {
        t.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A producer-supplied idempotency key: 1-255 characters. The same key always resolves to
/// the first event accepted with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProducerKey(String);

impl ProducerKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProducerKey {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > 255 {
            Err(InvalidValue("`idempotency_key` must be 1-255 bytes".into()))
        } else if s.contains('\0') {
            // PostgreSQL's text cannot hold it: refused alike on both stores.
            Err(InvalidValue("`idempotency_key` must not contain NUL characters".into()))
        } else {
            Ok(Self(s))
        }
    }
}

impl From<ProducerKey> for String {
    fn from(k: ProducerKey) -> String {
        k.0
    }
}

/// The idempotency key of one delivery, stable per (event, target) across every retry and
/// different for each target, so receivers can deduplicate at-least-once delivery.
/// It is derived, never stored: `<event id>.<target>`.
pub fn delivery_key(event: &EventId, target: &TargetName) -> String {
    format!("{event}.{target}")
}

/// Defines an enum whose variants map to fixed strings, used in SQL and JSON alike.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string stored in the database and shown by the API.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(InvalidValue(format!(
                        concat!("unknown ", stringify!($name), " `{}`"), other
                    ))),
                }
            }
        }
    };
}

string_enum! {
    /// Where one delivery (one event to one target) stands.
    DeliveryStatus {
        /// Waiting for its `next_attempt_at`.
        Pending => "pending",
        /// Claimed under a lease by a worker that is attempting it now.
        InFlight => "in_flight",
        /// The target accepted it. Final.
        Delivered => "delivered",
        /// Permanently failed or out of attempts. Final until replayed.
        Dead => "dead",
        /// A best-effort target gave up on it. Final until replayed; counted, not alerted.
        Discarded => "discarded",
        /// Its target is not loaded (its plugin was removed): kept, not attempted, and
        /// pending again as soon as the target is back.
        Paused => "paused",
        /// An operator cancelled it (`POST /v1/events/{id}/cancel`) before it was delivered.
        /// Final: never attempted again, not replayable.
        Cancelled => "cancelled",
    }
}

impl DeliveryStatus {
    /// Whether nothing more will happen to the delivery unless it is replayed.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Dead | Self::Discarded | Self::Cancelled)
    }

    /// Whether a cancellation takes the delivery: one that waits (`pending`, `paused`) or
    /// failed for good but could still be replayed (`dead`). An `in_flight` one cannot be
    /// recalled (its attempt is running), and the other final ones stay what they are.
    pub fn is_cancellable(self) -> bool {
        matches!(self, Self::Pending | Self::Paused | Self::Dead)
    }

    /// Whether the delivery is still to be done: the backlog (`pending`, `in_flight`, `paused`).
    pub fn is_backlog(self) -> bool {
        matches!(self, Self::Pending | Self::InFlight | Self::Paused)
    }
}

string_enum! {
    /// Where a bulk replay job stands (`POST /v1/deliveries/replay` with a filter).
    ReplayJobStatus {
        /// Chunks are still to be replayed; `serve` works it (and resumes it after a restart).
        Running => "running",
        /// Every match up to its bound was reached. Final.
        Done => "done",
        /// Cancelled by an operator; the chunks committed before stay replayed. Final.
        Cancelled => "cancelled",
        /// Could not be worked (its stored filter is not understood by this version). Final.
        Failed => "failed",
    }
}

impl ReplayJobStatus {
    /// Whether nothing more will happen to the job.
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

string_enum! {
    /// How a target fails, and so how it is retried and scheduled.
    TargetClass {
        /// Must eventually succeed: a long retry schedule, then `dead` and an
        /// `outboxd.delivery.dead` event.
        Critical => "critical",
        /// A few quick attempts, then `discarded`.
        BestEffort => "best-effort",
        /// Long deadlines; runs only on its own concurrency, never on the shared pool.
        Slow => "slow",
        /// The plugin takes many events per call (`batch-target` world).
        Batched => "batched",
    }
}

string_enum! {
    /// How one attempt ended, as recorded in the attempt history.
    AttemptOutcome {
        /// The attempt is still running.
        Running => "running",
        /// The plugin reported success.
        Delivered => "delivered",
        /// A retryable failure: from the plugin, or a trap, deadline or memory cap in the host.
        Retry => "retry",
        /// The plugin reported a permanent failure.
        Permanent => "permanent",
        /// The worker stopped (crash, shutdown, lost lease) before the attempt finished.
        Abandoned => "abandoned",
    }
}

/// Longest error text kept for a delivery (`last_error`, history), in bytes.
pub const MAX_ERROR_TEXT: usize = 4096;

/// Longest failure reason taken from a plugin: room is left for the prefix the retry
/// decision adds (`gave up after N attempts: `), so the stored text keeps the original length.
pub const MAX_REASON_TEXT: usize = MAX_ERROR_TEXT - 256;

/// Cuts `text` to at most `max` bytes (at a character boundary), ending with
/// `… [cut from N bytes]`, so that a plugin cannot fill the database or the log with one
/// reason. A text that fits is returned as it is.
pub fn cap_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let note = format!("… [cut from {} bytes]", text.len());
    let mut cut = max.saturating_sub(note.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{note}", &text[..cut])
}

/// [`cap_text`] at [`MAX_ERROR_TEXT`]: what is stored as a delivery's error.
pub fn cap_error_text(text: String) -> String {
    cap_text(text, MAX_ERROR_TEXT)
}

/// The most of a receiver's response body an attempt's history keeps, in bytes.
pub const MAX_RESPONSE_EXCERPT: usize = 1024;

/// What the receiver answered to an attempt, as the host saw it: the HTTP status of the last
/// response the plugin received through the host, and the beginning of its body, exactly as
/// sent (nothing is redacted: it is the receiver's own text) but bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverResponse {
    pub status: u16,
    /// At most [`MAX_RESPONSE_EXCERPT`] bytes of text, then `… [cut from N bytes]` if the body
    /// was longer (N: the bytes the host read).
    pub body: String,
}

impl ReceiverResponse {
    /// `status` and the first [`MAX_RESPONSE_EXCERPT`] bytes of `body` as text: UTF-8 as sent,
    /// a character the cut would split left out, any byte that is not UTF-8 as U+FFFD (and the
    /// text cut again at [`MAX_RESPONSE_EXCERPT`] should that have made it longer), marked
    /// when anything was left out.
    pub fn new(status: u16, body: &[u8]) -> Self {
        let mut cut = body.len().min(MAX_RESPONSE_EXCERPT);
        // A UTF-8 character is at most 4 bytes: never start the rest inside one.
        let mut back = 0;
        while cut < body.len() && cut > 0 && back < 3 && body[cut] & 0xC0 == 0x80 {
            cut -= 1;
            back += 1;
        }
        let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
        let mut shortened = cut < body.len();
        if text.len() > MAX_RESPONSE_EXCERPT {
            let mut at = MAX_RESPONSE_EXCERPT;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            shortened = true;
        }
        if shortened {
            text.push_str(&format!("… [cut from {} bytes]", body.len()));
        }
        Self { status, body: text }
    }
}

/// What a delivery attempt produced, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target accepted the event.
    Delivered,
    /// A transient failure; `after` is the receiver's requested delay, if any.
    Retry { reason: String, after: Option<Duration> },
    /// A failure that retrying cannot fix.
    Permanent { reason: String },
}

impl Outcome {
    /// The attempt-history outcome this maps to.
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            Outcome::Delivered => AttemptOutcome::Delivered,
            Outcome::Retry { .. } => AttemptOutcome::Retry,
            Outcome::Permanent { .. } => AttemptOutcome::Permanent,
        }
    }

    /// The error text to record, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Delivered => None,
            Outcome::Retry { reason, .. } | Outcome::Permanent { reason } => Some(reason),
        }
    }
}

/// A network place as `allowed_hosts`, `oauth2.hosts` and `--allow-host` name it:
/// `Host:Port` → `host:port`, or `None` when it is not of that shape.
pub fn normalize_host_port(s: &str) -> Option<String> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() || bare.contains(['/', ' ', '@']) {
        return None;
    }
    Some(format!("{}:{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_normalisation() {
        assert_eq!(
            normalize_host_port("API.example.com:443").as_deref(),
            Some("api.example.com:443")
        );
        assert_eq!(normalize_host_port("[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(normalize_host_port("example.com"), None);
        assert_eq!(normalize_host_port("example.com:http"), None);
        assert_eq!(normalize_host_port(":80"), None);
    }

    #[test]
    fn long_error_texts_are_capped_noting_their_length() {
        assert_eq!(cap_error_text("HTTP 500".into()), "HTTP 500");
        let capped = cap_error_text("é".repeat(100_000));
        assert!(capped.len() <= MAX_ERROR_TEXT, "{}", capped.len());
        assert!(capped.ends_with("… [cut from 200000 bytes]"), "{capped}");
    }

    #[test]
    fn statuses_round_trip_through_their_strings() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(*s));
        }
        for o in AttemptOutcome::ALL {
            assert_eq!(o.as_str().parse::<AttemptOutcome>(), Ok(*o));
        }
        assert!("flying".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn target_names_are_validated() {
        assert!("crm".parse::<TargetName>().is_ok());
        assert!("billing-eu_2".parse::<TargetName>().is_ok());
        assert!("".parse::<TargetName>().is_err());
        assert!("Crm".parse::<TargetName>().is_err());
        assert!("-crm".parse::<TargetName>().is_err());
        assert!("a/b".parse::<TargetName>().is_err());
        assert!("x".repeat(65).parse::<TargetName>().is_err());
    }

    #[test]
    fn event_types_are_validated() {
        assert!(EventType::try_from("order.created".to_string()).is_ok());
        assert!(EventType::try_from(String::new()).is_err());
        assert!(EventType::try_from("order created".to_string()).is_err());
    }

    #[test]
    fn delivery_keys_are_stable_and_differ_per_target() {
        let id = EventId::new();
        let crm: TargetName = "crm".parse().unwrap();
        let billing: TargetName = "billing".parse().unwrap();
        assert_eq!(delivery_key(&id, &crm), delivery_key(&id, &crm));
        assert_ne!(delivery_key(&id, &crm), delivery_key(&id, &billing));
    }

    #[test]
    fn times_parse_from_rfc3339_or_millis() {
        assert_eq!(parse_time("1000"), Ok(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_time(&format_ms(1_795_830_393_612)), Ok(1_795_830_393_612));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn event_ids_parse_back() {
        let id = EventId::new();
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        assert!("nope".parse::<EventId>().is_err());
    }

    #[test]
    fn a_receivers_answer_is_kept_as_sent_up_to_a_kib_and_marked_when_cut() {
        let small = ReceiverResponse::new(500, br#"{"error":"upstream exploded"}"#);
        assert_eq!(small.status, 500);
        assert_eq!(small.body, r#"{"error":"upstream exploded"}"#, "as sent, unmarked");
        let exact = ReceiverResponse::new(200, &[b'a'; MAX_RESPONSE_EXCERPT]);
        assert_eq!(
            exact.body.len(),
            MAX_RESPONSE_EXCERPT,
            "a body of exactly 1 KiB is whole"
        );
        let long = ReceiverResponse::new(502, &[b'x'; 5000]);
        assert!(long.body.starts_with(&"x".repeat(MAX_RESPONSE_EXCERPT)));
        assert!(long.body.ends_with("… [cut from 5000 bytes]"), "{}", long.body);
        // A character the cut would split is left out, not mangled.
        let mut split = vec![b'a'; MAX_RESPONSE_EXCERPT - 1];
        split.extend("é and more".as_bytes());
        let split = ReceiverResponse::new(400, &split);
        assert!(split.body.starts_with(&"a".repeat(MAX_RESPONSE_EXCERPT - 1)));
        assert!(!split.body.contains('\u{FFFD}'), "{}", split.body);
        assert!(split.body.contains("… [cut from"));
        // Bytes that are not UTF-8 become U+FFFD; the text stays within the bound.
        let binary = ReceiverResponse::new(200, &[0xFF; 2000]);
        let text = binary.body.split('…').next().unwrap();
        assert!(text.len() <= MAX_RESPONSE_EXCERPT && text.chars().all(|c| c == '\u{FFFD}'));
        assert!(binary.body.ends_with("[cut from 2000 bytes]"));
        let garbled = ReceiverResponse::new(200, b"ok\xFF");
        assert_eq!(garbled.body, "ok\u{FFFD}");
    }
}
