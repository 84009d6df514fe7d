// The admin web UI in real headless Chromium: log in (a wrong password is
// refused), watch three SDK clients counted live, publish from the UI to a
// subscribed SDK client, inspect the connections — and nothing the page
// loads or calls leaves for another host. Screenshots land in SHOTS.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { baseConfig } from '../lib/server.mjs';
import { collectPublications, startTestServer } from '../lib/fixtures.mjs';
import { logTail, subscribeAndWait, waitFor } from '../lib/server.mjs';
import { SHOTS, foreignRequests, launch, recordingPage, screenshot } from './chromium.mjs';

const PASSWORD = 'correct horse battery staple';
const CHANNEL = 'chat:room';

const config = baseConfig({
  admin: { enabled: true, password: PASSWORD, secret: 'admin-session-secret' },
  channel: {
    namespaces: [
      {
        name: 'chat',
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        history_size: 50,
        history_ttl: '300s',
        presence: true,
        join_leave: true,
      },
    ],
  },
});

test('admin UI: login, live counts, publish to an SDK client, connections', { timeout: 60_000 }, async (t) => {
  const { server, connect } = await startTestServer(t, { config });
  const clients = await connect('alice', 'bob', 'carol');
  const subs = clients.map((c) => c.newSubscription(CHANNEL));
  await Promise.all(subs.map((s) => subscribeAndWait(s)));
  const received = collectPublications(subs[0]);

  const browser = await launch();
  t.after(() => browser.close());
  const page = await recordingPage(browser);

  await page.goto(`${server.httpUrl}/admin`);
  assert.equal(new URL(page.url()).pathname, '/admin/', 'the bare prefix redirects to the page');
  await page.locator('#password').waitFor();

  // A wrong password is refused and said so.
  await page.fill('#password', 'not the password');
  await page.click('#login-button');
  await waitFor(async () => (await page.textContent('#login-error')).includes('wrong password'), 5000,
    'the wrong password to be refused');
  assert.ok(await page.isHidden('#app'), 'the app stays hidden without a login');
  await screenshot(page, 'admin-login-refused');

  // Logins are limited to one a second per address: wait it out.
  await new Promise((r) => setTimeout(r, 1100));
  await page.fill('#password', PASSWORD);
  await page.click('#login-button');
  await page.locator('#app').waitFor({ state: 'visible' });

  // The overview counts the three SDK clients, updating by itself.
  await waitFor(async () => (await page.textContent('#s-clients')) === '3', 8000,
    `three connections counted, saw ${await page.textContent('#s-clients')}${logTail(server)}`);
  assert.equal(await page.textContent('#s-users'), '3');
  assert.equal(await page.textContent('#s-nodes'), '1');
  assert.equal(await page.locator('#nodes tr').count(), 1, 'one node row');

  // A publication through the server API shows in publications per second.
  for (let i = 0; i < 20; i++) {
    await server.api('publish', { channel: CHANNEL, data: { n: i } });
  }
  await waitFor(async () => (await page.textContent('#s-rate')) !== '0', 8000,
    'a publication rate above zero');
  await screenshot(page, 'admin-overview');

  // Channels: the SDK clients' channel, opened live; publish from the UI.
  await page.click('.tab[data-view="channels"]');
  const row = page.locator('#channel-list button', { hasText: CHANNEL });
  await row.waitFor();
  await row.click();
  await waitFor(async () => (await page.textContent('#watch-state')) === 'live', 5000, 'the live view');
  await waitFor(async () => (await page.locator('#history-list li').count()) >= 20, 5000,
    'the history of the channel');
  await waitFor(async () => (await page.locator('#presence-list li').count()) === 3, 5000,
    'three members present');
  await page.fill('#publish-data', '{"text": "hello from the admin UI"}');
  await page.click('#publish-form button[type="submit"]');
  await waitFor(() => received.some((p) => p.data?.text === 'hello from the admin UI'), 5000,
    'the SDK client to receive the publication made in the UI');
  await page.locator('#live-list li', { hasText: 'hello from the admin UI' }).waitFor();
  await screenshot(page, 'admin-channel');

  // A join shows live: a fourth client subscribes.
  const [dave] = await connect('dave');
  await subscribeAndWait(dave.newSubscription(CHANNEL));
  await page.locator('#live-list li.join', { hasText: 'dave' }).waitFor();

  // Connections: each with its transport and channels.
  await page.click('.tab[data-view="connections"]');
  await waitFor(async () => (await page.locator('#connections tr').count()) === 4, 5000, 'four connections listed');
  const text = await page.textContent('#connections');
  for (const user of ['alice', 'bob', 'carol', 'dave']) assert.ok(text.includes(user), `${user} listed`);
  assert.ok(text.includes('websocket · json'), text);
  assert.ok(text.includes(CHANNEL), text);
  await screenshot(page, 'admin-connections');

  // Actions: a broadcast reaches the SDK client too.
  await page.click('.tab[data-view="actions"]');
  const broadcast = page.locator('form[data-method="broadcast"]');
  await broadcast.locator('input[name="channels"]').fill(`${CHANNEL}, chat:elsewhere`);
  await broadcast.locator('textarea[name="data"]').fill('{"text": "broadcast from the UI"}');
  await broadcast.locator('button').click();
  await waitFor(() => received.some((p) => p.data?.text === 'broadcast from the UI'), 5000, 'the broadcast');
  await waitFor(async () => (await broadcast.locator('.result').textContent()) === 'done', 5000,
    'the form to say it is done');
  await screenshot(page, 'admin-actions');

  // A narrow screen still shows the app.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('.tab[data-view="overview"]');
  await screenshot(page, 'admin-narrow');

  assert.deepEqual(foreignRequests(page, server.httpUrl), [], 'every request stays on the server');
  assert.deepEqual(page.errors, [], 'no script errors');
  assert.deepEqual(page.failed, [], 'no request failed');
  t.diagnostic(`screenshots in ${SHOTS}`);
});

test('admin UI: a session that is not valid is sent back to the login', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t, { config });
  const browser = await launch();
  t.after(() => browser.close());
  const page = await recordingPage(browser);
  await page.goto(`${server.httpUrl}/admin/`);
  // A token from elsewhere (here: made up) in session storage.
  await page.evaluate(() => sessionStorage.setItem('herald-admin-token', 'not.a.session'));
  await page.reload();
  await page.locator('#login').waitFor({ state: 'visible' });
  assert.ok(await page.isHidden('#app'));
  const status = await page.evaluate(async () => {
    const r = await fetch('api/info', { method: 'POST', headers: { Authorization: 'token not.a.session' }, body: '{}' });
    return r.status;
  });
  assert.equal(status, 401);
});
