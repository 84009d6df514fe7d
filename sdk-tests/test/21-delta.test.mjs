// Delta compression with the SDK's `delta: 'fossil'`: publications allowed
// as deltas come as Fossil deltas against the previous one, the SDK rebuilds
// each payload exactly (in both formats), a subscriber without deltas sees
// the same payloads, and after a forced reconnect recovery hands the missed
// publications over and deltas resume.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { collectPublications, configWithNamespaces, startTestServer } from '../lib/fixtures.mjs';
import { subscribeAndWait, waitFor } from '../lib/server.mjs';

const config = configWithNamespaces({
  name: 'board',
  allow_subscribe_for_client: true,
  history_size: 100,
  history_ttl: '300s',
  force_recovery: true,
  allowed_delta_types: ['fossil'],
});

/** A payload that changes little from one `n` to the next. */
function doc(n) {
  const rows = Array.from({ length: 20 }, (_, i) => ({ row: i, label: `row ${i} of the board`, score: i === n % 20 ? n : 0 }));
  return { n, rows, note: 'everything else stays the same' };
}

async function publishDocs(server, channel, from, to) {
  for (let n = from; n <= to; n++) {
    const r = await server.api('publish', { channel, data: doc(n), delta: true });
    assert.ok(r.result, JSON.stringify(r));
  }
}

test("delta: 'fossil' rebuilds every payload from deltas; a plain subscriber sees the same", { timeout: 30_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config });
  const [withDelta, plain] = await connect('d', 'p');
  const a = withDelta.newSubscription('board:live', { delta: 'fossil' });
  const b = plain.newSubscription('board:live');
  const got = collectPublications(a);
  const all = collectPublications(b);
  await Promise.all([subscribeAndWait(a), subscribeAndWait(b)]);

  await publishDocs(server, 'board:live', 1, 8);
  await waitFor(() => got.length === 8 && all.length === 8, 5000, () => `got ${got.length} and ${all.length} of 8`);
  assert.deepEqual(got.map((p) => p.data), all.map((p) => p.data));
  assert.deepEqual(got.map((p) => p.data), Array.from({ length: 8 }, (_, i) => doc(i + 1)));
  const stats = a.deltaStats();
  assert.equal(stats.numPublications, 8);
  assert.equal(stats.numFullPayloads, 1, `only the first is whole: ${JSON.stringify(stats)}`);
  assert.equal(stats.numDeltaPayloads, 7, JSON.stringify(stats));
  assert.ok(stats.bytesReceived < stats.bytesDecoded / 2, `deltas are small: ${JSON.stringify(stats)}`);
});

test('after a forced reconnect, recovery hands over what was missed and deltas resume', { timeout: 30_000 }, async (t) => {
  const { server, client } = await startTestServer(t, { config });
  const { connToken } = await import('../lib/server.mjs');
  const c = client({ token: connToken('r'), minReconnectDelay: 50, maxReconnectDelay: 200 });
  const sub = c.newSubscription('board:rec', { delta: 'fossil' });
  const got = collectPublications(sub);
  const subscribed = [];
  sub.on('subscribed', (ctx) => subscribed.push(ctx));
  c.connect();
  await subscribeAndWait(sub);
  await publishDocs(server, 'board:rec', 1, 3);
  await waitFor(() => got.length === 3, 5000, 'the first three');

  // Disconnect with a reconnect code, publish while it is away.
  const r = await server.api('disconnect', { user: 'r', disconnect: { code: 3011, reason: 'test' } });
  assert.ok(r.result, JSON.stringify(r));
  await publishDocs(server, 'board:rec', 4, 6);
  await waitFor(() => subscribed.length === 2, 5000, 'resubscribed');
  assert.equal(subscribed[1].recovered, true, JSON.stringify(subscribed[1]));
  await publishDocs(server, 'board:rec', 7, 10);
  await waitFor(() => got.length === 10, 5000, () => `got ${got.length} of 10`);
  assert.deepEqual(got.map((p) => p.data), Array.from({ length: 10 }, (_, i) => doc(i + 1)));
  const stats = sub.deltaStats();
  assert.ok(stats.numDeltaPayloads >= 5, `deltas before and after the reconnect: ${JSON.stringify(stats)}`);
});
