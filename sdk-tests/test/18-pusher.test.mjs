// The Pusher protocol beside Centrifugo's, judged by the real libraries:
// pusher-js 8 (its Node build) as the client, the `pusher` server SDK for
// authorizations and the HTTP API, Laravel Echo over pusher-js — and a
// Centrifugo SDK client on the same channels, in both directions.

import assert from 'node:assert/strict';
import http from 'node:http';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { collectPublications, startTestServer } from '../lib/fixtures.mjs';
import { baseConfig, logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';

const require = createRequire(import.meta.url);
const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const APP = { id: '42', key: 'app-key', secret: 'app-secret' };

const config = baseConfig({
  channel: {
    namespaces: [
      { name: 'chat', allow_subscribe_for_client: true, allow_publish_for_subscriber: true },
      {
        name: 'app',
        allow_subscribe_for_client: true,
        presence: true,
        join_leave: true,
        history_size: 20,
        history_ttl: '300s',
      },
    ],
  },
  pusher: {
    apps: [{ ...APP, namespace: 'app', enable_client_messages: true, enable_watchlist_events: true }],
  },
});

function backend(server) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
  });
}

/** A pusher-js client whose authorizations the `pusher` SDK signs. */
function client(server, t, { user = null, key = APP.key, secret = APP.secret } = {}) {
  const signer = new PusherServer({ appId: APP.id, key: APP.key, secret });
  const pusher = new PusherClient(key, {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-') && user
          ? { user_id: user.id, user_info: user.info }
          : undefined;
        callback(null, signer.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const data = { id: user.id, name: user.info?.name, watchlist: user.watchlist };
        callback(null, signer.authenticateUser(socketId, data));
      },
    },
  });
  t.after(() => pusher.disconnect());
  return pusher;
}

function connected(pusher) {
  return new Promise((resolve, reject) => {
    if (pusher.connection.state === 'connected') return resolve();
    pusher.connection.bind('connected', resolve);
    pusher.connection.bind('failed', () => reject(new Error('connection failed')));
  });
}

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.bind('pusher:subscription_succeeded', resolve);
    channel.bind('pusher:subscription_error', (e) => reject(Object.assign(new Error('subscription refused'), { e })));
  });
}

/** Events of `name` on `channel`, collected. */
function collect(channel, name) {
  const got = [];
  channel.bind(name, (data, meta) => got.push({ data, meta }));
  return got;
}

test('pusher-js: public channel, events from the pusher SDK, and a wrong key', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const p = client(server, t);
  await connected(p);
  assert.match(p.connection.socket_id, /^\d+\.\d+$/);
  const news = p.subscribe('news');
  await subscribed(news);
  const got = collect(news, 'breaking');
  const res = await backend(server).trigger('news', 'breaking', { headline: 'Herald speaks Pusher' });
  assert.equal(res.status, 200, await res.text());
  await waitFor(() => got.length === 1, 5000, 'the event');
  assert.deepEqual(got[0].data, { headline: 'Herald speaks Pusher' });

  // A key no app has: error 4001, and no reconnecting.
  const wrong = client(server, t, { key: 'no-such-key' });
  const errors = [];
  wrong.connection.bind('error', (e) => errors.push(e));
  // pusher-js reports the handshake's refusal as a WebSocketError holding
  // the PusherError, and gives up (no retry for 4000–4099).
  const code = (e) => (e.data ?? e.error?.data)?.code;
  await waitFor(() => errors.some((e) => code(e) === 4001), 5000,
    () => `error 4001, got ${JSON.stringify(errors)}${logTail(server)}`);
  await waitFor(() => wrong.connection.state === 'disconnected', 5000, 'the client to give up');
});

test('pusher-js: a cache channel says cache_miss, then hands new subscribers the last event', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const first = client(server, t);
  await connected(first);
  const misses = [];
  const ch = first.subscribe('cache-scores');
  ch.bind('pusher:cache_miss', () => misses.push('miss'));
  const live = collect(ch, 'score');
  await subscribed(ch);
  await waitFor(() => misses.length === 1, 5000, 'pusher:cache_miss');

  for (const n of [1, 2]) {
    const res = await backend(server).trigger('cache-scores', 'score', { n });
    assert.equal(res.status, 200, await res.text());
  }
  await waitFor(() => live.length === 2, 5000, 'both events live');

  const later = client(server, t);
  await connected(later);
  const order = [];
  const again = later.subscribe('cache-scores');
  again.bind('pusher:subscription_succeeded', () => order.push('subscribed'));
  again.bind('pusher:cache_miss', () => order.push('miss'));
  again.bind('score', (data) => order.push(data));
  await waitFor(() => order.length === 2, 5000, () => `the cached event, got ${JSON.stringify(order)}`);
  assert.deepEqual(order, ['subscribed', { n: 2 }]);
});

