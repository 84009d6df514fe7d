// Connecting with the SDK: a valid connection JWT connects; a JWT with a bad
// signature is rejected for good (disconnected, code 3500, no reconnect loop).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  baseConfig,
  connToken,
  connectClient,
  logTail,
  newClient,
  once,
  sleep,
  startHerald,
  teardown,
} from '../lib/server.mjs';

test('connects with a valid HS256 token', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const client = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(client);
  const ctx = await connectClient(client);

  assert.equal(typeof ctx.client, 'string', 'connected ctx.client must be a string');
  assert.ok(ctx.client.length > 0, 'connected ctx.client must be non-empty');
  assert.equal(ctx.transport, 'websocket');
  assert.equal(client.state, 'connected');
  assert.deepEqual(client.eventsOf('error'), [], `unexpected error events${logTail(server)}`);
});

test('two connections get distinct client ids', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const a = newClient(server.wsUrl, { token: connToken('alice') });
  const b = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(a, b);
  const [ca, cb] = await Promise.all([connectClient(a), connectClient(b)]);
  assert.notEqual(ca.client, cb.client);
});

test('a token with a wrong signature is rejected with 3500 and no reconnect', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const client = newClient(server.wsUrl, { token: connToken('mallory', { secret: 'not-the-secret' }) });
  clients.push(client);
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
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const client = newClient(server.wsUrl, { token: 'not.a.jwt' });
  clients.push(client);
  const disconnected = once(client, 'disconnected', 5000);
  client.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500, `disconnect code (reason ${JSON.stringify(ctx.reason)})`);
  assert.equal(client.state, 'disconnected');
});
