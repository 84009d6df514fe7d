// Channel access: user-limited channels (dm:chat#alice,bob) and a private
// namespace that needs a subscription token obtained via Subscription getToken.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  baseConfig,
  connToken,
  connectClient,
  logTail,
  newClient,
  startHerald,
  subToken,
  subscribeAndWait,
  teardown,
  waitFor,
} from '../lib/server.mjs';

const DM = 'dm:chat#alice,bob';

test('user-limited channel: listed user subscribes, others get 103', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  const carol = newClient(server.wsUrl, { token: connToken('carol') });
  clients.push(alice, carol);
  await Promise.all([connectClient(alice), connectClient(carol)]);

  const aSub = alice.newSubscription(DM);
  const pubs = [];
  aSub.on('publication', (ctx) => pubs.push(ctx));
  await subscribeAndWait(aSub).catch((err) => {
    throw new Error(err.message + logTail(server));
  });

  const cSub = carol.newSubscription(DM);
  const err = await subscribeAndWait(cSub).then(
    () => assert.fail('carol must not be able to subscribe to ' + DM),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 103, `carol's subscription must end with 103: ${err.message}`);
  assert.equal(cSub.state, 'unsubscribed');
  assert.equal(carol.state, 'connected', 'a refused subscription does not close the connection');

  // The listed user still receives publications in the channel.
  const r = await server.api('publish', { channel: DM, data: { secret: 1 } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => pubs.length === 1, 3000, 'dm publication');
  assert.deepEqual(pubs[0].data, { secret: 1 });
});

test('user-limited channel in a namespace without allow_user_limited_channels is refused', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);
  // "private" has no allow_user_limited_channels, so the '#alice,bob' suffix
  // grants nothing there, and the namespace has no client subscribe permission.
  const sub = alice.newSubscription('private:chat#alice,bob');
  const err = await subscribeAndWait(sub).then(
    () => assert.fail('private:chat#alice,bob must not be subscribable without a token'),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 103, err.message);
});

test('private channel without a token is refused with 103', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);
  const sub = alice.newSubscription('private:vault');
  const err = await subscribeAndWait(sub).then(
    () => assert.fail('private:vault must need a subscription token'),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 103, err.message);
});

test('private channel with a subscription token from getToken', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);

  const asked = [];
  const sub = alice.newSubscription('private:vault', {
    getToken: async (ctx) => {
      asked.push(ctx.channel);
      return subToken('alice', ctx.channel);
    },
  });
  const pubs = [];
  sub.on('publication', (ctx) => pubs.push(ctx));
  await subscribeAndWait(sub).catch((err) => {
    throw new Error(err.message + logTail(server));
  });
  assert.deepEqual(asked, ['private:vault']);

  const r = await server.api('publish', { channel: 'private:vault', data: { gold: 42 } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => pubs.length === 1, 3000, 'private publication');
  assert.deepEqual(pubs[0].data, { gold: 42 });
});

test('subscription token for another channel is rejected', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);

  const sub = alice.newSubscription('private:vault', {
    getToken: async () => subToken('alice', 'private:other'),
  });
  const err = await subscribeAndWait(sub).then(
    () => assert.fail('a token for private:other must not open private:vault'),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 103, `expected permission denied (103): ${err.message}`);
  assert.equal(alice.state, 'connected');
});

test('subscription token issued to another user is rejected', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);

  const sub = alice.newSubscription('private:vault', {
    getToken: async (ctx) => subToken('bob', ctx.channel),
  });
  const err = await subscribeAndWait(sub).then(
    () => assert.fail("bob's token must not open private:vault for alice"),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 103, `expected permission denied (103): ${err.message}`);
});

test('unknown namespace is refused with 102', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig() });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  const alice = newClient(server.wsUrl, { token: connToken('alice') });
  clients.push(alice);
  await connectClient(alice);
  const sub = alice.newSubscription('nosuchns:x');
  const err = await subscribeAndWait(sub).then(
    () => assert.fail('nosuchns:x must not be subscribable'),
    (e) => e,
  );
  assert.equal(err.ctx?.code, 102, err.message);
});
