// Connection token lifetime: the SDK refreshes a short-lived token through
// getToken (connect reply expires/ttl -> refresh command), and an expired
// token at connect (error 109) makes the SDK fetch a fresh one and retry.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer } from '../lib/fixtures.mjs';
import {
  baseConfig,
  connToken,
  connectClient,
  logTail,
  nowSec,
  spyWebSocket,
  frameLines,
  waitFor,
} from '../lib/server.mjs';

test('getToken refreshes a short-lived token and the connection survives past exp', { timeout: 20_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t);

  const spy = spyWebSocket();
  const issued = []; // exp of every token handed out
  const client = newClient({
    websocket: spy.WebSocket,
    getToken: async () => {
      const exp = nowSec() + 3;
      issued.push(exp);
      return connToken('alice', { ttlSec: exp - nowSec() });
    },
  });
  const connected = await connectClient(client);
  const firstExp = issued[0];

  // The connect reply must announce the expiry so the SDK can refresh.
  const connectReply = frameLines(spy.frames.received)
    .map((l) => JSON.parse(l))
    .find((m) => m.connect);
  assert.ok(connectReply, 'a connect reply was received');
  assert.equal(connectReply.connect.expires, true, `connect reply: ${JSON.stringify(connectReply)}`);
  assert.ok(
    typeof connectReply.connect.ttl === 'number' && connectReply.connect.ttl > 0 && connectReply.connect.ttl <= 3,
    `connect reply ttl should be 1..3 s for a token expiring in <= 3 s: ${JSON.stringify(connectReply)}`,
  );

  // Stay until well past the first token's exp.
  await waitFor(() => nowSec() >= firstExp + 2, 8000, 'time to pass the first exp');

  assert.ok(issued.length >= 2, `getToken called ${issued.length} time(s), expected >= 2 (refresh)${logTail(server)}`);
  const refreshCmds = frameLines(spy.frames.sent).filter((l) => l.includes('"refresh"'));
  assert.ok(refreshCmds.length >= 1, 'the SDK sent at least one refresh command');
  assert.equal(client.state, 'connected');
  assert.deepEqual(
    client.eventsAfterConnect('disconnected', 'connecting'),
    [],
    `no disconnect/reconnect expected${logTail(server)}`,
  );
  assert.equal(client.eventsOf('connected').length, 1, 'connected exactly once (same connection)');
  assert.deepEqual(client.eventsOf('error'), [], 'no error events');
  assert.equal(spy.frames.sockets.length, 1, 'one WebSocket only');

  // The connection still works: a publication reaches a new subscription.
  const sub = client.newSubscription('news');
  const got = new Promise((res) => sub.on('publication', res));
  sub.subscribe();
  await new Promise((res) => sub.once('subscribed', res));
  const reply = await server.api('publish', { channel: 'news', data: { after: 'refresh' } });
  assert.ok(reply.result, `publish reply: ${JSON.stringify(reply)}`);
  const pub = await got;
  assert.deepEqual(pub.data, { after: 'refresh' });
  assert.ok(connected.client);
});

test('an expired token at connect yields 109 and getToken provides a fresh one', { timeout: 15_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t);

  // Expired an hour ago (well beyond any clock-skew leeway).
  const expired = connToken('alice', { ttlSec: -3600, iat: nowSec() - 7200 });
  let calls = 0;
  const client = newClient({
    token: expired,
    getToken: async () => {
      calls += 1;
      return connToken('alice', { ttlSec: 3600 });
    },
  });
  const ctx = await connectClient(client, 5000).catch((err) => {
    throw new Error(err.message + logTail(server));
  });

  assert.ok(ctx.client, 'connected with a client id');
  assert.ok(calls >= 1, 'getToken was called');
  const errors = client.eventsOf('error');
  assert.ok(
    errors.some((e) => e.type === 'connect' && e.error && e.error.code === 109),
    `an error event with code 109 (token expired) was expected, got ${JSON.stringify(errors)}`,
  );
  assert.deepEqual(client.eventsOf('disconnected'), [], 'never reached disconnected');
});

test('an expired token without getToken ends disconnected', { timeout: 15_000 }, async (t) => {
  const { client: newClient } = await startTestServer(t);

  const client = newClient({ token: connToken('alice', { ttlSec: -3600, iat: nowSec() - 7200 }) });
  const disconnected = new Promise((res) => client.once('disconnected', res));
  client.connect();
  const ctx = await disconnected;
  // The SDK turns "expired, and no way to get a new token" into unauthorized.
  assert.equal(client.state, 'disconnected');
  assert.equal(client.eventsOf('connected').length, 0);
  assert.ok(
    client.eventsOf('error').some((e) => e.error && e.error.code === 109),
    `expected the server to answer 109 first: ${JSON.stringify(client.events.map((e) => [e.type, e.ctx]))}`,
  );
  assert.ok(typeof ctx.code === 'number');
});

test('a connection whose token is not refreshed is closed as expired (3005) and reconnects', { timeout: 20_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t, {
    config: baseConfig({ client: { expired_close_delay: '200ms' } }),
  });

  let allowRefresh = false;
  let calls = 0;
  const client = newClient({
    getToken: async () => {
      calls += 1;
      if (calls > 1 && !allowRefresh) throw new Error('token backend unavailable');
      return connToken('alice', { ttlSec: 2 });
    },
  });
  await connectClient(client);

  // Refresh keeps failing, so the server must close the connection once exp
  // (+ expired_close_delay) has passed, with a reconnect code.
  await waitFor(
    () => client.eventsAfterConnect('connecting', 'disconnected').length > 0,
    6000,
    () => `the server to close the expired connection; events ${JSON.stringify(client.events.map((e) => [e.type, e.ctx]))}${logTail(server)}`,
  );
  const [ev] = client.eventsAfterConnect('connecting', 'disconnected');
  assert.equal(ev.type, 'connecting', `expected a reconnect, got ${JSON.stringify(ev)}`);
  assert.equal(ev.ctx.code, 3005, `close code ${JSON.stringify(ev.ctx)}`);

  allowRefresh = true;
  await waitFor(() => client.eventsOf('connected').length >= 2, 6000, () => `reconnect with a fresh token${logTail(server)}`);
  assert.equal(client.state, 'connected');
});
