// The demo chat of `herald serve --dev`, driven in real headless Chromium:
// two desktop tabs and a phone-sized page chat, count each other, reload,
// go offline and recover, and the sidebar's curl example publishes.
//
// Screenshots go to SHOTS (see chromium.mjs) as demo-*.png for a person to
// look at.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { logTail, startHerald } from '../lib/server.mjs';
import { SHOTS, launch } from './chromium.mjs';

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const WAIT_MS = 10_000;

// Splits the page's curl command into words the way a POSIX shell would
// for what it uses: single quotes, plain words, backslash-newline.
function shellWords(text) {
  const words = [];
  const re = /'([^']*)'|((?:[^\s'\\]|\\.)+)|\\\n|\s+/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m[1] !== undefined) words.push(m[1]);
    else if (m[2] !== undefined) words.push(m[2]);
  }
  return words;
}

// The request a curl command line makes: method, URL, headers and body.
function curlRequest(command) {
  const words = shellWords(command);
  assert.equal(words.shift(), 'curl', command);
  const req = { method: 'GET', headers: {}, url: null, body: undefined };
  while (words.length) {
    const w = words.shift();
    if (w === '-X') req.method = words.shift();
    else if (w === '-H') {
      const [name, ...value] = words.shift().split(':');
      req.headers[name.trim()] = value.join(':').trim();
    } else if (w === '-d') {
      req.body = words.shift();
      if (req.method === 'GET') req.method = 'POST';
    } else if (w.startsWith('-')) assert.fail(`unexpected curl option ${w} in ${command}`);
    else req.url = w;
  }
  return req;
}

// Opens the demo in `context`, recording what the page requests and any
// script error, so the test can assert on both at the end.
async function openDemo(context, server, seen) {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('request', (r) => seen.requests.push(r.url()));
  page.on('websocket', (ws) => seen.requests.push(ws.url()));
  page.on('pageerror', (err) => seen.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') seen.errors.push(`console: ${msg.text()}`);
  });
  await page.goto(`${server.httpUrl}/`);
  await waitConnected(page);
  return page;
}

function waitConnected(page) {
  return page.waitForFunction(() => document.getElementById('status').classList.contains('connected'));
}

function waitOnline(page, n) {
  return page.waitForFunction((want) => document.getElementById('online-text').textContent === `${want} online`, n);
}

function waitText(page, text) {
  return page.waitForFunction((t) => document.getElementById('messages').textContent.includes(t), text);
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
  await waitText(page, text);
}

// The bubble that shows `text`: its classes, nick and the whole line.
function bubble(page, text) {
  return page.evaluate((t) => {
    const li = [...document.querySelectorAll('#messages .msg')].find((n) => n.querySelector('.text').textContent === t);
    return li ? { mine: li.classList.contains('mine'), nick: li.querySelector('.meta b').textContent, line: li.textContent } : null;
  }, text);
}

// No part of the element `selector` is cut off: it fits the viewport
// across and scrolls nothing sideways.
async function assertFullyVisible(page, selector, viewport) {
  const box = await page.locator(selector).boundingBox();
  assert.ok(box, `${selector} is laid out`);
  assert.ok(box.x >= 0 && box.x + box.width <= viewport.width, `${selector} across: ${JSON.stringify(box)}`);
  const overflow = await page.$eval(selector, (n) => n.scrollWidth - n.clientWidth);
  assert.ok(overflow <= 0, `${selector} hides ${overflow}px sideways`);
}

// A `--dev` server (with `config`) and a desktop browser context, both
// stopped when the test ends, and where the pages' requests and errors go.
async function demoServer(t, config = {}) {
  const server = await startHerald({ dev: true, config });
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.stop();
  });
  const context = await browser.newContext({ viewport: DESKTOP });
  return { server, browser, context, seen: { requests: [], errors: [] } };
}

