// Bootstrapping a subscription from a known stream position: the app reads
// the position (HTTP API history with no limit), more is published, then the
// SDK subscribes with `since` and gets exactly what followed that position
// (recovered in the subscribe reply), then live publications.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { configWithNamespaces, publishNumbered, startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import { logTail, waitFor } from '../lib/server.mjs';

function sinceConfig() {
  return configWithNamespaces(
    {
      name: 'feed',
      allow_subscribe_for_client: true,
      history_size: 100,
      history_ttl: '300s',
      force_recovery: true,
    },
    {
      // Recovery only when the client asks for a recoverable subscription.
      name: 'optin',
      allow_subscribe_for_client: true,
      history_size: 100,
      history_ttl: '300s',
      allow_recovery: true,
    },
  );
}

async function bootstrap(t, channel, subOptions) {
  const { server, connect } = await startTestServer(t, { config: sinceConfig() });

  await publishNumbered(server, channel, 1, 10);
  const pos = await server.api('history', { channel });
  assert.ok(pos.result, `history (position only): ${JSON.stringify(pos)}`);
  assert.deepEqual(pos.result.publications ?? [], [], 'no limit: position only');
  assert.equal(pos.result.offset, 10);
  assert.ok(pos.result.epoch, 'non-empty epoch');
  const since = { offset: pos.result.offset, epoch: pos.result.epoch };

  await publishNumbered(server, channel, 11, 15);

  const [alice] = await connect('alice');
  const { pubs, ctx } = await subscribeCollecting(alice, channel, { since, ...subOptions });
  assert.equal(ctx.wasRecovering, true, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.equal(ctx.recovered, true, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.equal(ctx.recoverable, true, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.equal(ctx.streamPosition.epoch, since.epoch);

  await waitFor(() => pubs.length >= 5, 2000, () => `5 recovered publications, got ${JSON.stringify(pubs)}${logTail(server)}`);
  await publishNumbered(server, channel, 16, 20);
  await waitFor(() => pubs.length >= 10, 2000, () => `10 publications, got ${pubs.length}${logTail(server)}`);
  // Marker: nothing else in flight.
  await publishNumbered(server, channel, 21, 21);
  await waitFor(() => pubs.length >= 11, 2000, 'marker');

  assert.deepEqual(
    pubs.map((p) => [p.offset, p.data.n]),
    Array.from({ length: 11 }, (_, i) => [11 + i, 11 + i]),
    'exactly the publications after the position, in order, then live ones',
  );
  assert.equal(alice.state, 'connected');
}

test('subscribe with since (force_recovery) recovers what followed the position, then live', { timeout: 15_000 }, (t) =>
  bootstrap(t, 'feed:news', {}),
);

test('subscribe with since + recoverable (allow_recovery) recovers the same way', { timeout: 15_000 }, (t) =>
  bootstrap(t, 'optin:news', { recoverable: true }),
);

test('subscribe with since in a stale epoch: wasRecovering, not recovered, then live', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config: sinceConfig() });

  const channel = 'feed:stale';
  await publishNumbered(server, channel, 1, 5);
  const [alice] = await connect('alice');
  const { pubs, ctx } = await subscribeCollecting(alice, channel, { since: { offset: 2, epoch: 'some-old-epoch' } });
  assert.equal(ctx.wasRecovering, true, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.equal(ctx.recovered, false, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.equal(ctx.streamPosition.offset, 5, `subscribed ctx ${JSON.stringify(ctx)}`);
  assert.notEqual(ctx.streamPosition.epoch, 'some-old-epoch');

  await publishNumbered(server, channel, 6, 6);
  await waitFor(() => pubs.some((p) => p.data.n === 6), 2000, () => `live publication, got ${JSON.stringify(pubs)}`);
  assert.equal(pubs.at(-1).offset, 6);
  assert.ok(
    pubs.every((p) => p.offset > 2),
    `nothing at or before the requested offset: ${JSON.stringify(pubs.map((p) => p.offset))}`,
  );
});
