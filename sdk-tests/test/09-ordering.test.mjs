// Many publications: 1,000 HTTP API publishes, sent one after another, reach
// every subscriber in order, each exactly once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import { logTail, waitFor } from '../lib/server.mjs';

const N = 1000;

function checkSequence(label, pubs) {
  const ns = pubs.map((p) => p.data.n);
  const dupes = ns.length - new Set(ns).size;
  assert.equal(dupes, 0, `${label}: ${dupes} duplicate publication(s)`);
  const firstBad = ns.findIndex((n, i) => n !== i);
  assert.equal(firstBad, -1, `${label}: out of order at index ${firstBad}: got ${ns[firstBad]}`);
  assert.equal(ns.length, N, `${label}: got ${ns.length} of ${N}`);
}

test(`${N} sequential API publications arrive in order exactly once`, { timeout: 30_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, bob] = await connect('alice', ['bob', { channels: ['stream'] }]);

  // alice: client-side subscription; bob: server-side subscription (token channels).
  const { pubs: aPubs } = await subscribeCollecting(alice, 'stream');
  await waitFor(() => bob.eventsOf('subscribed').length === 1, 2000, "bob's server-side subscription");

  const started = Date.now();
  for (let i = 0; i < N; i++) {
    const r = await server.api('publish', { channel: 'stream', data: { n: i, pad: 'x'.repeat(i % 50) } });
    if (!r.result) assert.fail(`publish #${i} failed: ${JSON.stringify(r)}`);
  }
  const publishMs = Date.now() - started;

  const bPubs = () => bob.eventsOf('publication');
  await waitFor(
    () => aPubs.length >= N && bPubs().length >= N,
    5000,
    () => `all ${N} publications (alice ${aPubs.length}, bob ${bPubs().length}, published in ${publishMs} ms)${logTail(server)}`,
  );
  // A marker publication proves nothing else was still in flight.
  await server.api('publish', { channel: 'stream', data: { n: N } });
  await waitFor(() => aPubs.length > N && bPubs().length > N, 3000, 'marker publication');
  checkSequence('alice', aPubs.slice(0, N));
  checkSequence('bob', bPubs().slice(0, N));
  assert.equal(aPubs.length, N + 1);
  assert.equal(bPubs().length, N + 1);
  assert.equal(alice.state, 'connected');
  assert.equal(bob.state, 'connected');
});

test(`${N} publications via one batch API call arrive in order exactly once`, { timeout: 30_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const { pubs } = await subscribeCollecting(alice, 'stream');

  const commands = Array.from({ length: N }, (_, i) => ({ publish: { channel: 'stream', data: { n: i } } }));
  const r = await server.api('batch', { commands });
  assert.ok(r.replies, `batch reply must have replies: ${JSON.stringify(r).slice(0, 300)}`);
  assert.equal(r.replies.length, N);
  const failed = r.replies.findIndex((x) => !x.publish);
  assert.equal(failed, -1, `batch reply #${failed}: ${JSON.stringify(r.replies[failed])}`);

  await waitFor(() => pubs.length >= N, 5000, () => `all ${N} publications (got ${pubs.length})${logTail(server)}`);
  checkSequence('alice', pubs);
});
