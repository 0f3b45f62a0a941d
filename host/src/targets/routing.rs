//! Routing: which targets subscribe to an event. A target lists glob patterns of event types
//! in its manifest; `*` matches any run of characters (dots included) and `?` one character.
//! Matching is case-sensitive. No other character is special. A target may also have a
//! payload filter (`targets::filter`), asked only for events whose type it subscribes to.

use std::fmt;
use std::str::FromStr;

use super::filter::{Filter, Input};
use crate::domain::{InvalidValue, TargetName};

/// One compiled event-type pattern, such as `order.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl FromStr for Pattern {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '*' | '?');
        if s.is_empty() || s.len() > 255 || !s.chars().all(ok) {
            return Err(InvalidValue(format!(
                "event pattern `{s}` is invalid: use letters, digits, `.`, `_`, `-`, `:` and the wildcards `*` and `?`"
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Pattern {
    /// Whether `event_type` matches this pattern. outboxd's own operational events
    /// (`outboxd.…`) match only patterns that name that namespace explicitly, so a target
    /// subscribed to `*` is not sent them by surprise.
    pub fn matches(&self, event_type: &str) -> bool {
        if event_type.starts_with(OPERATIONAL_PREFIX) && !self.0.starts_with(OPERATIONAL_PREFIX) {
            return false;
        }
        glob_match(self.0.as_bytes(), event_type.as_bytes())
    }
}

/// The namespace of outboxd's own operational events.
pub const OPERATIONAL_PREFIX: &str = "outboxd.";

/// Iterative glob matching with single-star backtracking: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One target's subscription: its event-type patterns and its payload filter, if any.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: TargetName,
    pub events: Vec<Pattern>,
    pub filter: Option<Filter>,
}

impl From<(TargetName, Vec<Pattern>)> for Route {
    fn from((target, events): (TargetName, Vec<Pattern>)) -> Self {
        Self {
            target,
            events,
            filter: None,
        }
    }
}

/// The subscription table: each target with its patterns and filter.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    entries: Vec<Route>,
}

impl Routes {
    pub fn new<R: Into<Route>>(entries: impl IntoIterator<Item = R>) -> Self {
        let mut entries: Vec<Route> = entries.into_iter().map(Into::into).collect();
        entries.sort_by(|a, b| a.target.cmp(&b.target));
        Self { entries }
    }

    /// The targets subscribed to `event_type`, in name order, filters aside: where outboxd's
    /// own operational events go (they are not filtered).
    pub fn targets_for(&self, event_type: &str) -> Vec<TargetName> {
        self.entries
            .iter()
            .filter(|r| r.events.iter().any(|p| p.matches(event_type)))
            .map(|r| r.target.clone())
            .collect()
    }

    /// The targets that get `event`, in name order: subscribed to its type and, where the
    /// target has a filter, passed by it. A filter that fails on the event counts as no.
    pub fn targets_for_event(&self, event: &mut Input<'_>) -> Vec<TargetName> {
        let event_type = event.event_type();
        let mut out = Vec::new();
        for route in self
            .entries
            .iter()
            .filter(|r| r.events.iter().any(|p| p.matches(event_type)))
        {
            let passes = match &route.filter {
                None => true,
                Some(filter) => {
                    let decided = filter.matches(event);
                    if let Err(e) = &decided {
                        tracing::debug!(target = %route.target, error = %e, "a filter failed on an event: no delivery");
                    }
                    crate::telemetry::metrics::filter_decided(route.target.as_str(), decided.as_ref().ok().copied());
                    decided.unwrap_or(false)
                }
            };
            if passes {
                out.push(route.target.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        p.parse::<Pattern>().unwrap().matches(t)
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.created.v2"));
        assert!(!m("order.created", "Order.created"));
    }

    #[test]
    fn star_matches_any_run_including_dots_and_nothing() {
        assert!(m("order.*", "order.created"));
        assert!(m("order.*", "order.line.added"));
        assert!(m("order.*", "order."));
        assert!(!m("order.*", "order"));
        assert!(!m("order.*", "orders.created"));
        assert!(m("*", "anything.at.all"));
        assert!(m("*.paid", "invoice.paid"));
        assert!(!m("*.paid", "invoice.paid.late"));
        assert!(m("a*b*c", "a-x-b-y-b-c"));
        assert!(!m("a*b*c", "a-x-b-y-b-d"));
    }

    #[test]
    fn operational_events_need_an_explicit_subscription() {
        assert!(!m("*", "outboxd.delivery.dead"));
        assert!(!m("*.dead", "outboxd.delivery.dead"));
        assert!(m("outboxd.*", "outboxd.delivery.dead"));
        assert!(m("outboxd.target.recovered", "outboxd.target.recovered"));
    }

    #[test]
    fn question_mark_matches_one_character() {
        assert!(m("v?.order", "v1.order"));
        assert!(!m("v?.order", "v10.order"));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        assert!("".parse::<Pattern>().is_err());
        assert!("order.[ab]".parse::<Pattern>().is_err());
        assert!("order created".parse::<Pattern>().is_err());
    }

    #[test]
    fn a_filter_narrows_its_target_only() {
        let filter = Filter::compile("payload.total > 100").unwrap();
        let routes = Routes::new([
            Route {
                target: "billing".parse().unwrap(),
                events: vec!["order.*".parse().unwrap()],
                filter: Some(filter),
            },
            Route::from(("crm".parse().unwrap(), vec!["order.*".parse().unwrap()])),
        ]);
        let names = |payload: &str| {
            routes
                .targets_for_event(&mut Input::new("order.created", payload, &[]))
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(r#"{"total": 150}"#), ["billing", "crm"]);
        assert_eq!(names(r#"{"total": 50}"#), ["crm"]);
        assert_eq!(names(r#"{"no_total": 1}"#), ["crm"], "a failing filter is a no");
        assert_eq!(
            routes.targets_for("order.created").len(),
            2,
            "operational routing ignores filters"
        );
    }

    #[test]
    fn routes_pick_every_subscribed_target() {
        let routes = Routes::new([
            ("crm".parse().unwrap(), vec!["order.*".parse().unwrap()]),
            (
                "billing".parse().unwrap(),
                vec!["invoice.paid".parse().unwrap(), "order.created".parse().unwrap()],
            ),
            ("analytics".parse().unwrap(), vec!["*".parse().unwrap()]),
        ]);
        let names = |t: &str| routes.targets_for(t).iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names("order.created"), ["analytics", "billing", "crm"]);
        assert_eq!(names("order.shipped"), ["analytics", "crm"]);
        assert_eq!(names("invoice.paid"), ["analytics", "billing"]);
        assert_eq!(names("user.signed_up"), ["analytics"]);
    }
}
