"""{{name}}: an outboxd target plugin (world `{{world}}`). It POSTs each event's payload to
`config.url` and tells outboxd how that went. The decisions are plain functions in
mapping.py (unit-tested natively with `python3 -m unittest`); this file connects them to
the host. The bindings (`wit_world`, `componentize_py_types`) are generated at build time.
"""

import wit_world
from componentize_py_types import Err, Ok, Result
from wit_world.imports import config, http, log
from wit_world.imports.types import DeliveryError, DeliveryError_Permanent, DeliveryError_Retry, Event, RetryInfo

import mapping


def to_wit(failure: mapping.Failure) -> Err:
    """The WIT `delivery-error` for a failure, as the exception `deliver` raises."""
    if failure.retry:
        return Err(DeliveryError_Retry(RetryInfo(reason=failure.reason, after_ms=failure.after_ms)))
    return Err(DeliveryError_Permanent(failure.reason))


def deliver_one(event: Event) -> None:
    """One event: build the request, send it through the host, classify the answer."""
    url = config.get("url")
    if url is None:
        raise to_wit(mapping.Failure(False, "missing required config key `url`"))
    out = mapping.build_request(url, event.event_type, event.idempotency_key, event.payload)
    request = http.Request(method=out.method, url=out.url, headers=out.headers, body=out.body, timeout_ms=None)
    try:
        response = http.send(request)
    except Err as err:
        # The WIT http `error`: Error_Denied, Error_Timeout, Error_Connect or Error_Other.
        kind = type(err.value).__name__.removeprefix("Error_").lower()
        raise to_wit(mapping.http_error(kind, getattr(err.value, "value", "") or ""))
    log.log(log.Level.INFO, f"{{name}}: event {event.id} attempt {event.attempt}: HTTP {response.status}")
    failure = mapping.classify(response.status, response.headers, response.body)
    if failure is not None:
        raise to_wit(failure)


{{export}}