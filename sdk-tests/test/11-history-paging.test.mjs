// History from the SDK (`sub.history`): paging forwards with `since`, paging
// backwards with `reverse: true`, and `limit: 0` giving only the position.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { configWithNamespaces, startTestServer } from '../lib/fixtures.mjs';
import { logTail, subscribeAndWait } from '../lib/server.mjs';

const N = 25;
const CHANNEL = 'hist:paging';

function historyConfig() {
  return configWithNamespaces({
    name: 'hist',
    allow_subscribe_for_client: true,
    allow_history_for_subscriber: true,
    history_size: 100,
    history_ttl: '300s',
  });
}

const range = (from, to) => {
  const step = from <= to ? 1 : -1;
  return Array.from({ length: Math.abs(to - from) + 1 }, (_, i) => from + i * step);
};

test('sub.history pages forwards with since and backwards with reverse', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config: historyConfig() });

  let epoch = null;
  for (let i = 1; i <= N; i++) {
    const r = await server.api('publish', { channel: CHANNEL, data: { n: i } });
    assert.ok(r.result, `publish #${i}: ${JSON.stringify(r)}`);
    assert.equal(r.result.offset, i, `publish #${i} offset: ${JSON.stringify(r)}`);
    epoch ??= r.result.epoch;
    assert.equal(r.result.epoch, epoch);
  }
  assert.ok(epoch, 'publish result carries a non-empty epoch');

  const [alice] = await connect('alice');
  const sub = alice.newSubscription(CHANNEL);
  await subscribeAndWait(sub);

  const page = async (opts) => {
    const res = await sub.history(opts).catch((err) => {
      throw new Error(`history(${JSON.stringify(opts)}) failed: ${JSON.stringify(err)}${logTail(server)}`);
    });
    assert.equal(res.epoch, epoch, `history(${JSON.stringify(opts)}) epoch`);
    assert.equal(res.offset, N, `history(${JSON.stringify(opts)}) top offset`);
    for (const p of res.publications) assert.equal(p.data.n, p.offset, `data matches offset: ${JSON.stringify(p)}`);
    return res.publications.map((p) => p.offset);
  };

  // limit 0 (and no limit): only the stream position.
  assert.deepEqual(await page({ limit: 0 }), []);
  assert.deepEqual(await page({}), []);

  // Forwards: from the start, then after the last offset seen.
  assert.deepEqual(await page({ limit: 10 }), range(1, 10));
  assert.deepEqual(await page({ limit: 10, since: { offset: 10, epoch } }), range(11, 20));
  assert.deepEqual(await page({ limit: 10, since: { offset: 20, epoch } }), range(21, 25));
  assert.deepEqual(await page({ limit: 10, since: { offset: 25, epoch } }), []);

  // Backwards: from the top, then before the last offset seen.
  assert.deepEqual(await page({ limit: 10, reverse: true }), range(25, 16));
  assert.deepEqual(await page({ limit: 10, reverse: true, since: { offset: 16, epoch } }), range(15, 6));
  assert.deepEqual(await page({ limit: 10, reverse: true, since: { offset: 6, epoch } }), range(5, 1));
  assert.deepEqual(await page({ limit: 10, reverse: true, since: { offset: 1, epoch } }), []);

  // All at once, both directions (limit -1: no limit below the server maximum).
  assert.deepEqual(await page({ limit: -1 }), range(1, 25));
  assert.deepEqual(await page({ limit: -1, reverse: true }), range(25, 1));

  // The HTTP API agrees with the SDK.
  const api = await server.api('history', { channel: CHANNEL, limit: 10, since: { offset: 10, epoch } });
  assert.ok(api.result, JSON.stringify(api));
  assert.deepEqual(
    api.result.publications.map((p) => p.offset),
    range(11, 20),
  );
  assert.equal(api.result.offset, N);
  assert.equal(api.result.epoch, epoch);
});

test('sub.history with a stale epoch is refused with 112 (unrecoverable position)', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config: historyConfig() });

  for (let i = 1; i <= 3; i++) {
    const r = await server.api('publish', { channel: CHANNEL, data: { n: i } });
    assert.ok(r.result, JSON.stringify(r));
  }
  const [alice] = await connect('alice');
  const sub = alice.newSubscription(CHANNEL);
  await subscribeAndWait(sub);

  const err = await sub.history({ limit: 10, since: { offset: 1, epoch: 'not-the-epoch' } }).then(
    (res) => assert.fail(`expected an error, got ${JSON.stringify(res)}`),
    (e) => e,
  );
  assert.equal(err.code, 112, `error: ${JSON.stringify(err)}`);
});
