// Server-side subscriptions: channels listed in the connection token's
// `channels` claim, and subscriptions made at runtime via the server API
// (/api/subscribe, /api/unsubscribe). The SDK reports them on the client:
// client.on('subscribed' | 'publication' | 'unsubscribed').

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { configWithNamespaces, publishNumbered, startTestServer } from '../lib/fixtures.mjs';
import { connToken, connectClient, logTail, waitFor } from '../lib/server.mjs';

test('channels claim subscribes the connection server-side', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [client] = await connect(['alice', { channels: ['news', 'ro:feed'] }]);

  await waitFor(
    () => client.eventsOf('subscribed').length >= 2,
    2000,
    () => `server-side 'subscribed' events, got ${JSON.stringify(client.eventsOf('subscribed'))}${logTail(server)}`,
  );
  assert.deepEqual(client.eventsOf('subscribed').map((c) => c.channel).sort(), ['news', 'ro:feed']);

  for (const [channel, data] of [
    ['news', { n: 1 }],
    ['ro:feed', { n: 2 }],
  ]) {
    const r = await server.api('publish', { channel, data });
    assert.ok(r.result, `publish to ${channel}: ${JSON.stringify(r)}`);
  }
  await waitFor(() => client.eventsOf('publication').length >= 2, 3000, () => `publications${logTail(server)}`);
  const pubs = client.eventsOf('publication').map((c) => [c.channel, c.data]);
  assert.deepEqual(pubs, [
    ['news', { n: 1 }],
    ['ro:feed', { n: 2 }],
  ]);

  // A channel the token did not list is not delivered.
  await server.api('publish', { channel: 'other', data: { n: 3 } });
  await server.api('publish', { channel: 'news', data: { n: 4 } });
  await waitFor(() => client.eventsOf('publication').length >= 3, 3000, 'fourth publication');
  assert.deepEqual(
    client.eventsOf('publication').map((c) => c.channel),
    ['news', 'ro:feed', 'news'],
  );
});

test('server API subscribe/unsubscribe a connected user', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [client, other] = await connect('alice', 'bob');

  const sr = await server.api('subscribe', { user: 'alice', channel: 'chat:live' });
  assert.ok(sr.result, `subscribe reply: ${JSON.stringify(sr)}`);
  await waitFor(
    () => client.eventsOf('subscribed').some((c) => c.channel === 'chat:live'),
    2000,
    () => `'subscribed' push for chat:live${logTail(server)}`,
  );

  await server.api('publish', { channel: 'chat:live', data: { live: true } });
  await waitFor(() => client.eventsOf('publication').length >= 1, 3000, 'publication on chat:live');
  assert.deepEqual(client.eventsOf('publication')[0], { channel: 'chat:live', data: { live: true } });
  assert.deepEqual(other.eventsOf('subscribed'), [], 'bob was not subscribed');
  assert.deepEqual(other.eventsOf('publication'), [], 'bob gets nothing');

  const ur = await server.api('unsubscribe', { user: 'alice', channel: 'chat:live' });
  assert.ok(ur.result, `unsubscribe reply: ${JSON.stringify(ur)}`);
  await waitFor(
    () => client.eventsOf('unsubscribed').some((c) => c.channel === 'chat:live'),
    2000,
    () => `'unsubscribed' push for chat:live${logTail(server)}`,
  );
  // After unsubscribe, a publication to chat:live is not delivered; a marker on a
  // channel still subscribed proves delivery order instead of a sleep.
  const mr = await server.api('subscribe', { user: 'alice', channel: 'marker' });
  assert.ok(mr.result, JSON.stringify(mr));
  await waitFor(() => client.eventsOf('subscribed').some((c) => c.channel === 'marker'), 2000, 'marker subscribed');
  await server.api('publish', { channel: 'chat:live', data: { live: false } });
  await server.api('publish', { channel: 'marker', data: { end: true } });
  await waitFor(() => client.eventsOf('publication').some((c) => c.channel === 'marker'), 3000, 'marker publication');
  assert.deepEqual(
    client.eventsOf('publication').map((c) => c.channel),
    ['chat:live', 'marker'],
  );
  assert.equal(client.state, 'connected');
});

test('subs claim subscribes the connection server-side', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [client] = await connect(['alice', { subs: { 'chat:inbox': {} } }]);
  await waitFor(
    () => client.eventsOf('subscribed').length >= 1,
    2000,
    () => `server-side 'subscribed' event for chat:inbox${logTail(server)}`,
  );
  assert.equal(client.eventsOf('subscribed')[0].channel, 'chat:inbox');
  const r = await server.api('publish', { channel: 'chat:inbox', data: { hello: 'inbox' } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => client.eventsOf('publication').length >= 1, 3000, 'inbox publication');
  assert.deepEqual(client.eventsOf('publication')[0].data, { hello: 'inbox' });
});

test('server-side subscriptions recover what a reconnect missed', { timeout: 15_000 }, async (t) => {
  const config = configWithNamespaces({
    name: 'feed',
    history_size: 100,
    history_ttl: '300s',
    force_recovery: true,
  });
  const { server, client: newClient } = await startTestServer(t, { config });
  const client = newClient({
    token: connToken('alice', { channels: ['feed:x'] }),
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
  });
  await connectClient(client);
  const subscribed = () => client.eventsOf('subscribed').filter((c) => c.channel === 'feed:x');
  await waitFor(() => subscribed().length >= 1, 2000, () => `subscribed${logTail(server)}`);
  assert.equal(subscribed()[0].recoverable, true, JSON.stringify(subscribed()[0]));
  const numbers = () => client.eventsOf('publication').map((c) => c.data.n);

  await publishNumbered(server, 'feed:x', 1, 1);
  await waitFor(() => numbers().length >= 1, 3000, 'publication 1');
  // Disconnected with a code that invites a reconnect; two publications
  // go out meanwhile.
  const r = await server.api('disconnect', {
    user: 'alice',
    disconnect: { code: 4000, reason: 'come back' },
  });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => client.state !== 'connected', 2000, 'disconnected');
  await publishNumbered(server, 'feed:x', 2, 3);
  await waitFor(() => numbers().length >= 3, 5000, () => `numbers ${numbers()}${logTail(server)}`);
  await publishNumbered(server, 'feed:x', 4, 4);
  await waitFor(() => numbers().length >= 4, 3000, 'publication 4');
  assert.deepEqual(numbers(), [1, 2, 3, 4], 'every publication once, in order');
  const again = subscribed().at(-1);
  assert.equal(again.wasRecovering, true, JSON.stringify(again));
  assert.equal(again.recovered, true, JSON.stringify(again));
});
