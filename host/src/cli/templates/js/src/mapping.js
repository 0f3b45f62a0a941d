// The plugin's decisions as plain functions, without the host: what to send for an event, and
// what an answer means. `npm test` (node --test) runs test/mapping.test.js against them.

/** A failed delivery; its `payload` is the WIT `delivery-error`. */
export class DeliveryError extends Error {
  constructor(payload) {
    super(payload.tag === 'retry' ? payload.val.reason : payload.val);
    this.payload = payload;
  }

  /** outboxd tries again later (after `afterMs` milliseconds when given). */
  static retry(reason, afterMs) {
    return new DeliveryError({
      tag: 'retry',
      val: { reason, afterMs: afterMs === undefined ? undefined : BigInt(afterMs) },
    });
  }

  /** Retrying cannot help: the delivery ends. */
  static permanent(reason) {
    return new DeliveryError({ tag: 'permanent', val: reason });
  }
}

/**
 * The event's payload, POSTed as JSON with its idempotency key (the same on every retry: the
 * receiver deduplicates on it) and its type. The shape is the WIT http `request`.
 */
export function buildRequest(event, url) {
  return {
    method: 'POST',
    url,
    headers: [
      ['content-type', 'application/json'],
      ['idempotency-key', event.idempotencyKey],
      ['x-event-type', event.eventType],
    ],
    body: new TextEncoder().encode(event.payload),
    timeoutMs: undefined,
  };
}

/**
 * 2xx: delivered (`undefined`). 408, 429 and 5xx: retry (after `Retry-After` seconds on 429
 * and 503, when given). Anything else: permanent. Returns the `DeliveryError` to throw.
 */
export function classifyResponse(response) {
  const { status } = response;
  if (status >= 200 && status < 300) return undefined;
  const excerpt = new TextDecoder().decode(response.body).trim().slice(0, 200);
  const reason = excerpt ? `HTTP ${status}: ${excerpt}` : `HTTP ${status}`;
  if (status === 429 || status === 503) {
    const header = (response.headers.find(([name]) => name.toLowerCase() === 'retry-after')?.[1] ?? '').trim();
    return DeliveryError.retry(reason, /^\d+$/.test(header) ? Number(header) * 1000 : undefined);
  }
  if (status === 408 || (status >= 500 && status <= 599)) return DeliveryError.retry(reason);
  return DeliveryError.permanent(reason);
}

/**
 * A request that got no answer (the WIT http `error`): timeouts and failed connections retry;
 * a denied host (not in `allowed_hosts`) or an invalid request will not get better by retrying.
 */
export function classifyHttpError(error) {
  const reason = error.val === undefined ? error.tag : `${error.tag}: ${error.val}`;
  return error.tag === 'timeout' || error.tag === 'connect'
    ? DeliveryError.retry(reason)
    : DeliveryError.permanent(reason);
}
