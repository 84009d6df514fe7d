// Server API disconnect: the user's connections are closed with the given (or
// default 3503 "force disconnect") code; reconnect follows the code's advice.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTestServer } from '../lib/fixtures.mjs';
import { logTail, once, sleep, waitFor } from '../lib/server.mjs';

test('default disconnect (3503) ends the user in disconnected, others stay', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice1, alice2, bob] = await connect('alice', 'alice', 'bob');

  const d1 = once(alice1, 'disconnected', 3000);
  const d2 = once(alice2, 'disconnected', 3000);
  const reply = await server.api('disconnect', { user: 'alice' });
  assert.ok(reply.result, `disconnect reply: ${JSON.stringify(reply)}`);
  const [c1, c2] = await Promise.all([d1, d2]).catch((err) => {
    throw new Error(
      `${err.message}; alice1 events ${JSON.stringify(alice1.events.map((e) => [e.type, e.ctx]))}${logTail(server)}`,
    );
  });
  assert.equal(c1.code, 3503, `alice1 disconnect ctx ${JSON.stringify(c1)}`);
  assert.equal(c2.code, 3503, `alice2 disconnect ctx ${JSON.stringify(c2)}`);
  assert.equal(alice1.state, 'disconnected');
  assert.equal(alice2.state, 'disconnected');

  // Observation window: no reconnect attempts, bob untouched.
  const n1 = alice1.events.length;
  await sleep(1000);
  assert.deepEqual(alice1.events.slice(n1).map((e) => e.type), [], 'no reconnect after 3503');
  assert.equal(bob.state, 'connected');
  assert.deepEqual(bob.eventsAfterConnect('disconnected', 'connecting'), [], 'bob is untouched');
});

test('custom disconnect code in the 45xx range is terminal and carries the reason', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice] = await connect('alice');

  const d = once(alice, 'disconnected', 3000);
  const reply = await server.api('disconnect', { user: 'alice', disconnect: { code: 4501, reason: 'go away' } });
  assert.ok(reply.result, `disconnect reply: ${JSON.stringify(reply)}`);
  const ctx = await d;
  assert.deepEqual(ctx, { code: 4501, reason: 'go away' });
  assert.equal(alice.state, 'disconnected');
});

test('custom disconnect code allowing reconnect (4000) makes the SDK reconnect', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const first = alice.eventsOf('connected')[0];

  const reply = await server.api('disconnect', { user: 'alice', disconnect: { code: 4000, reason: 'come back' } });
  assert.ok(reply.result, `disconnect reply: ${JSON.stringify(reply)}`);
  await waitFor(
    () => alice.eventsOf('connected').length >= 2,
    5000,
    () => `reconnect; events ${JSON.stringify(alice.events.map((e) => [e.type, e.ctx]))}${logTail(server)}`,
  );
  const connecting = alice.eventsOf('connecting');
  assert.ok(
    connecting.some((c) => c.code === 4000 && c.reason === 'come back'),
    `a connecting event with code 4000 "come back": ${JSON.stringify(connecting)}`,
  );
  assert.deepEqual(alice.eventsOf('disconnected'), []);
  const second = alice.eventsOf('connected')[1];
  assert.notEqual(second.client, first.client, 'a new connection has a new client id');
});

test('disconnect of a user with no connections succeeds', { timeout: 15_000 }, async (t) => {
  const { server } = await startTestServer(t);
  const reply = await server.api('disconnect', { user: 'nobody' });
  assert.ok(reply.result, `disconnect reply: ${JSON.stringify(reply)}`);
});
