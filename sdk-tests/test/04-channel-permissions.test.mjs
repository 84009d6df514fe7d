// Channel access: user-limited channels (dm:chat#alice,bob) and a private
// namespace that needs a subscription token obtained via Subscription getToken.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { expectSubscribeRefused, startTestServer, subscribeCollecting } from '../lib/fixtures.mjs';
import { once, subToken, waitFor } from '../lib/server.mjs';

const DM = 'dm:chat#alice,bob';

test('user-limited channel: listed user subscribes, others get 103', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice, carol] = await connect('alice', 'carol');

  const { pubs } = await subscribeCollecting(alice, DM, {}, server);

  const cSub = carol.newSubscription(DM);
  const err = await expectSubscribeRefused(cSub, 'carol must not be able to subscribe to ' + DM);
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
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  // "private" has no allow_user_limited_channels, so the '#alice,bob' suffix
  // grants nothing there, and the namespace has no client subscribe permission.
  const sub = alice.newSubscription('private:chat#alice,bob');
  const err = await expectSubscribeRefused(sub, 'private:chat#alice,bob must not be subscribable without a token');
  assert.equal(err.ctx?.code, 103, err.message);
});

test('private channel without a token is refused with 103', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const sub = alice.newSubscription('private:vault');
  const err = await expectSubscribeRefused(sub, 'private:vault must need a subscription token');
  assert.equal(err.ctx?.code, 103, err.message);
});

test('private channel with a subscription token from getToken', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t);

  const [alice] = await connect('alice');

  const asked = [];
  const subOptions = {
    getToken: async (ctx) => {
      asked.push(ctx.channel);
      return subToken('alice', ctx.channel);
    },
  };
  const { pubs } = await subscribeCollecting(alice, 'private:vault', subOptions, server);
  assert.deepEqual(asked, ['private:vault']);

  const r = await server.api('publish', { channel: 'private:vault', data: { gold: 42 } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => pubs.length === 1, 3000, 'private publication');
  assert.deepEqual(pubs[0].data, { gold: 42 });
});

// A token for another channel or user is not a mistake a client makes by
// accident: as in Centrifugo, the connection is closed with 3500 (invalid
// token), which the SDK treats as final.
async function expectClosedForToken(client, sub, what) {
  const disconnected = once(client, 'disconnected', 5000);
  sub.subscribe();
  const ctx = await disconnected.catch((err) => {
    throw new Error(`${what}: ${err.message}`);
  });
  assert.equal(ctx.code, 3500, `${what}: disconnect code (reason ${JSON.stringify(ctx.reason)})`);
  assert.equal(client.state, 'disconnected');
  assert.notEqual(sub.state, 'subscribed', what);
}

test('subscription token for another channel closes the connection with 3500', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const sub = alice.newSubscription('private:vault', {
    getToken: async () => subToken('alice', 'private:other'),
  });
  await expectClosedForToken(alice, sub, 'a token for private:other must not open private:vault');
});

test('subscription token issued to another user closes the connection with 3500', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const sub = alice.newSubscription('private:vault', {
    getToken: async (ctx) => subToken('bob', ctx.channel),
  });
  await expectClosedForToken(alice, sub, "bob's token must not open private:vault for alice");
});

test('unknown namespace is refused with 102', { timeout: 15_000 }, async (t) => {
  const { connect } = await startTestServer(t);

  const [alice] = await connect('alice');
  const sub = alice.newSubscription('nosuchns:x');
  const err = await expectSubscribeRefused(sub, 'nosuchns:x must not be subscribable');
  assert.equal(err.ctx?.code, 102, err.message);
});
