// The SDK over the emulated transports: HTTP-streaming (JSON or Protobuf,
// as the suite runs) and SSE (JSON), its later commands posted to the
// emulation endpoint, and the fallback from a WebSocket that is not there.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EventSource } from 'eventsource';

import { collectPublications, publishNumbered, startTestServer } from '../lib/fixtures.mjs';
import { PROTOCOL } from '../lib/protocol.mjs';
import { baseConfig, connectClient, connToken, logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';

const config = baseConfig({
  http_stream: { enabled: true },
  sse: { enabled: true },
  channel: {
    namespaces: [
      {
        name: 'chat',
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
        presence: true,
        history_size: 50,
        history_ttl: '300s',
        force_recovery: true,
      },
    ],
  },
});

// SSE carries JSON only (an EventSource reads text).
const transports = PROTOCOL === 'json' ? ['http_stream', 'sse'] : ['http_stream'];

/** A client of `user` over the transports of `list`. */
function emulated(fixture, list, user) {
  const { server } = fixture;
  return fixture.client({
    token: connToken(user),
    emulationEndpoint: `${server.httpUrl}/emulation`,
    eventsource: EventSource,
  }, list);
}

for (const transport of transports) {
  test(`${transport}: connect, subscribe, publish both ways, presence, history`, { timeout: 30_000 }, async (t) => {
    const fixture = await startTestServer(t, { config });
    const { server } = fixture;
    const endpoint = [{ transport, endpoint: `${server.httpUrl}/connection/${transport}` }];
    const c = emulated(fixture, endpoint, 'ann');
    const connected = await connectClient(c, 5000);
    assert.equal(connected.transport, transport, JSON.stringify(connected));

    const sub = c.newSubscription(`chat:${transport}`);
    const pubs = collectPublications(sub);
    await subscribeAndWait(sub, 5000);
    await publishNumbered(server, `chat:${transport}`, 1, 2);
    await sub.publish({ n: 3 });
    await waitFor(() => pubs.length === 3, 5000, () => `3 publications, got ${pubs.length}${logTail(server)}`);
    assert.deepEqual(pubs.map((p) => p.data.n), [1, 2, 3]);

    const presence = await sub.presence();
    assert.equal(Object.keys(presence.clients).length, 1);
    const history = await sub.history({ limit: 10 });
    assert.equal(history.publications.length, 3);
    const rpcFailed = await c.rpc('nope', {}).then(() => null, (e) => e);
    assert.equal(rpcFailed?.code, 104, 'an error reply comes back over the stream too');
  });

  test(`${transport}: a reconnect recovers what was missed`, { timeout: 30_000 }, async (t) => {
    const fixture = await startTestServer(t, { config });
    const { server } = fixture;
    const endpoint = [{ transport, endpoint: `${server.httpUrl}/connection/${transport}` }];
    const c = emulated(fixture, endpoint, 'bob');
    await connectClient(c, 5000);
    const sub = c.newSubscription('chat:rec');
    const pubs = collectPublications(sub);
    await subscribeAndWait(sub, 5000);
    await publishNumbered(server, 'chat:rec', 1, 1);
    await waitFor(() => pubs.length === 1, 5000, 'the first publication');

    // The server closes the connection with a reconnect code; what is
    // published meanwhile comes back with the resubscription.
    const resubscribed = new Promise((resolve) => sub.once('subscribed', resolve));
    const r = await server.api('disconnect', { user: 'bob', disconnect: { code: 3001, reason: 'again' } });
    assert.ok(r.result, JSON.stringify(r));
    await publishNumbered(server, 'chat:rec', 2, 3);
    const again = await resubscribed;
    assert.equal(again.recovered, true, JSON.stringify(again));
    await waitFor(() => pubs.length === 3, 5000, () => `3 publications, got ${pubs.length}`);
    assert.deepEqual(pubs.map((p) => p.data.n), [1, 2, 3]);
  });
}

test('a client falls back to http_stream when the WebSocket endpoint is off', { timeout: 30_000 }, async (t) => {
  const off = baseConfig({ ...config, websocket: { disabled: true } });
  const fixture = await startTestServer(t, { config: off });
  const { server } = fixture;
  const list = [
    { transport: 'websocket', endpoint: server.wsUrl },
    { transport: 'http_stream', endpoint: `${server.httpUrl}/connection/http_stream` },
  ];
  const c = emulated(fixture, list, 'cy');
  const connected = await connectClient(c, 10_000);
  assert.equal(connected.transport, 'http_stream');
  const sub = c.newSubscription('chat:fallback');
  await subscribeAndWait(sub, 5000);
});
