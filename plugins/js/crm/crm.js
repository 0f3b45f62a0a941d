// CRM target adapter (JavaScript, built with componentize-js): owns the
// mapping of `order.*` events to a contact upsert, `POST {url}/contacts`, and
// the classification of its HTTP result into an outboxd delivery outcome.
// See README.md beside this file for the mapping and the configuration.

import { send } from 'outboxd:target/http@0.1.0';
import { log } from 'outboxd:target/log@0.1.0';
import { get } from 'outboxd:target/config@0.1.0';

/** Longest response-body excerpt quoted in a failure reason, in characters. */
const EXCERPT_CHARS = 200;

/** A failed delivery, thrown from `deliver`; its `payload` is the WIT `delivery-error`. */
class DeliveryError extends Error {
  constructor(payload) {
    super(payload.tag === 'retry' ? payload.val.reason : payload.val);
    this.payload = payload;
  }

  static retry(reason, afterMs) {
    return new DeliveryError({
      tag: 'retry',
      val: { reason, afterMs: afterMs === undefined ? undefined : BigInt(afterMs) },
    });
  }

  static permanent(reason) {
    return new DeliveryError({ tag: 'permanent', val: reason });
  }
}

/** The RFC 3339 UTC time (millisecond precision) of `ms` since the Unix epoch. */
function isoTime(ms) {
  return new Date(Number(ms)).toISOString();
}

/** A required `[config]` value, or a permanent error naming the missing key. */
function requireConfig(key) {
  const value = get(key);
  if (value === undefined || value.trim() === '') {
    throw DeliveryError.permanent(`crm: config key \`${key}\` is required`);
  }
  return value.trim();
}

/** An optional positive integer `[config]` value (e.g. `timeout_ms`). */
function configInt(key) {
  const value = get(key);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0 || n > 0xffffffff) {
    throw DeliveryError.permanent(`crm: config key \`${key}\` must be a positive integer, not \`${value}\``);
  }
  return n;
}

/** A trimmed non-empty string, or `undefined` for anything else. */
function text(value) {
  if (typeof value !== 'string') return undefined;
  const trimmed = value.trim();
  return trimmed === '' ? undefined : trimmed;
}

/** A plain JSON object, or `undefined`. */
function object(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : undefined;
}

/** Sets `record[key]` unless `value` is `undefined`, so that it does not appear in the JSON body at all. */
function put(record, key, value) {
  if (value !== undefined) record[key] = value;
  return record;
}

/** Encodes request bodies; one per instance. */
const UTF8 = new TextEncoder();

/**
 * Maps one `order.*` event to the contact-upsert body. Throws a permanent
 * error when the payload is not a JSON object or names no customer e-mail.
 */
export function contactFor(event) {
  if (!event.eventType.startsWith('order.')) {
    throw DeliveryError.permanent(
      `crm: event type \`${event.eventType}\` is not an order event; route only \`order.*\` to this target`,
    );
  }
  let payload;
  try {
    payload = JSON.parse(event.payload);
  } catch (err) {
    throw DeliveryError.permanent(`crm: payload is not valid JSON: ${err.message}`);
  }
  if (!object(payload)) {
    throw DeliveryError.permanent('crm: payload must be a JSON object');
  }
  const customer = object(payload.customer) ?? {};
  const email = text(customer.email);
  if (email === undefined) {
    throw DeliveryError.permanent('crm: payload has no customer e-mail (`customer.email`), the contact key');
  }
  if (!/^[^\s@]+@[^\s@]+$/.test(email)) {
    throw DeliveryError.permanent(`crm: \`customer.email\` is not an e-mail address: \`${email}\``);
  }
  const orderId = payload.id ?? payload.order_id;
  const contact = { email: email.toLowerCase() };
  put(contact, 'name', text(customer.name));
  put(contact, 'phone', text(customer.phone));
  put(contact, 'external_id', customer.id === undefined ? undefined : String(customer.id));
  const lastOrder = put({}, 'id', orderId === undefined ? undefined : String(orderId));
  lastOrder.status = event.eventType.slice('order.'.length);
  put(lastOrder, 'total', payload.total);
  put(lastOrder, 'currency', text(payload.currency));
  lastOrder.at = isoTime(event.createdAtMs);
  contact.last_order = lastOrder;
  contact.source = { system: 'outboxd', event_id: event.id, event_type: event.eventType };
  return contact;
}

