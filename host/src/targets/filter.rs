//! Payload filters: a manifest's `filter`, a CEL expression the host evaluates when an event is
//! routed, so that a target gets only the events of its types it wants. The expression sees
//! `event_type` (string), `payload` (the event's JSON payload) and `headers` (a map of the
//! ingest headers, names lower-case as stored) and must yield a boolean.
//!
//! CEL (Common Expression Language, through the `cel` crate) rather than jq: it is made for
//! exactly this (policy and subscription filters in Envoy, Kubernetes, Knative/CloudEvents), it
//! has no loops or recursion, so every expression ends in time linear in its size and the data,
//! and an expression yields one value, not a stream.
//!
//! An expression that fails on an event (a field the payload lacks, a comparison of a string
//! with a number) or yields something other than a boolean does not match: that target gets no
//! delivery for that event, and `outboxd_filter_events_total{result="error"}` counts it.
//! `has(payload.field)` guards an optional field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Program, Value};

use crate::domain::InvalidValue;

/// The functions every filter may call: CEL's standard library.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Longest filter text accepted.
const MAX_LEN: usize = 4096;

/// A compiled filter, with its text (which `GET /v1/targets` shows).
#[derive(Clone)]
pub struct Filter {
    text: String,
    program: Arc<Program>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.text).finish()
    }
}

