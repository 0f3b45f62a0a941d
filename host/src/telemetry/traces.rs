//! Traces: the spans of an event's way through outboxd (`ingest` or `relay`, each `attempt`,
//! and each outbound `request` a plugin sends through the host) and their export over OTLP.
//!
//! Export is on when the standard variables ask for it: an endpoint in
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); the protocol is OTLP/HTTP with
//! protobuf (the default) or JSON (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`). The SDK reads
//! the rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, headers,
//! timeouts). Spans are `tracing` spans, bridged by `tracing-opentelemetry`.
//!
//! Spans are made only where they go somewhere: always while exporting, otherwise only for an
//! event that carries a producer's trace (so that its log lines carry the trace id). An
//! untraced event costs nothing when nothing is exported.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use super::trace_context::TraceParent;

/// Whether spans are being exported (set once, by [`Exporter::start`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Why traces cannot be exported as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error(
        "{var}={value:?}: outboxd exports traces over OTLP/HTTP only: `http/protobuf` (the default) or `http/json`"
    )]
    Protocol { var: &'static str, value: String },
    #[error("OTEL_TRACES_EXPORTER={0:?}: outboxd exports traces with `otlp` only (or `none`)")]
    Exporter(String),
    #[error("{var}={value:?} is not an http:// or https:// URL")]
    Endpoint { var: &'static str, value: String },
    #[error("the OTLP trace exporter could not be built: {0}")]
    Build(String),
    #[error("flushing the last spans to the OTLP endpoint failed: {0}")]
    Shutdown(String),
}

/// What the environment asks of the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub protocol: Protocol,
}

/// Reads the standard variables through `var`: `None` when traces are not to be exported.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<ExportSettings>, TracesError> {
    let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(exporters) = set("OTEL_TRACES_EXPORTER") {
        let names: Vec<&str> = exporters.split(',').map(str::trim).collect();
        if let Some(other) = names.iter().find(|n| !matches!(**n, "otlp" | "none")) {
            return Err(TracesError::Exporter((*other).to_owned()));
        }
        if !names.contains(&"otlp") {
            return Ok(None);
        }
    }
    let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .into_iter()
        .find_map(|name| set(name).map(|value| (name, value)));
    let Some((endpoint_var, endpoint)) = endpoint else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(TracesError::Endpoint {
            var: endpoint_var,
            value: endpoint,
        });
    }
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|name| set(name).map(|value| (name, value)));
    let protocol = match protocol {
        None => Protocol::HttpBinary,
        Some((_, v)) if v == "http/protobuf" => Protocol::HttpBinary,
        Some((_, v)) if v == "http/json" => Protocol::HttpJson,
        Some((var, value)) => return Err(TracesError::Protocol { var, value }),
    };
    Ok(Some(ExportSettings { protocol }))
}

/// The running export: a batch processor on its own thread, sending to the endpoint.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter and turns span making on. Call at most once.
    pub fn start(settings: &ExportSettings) -> Result<Self, TracesError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(settings.protocol)
            .build()
            .map_err(|e| TracesError::Build(e.to_string()))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("outboxd");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        EXPORTING.store(true, Ordering::Release);
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns outboxd's spans (and its log lines at `info` and above,
    /// as span events) into OpenTelemetry spans. A target filter, decided per call site once,
    /// so that the `debug` lines of the hot path stay disabled outright.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("outboxd"))
            .with_threads(false)
            .with_target(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("outboxd", tracing::Level::INFO))
    }

    /// Sends what is still queued and stops (blocking: call it off the async threads).
    pub fn shutdown(self) -> Result<(), TracesError> {
        EXPORTING.store(false, Ordering::Release);
        self.provider
            .shutdown()
            .map_err(|e| TracesError::Shutdown(e.to_string()))
    }
}

/// Whether spans are being exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Whether a span for work under `parent` goes anywhere.
fn wanted(parent: Option<&TraceParent>) -> bool {
    parent.is_some() || exporting()
}

/// The span of one ingest request (`POST /v1/events`, `outboxd enqueue`) under the
/// producer's trace, if it sent one.
pub fn ingest(origin: &'static str, events: usize, parent: Option<TraceParent>) -> Span {
    if !wanted(parent.as_ref()) {
        return Span::none();
    }
    let span = tracing::info_span!("ingest", origin, events = events as i64, trace_id = Empty);
    join(&span, parent);
    span
}