/** A one-line, length-capped excerpt of a response body, or `undefined` if empty. */
function excerpt(body) {
  const oneLine = new TextDecoder().decode(body).split(/\s+/).filter(Boolean).join(' ');
  if (oneLine === '') return undefined;
  const chars = Array.from(oneLine);
  return chars.length > EXCERPT_CHARS ? chars.slice(0, EXCERPT_CHARS).join('') + '…' : oneLine;
}

/** Milliseconds from a delta-seconds `Retry-After` value; `undefined` otherwise (dates too). */
export function parseRetryAfter(value) {
  const trimmed = value === undefined ? '' : value.trim();
  if (!/^\d+$/.test(trimmed)) return undefined;
  return Math.min(Number(trimmed) * 1000, Number.MAX_SAFE_INTEGER);
}

/**
 * Classifies a response: 2xx delivered; 408, 429 and 5xx retried (429/503
 * honour `Retry-After` seconds); anything else permanent.
 */
export function classifyResponse(response) {
  const status = response.status;
  if (status >= 200 && status < 300) return;
  const body = excerpt(response.body);
  const reason = body === undefined ? `HTTP ${status}` : `HTTP ${status}: ${body}`;
  if (status === 429 || status === 503) {
    const header = response.headers.find(([name]) => name === 'retry-after');
    throw DeliveryError.retry(reason, parseRetryAfter(header?.[1]));
  }
  if (status === 408 || (status >= 500 && status <= 599)) {
    throw DeliveryError.retry(reason);
  }
  throw DeliveryError.permanent(reason);
}

/** Classifies an `http.send` failure: timeouts and connect errors retry, the rest is permanent. */
function classifyHttpError(err) {
  const e = err?.payload;
  if (e === undefined || typeof e.tag !== 'string') {
    throw DeliveryError.permanent(`crm: http send failed: ${err}`);
  }
  const describe = e.val === undefined ? e.tag : `${e.tag}: ${e.val}`;
  if (e.tag === 'timeout' || e.tag === 'connect') throw DeliveryError.retry(describe);
  throw DeliveryError.permanent(describe);
}

/**
 * The target's `[config]`, checked, read at the instance's first attempt: an
 * instance only ever serves its own target, whose configuration cannot change
 * under it. A configuration that does not check out is read again at each
 * attempt (each fails the same way, permanently).
 */
let settings;

function currentSettings() {
  if (settings === undefined) {
    const apiKey = text(get('api_key'));
    settings = {
      url: `${requireConfig('url').replace(/\/+$/, '')}/contacts`,
      authorization: apiKey === undefined ? undefined : `Bearer ${apiKey}`,
      timeoutMs: configInt('timeout_ms'),
    };
  }
  return settings;
}

/** Builds and sends the upsert for `event`; returns normally when the CRM accepted it. */
function upsert(event) {
  const { url, authorization, timeoutMs } = currentSettings();
  const contact = contactFor(event);

  const headers = [
    ['content-type', 'application/json'],
    ['idempotency-key', event.idempotencyKey],
  ];
  if (authorization !== undefined) headers.push(['authorization', authorization]);

  let response;
  try {
    response = send({
      method: 'POST',
      url,
      headers,
      body: UTF8.encode(JSON.stringify(contact)),
      timeoutMs,
    });
  } catch (err) {
    classifyHttpError(err);
  }
  classifyResponse(response);
}

/** The `deliver` export of world `outboxd:target/target`. */
export function deliver(event) {
  let summary = 'delivered';
  try {
    upsert(event);
  } catch (err) {
    if (!(err instanceof DeliveryError)) {
      // A bug in this adapter: report it as permanent rather than trapping.
      err = DeliveryError.permanent(`crm: internal error: ${err?.stack ?? err}`);
    }
    summary = err.payload.tag === 'retry' ? `will retry: ${err.message}` : `failed permanently: ${err.message}`;
    throw err;
  } finally {
    log('info', `crm: event ${event.id} (${event.eventType}) attempt ${event.attempt}: ${summary}`);
  }
}