/// Two filters are the same when their texts are: a reload compares manifests this way.
impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Filter {
    /// Compiles `text`. A syntax error, a reference to a name other than the three variables
    /// (`event_type`, `payload`, `headers`) or the standard functions, and an empty or overlong
    /// text are refused, with the parser's message.
    pub fn compile(text: &str) -> Result<Self, InvalidValue> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(InvalidValue("`filter` is empty".into()));
        }
        if text.len() > MAX_LEN {
            return Err(InvalidValue(format!("`filter` is longer than {MAX_LEN} bytes")));
        }
        let program = ENV
            .compile(trimmed)
            .map_err(|e| InvalidValue(format!("`filter` does not compile: {}", one_line(&e.to_string()))))?;
        let mut unknown = BTreeSet::new();
        free_names(program.expression(), &mut Vec::new(), &mut unknown);
        if !unknown.is_empty() {
            return Err(InvalidValue(format!(
                "`filter` names {}: a filter sees only `event_type`, `payload` and `headers`",
                unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Self {
            text: trimmed.to_owned(),
            program: Arc::new(program),
        })
    }

    /// The filter's text, as written (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the event `input` describes passes this filter: `Err` when the expression
    /// fails on it or yields a non-boolean (the caller counts that and treats it as no).
    pub fn matches(&self, input: &mut Input<'_>) -> Result<bool, FilterError> {
        let context = input.context()?;
        match self.program.execute(context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(FilterError(format!("yields {:?}, not a boolean", other.type_of()))),
            Err(e) => Err(FilterError(e.to_string())),
        }
    }
}

const VARIABLES: [&str; 3] = ["event_type", "payload", "headers"];

/// Collects into `out` the names `expr` reads that are neither one of [`VARIABLES`] nor bound
/// by an enclosing comprehension (`exists(l, …)` binds `l` inside its body only).
fn free_names<'e>(expr: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut BTreeSet<&'e str>) {
    match &expr.expr {
        Expr::Ident(name) => {
            // The parser's own accumulators are named `@…`.
            if !name.starts_with('@') && !VARIABLES.contains(&name.as_str()) && !bound.contains(&name.as_str()) {
                out.insert(name);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_names(target, bound, out);
            }
            call.args.iter().for_each(|a| free_names(a, bound, out));
        }
        Expr::Comprehension(c) => {
            free_names(&c.iter_range, bound, out);
            free_names(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(&c.accu_var);
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            free_names(&c.loop_cond, bound, out);
            free_names(&c.loop_step, bound, out);
            bound.truncate(depth + 1);
            free_names(&c.result, bound, out);
            bound.truncate(depth);
        }
        Expr::List(list) => list.elements.iter().for_each(|e| free_names(e, bound, out)),
        Expr::Map(map) => map.entries.iter().for_each(|e| entry_names(&e.expr, bound, out)),
        Expr::Struct(st) => st.entries.iter().for_each(|e| entry_names(&e.expr, bound, out)),
        Expr::Select(select) => free_names(&select.operand, bound, out),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry_names<'e>(entry: &'e EntryExpr, bound: &mut Vec<&'e str>, out: &mut BTreeSet<&'e str>) {
    match entry {
        EntryExpr::StructField(field) => free_names(&field.value, bound, out),
        EntryExpr::MapEntry(pair) => {
            free_names(&pair.key, bound, out);
            free_names(&pair.value, bound, out);
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why a filter could not decide on an event.
#[derive(Debug, thiserror::Error)]
#[error("filter failed: {0}")]
pub struct FilterError(String);

/// One event as the filters of its targets see it, its CEL context built on first use (most
/// targets have no filter, and their events never pay for it).
pub struct Input<'a> {
    event_type: &'a str,
    payload: &'a str,
    headers: &'a [(String, String)],
    context: Option<Result<Context<'static, 'static>, String>>,
}

impl<'a> Input<'a> {
    pub fn new(event_type: &'a str, payload: &'a str, headers: &'a [(String, String)]) -> Self {
        Self {
            event_type,
            payload,
            headers,
            context: None,
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> &'a str {
        self.event_type
    }

    fn context(&mut self) -> Result<&Context<'static, 'static>, FilterError> {
        let (event_type, payload, headers) = (self.event_type, self.payload, self.headers);
        let built = self.context.get_or_insert_with(|| {
            let payload: serde_json::Value =
                serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
            let headers: BTreeMap<&str, &str> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut context = Context::with_env(Arc::clone(&ENV));
            context.add_variable_from_value("event_type", event_type.to_owned());
            context.add_variable("payload", payload).map_err(|e| e.to_string())?;
            context.add_variable("headers", headers).map_err(|e| e.to_string())?;
            Ok(context)
        });
        built.as_ref().map_err(|e| FilterError(e.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(filter: &str, payload: &str) -> Result<bool, FilterError> {
        let headers = vec![("x-region".to_owned(), "eu".to_owned())];
        Filter::compile(filter)
            .unwrap()
            .matches(&mut Input::new("order.created", payload, &headers))
    }

    #[test]
    fn sees_the_payload_the_headers_and_the_type() {
        let big = r#"{"total": 150, "currency": "EUR", "lines": [{"sku": "A"}, {"sku": "B"}]}"#;
        let small = r#"{"total": 20, "currency": "USD", "lines": []}"#;
        assert!(eval("payload.total > 100", big).unwrap());
        assert!(!eval("payload.total > 100", small).unwrap());
        assert!(eval("payload.currency in ['EUR', 'GBP'] && size(payload.lines) == 2", big).unwrap());
        assert!(eval("payload.lines.exists(l, l.sku == 'B')", big).unwrap());
        assert!(eval("headers['x-region'] == 'eu'", small).unwrap());
        assert!(eval("event_type.startsWith('order.')", small).unwrap());
        assert!(eval("payload.currency.matches('^E')", big).unwrap());
    }

    #[test]
    fn an_expression_that_fails_or_is_not_boolean_is_an_error_not_a_match() {
        assert!(eval("payload.missing > 1", "{}").is_err());
        assert!(!eval("has(payload.missing) && payload.missing > 1", "{}").unwrap());
        assert!(eval("payload.total", r#"{"total": 1}"#).is_err());
        assert!(eval("payload.total > 1", "not json").is_err());
    }

    #[test]
    fn bad_filters_are_refused_at_load_with_the_reason() {
        for (text, word) in [
            ("payload.total >", "does not compile"),
            ("", "empty"),
            ("order.total > 1", "`order`"),
            ("secret == 1", "`secret`"),
            ("payload.lines.exists(l, l.sku == 'B') && l.sku == 'A'", "`l`"),
        ] {
            let e = Filter::compile(text).unwrap_err().to_string();
            assert!(e.contains(word), "{text}: {e}");
        }
        assert!(Filter::compile(&"1 == 1 && ".repeat(1000)).is_err());
    }

    #[test]
    fn one_input_is_parsed_once_for_several_filters() {
        let headers = Vec::new();
        let mut input = Input::new("t", r#"{"a": 1}"#, &headers);
        let a = Filter::compile("payload.a == 1").unwrap();
        let b = Filter::compile("payload.a == 2").unwrap();
        assert!(a.matches(&mut input).unwrap());
        assert!(!b.matches(&mut input).unwrap());
    }
}
