// Publication filters by tags with the SDK's `tagsFilter`: the server
// sends a subscriber only the publications whose tags pass its filter.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { collectPublications, startTestServer } from '../lib/fixtures.mjs';
import { baseConfig, subscribeAndWait, waitFor } from '../lib/server.mjs';

const config = baseConfig({
  channel: {
    namespaces: [{ name: 'feed', allow_subscribe_for_client: true, allow_tags_filter: true }],
  },
});

test('tagsFilter: only publications whose tags pass arrive', { timeout: 30_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config });
  const [filtered, everything] = await connect('f', 'e');
  const tagsFilter = {
    op: 'or',
    nodes: [
      { key: 'level', cmp: 'in', vals: ['error', 'fatal'] },
      { key: 'latency_ms', cmp: 'gte', val: '500' },
    ],
  };
  const a = filtered.newSubscription('feed:logs', { tagsFilter });
  const b = everything.newSubscription('feed:logs');
  const got = collectPublications(a);
  const all = collectPublications(b);
  await Promise.all([subscribeAndWait(a), subscribeAndWait(b)]);
  const events = [
    { n: 1, tags: { level: 'info', latency_ms: '20' } },
    { n: 2, tags: { level: 'error', latency_ms: '20' } },
    { n: 3, tags: { level: 'info', latency_ms: '900' } },
    { n: 4, tags: { level: 'debug' } },
    { n: 5, tags: { level: 'fatal' } },
  ];
  for (const { n, tags } of events) {
    const r = await server.api('publish', { channel: 'feed:logs', data: { n }, tags });
    assert.ok(r.result, JSON.stringify(r));
  }
  await waitFor(() => all.length === 5, 5000, 'every publication at the unfiltered subscriber');
  await waitFor(() => got.length === 3, 5000, () => `3 filtered publications, got ${JSON.stringify(got.map((p) => p.data))}`);
  assert.deepEqual(got.map((p) => p.data.n), [2, 3, 5]);
  assert.deepEqual(got[0].tags, { level: 'error', latency_ms: '20' });
});
