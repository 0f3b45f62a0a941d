"""The plugin's decisions as plain functions, without the host: what to send for an event,
and what an answer means. `python3 -m unittest` runs tests/test_mapping.py against them."""

from dataclasses import dataclass


@dataclass
class Outgoing:
    """A request to send, before it becomes the host's `http.Request`."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Failure:
    """Why a delivery did not succeed: `retry` makes outboxd try again later, otherwise it ends."""

    retry: bool
    reason: str
    after_ms: int | None = None


def build_request(url: str, event_type: str, idempotency_key: str, payload: str) -> Outgoing:
    """The event's payload, POSTed as JSON with its idempotency key (the same on every retry:
    the receiver deduplicates on it) and its type."""
    return Outgoing(
        method="POST",
        url=url,
        headers=[
            ("content-type", "application/json"),
            ("idempotency-key", idempotency_key),
            ("x-event-type", event_type),
        ],
        body=payload.encode(),
    )


def classify(status: int, headers: list[tuple[str, str]], body: bytes) -> Failure | None:
    """2xx: delivered (`None`). 408, 429 and 5xx: retry (after `Retry-After` seconds on 429
    and 503, when given). Anything else: permanent."""
    if 200 <= status < 300:
        return None
    excerpt = bytes(body).decode("utf-8", "replace").strip()[:200]
    reason = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    if status in (429, 503):
        header = next((v for k, v in headers if k.lower() == "retry-after"), "").strip()
        return Failure(True, reason, int(header) * 1000 if header.isdigit() else None)
    if status == 408 or 500 <= status <= 599:
        return Failure(True, reason)
    return Failure(False, reason)


def http_error(kind: str, text: str) -> Failure:
    """A request that got no answer: timeouts and failed connections retry; a denied host (not
    in `allowed_hosts`) or an invalid request will not get better by retrying."""
    reason = f"{kind}: {text}" if text else kind
    return Failure(kind in ("timeout", "connect"), reason)
