// {{name}}: an outboxd target plugin (world `{{world}}`). It POSTs each event's payload to
// `config.url` and tells outboxd how that went. The decisions are plain functions in
// mapping.js (unit-tested natively with `npm test`); this file connects them to the host.
import { send } from 'outboxd:target/http@0.1.0';
import { log } from 'outboxd:target/log@0.1.0';
import { get } from 'outboxd:target/config@0.1.0';
import { DeliveryError, buildRequest, classifyHttpError, classifyResponse } from './mapping.js';

/** One event: build the request, send it through the host, classify the answer. */
function deliverOne(event) {
  const url = get('url');
  if (url === undefined) throw DeliveryError.permanent('missing required config key `url`');
  let response;
  try {
    response = send(buildRequest(event, url));
  } catch (err) {
    // `send` throws the WIT http `error` as `err.payload`; anything else is a bug: let it trap.
    if (err?.payload?.tag === undefined) throw err;
    throw classifyHttpError(err.payload);
  }
  log('info', `{{name}}: event ${event.id} attempt ${event.attempt}: HTTP ${response.status}`);
  const failure = classifyResponse(response);
  if (failure) throw failure;
}

{{export}}