test('pusher-js: subscription counts as pusher:subscription_count and channel.subscriptionCount', { timeout: 30_000 }, async (t) => {
  const counting = {
    ...config,
    pusher: { apps: [{ ...APP, namespace: 'app', enable_subscription_count: true }] },
  };
  const { server } = await startTestServer(t, { config: counting });
  const first = client(server, t);
  await connected(first);
  const room = first.subscribe('room-counts');
  const counts = [];
  room.bind('pusher:subscription_count', (data) => counts.push(data.subscription_count));
  await subscribed(room);
  await waitFor(() => room.subscriptionCount === 1, 5000, () => `a count of 1, got ${counts}`);

  const second = client(server, t);
  await connected(second);
  const theirs = second.subscribe('room-counts');
  await subscribed(theirs);
  await waitFor(() => room.subscriptionCount === 2, 5000, () => `a count of 2, got ${counts}`);
  await waitFor(() => theirs.subscriptionCount === 2, 5000, 'the newcomer hears the count too');

  // The backend sees the same figure.
  const res = await backend(server).get({ path: '/channels/room-counts', params: { info: 'subscription_count' } });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { occupied: true, subscription_count: 2 });

  second.unsubscribe('room-counts');
  await waitFor(() => room.subscriptionCount === 1, 5000, () => `back to 1, got ${counts}`);
  assert.deepEqual(counts, [1, 2, 1]);
});

test('pusher-js: watchlist events as pusher.user.watchlist online and offline', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const signedIn = async (user) => {
    const p = client(server, t, { user });
    await connected(p);
    p.signin();
    await p.user.signinDonePromise;
    return p;
  };
  const bob = await signedIn({ id: 'bob' });
  const ann = client(server, t, { user: { id: 'ann', watchlist: ['bob', 'cy'] } });
  const seen = [];
  ann.user.watchlist.bind('online', (e) => seen.push(['online', e.user_ids]));
  ann.user.watchlist.bind('offline', (e) => seen.push(['offline', e.user_ids]));
  await connected(ann);
  ann.signin();
  const told = (n) => waitFor(() => seen.length === n, 5000,
    () => `${n} watchlist events, got ${JSON.stringify(seen)}${logTail(server)}`);
  // Who is online when ann signs in, then each change.
  await told(2);
  assert.deepEqual(seen, [['online', ['bob']], ['offline', ['cy']]]);
  await signedIn({ id: 'cy' });
  await told(3);
  assert.deepEqual(seen[2], ['online', ['cy']]);
  bob.disconnect();
  await told(4);
  assert.deepEqual(seen[3], ['offline', ['bob']]);
});

test('pusher-js: private channels need a good signature', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const good = client(server, t);
  await subscribed(good.subscribe('private-orders'));
  const bad = client(server, t, { secret: 'not-the-secret' });
  const refused = await subscribed(bad.subscribe('private-orders')).then(() => null, (e) => e.e);
  assert.ok(refused, 'a bad signature is refused');
  assert.equal(refused.status, 401, JSON.stringify(refused));
});

test('pusher-js: presence members, added and removed, with user_info', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const ann = client(server, t, { user: { id: 'ann', info: { name: 'Ann' } } });
  const room = ann.subscribe('presence-room');
  const added = collect(room, 'pusher:member_added');
  const removed = collect(room, 'pusher:member_removed');
  const members = await subscribed(room);
  assert.equal(members.count, 1);
  assert.equal(members.me.id, 'ann');

  const bob = client(server, t, { user: { id: 'bob', info: { name: 'Bob' } } });
  const bobRoom = bob.subscribe('presence-room');
  const seen = await subscribed(bobRoom);
  assert.equal(seen.count, 2);
  assert.deepEqual(seen.get('ann').info, { name: 'Ann' });
  await waitFor(() => added.length === 1, 5000, 'member_added');
  assert.equal(added[0].data.id, 'bob');
  assert.deepEqual(added[0].data.info, { name: 'Bob' });
  assert.equal(room.members.count, 2);

  // The HTTP API sees them too.
  const api = backend(server);
  const users = await (await api.get({ path: '/channels/presence-room/users' })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'bob']);
  const info = await (await api.get({ path: '/channels/presence-room', params: { info: 'user_count' } })).json();
  assert.equal(info.occupied, true);
  assert.equal(info.user_count, 2);

  bob.unsubscribe('presence-room');
  await waitFor(() => removed.length === 1, 5000, 'member_removed');
  assert.equal(removed[0].data.id, 'bob');
  assert.equal(room.members.count, 1);
});

