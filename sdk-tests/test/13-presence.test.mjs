// Presence and join/leave: two SDK clients in a namespace with presence and
// join_leave see each other in `sub.presence()` (with the token's `info` as
// conn info) and in `presenceStats`; the first gets `join` when the second
// subscribes and `leave` when it unsubscribes or disconnects.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { configWithNamespaces, startTestServer } from '../lib/fixtures.mjs';
import { logTail, sleep, subscribeAndWait, waitFor } from '../lib/server.mjs';

const CHANNEL = 'room:lobby';

function presenceConfig() {
  return configWithNamespaces(
    {
      name: 'room',
      allow_subscribe_for_client: true,
      allow_presence_for_subscriber: true,
      presence: true,
      join_leave: true,
    },
    {
      name: 'loud',
      allow_subscribe_for_client: true,
      presence: true,
      join_leave: true,
      force_push_join_leave: true,
    },
  );
}

// Join/leave contexts on `sub` about the client with id `clientId`.
function about(list, clientId) {
  return list.filter((ctx) => ctx.info?.client === clientId);
}

test('presence lists both clients with conn info; join and leave reach the other', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config: presenceConfig() });

  const [alice, bob] = await connect(['alice', { info: { name: 'Alice' } }], ['bob', { info: { name: 'Bob' } }]);
  const [aConn, bConn] = [alice, bob].map((c) => c.eventsOf('connected')[0]);

  const aSub = alice.newSubscription(CHANNEL, { joinLeave: true });
  const aJoins = [];
  const aLeaves = [];
  aSub.on('join', (ctx) => aJoins.push(ctx));
  aSub.on('leave', (ctx) => aLeaves.push(ctx));
  await subscribeAndWait(aSub);

  const describe = () =>
    `alice joins ${JSON.stringify(aJoins)}, leaves ${JSON.stringify(aLeaves)}${logTail(server)}`;

  let bSub = bob.newSubscription(CHANNEL, { joinLeave: true });
  await subscribeAndWait(bSub);
  await waitFor(() => about(aJoins, bConn.client).length === 1, 2000, () => `bob's join; ${describe()}`);
  const join = about(aJoins, bConn.client)[0];
  assert.equal(join.channel, CHANNEL);
  assert.equal(join.info.user, 'bob');
  assert.deepEqual(join.info.connInfo, { name: 'Bob' }, `join ctx ${JSON.stringify(join)}`);

  // Presence, from either side.
  for (const [who, sub] of [
    ['alice', aSub],
    ['bob', bSub],
  ]) {
    const p = await sub.presence();
    const byClient = p.clients;
    assert.deepEqual(Object.keys(byClient).sort(), [aConn.client, bConn.client].sort(), `${who}: ${JSON.stringify(p)}`);
    assert.equal(byClient[aConn.client].user, 'alice');
    assert.equal(byClient[aConn.client].client, aConn.client);
    assert.deepEqual(byClient[aConn.client].connInfo, { name: 'Alice' }, `${who}: ${JSON.stringify(p)}`);
    assert.equal(byClient[bConn.client].user, 'bob');
    assert.deepEqual(byClient[bConn.client].connInfo, { name: 'Bob' }, `${who}: ${JSON.stringify(p)}`);
    assert.deepEqual(await sub.presenceStats(), { numUsers: 2, numClients: 2 }, who);
  }

  // Bob unsubscribes: alice gets his leave, presence shrinks.
  bSub.unsubscribe();
  await waitFor(() => about(aLeaves, bConn.client).length === 1, 2000, () => `bob's leave; ${describe()}`);
  const leave = about(aLeaves, bConn.client)[0];
  assert.equal(leave.info.user, 'bob');
  assert.deepEqual(leave.info.connInfo, { name: 'Bob' }, `leave ctx ${JSON.stringify(leave)}`);
  assert.deepEqual(Object.keys((await aSub.presence()).clients), [aConn.client]);
  assert.deepEqual(await aSub.presenceStats(), { numUsers: 1, numClients: 1 });

  // Bob comes back, then disconnects: join, then leave again.
  bob.removeSubscription(bSub);
  bSub = bob.newSubscription(CHANNEL, { joinLeave: true });
  await subscribeAndWait(bSub);
  await waitFor(() => about(aJoins, bConn.client).length === 2, 2000, () => `bob's second join; ${describe()}`);
  assert.deepEqual(await aSub.presenceStats(), { numUsers: 2, numClients: 2 });
  bob.disconnect();
  await waitFor(() => about(aLeaves, bConn.client).length === 2, 2000, () => `bob's leave on disconnect; ${describe()}`);
  await waitFor(
    async () => (await aSub.presenceStats()).numClients === 1,
    2000,
    'presence without bob after his disconnect',
  );
  assert.deepEqual(Object.keys((await aSub.presence()).clients), [aConn.client]);

  // The HTTP API sees the same.
  const api = await server.api('presence', { channel: CHANNEL });
  assert.ok(api.result, JSON.stringify(api));
  assert.deepEqual(Object.keys(api.result.presence), [aConn.client]);
  assert.equal(api.result.presence[aConn.client].user, 'alice');
  assert.deepEqual(api.result.presence[aConn.client].conn_info, { name: 'Alice' });
  const stats = await server.api('presence_stats', { channel: CHANNEL });
  assert.deepEqual(stats.result, { num_clients: 1, num_users: 1 });

  // Exactly two joins and two leaves about bob, no repeats.
  assert.equal(about(aJoins, bConn.client).length, 2);
  assert.equal(about(aLeaves, bConn.client).length, 2);
  assert.equal(alice.state, 'connected');
});

test('join/leave: pushed only on request, or always with force_push_join_leave', { timeout: 15_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config: presenceConfig() });

  const [alice, bob] = await connect('alice', 'bob');

  // room: join_leave on, but alice does not ask for join/leave.
  const quiet = alice.newSubscription('room:quiet');
  const quietEvents = [];
  quiet.on('join', (ctx) => quietEvents.push(['join', ctx]));
  quiet.on('leave', (ctx) => quietEvents.push(['leave', ctx]));
  await subscribeAndWait(quiet);
  // loud: force_push_join_leave, alice does not ask either.
  const loud = alice.newSubscription('loud:hall');
  const loudEvents = [];
  loud.on('join', (ctx) => loudEvents.push(['join', ctx.info.user]));
  loud.on('leave', (ctx) => loudEvents.push(['leave', ctx.info.user]));
  await subscribeAndWait(loud);

  const bQuiet = bob.newSubscription('room:quiet', { joinLeave: true });
  const bLoud = bob.newSubscription('loud:hall');
  await Promise.all([subscribeAndWait(bQuiet), subscribeAndWait(bLoud)]);
  bQuiet.unsubscribe();
  bLoud.unsubscribe();

  await waitFor(
    () => loudEvents.filter((e) => e[1] === 'bob').length === 2,
    2000,
    () => `bob's join and leave in loud:hall, got ${JSON.stringify(loudEvents)}${logTail(server)}`,
  );
  assert.deepEqual(
    loudEvents.filter((e) => e[1] === 'bob'),
    [
      ['join', 'bob'],
      ['leave', 'bob'],
    ],
  );
  // Alice did not ask for join/leave in room:quiet: no events there.
  await sleep(200);
  assert.deepEqual(quietEvents, [], 'no join/leave without joinLeave: true');
});
