// Durable history (`history_storage: "durable"`, SQLite in --data-dir)
// survives a server restart: two server runs share one data directory; the
// second run serves the first run's publications with the same epoch and
// offsets, and a client subscribing with a position from the first run
// recovers what was published after the restart.

import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { configWithNamespaces, publishNumbered, subscribeCollecting } from '../lib/fixtures.mjs';
import {
  connToken,
  connectClient,
  logTail,
  newClient,
  startHerald,
  subscribeAndWait,
  teardown,
  waitFor,
} from '../lib/server.mjs';

const N = 20;
const CHANNEL = 'archive:log';

function durableConfig() {
  return configWithNamespaces({
    name: 'archive',
    allow_subscribe_for_client: true,
    allow_history_for_subscriber: true,
    history_storage: 'durable', // no size/ttl: unbounded
    force_recovery: true,
  });
}

test('durable history survives a restart on the same data dir; old positions recover', { timeout: 20_000 }, async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'herald-sdk-data-'));
  let server = null;
  const clients = [];
  t.after(async () => {
    await teardown(server, ...clients);
    rmSync(dataDir, { recursive: true, force: true });
  });

  // Run 1: N publications.
  server = await startHerald({ config: durableConfig(), dataDir });
  const first = await publishNumbered(server, CHANNEL, 1, N);
  const epoch = first[0].epoch;
  assert.ok(epoch, `publish result carries an epoch: ${JSON.stringify(first[0])}`);
  assert.deepEqual(
    first.map((r) => [r.offset, r.epoch]),
    Array.from({ length: N }, (_, i) => [i + 1, epoch]),
    'offsets 1..N in one epoch',
  );
  const before = await server.api('history', { channel: CHANNEL });
  assert.deepEqual(
    { offset: before.result?.offset, epoch: before.result?.epoch },
    { offset: N, epoch },
    `position before restart: ${JSON.stringify(before)}`,
  );
  const oldSince = { offset: N, epoch };

  const code = await server.stop(); // SIGTERM
  assert.equal(code, 0, `graceful exit on SIGTERM${logTail(server)}`);
  assert.ok(readdirSync(dataDir).length > 0, 'the first run stored something in --data-dir');

  // Run 2 on the same data dir.
  server = await startHerald({ config: durableConfig(), dataDir });
  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);
  const sub = alice.newSubscription(CHANNEL);
  const ctx = await subscribeAndWait(sub);
  assert.deepEqual(ctx.streamPosition, { offset: N, epoch }, `subscribed ctx after restart: ${JSON.stringify(ctx)}`);

  const hist = await sub.history({ limit: -1 }).catch((err) => {
    throw new Error(`history after restart failed: ${JSON.stringify(err)}${logTail(server)}`);
  });
  assert.equal(hist.epoch, epoch, 'same epoch after restart');
  assert.equal(hist.offset, N, 'same top offset after restart');
  assert.deepEqual(
    hist.publications.map((p) => [p.offset, p.data.n]),
    Array.from({ length: N }, (_, i) => [i + 1, i + 1]),
    'all N publications, same offsets, same data',
  );
  const rev = await sub.history({ limit: 5, reverse: true });
  assert.deepEqual(
    rev.publications.map((p) => p.offset),
    [20, 19, 18, 17, 16],
  );

  // Publishing continues the stream: same epoch, offsets N+1...
  const pubs = [];
  sub.on('publication', (p) => pubs.push(p));
  const after = await publishNumbered(server, CHANNEL, N + 1, N + 5);
  assert.deepEqual(
    after.map((r) => [r.offset, r.epoch]),
    Array.from({ length: 5 }, (_, i) => [N + 1 + i, epoch]),
    'offsets continue after restart in the same epoch',
  );
  await waitFor(() => pubs.length >= 5, 2000, () => `live publications after restart, got ${pubs.length}`);
  assert.deepEqual(
    pubs.map((p) => p.offset),
    [21, 22, 23, 24, 25],
  );

  // A client with the position from before the restart recovers exactly what followed.
  const bob = newClient(server.wsUrl, { token: connToken('bob') });
  clients.push(bob);
  await connectClient(bob);
  const { pubs: bPubs, ctx: bCtx } = await subscribeCollecting(bob, CHANNEL, { since: oldSince });
  assert.equal(bCtx.wasRecovering, true, `bob subscribed ctx ${JSON.stringify(bCtx)}`);
  assert.equal(bCtx.recovered, true, `bob subscribed ctx ${JSON.stringify(bCtx)}`);
  await waitFor(() => bPubs.length >= 5, 2000, () => `5 recovered publications, got ${JSON.stringify(bPubs)}`);
  assert.deepEqual(
    bPubs.map((p) => [p.offset, p.data.n]),
    Array.from({ length: 5 }, (_, i) => [N + 1 + i, N + 1 + i]),
  );
});
