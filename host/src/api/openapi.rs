//! The OpenAPI 3.1 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! The paths come from the handlers themselves: each carries a `#[utoipa::path]` annotation
//! and is mounted with `utoipa_axum::routes!` (see `api_routes`), which registers the route
//! and its documentation in one step, so a route cannot exist without being documented. The
//! request and response schemas are derived (`ToSchema`) from the types the handlers
//! serialize and deserialize. The few answers built as `serde_json::json!` values are
//! described by the types below; the schemathesis run in CI checks every response against
//! the document.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Response, ResponseBuilder};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Schema};
use utoipa::{IntoResponses, ToSchema};

use super::{FailedOut, IngestedOut};

/// Every error: a 4xx or 5xx status with this body.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!` (or `ApiError`); schemathesis checks it
pub(crate) struct ErrorBody {
    /// What went wrong; for a batch, which event.
    pub error: String,
}

/// The answers of a route that needs a token with one scope (when tokens are configured):
/// 401 without one, 403 when it lacks the scope. Written once, listed in each route's
/// `responses(…)` as [`NeedsRead`], [`NeedsAdmin`] or [`NeedsIngest`].
pub(crate) struct NeedsScope<S>(PhantomData<S>);

/// The scope a [`NeedsScope`] names.
pub(crate) trait ScopeName {
    const NAME: &'static str;
}

pub(crate) struct ReadScope;
pub(crate) struct AdminScope;
pub(crate) struct IngestScope;
impl ScopeName for ReadScope {
    const NAME: &'static str = "read";
}
impl ScopeName for AdminScope {
    const NAME: &'static str = "admin";
}
impl ScopeName for IngestScope {
    const NAME: &'static str = "ingest";
}

pub(crate) type NeedsRead = NeedsScope<ReadScope>;
pub(crate) type NeedsAdmin = NeedsScope<AdminScope>;
pub(crate) type NeedsIngest = NeedsScope<IngestScope>;

impl<S: ScopeName> IntoResponses for NeedsScope<S> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([
            ("401".to_owned(), error_response("A token is required")),
            (
                "403".to_owned(),
                error_response(&format!("The token lacks the `{}` scope", S::NAME)),
            ),
        ])
    }
}

/// The answer of a route whose store call failed (`ApiError::Store`).
pub(crate) struct StoreFailure;

impl IntoResponses for StoreFailure {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([("503".to_owned(), error_response("Database failure"))])
    }
}

/// A response with an [`ErrorBody`] as JSON, as `body = ErrorBody` in a route's tuple gives.
fn error_response(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build()
        .into()
}

/// The body of `POST /v1/events`: one event, or an array of 1 to 1000. Its schema is
/// written out (below) for the array's bounds, which the derive cannot put on a variant.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // documentation only: the handler parses the body with `outbox::input::parse`
pub(crate) enum EventsIn {
    One(crate::outbox::input::EventIn),
    Many(Vec<crate::outbox::input::EventIn>),
}

impl utoipa::PartialSchema for EventsIn {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        let event = || Ref::from_schema_name("EventIn");
        let batch = ArrayBuilder::new()
            .items(event())
            .min_items(Some(1))
            .max_items(Some(crate::outbox::input::MAX_BATCH));
        let one_of = OneOfBuilder::new()
            .description(Some("One event, or an array of 1 to 1000 of them (all or nothing)."))
            .item(event())
            .item(Schema::Array(batch.build()));
        RefOr::T(Schema::OneOf(one_of.build()))
    }
}

impl ToSchema for EventsIn {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use crate::outbox::input::EventIn;
        schemas.push((
            EventIn::name().into_owned(),
            <EventIn as utoipa::PartialSchema>::schema(),
        ));
        <EventIn as ToSchema>::schemas(schemas);
    }
}

/// The answer to `POST /v1/events`: one result for one event, an array for an array.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documentation of the handler's answer
pub(crate) enum IngestedAnswer {
    One(IngestedOut),
    Many(Vec<IngestedOut>),
}

/// The answer to pause and resume.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!` (or `ApiError`); schemathesis checks it
pub(crate) struct PausedOut {
    pub target: String,
    /// The state now.
    pub paused: bool,
    /// False when the target already was in that state.
    pub changed: bool,
}

/// One page of failed deliveries.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!` (or `ApiError`); schemathesis checks it
pub(crate) struct FailedPage {
    pub deliveries: Vec<FailedOut>,
    /// The `after` of the next page when this one is full, else null.
    pub next_after: Option<i64>,
}

/// The answer to a replay.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!` (or `ApiError`); schemathesis checks it
pub(crate) struct ReplayedOut {
    /// How many deliveries are pending again.
    pub replayed: u64,
    /// The replay stopped at its cap with matching deliveries left: replay again.
    pub more: bool,
}

/// The answer of `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!` (or `ApiError`); schemathesis checks it
pub(crate) struct HealthOut {
    /// `ok`, or `degraded` when files in the plugins directory did not load.
    pub status: String,
    /// Loaded targets.
    #[schema(minimum = 0)]
    pub targets: u64,
    /// Degraded only: targets held because their plugin did not load.
    pub held: Option<Vec<String>>,
    /// Degraded only: the files that did not load: where and what, never their text.
    pub errors: Option<Vec<HealthError>>,
}

