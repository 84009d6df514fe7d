// Recovery across server-forced reconnects: a numbered stream is published
// over the HTTP API while the subscriber's user is disconnected (code 3011,
// reconnect advised) twice; after each reconnect the SDK resubscribes with
// recovery, and it ends up with every publication exactly once, in order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { collectPublications, configWithNamespaces, startTestServer } from '../lib/fixtures.mjs';
import {
  connToken,
  connectClient,
  frameLines,
  logTail,
  sleep,
  spyWebSocket,
  subscribeAndWait,
  waitFor,
} from '../lib/server.mjs';

const N = 300;
const CHANNEL = 'rec:stream';

function recoveryConfig() {
  return configWithNamespaces({
    name: 'rec',
    allow_subscribe_for_client: true,
    history_size: 1000,
    history_ttl: '300s',
    force_recovery: true,
  });
}

test('publications continue through two forced reconnects: all recovered, once, in order', { timeout: 20_000 }, async (t) => {
  const { server, client: newClient } = await startTestServer(t, { config: recoveryConfig() });

  const spy = spyWebSocket();
  const alice = newClient({
    token: connToken('alice'),
    websocket: spy.WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
  });
  await connectClient(alice);

  const sub = alice.newSubscription(CHANNEL);
  const pubs = collectPublications(sub);
  const subscribed = [];
  sub.on('subscribed', (ctx) => subscribed.push(ctx));
  const first = await subscribeAndWait(sub);
  assert.equal(first.recoverable, true, `first subscribe is recoverable: ${JSON.stringify(first)}`);
  assert.equal(first.wasRecovering, false);

  const describe = () =>
    `got ${pubs.length}/${N}, subscribed ${JSON.stringify(subscribed)}, client events ` +
    `${JSON.stringify(alice.events.filter((e) => e.type !== 'publication').map((e) => [e.type, e.ctx]))}` +
    logTail(server);

  // Publisher: N publications, ~5 ms apart; forced disconnects at #100 and,
  // once the client is back, again from #200 on.
  const disconnects = [];
  let disconnectsSent = 0;
  const published = [];
  for (let i = 0; i < N; i++) {
    const r = await server.api('publish', { channel: CHANNEL, data: { n: i } });
    if (!r.result) assert.fail(`publish #${i} failed: ${JSON.stringify(r)}`);
    published.push(r.result);
    if ((i === 100 && disconnectsSent === 0) || (i >= 200 && disconnectsSent === 1 && subscribed.length >= 2)) {
      disconnectsSent++;
      disconnects.push(
        server.api('disconnect', { user: 'alice', disconnect: { code: 3011, reason: 'force reconnect' } }),
      );
    }
    await sleep(5);
  }
  for (const r of await Promise.all(disconnects)) assert.ok(r.result, `disconnect reply: ${JSON.stringify(r)}`);
  assert.equal(disconnectsSent, 2, `the client must be back before #${N} for the second disconnect: ${describe()}`);

  // Positions from publish results: offsets 1..N in one epoch.
  assert.ok(published.every((p) => p.epoch === published[0].epoch && p.epoch), 'one non-empty epoch');
  assert.deepEqual(
    published.map((p) => p.offset),
    Array.from({ length: N }, (_, i) => i + 1),
    'publish offsets are 1..N',
  );

  await waitFor(() => pubs.length >= N && subscribed.length >= 3, 5000, describe);
  // A marker publication proves nothing else was still in flight.
  await server.api('publish', { channel: CHANNEL, data: { n: N } });
  await waitFor(() => pubs.length > N, 3000, describe);

  const ns = pubs.map((p) => p.data.n);
  const dupes = ns.length - new Set(ns).size;
  assert.equal(dupes, 0, `${dupes} duplicate publication(s): ${describe()}`);
  const firstBad = ns.findIndex((n, i) => n !== i);
  assert.equal(firstBad, -1, `out of order / missing at index ${firstBad}: got ${ns[firstBad]}; ${describe()}`);
  assert.equal(ns.length, N + 1);
  assert.deepEqual(
    pubs.map((p) => p.offset),
    Array.from({ length: N + 1 }, (_, i) => i + 1),
    'each publication carries its offset',
  );

  // Two forced reconnects (3011 advises reconnect: no 'disconnected' state).
  assert.equal(alice.eventsOf('connected').length, 3, describe());
  assert.deepEqual(alice.eventsOf('disconnected'), []);
  const connecting = alice.eventsOf('connecting').filter((c) => c.code === 3011);
  assert.equal(connecting.length, 2, `two 'connecting' events with code 3011: ${describe()}`);
  assert.ok(connecting.every((c) => c.reason === 'force reconnect'), JSON.stringify(connecting));

  assert.equal(subscribed.length, 3, describe());
  for (const ctx of subscribed.slice(1)) {
    assert.equal(ctx.wasRecovering, true, `resubscribe ctx ${JSON.stringify(ctx)}`);
    assert.equal(ctx.recovered, true, `resubscribe ctx ${JSON.stringify(ctx)}`);
    assert.equal(ctx.recoverable, true, `resubscribe ctx ${JSON.stringify(ctx)}`);
    assert.equal(ctx.streamPosition.epoch, published[0].epoch);
  }

  // The publications missed while reconnecting came in the subscribe replies.
  const replies = frameLines(spy.frames.received)
    .map((l) => JSON.parse(l))
    .filter((m) => m.subscribe && m.subscribe.was_recovering);
  assert.equal(replies.length, 2, `two recovering subscribe replies, got ${JSON.stringify(replies)}`);
  const recoveredCount = replies.reduce((a, m) => a + (m.subscribe.publications || []).length, 0);
  assert.ok(recoveredCount > 0, `some publications were recovered in subscribe replies: ${JSON.stringify(replies)}`);
  assert.equal(alice.state, 'connected');
  assert.equal(sub.state, 'subscribed');
});
