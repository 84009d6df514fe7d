// Client publish permission: refused with 103 where the namespace forbids it
// (and 102 for an unknown namespace), without harming the connection.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import { baseConfig, logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';

async function publishError(promise) {
  return promise.then(
    (v) => assert.fail(`publish unexpectedly succeeded: ${JSON.stringify(v)}`),
    (e) => e,
  );
}

test('publish into a subscribe-only namespace is refused with 103', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, bob] = await connect('alice', 'bob');

  const { pubs: seen } = await subscribeCollecting(bob, 'ro:feed');

  const sub = alice.newSubscription('ro:feed');
  await subscribeAndWait(sub);

  const e1 = await publishError(sub.publish({ nope: 1 }));
  assert.equal(e1.code, 103, `sub.publish error: ${JSON.stringify(e1)}`);
  const e2 = await publishError(alice.publish('ro:feed', { nope: 2 }));
  assert.equal(e2.code, 103, `client.publish error: ${JSON.stringify(e2)}`);

  // Nothing was delivered; the connection is intact: a server publication
  // still arrives, and it is the first one bob sees.
  assert.equal(alice.state, 'connected');
  assert.equal(sub.state, 'subscribed');
  await server.api('publish', { channel: 'ro:feed', data: { ok: true } });
  await waitFor(() => seen.length >= 1, 3000, () => `server publication${logTail(server)}`);
  assert.deepEqual(seen.map((p) => p.data), [{ ok: true }]);
});

test('publish into chat: without being subscribed is refused with 103', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  // allow_publish_for_subscriber: only subscribers may publish.
  const e = await publishError(alice.publish('chat:room', { text: 'not subscribed' }));
  assert.equal(e.code, 103, JSON.stringify(e));
  assert.equal(alice.state, 'connected');
});

test('publish into a namespace with no publish options is refused with 103', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const e = await publishError(alice.publish('private:vault', { x: 1 }));
  assert.equal(e.code, 103, JSON.stringify(e));
});

test('publish into an unknown namespace is refused with 102', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const e = await publishError(alice.publish('nosuchns:x', { x: 1 }));
  assert.equal(e.code, 102, JSON.stringify(e));
  assert.equal(alice.state, 'connected');
});

test('publish is refused everywhere when without_namespace forbids it', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t, {
    config: baseConfig({ channel: { without_namespace: { allow_subscribe_for_client: true, allow_publish_for_client: false } } }),
  });

  const [alice] = await connect('alice');
  const sub = alice.newSubscription('news');
  await subscribeAndWait(sub);
  const e = await publishError(sub.publish({ x: 1 }));
  assert.equal(e.code, 103, JSON.stringify(e));
});