test('pusher-js: client events reach the others, not the sender', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const a = client(server, t);
  const b = client(server, t);
  const chA = a.subscribe('private-doc');
  const chB = b.subscribe('private-doc');
  await Promise.all([subscribed(chA), subscribed(chB)]);
  const atA = collect(chA, 'client-typing');
  const atB = collect(chB, 'client-typing');
  assert.equal(chA.trigger('client-typing', { who: 'a' }), true);
  await waitFor(() => atB.length === 1, 5000, 'the client event at b');
  assert.deepEqual(atB[0].data, { who: 'a' });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(atA.length, 0, 'not echoed to the sender');

  // Not on public channels.
  const pub = a.subscribe('news');
  await subscribed(pub);
  const errors = [];
  a.connection.bind('error', (e) => errors.push(e));
  pub.trigger('client-x', {});
  await waitFor(() => errors.length === 1, 5000, 'an error for a client event on a public channel');
});

test('the HTTP API: channels, batches, exclusion, terminate_connections', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const api = backend(server);
  const user = { id: 'u1', info: { name: 'U' } };
  const p = client(server, t, { user });
  await connected(p);
  p.signin();
  await new Promise((resolve) => p.user.signinDonePromise.then(resolve));
  const a = p.subscribe('news');
  const b = p.subscribe('presence-lobby');
  await Promise.all([subscribed(a), subscribed(b)]);
  const got = collect(a, 'e');

  const channels = await (await api.get({ path: '/channels' })).json();
  assert.deepEqual(Object.keys(channels.channels).sort(), ['news', 'presence-lobby']);
  const presence = await (await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.deepEqual(presence.channels, { 'presence-lobby': { user_count: 1 } });

  // A batch, one of whose events excludes this socket.
  const res = await api.triggerBatch([
    { channel: 'news', name: 'e', data: { n: 1 } },
    { channel: 'news', name: 'e', data: { n: 2 }, socket_id: p.connection.socket_id },
    { channel: 'news', name: 'e', data: { n: 3 } },
  ]);
  assert.equal(res.status, 200);
  await waitFor(() => got.length === 2, 5000, 'two events');
  assert.deepEqual(got.map((g) => g.data.n), [1, 3]);

  // A request signed with another secret is refused.
  const forged = new PusherServer({ appId: APP.id, key: APP.key, secret: 'wrong', host: '127.0.0.1', port: String(server.port), useTLS: false });
  await assert.rejects(forged.trigger('news', 'e', {}), (e) => e.status === 401);

  // sendToUser reaches the signed-in user's sockets.
  const notes = [];
  p.user.bind('note', (data) => notes.push(data));
  await waitFor(() => p.user.serverToUserChannel?.subscribed, 5000, 'the user channel');
  const sent = await api.sendToUser('u1', 'note', { hello: 'u1' });
  assert.equal(sent.status, 200);
  await waitFor(() => notes.length === 1, 5000, 'the event sent to the user');
  assert.deepEqual(notes[0], { hello: 'u1' });

  const closed = new Promise((resolve) => p.connection.bind('state_change', (s) => s.current === 'disconnected' && resolve()));
  const r = await api.terminateUserConnections('u1');
  assert.equal(r.status, 200);
  await closed;
});

test('Pusher and Centrifugo clients see each other on the same channel', { timeout: 30_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config });
  const [centrifuge] = await connect('cara');
  const sub = centrifuge.newSubscription('app:news');
  const pubs = collectPublications(sub);
  await subscribeAndWait(sub);
  const p = client(server, t);
  const news = p.subscribe('news');
  await subscribed(news);
  const got = collect(news, 'from-centrifugo');

  await backend(server).trigger('news', 'from-pusher', { x: 1 });
  await waitFor(() => pubs.length === 1, 5000, 'the Centrifugo client to get the Pusher event');
  assert.deepEqual(pubs[0].data, { event: 'from-pusher', data: { x: 1 } });

  const r = await server.api('publish', { channel: 'app:news', data: { event: 'from-centrifugo', data: { y: 2 } } });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => got.length === 1, 5000, 'the Pusher client to get the Centrifugo publication');
  assert.deepEqual(got[0].data, { y: 2 });

  // The namespace's history keeps both.
  const h = await server.api('history', { channel: 'app:news', limit: 10 });
  assert.equal(h.result.publications.length, 2, JSON.stringify(h));
});

