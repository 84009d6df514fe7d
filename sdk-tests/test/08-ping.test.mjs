// Ping/pong keeps an idle connection alive: the server sends {} every
// client.ping_interval, the SDK answers {} (pong), and nothing disconnects.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import {
  baseConfig,
  connToken,
  connectClient,
  frameLines,
  logTail,
  sleep,
  spyWebSocket,
  waitFor,
} from '../lib/server.mjs';

test('connection stays alive across several ping intervals', { timeout: 20_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t, {
    // pong_timeout must be shorter than ping_interval (Herald validates it, as Centrifugo does).
    config: baseConfig({ client: { ping_interval: '1s', pong_timeout: '500ms' } }),
  });

  const spy = spyWebSocket();
  const client = newClient({
    websocket: spy.WebSocket,
    token: connToken('alice'),
    // Detect a silent server quickly: 1 s ping interval + 1.5 s grace.
    maxServerPingDelay: 1500,
  });
  await connectClient(client);
  const { pubs } = await subscribeCollecting(client, 'news');

  const connectReply = frameLines(spy.frames.received)
    .map((l) => JSON.parse(l))
    .find((m) => m.connect);
  assert.ok(connectReply, 'connect reply received');
  assert.equal(connectReply.connect.ping, 1, `connect reply ping (seconds): ${JSON.stringify(connectReply)}`);
  assert.equal(connectReply.connect.pong, true, `connect reply pong flag: ${JSON.stringify(connectReply)}`);

  const start = Date.now();
  await sleep(4000); // the point of the test: idle time across several intervals

  const pings = frameLines(spy.frames.received.filter((f) => f.at >= start)).filter((l) => l === '{}');
  const pongs = frameLines(spy.frames.sent.filter((f) => f.at >= start)).filter((l) => l === '{}');
  assert.ok(pings.length >= 3, `expected >= 3 pings in 4 s, got ${pings.length}${logTail(server)}`);
  assert.ok(pongs.length >= 3, `expected >= 3 pongs sent in 4 s, got ${pongs.length}`);

  assert.deepEqual(
    client.eventsAfterConnect('disconnected', 'connecting', 'error', 'unsubscribed'),
    [],
    `no disconnects expected${logTail(server)}`,
  );
  assert.equal(client.state, 'connected');
  assert.equal(spy.frames.sockets.length, 1, 'still the first WebSocket');

  const r = await server.api('publish', { channel: 'news', data: { still: 'alive' } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => pubs.length === 1, 3000, 'publication after the idle period');
  assert.deepEqual(pubs[0].data, { still: 'alive' });
});