test('the --dev demo chat in Chromium', { timeout: 120_000 }, async (t) => {
  const { server, browser, seen, context: desktop } = await demoServer(t);

  // Two tabs of one browser: they share the remembered nickname.
  const a = await openDemo(desktop, server, seen);
  const b = await openDemo(desktop, server, seen);
  const nickA = await a.inputValue('#nick');
  assert.match(nickA, /^[a-z]+-[a-z]+-\d\d$/);
  assert.equal(await b.inputValue('#nick'), nickA, 'the nickname is kept in localStorage');

  await t.test('the online counter counts both tabs', async () => {
    await waitOnline(a, 2);
    await waitOnline(b, 2);
  });

  await t.test('messages go from one tab to the other', async () => {
    await a.fill('#nick', 'alice');
    await send(a, 'Hello from tab A');
    await waitText(b, 'Hello from tab A');
    const inA = await bubble(a, 'Hello from tab A');
    assert.equal(inA.mine, true, 'own messages are on the right');
    assert.equal(inA.nick, 'alice');
    const inB = await bubble(b, 'Hello from tab A');
    assert.equal(inB.mine, false);
    assert.equal(inB.nick, 'alice');
    await send(b, 'Hi A, this is B <b>not bold</b>');
    await waitText(a, 'Hi A, this is B <b>not bold</b>');
    assert.equal(await a.locator('#messages .text b').count(), 0, 'message text is never parsed as HTML');
  });

  await t.test('at 390 px the page fits and the Send button is on screen', async () => {
    const phone = await browser.newContext({ viewport: PHONE, deviceScaleFactor: 2, hasTouch: true });
    const p = await openDemo(phone, server, seen);
    await waitOnline(a, 3);
    await waitOnline(p, 3);
    // A new device: its own nickname, and the conversation so far.
    assert.notEqual(await p.inputValue('#nick'), 'alice');
    await waitText(p, 'Hi A, this is B');
    const sendBox = await p.locator('#send').boundingBox();
    assert.ok(sendBox.x >= 0 && sendBox.x + sendBox.width <= PHONE.width, `Send across: ${JSON.stringify(sendBox)}`);
    assert.ok(sendBox.y >= 0 && sendBox.y + sendBox.height <= PHONE.height, `Send down: ${JSON.stringify(sendBox)}`);
    const textBox = await p.locator('#text').boundingBox();
    assert.ok(textBox.width >= 150, `message field is usable: ${JSON.stringify(textBox)}`);
    const sideways = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(sideways <= 0, `page scrolls ${sideways}px sideways`);
    await send(p, 'Typing on a phone');
    await waitText(a, 'Typing on a phone');
    await p.screenshot({ path: join(SHOTS, 'demo-phone.png') });
    await p.locator('#curl').scrollIntoViewIfNeeded();
    await assertFullyVisible(p, '#curl', PHONE);
    await p.screenshot({ path: join(SHOTS, 'demo-phone-full.png'), fullPage: true });
    await p.locator('aside').screenshot({ path: join(SHOTS, 'demo-phone-sidebar.png') });
    await phone.close();
    await waitOnline(a, 2);
    await waitOnline(b, 2);
  });

  await t.test('a tab that goes offline recovers what it missed', async () => {
    await a.click('#drop');
    await a.waitForFunction(() => !document.getElementById('status').classList.contains('connected'));
    await waitOnline(b, 1);
    await send(b, 'Sent while A was away');
    await waitText(a, 'recovered 1 missed message');
    await waitText(a, 'Sent while A was away');
    await waitConnected(a);
    await waitOnline(a, 2);
    await waitOnline(b, 2);
  });

  await t.test('the curl example publishes without an API key', async () => {
    const command = await a.textContent('#curl');
    assert.ok(!/api-key/i.test(command), `no key in --dev: ${command}`);
    const req = curlRequest(command);
    assert.equal(new URL(req.url).origin, server.httpUrl);
    const resp = await fetch(req.url, { method: req.method, headers: req.headers, body: req.body });
    const reply = await resp.json();
    assert.equal(resp.status, 200);
    assert.ok(reply.result, `publish result: ${JSON.stringify(reply)}${logTail(server)}`);
    const { text } = JSON.parse(req.body).data;
    await waitText(a, text);
    await waitText(b, text);
    assert.match((await bubble(b, text)).line, /via HTTP API/);
    await assertFullyVisible(a, '#curl', DESKTOP);
    const sidebar = await a.locator('aside').boundingBox();
    const snippet = await a.locator('#curl').boundingBox();
    assert.ok(snippet.x + snippet.width <= sidebar.x + sidebar.width, 'snippet inside the sidebar');
    await a.screenshot({ path: join(SHOTS, 'demo-desktop-a.png') });
    await b.screenshot({ path: join(SHOTS, 'demo-desktop-b.png') });
  });

  await t.test('closing a tab drops the counter', async () => {
    await b.close();
    await waitOnline(a, 1);
  });

  await t.test('after a reload: the same nickname and the earlier messages', async () => {
    await a.reload();
    await waitConnected(a);
    assert.equal(await a.inputValue('#nick'), 'alice');
    for (const text of ['Hello from tab A', 'Hi A, this is B <b>not bold</b>', 'Typing on a phone',
      'Sent while A was away', 'Hello from my backend']) {
      await waitText(a, text);
    }
    await waitText(a, 'earlier messages · from history');
    assert.equal((await bubble(a, 'Hello from tab A')).mine, true, 'own messages stay on the right');
    assert.equal((await bubble(a, 'Typing on a phone')).mine, false);
    await waitOnline(a, 1);
    await a.screenshot({ path: join(SHOTS, 'demo-reloaded.png') });
  });

  await desktop.close();

  await t.test('every request goes to this server', () => {
    const origins = new Set();
    for (const url of seen.requests) {
      if (url.startsWith('data:')) continue;
      const u = new URL(url);
      origins.add(`${u.protocol.replace('ws', 'http')}//${u.host}`);
    }
    assert.deepEqual([...origins], [server.httpUrl], seen.requests.join('\n'));
    assert.ok(seen.requests.some((u) => u.startsWith('ws://')), 'the pages opened WebSockets');
  });

  await t.test('no script errors', () => {
    assert.deepEqual(seen.errors, []);
  });
});

