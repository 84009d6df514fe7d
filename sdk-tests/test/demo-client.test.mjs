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

// Subscribes the way the page does: with join/leave and recovery asked for.
async function joinLobby(client, options = { joinLeave: true, recoverable: true }) {
  const res = await client.connect();
  try {
    await client.subscribe(CHANNEL, (pub) => client.received.push(pub), options);
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
  // Everything the page loads comes from this server (no CDN), and it
  // does not send people looking for an API key --dev never prints.
  assert.deepEqual(html.match(/(?:src|href)\s*=\s*["']?(?:https?:)?\/\/[^"'\s>]+/gi) || [], []);
  assert.ok(!/server log/i.test(html), 'the page must not point at a key in the server log');
  assert.ok(html.includes('http_api.insecure'), 'the page says why the API needs no key');
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

test('the dev chat keeps history: a new client reads it back, newest first', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  const later = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice, later));
  await joinLobby(alice);
  for (const n of [1, 2, 3]) await alice.publish(CHANNEL, { nick: 'alice', text: `m${n}`, ts: Date.now() });

  // A page loaded later (a reload) asks for the latest messages.
  await joinLobby(later);
  const newest = await later.history(CHANNEL, { limit: 2, reverse: true });
  assert.deepEqual(newest.publications.map((p) => p.data.text), ['m3', 'm2']);
  assert.equal(typeof newest.epoch, 'string');
  const all = await later.history(CHANNEL, 50);
  assert.deepEqual(all.publications.map((p) => p.data.text), ['m1', 'm2', 'm3']);
  assert.deepEqual(all.publications.map((p) => p.offset), [1, 2, 3]);
  // No limit: the stream position only.
  const top = await later.history(CHANNEL);
  assert.equal(top.offset, 3);
  assert.equal(top.publications, undefined);
});

test('join and leave pushes keep the online count right', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  const bob = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice, bob));
  const events = [];
  alice.on('join', (e) => events.push(['join', e.channel, e.info.client]));
  alice.on('leave', (e) => events.push(['leave', e.channel, e.info.client]));

  await joinLobby(alice);
  // The page's counter: a presence snapshot, then join/leave on top.
  const online = new Set(Object.keys((await alice.presence(CHANNEL)).presence));
  assert.deepEqual([...online], [alice.clientId]);
  alice.on('join', (e) => online.add(e.info.client));
  alice.on('leave', (e) => online.delete(e.info.client));

  await joinLobby(bob);
  await waitFor(() => online.size === 2, 3000, () => `bob's join ${JSON.stringify(events)}${logTail(server)}`);
  assert.ok(events.some(([k, ch, id]) => k === 'join' && ch === CHANNEL && id === bob.clientId));
  const stats = await alice.presenceStats(CHANNEL);
  assert.equal(stats.num_clients, 2);

  const bobId = bob.clientId;
  await bob.disconnect();
  await waitFor(() => online.size === 1, 3000, () => `bob's leave ${JSON.stringify(events)}${logTail(server)}`);
  assert.ok(events.some(([k, , id]) => k === 'leave' && id === bobId));
  assert.deepEqual(Object.keys((await alice.presence(CHANNEL)).presence), [alice.clientId]);
});

test('a client that does not ask for join/leave gets none', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const quiet = newDemoClient(server, 'herald-demo');
  const watcher = newDemoClient(server, 'herald-demo');
  const newcomer = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, quiet, watcher, newcomer));
  const pushes = [];
  quiet.on('join', (e) => pushes.push(e));
  await joinLobby(quiet, {});
  await joinLobby(watcher);
  let seen = 0;
  watcher.on('join', () => seen++);
  await joinLobby(newcomer);
  await waitFor(() => seen >= 1, 3000, () => `the watcher's join push${logTail(server)}`);
  // A publication after the join is ordered after it on every connection.
  await newcomer.publish(CHANNEL, { text: 'marker' });
  await waitFor(() => quiet.received.length >= 1, 3000, () => `the marker${logTail(server)}`);
  assert.deepEqual(pushes, []);
});

test('a reconnecting demo client recovers the messages it missed', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  const bob = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice, bob));
  const subscribed = [];
  alice.on('subscribed', (e) => subscribed.push(e));
  await Promise.all([joinLobby(alice), joinLobby(bob)]);
  assert.equal(subscribed[0].recoverable, true, '--dev forces recovery in chat');

  await bob.publish(CHANNEL, { nick: 'bob', text: 'before' });
  await waitFor(() => alice.received.length === 1, 3000, () => `the first message${logTail(server)}`);
  await alice.disconnect();
  await bob.publish(CHANNEL, { nick: 'bob', text: 'missed 1' });
  await bob.publish(CHANNEL, { nick: 'bob', text: 'missed 2' });

  await alice.connect();
  await waitFor(() => subscribed.length === 2, 3000, () => `the resubscribe${logTail(server)}`);
  const again = subscribed[1];
  assert.equal(again.was_recovering, true);
  assert.equal(again.recovered, true);
  assert.deepEqual(alice.received.map((p) => p.data.text), ['before', 'missed 1', 'missed 2']);
  assert.deepEqual(alice.received.map((p) => p.offset), [1, 2, 3]);
  assert.deepEqual(alice.errors, []);
});

test('subscribe with `since` recovers from a saved position', { timeout: 15_000 }, async (t) => {
  const server = await startHerald({ dev: true });
  const alice = newDemoClient(server, 'herald-demo');
  const late = newDemoClient(server, 'herald-demo');
  t.after(() => teardown(server, alice, late));
  await joinLobby(alice);
  await alice.publish(CHANNEL, { text: 'seen' });
  const saved = await alice.history(CHANNEL);
  await alice.publish(CHANNEL, { text: 'new 1' });
  await alice.publish(CHANNEL, { text: 'new 2' });

  const subscribed = [];
  late.on('subscribed', (e) => subscribed.push(e));
  await joinLobby(late, { since: { offset: saved.offset, epoch: saved.epoch } });
  assert.equal(subscribed[0].recovered, true);
  assert.deepEqual(late.received.map((p) => p.data.text), ['new 1', 'new 2']);
});