/// A file that did not load, as `GET /healthz` shows it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes an answer built with `json!`; schemathesis checks it
pub(crate) struct HealthError {
    pub target: Option<String>,
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
    pub at: String,
}

/// The document's frame: info and the bearer security scheme. The paths are added by
/// `api_routes`.
pub fn base() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("outboxd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Transactional outbox delivery service. Every error is `{\"error\": \"…\"}`. \
                     With `[api]` tokens configured, requests carry `Authorization: Bearer <token>`; \
                     each operation names the scope it needs (`admin` includes the others).",
                ))
                .build(),
        )
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    doc
}

/// `GET /v1/openapi.json`: the document, rendered once. Open to all: it holds no data.
pub fn router<S: Clone + Send + Sync + 'static>(doc: OpenApi) -> Router<S> {
    let json = Bytes::from(doc.to_pretty_json().unwrap_or_else(|e| {
        // Serializing plain data structures cannot fail; keep the endpoint answering anyway.
        format!("{{\"error\":\"cannot render the OpenAPI document: {e}\"}}")
    }));
    let json = Arc::new(json);
    Router::new().route(
        "/v1/openapi.json",
        get(move || {
            let json = Bytes::clone(&json);
            async move { ([(CONTENT_TYPE, "application/json")], json) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::api::auth::{AuthConfig, fixed};

    /// Every route of the API, as (method, path). A route added to `api_routes` appears in
    /// the document by construction; this list makes adding one a visible decision.
    const ROUTES: &[(&str, &str)] = &[
        ("post", "/v1/events"),
        ("get", "/v1/events/{id}"),
        ("get", "/v1/targets"),
        ("post", "/v1/targets/{name}/pause"),
        ("post", "/v1/targets/{name}/resume"),
        ("get", "/v1/deliveries/failed"),
        ("post", "/v1/deliveries/replay"),
        ("get", "/v1/replays"),
        ("get", "/v1/replays/{id}"),
        ("post", "/v1/replays/{id}/cancel"),
        ("get", "/v1/sources"),
        ("get", "/v1/history"),
        ("get", "/v1/events"),
        ("post", "/v1/events/{id}/cancel"),
        ("post", "/v1/events/cancel"),
        ("delete", "/v1/events/{id}/payload"),
        ("delete", "/v1/events/payload"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ];

    fn document() -> serde_json::Value {
        let (_, doc) = crate::api::api_routes(fixed(AuthConfig::default())).split_for_parts();
        serde_json::from_str(&doc.to_json().unwrap()).unwrap()
    }

    #[test]
    fn the_document_lists_every_route_and_nothing_else() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let mut listed = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                listed.insert((method.clone(), path.clone()));
            }
        }
        let expected: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn every_operation_documents_auth_failures_and_its_scope() {
        let doc = document();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for status in ["401", "403"] {
                    assert!(responses.contains_key(status), "{method} {path} documents {status}");
                    let body = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(body, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
                let scopes = &op["security"][0]["bearer"];
                assert_eq!(scopes.as_array().map(Vec::len), Some(1), "{method} {path}: {scopes}");
                let lacks = format!("The token lacks the `{}` scope", scopes[0].as_str().unwrap());
                assert_eq!(responses["403"]["description"], lacks.as_str(), "{method} {path}");
            }
        }
        let ingest = &doc["paths"]["/v1/events"]["post"];
        assert_eq!(ingest["security"][0]["bearer"][0], "ingest");
        for admin in [
            "/v1/deliveries/replay",
            "/v1/events/{id}/cancel",
            "/v1/events/cancel",
            "/v1/replays/{id}/cancel",
        ] {
            assert_eq!(
                doc["paths"][admin]["post"]["security"][0]["bearer"][0], "admin",
                "{admin}"
            );
        }
        for admin in ["/v1/replays", "/v1/replays/{id}"] {
            assert_eq!(
                doc["paths"][admin]["get"]["security"][0]["bearer"][0], "admin",
                "{admin}"
            );
        }
        // A filter starts a job (202, with where to follow it); a list is replayed at once (200).
        let replay = &doc["paths"]["/v1/deliveries/replay"]["post"]["responses"];
        assert!(replay["202"]["headers"]["Location"].is_object(), "{replay}");
        assert!(replay["200"].is_object(), "{replay}");
        // The request body schema is the producer's event type, with its fields.
        let event = &doc["components"]["schemas"]["EventIn"];
        assert!(event["properties"]["type"].is_object(), "{event}");
        assert!(event["properties"]["payload"].is_object(), "{event}");
    }

    #[test]
    fn the_receivers_response_is_described_where_it_is_shown() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let response = &schemas["ResponseOut"];
        assert_eq!(response["properties"]["status"]["maximum"], 65535, "{response}");
        assert_eq!(response["properties"]["body"]["type"], "string", "{response}");
        let required: BTreeSet<&str> = response["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, BTreeSet::from(["status", "body"]), "{response}");
        for (schema, field) in [("AttemptOut", "response"), ("FailedOut", "last_response")] {
            let text = schemas[schema]["properties"][field].to_string();
            assert!(
                text.contains("#/components/schemas/ResponseOut") && text.contains("null"),
                "{schema}.{field}: {text}"
            );
        }
    }
}