test('the demo shows errors instead of hiding them', { timeout: 60_000 }, async (t) => {
  // A config whose own `chat` namespace keeps no history and no presence
  // (--dev then leaves it as it is): the page must say so.
  const { server, seen, context } = await demoServer(t, { channel: { namespaces: [{ name: 'chat' }] } });
  const page = await openDemo(context, server, seen);
  await waitText(page, 'Could not load earlier messages: not available (code 108)');
  await waitText(page, 'Could not load who is online: not available (code 108)');
  assert.equal(await page.locator('#messages .sys.err').count(), 2);
  // Live chat still works without history.
  await send(page, 'still here');
  await page.screenshot({ path: join(SHOTS, 'demo-errors.png') });
  assert.deepEqual(seen.errors, []);
});

test('without WebSocket the demo chats over HTTP-streaming', { timeout: 60_000 }, async (t) => {
  const { server, seen, context } = await demoServer(t, { websocket: { disabled: true } });
  const a = await openDemo(context, server, seen);
  const b = await openDemo(context, server, seen);
  await a.fill('#nick', 'streamer');
  await send(a, 'Hello without WebSocket');
  await waitText(b, 'Hello without WebSocket');
  await waitOnline(b, 2);
  assert.ok(seen.requests.some((u) => u.endsWith('/connection/http_stream')), 'streamed');
  assert.ok(seen.requests.some((u) => u.endsWith('/emulation')), 'commands posted');
  // The refused WebSocket is the browser's own console line, not a script error.
  assert.deepEqual(seen.errors.filter((e) => !/WebSocket/.test(e)), [], 'no script errors');
  await b.screenshot({ path: join(SHOTS, 'demo-http-stream.png') });
});
