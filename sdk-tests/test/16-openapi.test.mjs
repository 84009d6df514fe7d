// The server API's OpenAPI document (swagger.enabled), checked by a real
// OpenAPI validator: a valid OpenAPI 3 document, every method of the HTTP
// API in it, and what it says a publish takes accepted by the server.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import SwaggerParser from '@apidevtools/swagger-parser';

import { startHerald } from '../lib/server.mjs';

const METHODS = [
  'publish', 'broadcast', 'subscribe', 'unsubscribe', 'disconnect', 'refresh', 'presence',
  'presence_stats', 'history', 'history_remove', 'channels', 'info', 'batch',
];

test('the OpenAPI document is valid and lists every method', { timeout: 20_000 }, async (t) => {
  const server = await startHerald({ config: { http_api: { key: 'k' }, swagger: { enabled: true } } });
  t.after(() => server.stop());

  const resp = await fetch(`${server.httpUrl}/swagger/openapi.json`);
  assert.equal(resp.status, 200);
  const doc = await resp.json();
  // validate() throws on a document that breaks the OpenAPI schema or has
  // a $ref that leads nowhere; it resolves the references as it goes.
  const api = await SwaggerParser.validate(structuredClone(doc));
  assert.match(api.openapi, /^3\./);
  for (const method of METHODS) {
    const op = api.paths[`/api/${method}`]?.post;
    assert.ok(op, `POST /api/${method} is described`);
    assert.ok(op.requestBody.content['application/json'].schema, method);
  }
  const publish = api.components.schemas.PublishRequest.properties;
  for (const field of ['channel', 'data', 'b64data', 'tags', 'skip_history', 'idempotency_key', 'version', 'version_epoch', 'delta']) {
    assert.ok(publish[field], `PublishRequest.${field}`);
  }

  // Swagger UI is served from the binary.
  const ui = await fetch(`${server.httpUrl}/swagger/`);
  assert.equal(ui.status, 200);
  assert.match(await ui.text(), /swagger-ui/i);
});

test('without swagger.enabled there is no document', { timeout: 20_000 }, async (t) => {
  const server = await startHerald({ config: { http_api: { key: 'k' } } });
  t.after(() => server.stop());
  const resp = await fetch(`${server.httpUrl}/swagger/openapi.json`);
  assert.equal(resp.status, 404);
});
