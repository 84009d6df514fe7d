// The application's backend in the loop, as a real app would put it there:
// a small Node HTTP backend answers Herald's connect, subscribe, publish and
// RPC proxies. Clients connect by session cookie (no token), are refused a
// channel by the backend, publish through it (rewritten), and call it with
// the SDK's rpc().

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';

import WebSocket from 'ws';

import { collectPublications, startTestServer } from '../lib/fixtures.mjs';
import { PROTOCOL } from '../lib/protocol.mjs';
import { baseConfig, logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';

/** A backend on loopback: `answer(call, body, headers)` gives the JSON reply. */
async function startBackend(t, answer) {
  const seen = [];
  const server = createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      raw += chunk;
    });
    req.on('end', () => {
      const call = req.url.slice(1);
      const body = JSON.parse(raw);
      seen.push({ call, body, headers: req.headers });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(answer(call, body, req.headers)));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  // Closed with its connections: Herald keeps its own to the backend open
  // for the next call, and close() alone would wait on them.
  t.after(
    () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${server.address().port}`, seen };
}

/** Sessions the backend knows, by cookie. */
const SESSIONS = { 'session=s1': 'alice', 'session=s2': 'bob' };

function backendAnswer(call, body, headers) {
  switch (call) {
    case 'connect': {
      const user = SESSIONS[headers.cookie];
      if (!user) return { disconnect: { code: 4501, reason: 'no session' } };
      return { result: { user, info: { name: user }, data: { hello: user } } };
    }
    case 'subscribe':
      if (body.channel.endsWith(':secret')) return { error: { code: 403, message: 'not for you' } };
      return { result: { data: { welcome: body.channel } } };
    case 'publish':
      return { result: { data: { text: String(body.data.text).toUpperCase(), by: body.user } } };
    case 'rpc':
      if (body.method === 'sum') return { result: { data: { sum: body.data.a + body.data.b } } };
      return { error: { code: 404, message: 'no such method' } };
    default:
      return {};
  }
}

function proxiedConfig(url) {
  return baseConfig({
    client: {
      proxy: { connect: { enabled: true, endpoint: `${url}/connect`, http_headers: ['cookie'] } },
    },
    channel: {
      proxy: {
        subscribe: { endpoint: `${url}/subscribe` },
        publish: { endpoint: `${url}/publish` },
      },
      namespaces: [
        { name: 'chat', allow_subscribe_for_client: true, presence: true },
        { name: 'app', subscribe_proxy_enabled: true, publish_proxy_enabled: true },
      ],
    },
    rpc: { proxy: { endpoint: `${url}/rpc` }, without_namespace: { proxy_enabled: true } },
  });
}

/** A WebSocket class that sends `cookie` with the upgrade, as a browser would. */
function withCookie(cookie) {
  return class CookieWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { cookie } });
    }
  };
}

test('a client connects by session cookie, without a token', { timeout: 20_000 }, async (t) => {
  const backend = await startBackend(t, backendAnswer);
  const { server, client } = await startTestServer(t, { config: proxiedConfig(backend.url) });

  const alice = client({ websocket: withCookie('session=s1') });
  const connected = new Promise((resolve) => alice.once('connected', resolve));
  alice.connect();
  const ctx = await connected;
  assert.deepEqual(ctx.data, { hello: 'alice' });
  const call = backend.seen.find((s) => s.call === 'connect');
  assert.equal(call.body.client, ctx.client);
  assert.equal(call.body.transport, 'websocket');
  assert.equal(call.body.protocol, PROTOCOL);

  // The backend's user is the connection's user.
  const sub = alice.newSubscription('chat:lobby');
  await subscribeAndWait(sub);
  const presence = await server.api('presence', { channel: 'chat:lobby' });
  assert.deepEqual(
    Object.values(presence.result.presence).map((p) => p.user),
    ['alice'],
    logTail(server),
  );

  // Without a known session the backend closes the connection for good.
  const stranger = client({ websocket: withCookie('session=nope') });
  const gone = new Promise((resolve) => stranger.once('disconnected', resolve));
  stranger.connect();
  const d = await gone;
  assert.equal(d.code, 4501, JSON.stringify(d));
  assert.equal(d.reason, 'no session');
});

test('the backend decides channel access, rewrites publications and answers RPC', { timeout: 20_000 }, async (t) => {
  const backend = await startBackend(t, backendAnswer);
  const { server, client } = await startTestServer(t, { config: proxiedConfig(backend.url) });
  const alice = client({ websocket: withCookie('session=s1') });
  const bob = client({ websocket: withCookie('session=s2') });
  alice.connect();
  bob.connect();

  // Allowed, with the backend's subscription data.
  const bobSub = bob.newSubscription('app:room');
  const pubs = collectPublications(bobSub);
  const subscribed = new Promise((resolve) => bobSub.once('subscribed', resolve));
  bobSub.subscribe();
  const s = await subscribed;
  assert.deepEqual(s.data, { welcome: 'app:room' });

  // Refused by the backend: the subscription ends with its code.
  const denied = alice.newSubscription('app:secret');
  const ended = new Promise((resolve) => denied.once('unsubscribed', resolve));
  denied.subscribe();
  const u = await ended;
  assert.equal(u.code, 403, JSON.stringify(u));

  // Published through the backend: subscribers get what it returned.
  await alice.ready(5000);
  await alice.publish('app:room', { text: 'hello' });
  await waitFor(() => pubs.length >= 1, 3000, () => `publication${logTail(server)}`);
  assert.deepEqual(pubs[0].data, { text: 'HELLO', by: 'alice' });

  // RPC.
  const r = await alice.rpc('sum', { a: 2, b: 3 });
  assert.deepEqual(r.data, { sum: 5 });
  const e = await alice.rpc('nothing', {}).then(
    (v) => assert.fail(`rpc unexpectedly succeeded: ${JSON.stringify(v)}`),
    (err) => err,
  );
  assert.equal(e.code, 404, JSON.stringify(e));
});
