// Publications reach SDK subscriptions: from the HTTP API (publish and
// broadcast) and from another SDK client publishing where allowed.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { collectPublications as collect, startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import { logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';

test('HTTP API publish reaches a subscriber', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice] = await connect('alice');

  const news = alice.newSubscription('news');
  const room = alice.newSubscription('chat:room');
  const newsPubs = collect(news);
  const roomPubs = collect(room);
  await Promise.all([subscribeAndWait(news), subscribeAndWait(room)]);

  const r1 = await server.api('publish', { channel: 'news', data: { text: 'hello news' } });
  assert.ok(r1.result, `publish reply must have result: ${JSON.stringify(r1)}`);
  const r2 = await server.api('publish', { channel: 'chat:room', data: { text: 'hello room', n: 2 } });
  assert.ok(r2.result, `publish reply must have result: ${JSON.stringify(r2)}`);

  await waitFor(() => newsPubs.length >= 1 && roomPubs.length >= 1, 3000, () => `publications${logTail(server)}`);
  assert.equal(newsPubs.length, 1);
  assert.equal(roomPubs.length, 1);
  assert.equal(newsPubs[0].channel, 'news');
  assert.deepEqual(newsPubs[0].data, { text: 'hello news' });
  assert.equal(roomPubs[0].channel, 'chat:room');
  assert.deepEqual(roomPubs[0].data, { text: 'hello room', n: 2 });
  // Server API publications carry no publisher client info.
  assert.equal(newsPubs[0].info, undefined, `unexpected info: ${JSON.stringify(newsPubs[0].info)}`);
});

test('HTTP API broadcast reaches subscribers of every listed channel', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, bob] = await connect('alice', 'bob');

  const a = alice.newSubscription('news');
  const b = bob.newSubscription('chat:lobby');
  const aPubs = collect(a);
  const bPubs = collect(b);
  await Promise.all([subscribeAndWait(a), subscribeAndWait(b)]);

  const reply = await server.api('broadcast', { channels: ['news', 'chat:lobby'], data: { all: true } });
  assert.ok(reply.result, `broadcast reply must have result: ${JSON.stringify(reply)}`);
  await waitFor(() => aPubs.length >= 1 && bPubs.length >= 1, 3000, () => `broadcast publications${logTail(server)}`);
  assert.deepEqual(aPubs.map((p) => [p.channel, p.data]), [['news', { all: true }]]);
  assert.deepEqual(bPubs.map((p) => [p.channel, p.data]), [['chat:lobby', { all: true }]]);
});

test('a subscriber publishing into chat: reaches other subscribers with publisher info', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, bob] = await connect('alice', ['bob', { info: { name: 'Bob' } }]);
  const bobCtx = bob.eventsOf('connected')[0];

  const aSub = alice.newSubscription('chat:room');
  const bSub = bob.newSubscription('chat:room');
  const aPubs = collect(aSub);
  await Promise.all([subscribeAndWait(aSub), subscribeAndWait(bSub)]);

  const res = await bSub.publish({ text: 'hi from bob' });
  assert.ok(res !== undefined, 'publish resolves');

  await waitFor(() => aPubs.length >= 1, 3000, () => `alice to get bob's publication${logTail(server)}`);
  assert.equal(aPubs.length, 1);
  const pub = aPubs[0];
  assert.equal(pub.channel, 'chat:room');
  assert.deepEqual(pub.data, { text: 'hi from bob' });
  assert.ok(pub.info, `client publication must carry info: ${JSON.stringify(pub)}`);
  assert.equal(pub.info.user, 'bob');
  assert.equal(pub.info.client, bobCtx.client);
  assert.deepEqual(pub.info.connInfo, { name: 'Bob' }, 'connInfo comes from the token info claim');
});

test('client.publish into a channel allowing client publish (no subscription needed)', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, bob] = await connect('alice', 'bob');

  const { pubs: aPubs } = await subscribeCollecting(alice, 'news');

  await bob.publish('news', { text: 'bob, unsubscribed' });
  await waitFor(() => aPubs.length >= 1, 3000, () => `publication${logTail(server)}`);
  assert.deepEqual(aPubs[0].data, { text: 'bob, unsubscribed' });
  assert.equal(aPubs[0].info?.user, 'bob');
});
