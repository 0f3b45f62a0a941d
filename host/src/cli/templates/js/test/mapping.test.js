// Native unit tests of the mapping (no WebAssembly, no host): `npm test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildRequest, classifyHttpError, classifyResponse } from '../src/mapping.js';

const event = {
  id: '01a2...',
  eventType: 'order.created',
  payload: '{"id":1}',
  idempotencyKey: '01a2....demo',
  attempt: 1,
  createdAtMs: 0n,
  headers: [],
};

test('posts the payload with its keys', () => {
  const request = buildRequest(event, 'http://127.0.0.1:9100/hook');
  assert.equal(request.method, 'POST');
  assert.equal(request.url, 'http://127.0.0.1:9100/hook');
  assert.equal(new TextDecoder().decode(request.body), '{"id":1}');
  assert.deepEqual(request.headers.find(([name]) => name === 'idempotency-key'), ['idempotency-key', '01a2....demo']);
});

test('classifies answers', () => {
  const body = new TextEncoder().encode('busy');
  assert.equal(classifyResponse({ status: 204, headers: [], body: new Uint8Array() }), undefined);
  const busy = classifyResponse({ status: 503, headers: [['retry-after', '5']], body });
  assert.deepEqual(busy.payload, { tag: 'retry', val: { reason: 'HTTP 503: busy', afterMs: 5000n } });
  assert.equal(classifyResponse({ status: 500, headers: [], body }).payload.tag, 'retry');
  assert.deepEqual(classifyResponse({ status: 422, headers: [], body: new Uint8Array() }).payload, {
    tag: 'permanent',
    val: 'HTTP 422',
  });
});

test('classifies requests without an answer', () => {
  assert.equal(classifyHttpError({ tag: 'timeout' }).payload.tag, 'retry');
  assert.equal(classifyHttpError({ tag: 'connect', val: 'refused' }).payload.tag, 'retry');
  assert.deepEqual(classifyHttpError({ tag: 'denied', val: 'not allowed' }).payload, {
    tag: 'permanent',
    val: 'denied: not allowed',
  });
});
