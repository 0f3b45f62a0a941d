"""Analytics target adapter (Python, built with componentize-py): owns the
mapping of any outboxd event to an analytics `track` call, `POST {url}/track`,
and the classification of its HTTP result into a delivery outcome.
See README.md beside this file for the body and the configuration.
"""

import base64
import json
from datetime import datetime, timedelta, timezone

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, http, log
from wit_world.imports.types import (
    DeliveryError,
    DeliveryError_Permanent,
    DeliveryError_Retry,
    Event,
    RetryInfo,
)

# Longest response-body excerpt quoted in a failure reason, in characters.
EXCERPT_CHARS = 200

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def retry(reason: str, after_ms: int | None = None) -> Err:
    """A retryable failure, to raise from `deliver`."""
    return Err(DeliveryError_Retry(RetryInfo(reason=reason, after_ms=after_ms)))


def permanent(reason: str) -> Err:
    """A permanent failure, to raise from `deliver`."""
    return Err(DeliveryError_Permanent(reason))


def iso_time(ms: int) -> str:
    """RFC 3339 UTC time with millisecond precision, e.g. `2026-11-28T01:02:03.456Z`."""
    at = _EPOCH + timedelta(milliseconds=ms)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def require_config(key: str) -> str:
    """A required `[config]` value, or a permanent failure naming the key."""
    value = config.get(key)
    if value is None or not value.strip():
        raise permanent(f"analytics: config key `{key}` is required")
    return value.strip()


def optional_int_config(key: str) -> int | None:
    """An optional positive integer `[config]` value such as `timeout_ms`."""
    value = config.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 0 < number <= 0xFFFFFFFF:
        raise permanent(f"analytics: config key `{key}` must be a positive integer, not `{value}`")
    return number


def track_body(event: Event) -> bytes:
    """The `track` call body for `event`.

    `properties` is the payload when it is a JSON object; any other JSON value
    is wrapped as `{"value": <payload>}`, because analytics APIs require an
    object there. A payload that is not JSON is a permanent failure.
    """
    try:
        payload = json.loads(event.payload)
    except ValueError as err:
        raise permanent(f"analytics: payload is not valid JSON: {err}")
    properties = payload if isinstance(payload, dict) else {"value": payload}
    body = {
        "event": event.event_type,
        "properties": properties,
        "message_id": event.idempotency_key,
        "timestamp": iso_time(event.created_at_ms),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def excerpt(body: bytes) -> str | None:
    """A one-line, length-capped excerpt of a response body, or None if empty."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return None
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def parse_retry_after(value: str | None) -> int | None:
    """Milliseconds from a delta-seconds `Retry-After`; None otherwise (dates too)."""
    value = (value or "").strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    return min(int(value) * 1000, 2**64 - 1)


def classify_response(response: http.Response) -> None:
    """2xx delivered; 408, 429 and 5xx retried (429/503 honour `Retry-After`
    seconds); any other status permanent."""
    status = response.status
    if 200 <= status < 300:
        return
    text = excerpt(response.body)
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status in (429, 503):
        header = next((v for k, v in response.headers if k == "retry-after"), None)
        raise retry(reason, parse_retry_after(header))
    if status == 408 or 500 <= status <= 599:
        raise retry(reason)
    raise permanent(reason)


def classify_http_error(error: http.Error) -> Err:
    """No response: timeouts and connect errors retry, denied and other are permanent."""
    if isinstance(error, http.Error_Timeout):
        return retry("timeout")
    if isinstance(error, http.Error_Connect):
        return retry(f"connect: {error.value}")
    if isinstance(error, http.Error_Denied):
        return permanent(f"denied: {error.value}")
    return permanent(f"other: {getattr(error, 'value', error)}")


def track(event: Event) -> None:
    """Builds and sends the `track` call; returns when the receiver accepted it."""
    base = require_config("url").rstrip("/")
    write_key = config.get("write_key")
    timeout_ms = optional_int_config("timeout_ms")
    headers = [
        ("content-type", "application/json"),
        ("idempotency-key", event.idempotency_key),
    ]
    if write_key:
        # Segment-style HTTP API auth: the write key as the Basic username.
        token = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        headers.append(("authorization", f"Basic {token}"))
    request = http.Request(
        method="POST",
        url=f"{base}/track",
        headers=headers,
        body=track_body(event),
        timeout_ms=timeout_ms,
    )
    try:
        response = http.send(request)
    except Err as err:
        raise classify_http_error(err.value)
    classify_response(response)


def describe(error: DeliveryError) -> str:
    """The log summary of a failed delivery."""
    if isinstance(error, DeliveryError_Retry):
        return f"will retry: {error.value.reason}"
    return f"failed permanently: {error.value}"


class WitWorld(wit_world.WitWorld):
    """The `deliver` export of world `outboxd:target/target`."""

    def deliver(self, event: Event) -> None:
        summary = "delivered"
        try:
            track(event)
        except Err as err:
            summary = describe(err.value)
            raise
        except Exception as err:  # a bug in this adapter: permanent, not a trap
            failure = permanent(f"analytics: internal error: {type(err).__name__}: {err}")
            summary = describe(failure.value)
            raise failure
        finally:
            log.log(
                log.Level.INFO,
                f"analytics: event {event.id} ({event.event_type}) attempt {event.attempt}: {summary}",
            )