/// The span of one batch of rows relayed from an application's outbox table.
pub fn relay(source: &str, events: usize, parent: Option<TraceParent>) -> Span {
    if !wanted(parent.as_ref()) {
        return Span::none();
    }
    let span = tracing::info_span!("relay", source, events = events as i64, trace_id = Empty);
    join(&span, parent);
    span
}

/// The span of one attempt (one plugin call: one event, or a batch) under the trace of its
/// (first traced) event.
pub fn attempt(target: &str, event_id: &str, attempt: u32, events: usize, parent: Option<TraceParent>) -> Span {
    if !wanted(parent.as_ref()) {
        return Span::none();
    }
    let span = tracing::info_span!(
        "attempt",
        target,
        event_id,
        // Integers as i64: `tracing-opentelemetry` exports a u64 as its text.
        attempt = i64::from(attempt),
        events = events as i64,
        outcome = Empty,
        trace_id = Empty,
        otel.status_code = Empty,
    );
    join(&span, parent);
    span
}

/// Records how an attempt ended: its outcome's name, and an error status unless delivered.
pub fn attempt_ended(span: &Span, outcome: &str, delivered: bool) {
    span.record("outcome", outcome);
    if !delivered {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one outbound request a plugin sent through the host, when exporting; `origin`
/// is the URL's scheme, host and port (never its path or query).
pub fn request(method: &str, origin: &str, parent: Option<TraceParent>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.kind = "client",
        http.request.method = method,
        url.origin = origin,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    join(&span, parent);
    span
}

/// Records the receiver's answer to an outbound request (`None`: no answer came).
pub fn request_ended(span: &Span, status: Option<u16>) {
    match status {
        Some(status) => {
            span.record("http.response.status_code", i64::from(status));
            if status >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Links `span` to another trace it also serves (the other events of a batch, a relayed row's
/// own producer trace), when exporting.
pub fn link(span: &Span, other: TraceParent) {
    if exporting() && !span.is_none() {
        span.add_link(span_context(other));
    }
}

/// The context to hand on from `span`: the span's own when it is exported, else none.
pub fn handed_on(span: &Span) -> Option<TraceParent> {
    if !exporting() || span.is_none() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    TraceParent::from_parts(sc.trace_id().to_bytes(), sc.span_id().to_bytes(), sc.is_sampled())
}

/// Puts `span` under `parent` (when exporting) and records the trace id it ends up in, which
/// the log lines inside it then carry.
fn join(span: &Span, parent: Option<TraceParent>) {
    if let Some(parent) = parent
        && exporting()
    {
        // Fails only for a span no layer records: then there is nothing to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(span_context(parent)));
    }
    if let Some(trace) = handed_on(span).or(parent) {
        span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    }
}

fn span_context(tp: TraceParent) -> SpanContext {
    let flags = if tp.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id()),
        SpanId::from_bytes(tp.span_id()),
        flags,
        true,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(env(&[])).unwrap(), None);
        assert_eq!(settings(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(settings(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])).unwrap(), None);
        assert_eq!(
            settings(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).unwrap(),
            None
        );
        assert_eq!(
            settings(env(&[endpoint])).unwrap(),
            Some(ExportSettings {
                protocol: Protocol::HttpBinary
            })
        );
        let traces_only = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector:4318/v1/traces");
        assert!(settings(env(&[traces_only])).unwrap().is_some());
    }

    #[test]
    fn the_protocol_is_read_from_the_standard_variables_and_grpc_is_refused_by_name() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let json = settings(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap();
        assert_eq!(json.unwrap().protocol, Protocol::HttpJson);
        let traces = settings(env(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap();
        assert_eq!(traces.unwrap().protocol, Protocol::HttpBinary);
        let grpc = settings(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap_err();
        assert!(
            grpc.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
            "{grpc}"
        );
        let zipkin = settings(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(zipkin.to_string().contains("zipkin"), "{zipkin}");
        let bad = settings(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")])).unwrap_err();
        assert!(bad.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{bad}");
    }

    #[test]
    fn untraced_work_makes_no_span_when_nothing_is_exported() {
        // The unit tests never start an exporter.
        assert!(!exporting());
        assert!(ingest("api", 1, None).is_none());
        assert!(attempt("crm", "e", 1, 1, None).is_none());
        assert!(request("POST", "http://127.0.0.1:9", None).is_none());
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        // A traced event's work hands on no span of its own when nothing is exported.
        assert_eq!(handed_on(&attempt("crm", "e", 1, 1, tp)), None);
    }
}
