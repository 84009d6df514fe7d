// The demo that `herald serve --dev` serves at `/`: the page itself, the
// dependency-free client it loads, and two of those clients chatting in
// chat:lobby the way two browser tabs would.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';

import { REPO_ROOT, logTail, startHerald, waitFor } from '../lib/server.mjs';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');
const CLIENT_FILE = join(REPO_ROOT, 'crates', 'herald', 'static', 'herald-client.js');
const HeraldClient = require(CLIENT_FILE);

const CHANNEL = 'chat:lobby';

// A HeraldClient that records what it receives, for assertions.
function newDemoClient(server, name) {
  const client = new HeraldClient(server.wsUrl, { WebSocket, name, timeout: 3000 });
  client.received = [];
  client.errors = [];
  client.on('error', (e) => client.errors.push(e));
  return client;
}

async function joinLobby(client) {
  const res = await client.connect();
  try {
    await client.subscribe(CHANNEL, (pub) => client.received.push(pub));
  } catch (err) {
    // The page subscribes to chat:lobby under plain `serve --dev`, no config.
    throw new Error(`subscribe to ${CHANNEL} in --dev mode failed: ${JSON.stringify(err)}`);
  }
  return res;
}

async function teardown(server, ...clients) {
  await Promise.all(clients.map((c) => c.disconnect()));
  await server.stop();
}

test('GET / serves the demo page, which loads herald-client.js', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  t.after(() => server.stop());

  const resp = await fetch(`${server.httpUrl}/`);
  assert.equal(resp.status, 200, logTail(server));
  assert.match(resp.headers.get('content-type') || '', /text\/html/);
  const html = await resp.text();
  assert.ok(html.includes('herald-client.js'), 'page must load herald-client.js');
  assert.ok(html.includes('/connection/websocket'), 'page must connect to the WebSocket endpoint');
});

test('GET /herald-client.js serves the client as JavaScript', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  t.after(() => server.stop());

  const resp = await fetch(`${server.httpUrl}/herald-client.js`);
  assert.equal(resp.status, 200, logTail(server));
  assert.match(resp.headers.get('content-type') || '', /javascript/);
  const body = await resp.text();
  assert.equal(body, readFileSync(CLIENT_FILE, 'utf8'),
    'served client differs from crates/herald/static/herald-client.js (stale build?)');
});

test('two demo clients chat through chat:lobby', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  const bob = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice, bob));

  const [ra, rb] = await Promise.all([joinLobby(alice), joinLobby(bob)]);
  assert.equal(typeof ra.client, 'string');
  assert.equal(typeof rb.client, 'string');
  assert.notEqual(ra.client, rb.client, 'each connection gets its own client id');
  assert.equal(alice.state, 'connected');

  const hello = { nick: 'alice', text: 'hi bob <b>&</b> ✓', n: 1, nested: { list: [1, 'two', null] } };
  await alice.publish(CHANNEL, hello);
  await waitFor(() => bob.received.length >= 1, 3000, () => `bob's publication${logTail(server)}`);
  assert.equal(bob.received[0].channel, CHANNEL);
  assert.deepEqual(bob.received[0].data, hello);
  // A client publication carries the publisher's client info when present.
  if (bob.received[0].info) assert.equal(bob.received[0].info.client, alice.clientId);

  // The publisher is subscribed too, so it gets its own message back.
  await waitFor(() => alice.received.length >= 1, 3000, () => `alice's echo${logTail(server)}`);
  assert.deepEqual(alice.received[0].data, hello);

  const reply = { nick: 'bob', text: 'hello alice' };
  await bob.publish(CHANNEL, reply);
  await waitFor(() => alice.received.length >= 2, 3000, () => `alice's publication${logTail(server)}`);
  assert.deepEqual(alice.received[1].data, reply);
  await waitFor(() => bob.received.length >= 2, 3000, () => `bob's echo${logTail(server)}`);
  assert.deepEqual(bob.received.map((p) => p.data), [hello, reply]);
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
});

test('the page\'s curl example: an API publish reaches the demo client', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const bob = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, bob));
  await joinLobby(bob);

  // In dev mode the HTTP API needs no key (startHerald sends none here).
  const data = { nick: 'curl', text: 'hello' };
  const r = await server.api('publish', { channel: CHANNEL, data });
  assert.ok(r.result, `publish reply must have result: ${JSON.stringify(r)}`);
  await waitFor(() => bob.received.length >= 1, 3000, () => `API publication${logTail(server)}`);
  assert.deepEqual(bob.received[0].data, data);
});

test('demo client calls after disconnect reject with a code', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice));
  await joinLobby(alice);
  await alice.disconnect();
  assert.equal(alice.state, 'disconnected');
  await assert.rejects(alice.publish(CHANNEL, { text: 'late' }), (err) => typeof err.code === 'number');
});