test('webhooks in Pusher\'s format, verified by the pusher SDK', { timeout: 30_000 }, async (t) => {
  const got = [];
  const receiver = http.createServer((req, res) => {
    let rawBody = '';
    req.on('data', (chunk) => { rawBody += chunk; });
    req.on('end', () => {
      got.push({ headers: req.headers, rawBody });
      res.end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  t.after(() => receiver.close());
  const hooked = structuredClone(config);
  hooked.pusher.apps[0].webhooks = [{ url: `http://127.0.0.1:${receiver.address().port}/pusher` }];
  const { server } = await startTestServer(t, { config: hooked });
  const api = backend(server);
  const events = () => got.flatMap((w) => api.webhook(w).getEvents());
  const named = (name) => events().filter((e) => e.name === name);

  const ann = client(server, t, { user: { id: 'ann', info: { name: 'Ann' } } });
  const room = ann.subscribe('presence-hooks');
  await subscribed(room);
  assert.equal(room.trigger('client-wave', { hi: 1 }), true);
  await waitFor(() => named('client_event').length === 1, 5000,
    () => `a client_event webhook, got ${JSON.stringify(events())}${logTail(server)}`);
  ann.unsubscribe('presence-hooks');
  // Deliveries run concurrently: wait for each event, not the last told.
  await waitFor(() => named('channel_vacated').length === 1 && named('member_removed').length === 1,
    5000, () => `channel_vacated and member_removed, got ${JSON.stringify(events())}`);

  for (const w of got) {
    const hook = api.webhook(w);
    assert.ok(hook.isValid(), `signed with the app's key and secret: ${JSON.stringify(w)}`);
    assert.ok(Math.abs(hook.getTime() - Date.now()) < 60_000, 'time_ms is now');
  }
  const forged = { ...got[0], headers: { ...got[0].headers, 'x-pusher-signature': 'f'.repeat(64) } };
  assert.equal(api.webhook(forged).isValid(), false);
  assert.deepEqual(events().map((e) => e.name).sort(),
    ['channel_occupied', 'channel_vacated', 'client_event', 'member_added', 'member_removed']);
  assert.deepEqual(named('member_added'), [{ name: 'member_added', channel: 'presence-hooks', user_id: 'ann' }]);
  assert.deepEqual(named('client_event'), [{
    name: 'client_event',
    channel: 'presence-hooks',
    event: 'client-wave',
    data: '{"hi":1}',
    socket_id: ann.connection.socket_id,
    user_id: 'ann',
  }]);
  assert.deepEqual(named('channel_occupied'), [{ name: 'channel_occupied', channel: 'presence-hooks' }]);
});

test('Laravel Echo over pusher-js: listen, private and presence', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const { default: Echo } = await import('laravel-echo');
  const signer = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });
  const echo = new Echo({
    broadcaster: 'pusher',
    key: APP.key,
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    Pusher: PusherClient,
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        const presence = channel.name.startsWith('presence-') ? { user_id: '7', user_info: { name: 'Echo' } } : undefined;
        callback(null, signer.authorizeChannel(socketId, channel.name, presence));
      },
    }),
  });
  t.after(() => echo.disconnect());
  const shipped = [];
  echo.channel('orders').listen('.OrderShipped', (e) => shipped.push(e));
  const secret = [];
  echo.private('orders.7').listen('.Paid', (e) => secret.push(e));
  const here = await new Promise((resolve) => echo.join('chat.1').here(resolve));
  assert.deepEqual(here.map((m) => m.name), ['Echo']);
  await waitFor(() => echo.connector.pusher.channel('private-orders.7')?.subscribed, 5000, 'the private channel');
  await waitFor(() => echo.connector.pusher.channel('orders')?.subscribed, 5000, 'the public channel');
  const api = backend(server);
  await api.trigger('orders', 'OrderShipped', { id: 1 });
  await api.trigger('private-orders.7', 'Paid', { id: 7 });
  await waitFor(() => shipped.length === 1 && secret.length === 1, 5000, 'both events');
  assert.deepEqual(shipped[0], { id: 1 });
  assert.deepEqual(secret[0], { id: 7 });
});
