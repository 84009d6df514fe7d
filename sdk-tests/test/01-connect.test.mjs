// Connecting with the SDK: a valid connection JWT connects; a JWT with a bad
// signature is rejected for good (disconnected, code 3500, no reconnect loop).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer } from '../lib/fixtures.mjs';
import { connToken, connectClient, logTail, once, sleep } from '../lib/server.mjs';

test('connects with a valid HS256 token', { timeout: 15_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t);

  const client = newClient({ token: connToken('alice') });
  const ctx = await connectClient(client);

  assert.equal(typeof ctx.client, 'string', 'connected ctx.client must be a string');
  assert.ok(ctx.client.length > 0, 'connected ctx.client must be non-empty');
  assert.equal(ctx.transport, 'websocket');
  assert.equal(client.state, 'connected');
  assert.deepEqual(client.eventsOf('error'), [], `unexpected error events${logTail(server)}`);
});

test('two connections get distinct client ids', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [a, b] = await connect('alice', 'alice');
  assert.notEqual(a.eventsOf('connected')[0].client, b.eventsOf('connected')[0].client);
});

test('a token with a wrong signature is rejected with 3500 and no reconnect', { timeout: 15_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t);

  const client = newClient({ token: connToken('mallory', { secret: 'not-the-secret' }) });
  const disconnected = once(client, 'disconnected', 5000);
  client.connect();
  const ctx = await disconnected.catch((err) => {
    throw new Error(
      `${err.message}; events: ${JSON.stringify(client.events.map((e) => [e.type, e.ctx]))}${logTail(server)}`,
    );
  });

  assert.equal(ctx.code, 3500, `disconnect code (reason ${JSON.stringify(ctx.reason)})`);
  assert.equal(client.state, 'disconnected');
  assert.equal(client.eventsOf('connected').length, 0, 'must never be connected');

  // Observation window: a terminal disconnect must not be followed by reconnect attempts.
  const seen = client.events.length;
  await sleep(1500);
  const later = client.events.slice(seen).map((e) => e.type);
  assert.deepEqual(later, [], 'no events (no reconnect attempts) after the terminal disconnect');
  assert.equal(client.state, 'disconnected');
});

test('a malformed token is rejected with 3500', { timeout: 15_000 }, async (t) => {
  const { client: newClient } = await startTestServer(t);

  const client = newClient({ token: 'not.a.jwt' });
  const disconnected = once(client, 'disconnected', 5000);
  client.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500, `disconnect code (reason ${JSON.stringify(ctx.reason)})`);
  assert.equal(client.state, 'disconnected');
});
