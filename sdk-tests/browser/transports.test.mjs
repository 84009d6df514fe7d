// Transports a browser uses without WebSocket, in real headless Chromium:
// a plain EventSource on a page receives pushes from uni_sse, and the
// centrifuge SDK (its browser bundle) falls back from a WebSocket endpoint
// that is off to HTTP-streaming, or uses SSE, with its commands posted to
// the emulation endpoint.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';

import { baseConfig, connToken, logTail, startHerald } from '../lib/server.mjs';
import { SHOTS, launch, recordingPage } from './chromium.mjs';

const require = createRequire(import.meta.url);
const SDK_BUNDLE = join(require.resolve('centrifuge').split('/build/')[0], 'dist', 'centrifuge.js');
const WAIT_MS = 10_000;

const config = baseConfig({
  websocket: { disabled: true },
  http_stream: { enabled: true },
  sse: { enabled: true },
  uni_sse: { enabled: true },
});

test('a browser without WebSocket: EventSource on uni_sse, the SDK over http_stream and sse', { timeout: 60_000 }, async (t) => {
  const server = await startHerald({ config });
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
  });
  const page = await recordingPage(browser);
  // Any page of the server's origin will do: the requests are same-origin.
  await page.goto(`${server.httpUrl}/health`);

  // A plain EventSource, no SDK.
  const token = connToken('viewer', { channels: ['news'] });
  await page.evaluate((t) => {
    window.got = [];
    const request = encodeURIComponent(JSON.stringify({ token: t }));
    window.source = new EventSource(`/connection/uni_sse?cf_connect=${request}`);
    window.source.onmessage = (e) => window.got.push(JSON.parse(e.data));
  }, token);
  await page.waitForFunction(() => window.got.length >= 1, null, { timeout: WAIT_MS });
  const first = await page.evaluate(() => window.got[0]);
  assert.ok(first.connect?.subs?.news, JSON.stringify(first));
  const r = await server.api('publish', { channel: 'news', data: { headline: 'live' } });
  assert.ok(r.result, JSON.stringify(r));
  await page.waitForFunction(() => window.got.some((m) => m.pub), null, { timeout: WAIT_MS });
  const push = await page.evaluate(() => window.got.find((m) => m.pub));
  assert.deepEqual([push.channel, push.pub.data], ['news', { headline: 'live' }]);
  await page.evaluate(() => window.source.close());

  // The SDK: WebSocket first (off here), then the fallbacks.
  await page.addScriptTag({ path: SDK_BUNDLE });
  const connect = async (list, user) => page.evaluate(
    ({ list, token, user }) => new Promise((resolve, reject) => {
      const endpoints = list.map(([transport, endpoint]) => ({ transport, endpoint }));
      const c = new Centrifuge(endpoints, { token, emulationEndpoint: '/emulation', timeout: 5000 });
      window.clients = [...(window.clients ?? []), c];
      const sub = c.newSubscription('chat:browser');
      sub.on('publication', (ctx) => {
        window.pubs = [...(window.pubs ?? []), { user, transport: c._transport?.name(), data: ctx.data }];
      });
      c.on('connected', (ctx) => sub.subscribe() || sub.once('subscribed', () => resolve(ctx.transport)));
      c.on('error', (ctx) => window.errors = [...(window.errors ?? []), JSON.stringify(ctx)]);
      setTimeout(() => reject(new Error('not connected in time')), 9000);
      c.connect();
    }),
    { list, token: connToken(user), user },
  );
  const wsUrl = server.httpUrl.replace('http', 'ws');
  const fallback = await connect([
    ['websocket', `${wsUrl}/connection/websocket`],
    ['http_stream', '/connection/http_stream'],
    ['sse', '/connection/sse'],
  ], 'ann');
  assert.equal(fallback, 'http_stream');
  const sse = await connect([['sse', '/connection/sse']], 'bob');
  assert.equal(sse, 'sse');

  // A publication from one browser client reaches both.
  await page.evaluate(() => window.clients[0].getSubscription('chat:browser').publish({ from: 'ann' }));
  await page.waitForFunction(() => (window.pubs ?? []).length >= 2, null, { timeout: WAIT_MS })
    .catch((e) => { throw new Error(`${e.message}: ${JSON.stringify(page.errors)}${logTail(server)}`); });
  const transports = await page.evaluate(() => window.pubs.map((p) => p.transport).sort());
  assert.deepEqual(transports, ['http_stream', 'sse']);
  const requests = page.requests.filter((u) => u.includes('/emulation'));
  assert.ok(requests.length >= 3, `commands went to /emulation: ${requests.length}`);
  assert.deepEqual(page.errors.filter((e) => !e.includes('WebSocket')), [], 'no script errors');
  // What the page saw, written on it for the screenshot.
  await page.evaluate(() => {
    const pre = document.createElement('pre');
    pre.style.font = '16px monospace';
    pre.textContent = JSON.stringify({ eventsource: window.got, sdk: window.pubs }, null, 2);
    document.body.replaceChildren(pre);
  });
  await page.screenshot({ path: join(SHOTS, 'transports.png') });
});

test("Chromium's WebSocket agrees to permessage-deflate and the SDK works over it", { timeout: 60_000 }, async (t) => {
  const server = await startHerald({ config: baseConfig({ websocket: { compression: true } }) });
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
  });
  const page = await recordingPage(browser);
  await page.goto(`${server.httpUrl}/health`);
  const wsUrl = `${server.httpUrl.replace('http', 'ws')}/connection/websocket`;

  // The browser's own offer, and a command sent over the agreed socket.
  const token = connToken('deflating');
  const plain = await page.evaluate(({ url, token }) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send(JSON.stringify({ id: 1, connect: { token, name: 'x'.repeat(2000) } }));
    ws.onmessage = (e) => { resolve({ extensions: ws.extensions, reply: JSON.parse(e.data) }); ws.close(); };
    ws.onerror = () => reject(new Error('WebSocket failed'));
  }), { url: wsUrl, token });
  assert.match(plain.extensions, /^permessage-deflate/, JSON.stringify(plain));
  assert.ok(plain.reply.connect, JSON.stringify(plain.reply));

  // The SDK, receiving a large publication.
  await page.addScriptTag({ path: SDK_BUNDLE });
  await page.evaluate(({ url, token }) => new Promise((resolve, reject) => {
    const c = new Centrifuge(url, { token });
    const sub = c.newSubscription('chat:deflate');
    sub.on('publication', (ctx) => { window.received = ctx.data; });
    sub.on('subscribed', () => resolve());
    setTimeout(() => reject(new Error('not subscribed in time')), 9000);
    sub.subscribe();
    c.connect();
  }), { url: wsUrl, token: connToken('reader') });
  const data = { rows: Array.from({ length: 200 }, (_, i) => `row ${i} of a long list`) };
  const r = await server.api('publish', { channel: 'chat:deflate', data });
  assert.ok(r.result, JSON.stringify(r));
  await page.waitForFunction(() => window.received, null, { timeout: WAIT_MS });
  assert.deepEqual(await page.evaluate(() => window.received), data);
  assert.deepEqual(page.errors, [], 'no script errors');
});
