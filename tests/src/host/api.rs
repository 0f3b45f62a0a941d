//! The HTTP API of a running [`Host`]: requests with its token, the event and target
//! endpoints, and the waits for a document to reach a state.

use std::time::Duration;

use serde_json::Value;

use super::Host;
use crate::default_timeout;

impl Host {
    /// A request to the API at `path`, with the bearer token of [`Host::set_api_token`] if set.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.api_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n--- stderr (tail) ---\n{}", self.stderr_tail(40)));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// `POST /v1/events` with a JSON body (an object or an array); returns the
    /// status and the response body (JSON, or a JSON string holding the raw
    /// text if it is not JSON).
    pub async fn post_event(&self, body: &Value) -> (u16, Value) {
        let req = self.request(reqwest::Method::POST, "/v1/events").json(body);
        self.send(req, "POST /v1/events").await
    }

    /// `POST /v1/events` with a JSON body and extra request headers (`traceparent`, …).
    pub async fn post_event_with_headers(&self, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.request(reqwest::Method::POST, "/v1/events").json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req, "POST /v1/events").await
    }

    /// `GET <path>` (any API route): status and body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let req = self.request(reqwest::Method::GET, path);
        self.send(req, &format!("GET {path}")).await
    }

    /// `POST <path>` with a JSON body (any API route): status and body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let req = self.request(reqwest::Method::POST, path).json(body);
        self.send(req, &format!("POST {path}")).await
    }

    /// `DELETE <path>` (any API route), without a body: with the API's state-change marker
    /// header (as a client of the API sends it), and the token if set. Status and body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let req = self
            .request(reqwest::Method::DELETE, path)
            .header("x-outboxd-request", "testkit");
        self.send(req, &format!("DELETE {path}")).await
    }

    /// `POST /v1/events` with a raw body and content type.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, content_type: &str) -> (u16, Value) {
        let req = self
            .request(reqwest::Method::POST, "/v1/events")
            .header("content-type", content_type)
            .body(body);
        self.send(req, "POST /v1/events").await
    }

    /// Post `{"type": event_type, "payload": payload}`, assert 202, return the id.
    pub async fn enqueue(&self, event_type: &str, payload: Value) -> String {
        let (status, body) = self
            .post_event(&serde_json::json!({"type": event_type, "payload": payload}))
            .await;
        assert_eq!(status, 202, "POST /v1/events answered {status}: {body}");
        body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /v1/events answer has no id: {body}"))
            .to_owned()
    }

    /// Post `events` (JSON objects) as one batch, assert 202 and one answer per event; return
    /// their ids in order.
    pub async fn enqueue_batch(&self, events: Vec<Value>) -> Vec<String> {
        let n = events.len();
        let (status, body) = self.post_event(&Value::Array(events)).await;
        assert_eq!(
            status, 202,
            "POST /v1/events (a batch of {n}) answered {status}: {body}"
        );
        let ids: Vec<String> = body
            .as_array()
            .unwrap_or_else(|| panic!("a batch is answered with a list: {body}"))
            .iter()
            .map(|a| a["id"].as_str().unwrap_or_else(|| panic!("no id in {a}")).to_owned())
            .collect();
        assert_eq!(ids.len(), n, "one answer per event: {body}");
        ids
    }

    /// `GET /v1/events/{id}`: status and body.
    pub async fn get_event_raw(&self, id: &str) -> (u16, Value) {
        let req = self.request(reqwest::Method::GET, &format!("/v1/events/{id}"));
        self.send(req, "GET /v1/events/{id}").await
    }

    /// `GET /v1/events/{id}`, asserting 200.
    pub async fn get_event(&self, id: &str) -> Value {
        let (status, body) = self.get_event_raw(id).await;
        assert_eq!(status, 200, "GET /v1/events/{id} answered {status}: {body}");
        body
    }

    /// `GET /v1/targets`, asserting 200.
    pub async fn targets(&self) -> Value {
        let req = self.request(reqwest::Method::GET, "/v1/targets");
        let (status, body) = self.send(req, "GET /v1/targets").await;
        assert_eq!(status, 200, "GET /v1/targets answered {status}: {body}");
        body
    }

    /// `GET /healthz`: status and body; `None` if no answer within `timeout`.
    pub async fn healthz(&self, timeout: Duration) -> Option<(u16, Value)> {
        let req = self.request(reqwest::Method::GET, "/healthz").timeout(timeout);
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Poll `GET /v1/events/{id}` until `pred` holds; returns that document.
    ///
    /// # Panics
    /// On timeout, with the last document and the child's stderr.
    pub async fn wait_for(&self, id: &str, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get_event_raw(id).await;
            if status == 200 && pred(&body) {
                return body;
            }
            let last = if status == 200 {
                body
            } else {
                serde_json::json!({"http_status": status, "body": body})
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "event {id}: condition not met within {timeout:?}; last document:\n{}\n--- outboxd stderr (tail) ---\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (default timeout) until the event's deliveries to exactly these
    /// targets all have a final status (`delivered` or `dead`).
    pub async fn wait_settled(&self, id: &str, targets: &[&str]) -> Value {
        self.wait_for(id, default_timeout(), |ev| {
            targets
                .iter()
                .all(|t| matches!(crate::json::status_of(ev, t), Some("delivered") | Some("dead")))
        })
        .await
    }

    /// Wait (default timeout) until the event is `delivered` to every target listed.
    pub async fn wait_delivered(&self, id: &str, targets: &[&str]) -> Value {
        self.wait_for(id, default_timeout(), |ev| {
            targets
                .iter()
                .all(|t| crate::json::status_of(ev, t) == Some("delivered"))
        })
        .await
    }

    /// Poll `GET /v1/targets` until `pred` holds; returns that document.
    pub async fn wait_for_targets(&self, timeout: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_for_document("/v1/targets", timeout, Duration::from_millis(100), pred)
            .await
    }

    /// Poll `GET /v1/replays/{id}` until the bulk replay job is no longer `running`; returns
    /// the job.
    pub async fn wait_for_replay(&self, id: i64, timeout: Duration) -> Value {
        self.wait_for_document(
            &format!("/v1/replays/{id}"),
            timeout,
            Duration::from_millis(50),
            |job| job["status"] != "running",
        )
        .await
    }

    /// `POST /v1/deliveries/replay` with a filter: asserts that it started a bulk replay job
    /// (`202`, `Location: /v1/replays/{id}`), then waits for the job to finish; returns it.
    pub async fn replay_job(&self, filter: &Value) -> Value {
        let req = self
            .request(reqwest::Method::POST, "/v1/deliveries/replay")
            .json(filter);
        let resp = req.send().await.expect("POST /v1/deliveries/replay");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let job: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(status, 202, "a filter starts a replay job: {job}");
        let id = job["id"].as_i64().unwrap_or_else(|| panic!("a job id: {job}"));
        assert_eq!(location, Some(format!("/v1/replays/{id}")), "{job}");
        self.wait_for_replay(id, default_timeout() * 2).await
    }

    /// Poll `GET /v1/sources` until `pred` holds; returns that document.
    pub async fn wait_for_sources(&self, timeout: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_for_document("/v1/sources", timeout, Duration::from_millis(50), pred)
            .await
    }

    /// Poll `GET <path>` (asserting 200) every `every` until `pred` holds; returns that
    /// document.
    ///
    /// # Panics
    /// On timeout, with the last document and the child's stderr.
    async fn wait_for_document(
        &self,
        path: &str,
        timeout: Duration,
        every: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get_json(path).await;
            assert_eq!(status, 200, "GET {path} answered {status}: {body}");
            if pred(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "GET {path}: condition not met within {timeout:?}; last:\n{}\n--- outboxd stderr (tail) ---\n{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default(),
                    self.stderr_tail(60)
                );
            }
            tokio::time::sleep(every).await;
        }
    }
}
