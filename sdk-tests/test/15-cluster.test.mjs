// Two Herald nodes over Redis, driven by the official SDK: a client on one
// node gets what is published through the other and sees the presence of
// clients of both; when Redis restarts mid-stream, the SDK answers the
// server's "insufficient state" (unsubscribe 2500) by resubscribing with
// recovery and ends up with every publication once, in order.
//
// The test starts a Redis server of its own (with an append-only file, so
// the stream survives the restart); it is skipped where `redis-server` is
// missing.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { collectPublications, configWithNamespaces } from '../lib/fixtures.mjs';
import {
  connToken,
  connectClient,
  logTail,
  newClient,
  sleep,
  startHerald,
  subscribeAndWait,
  teardown,
  waitFor,
} from '../lib/server.mjs';

const haveRedis = spawnSync('redis-server', ['--version']).status === 0;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function portOpen(port) {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** A redis-server of the test's own, restartable on the same port. */
async function ownRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-redis-'));
  const redis = {
    port,
    child: null,
    async start() {
      this.child = spawn(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
          '--appendonly', 'yes', '--appendfsync', 'always'],
        { stdio: 'ignore' },
      );
      await waitFor(() => portOpen(port), 5000, 'redis-server listening');
    },
    async stop() {
      if (!this.child) return;
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGKILL');
      await exited;
      this.child = null;
    },
    async dispose() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await redis.start();
  return redis;
}

function clusterConfig(port) {
  const config = configWithNamespaces(
    { name: 'room', presence: true, join_leave: true, allow_subscribe_for_client: true,
      allow_presence_for_subscriber: true, allow_publish_for_subscriber: true },
    { name: 'rec', allow_subscribe_for_client: true, history_size: 1000, history_ttl: '300s',
      force_recovery: true },
  );
  config.engine = { type: 'redis', redis: { address: `127.0.0.1:${port}`, prefix: 'sdk' } };
  config.node = { info_publish_interval: '300ms' };
  return config;
}

test('two nodes over Redis act as one server for the SDK', { skip: !haveRedis && 'redis-server missing', timeout: 30_000 }, async (t) => {
  const redis = await ownRedis();
  const config = clusterConfig(redis.port);
  const one = await startHerald({ config });
  const two = await startHerald({ config });
  const alice = newClient(one.wsUrl, {
    token: connToken('alice'),
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
  });
  const bob = newClient(two.wsUrl, { token: connToken('bob') });
  t.after(async () => {
    await teardown(one, alice);
    await teardown(two, bob);
    await redis.dispose();
  });
  await connectClient(alice);
  await connectClient(bob);

  // Delivery and presence across nodes.
  const aRoom = alice.newSubscription('room:lobby');
  const aPubs = collectPublications(aRoom);
  await subscribeAndWait(aRoom);
  const bRoom = bob.newSubscription('room:lobby');
  await subscribeAndWait(bRoom);
  await bRoom.publish({ text: 'hi from node two' });
  await waitFor(() => aPubs.length === 1, 5000, 'alice gets bob\'s publication');
  assert.deepEqual(aPubs[0].data, { text: 'hi from node two' });
  assert.equal(aPubs[0].info.user, 'bob');
  const presence = await aRoom.presence();
  const users = Object.values(presence.clients).map((c) => c.user).sort();
  assert.deepEqual(users, ['alice', 'bob']);

  // A numbered stream published through node two while Redis restarts.
  const sub = alice.newSubscription('rec:stream');
  const pubs = collectPublications(sub);
  const unsubscribes = [];
  sub.on('subscribing', (ctx) => unsubscribes.push(ctx.code));
  await subscribeAndWait(sub);
  const publish = async (n) => {
    for (let attempt = 0; attempt < 200; attempt++) {
      const r = await two.api('publish', { channel: 'rec:stream', data: { n } });
      if (r.result) return;
      await sleep(50);
    }
    assert.fail(`publish ${n} never acknowledged${logTail(two)}`);
  };
  const N = 40;
  for (let n = 1; n <= N; n++) {
    if (n === 15) {
      await redis.stop();
      await sleep(300);
      await redis.start();
    }
    await publish(n);
  }
  await waitFor(() => pubs.length >= N, 15_000, () => `all ${N} publications (got ${pubs.length})${logTail(one)}`);
  assert.deepEqual(pubs.map((p) => p.data.n), Array.from({ length: N }, (_, i) => i + 1));
  assert.ok(unsubscribes.includes(2500), `the SDK was sent to recover: ${JSON.stringify(unsubscribes)}`);
});
