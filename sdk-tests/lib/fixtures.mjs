// Test fixtures shared by the SDK tests: a server started for one test (with
// its clients torn down after it), connected clients, subscriptions that
// collect publications, and configs extending the base namespaces.

import assert from 'node:assert/strict';

import {
  baseConfig,
  connToken,
  connectClient,
  logTail,
  newClient,
  startHerald,
  subscribeAndWait,
  teardown,
} from './server.mjs';

/**
 * Starts Herald for test `t` (default config: `baseConfig()`; other
 * `startHerald` options pass through) and stops it, with every client made
 * through the returned fixture, when the test ends.
 *
 * Returns `{ server, clients, client, connect }`:
 * - `client(options, url)`: a new (not connected) SDK client, torn down with the
 *   test; `url` (the WebSocket endpoint by default) may be a transport list;
 * - `connect(...users)`: connects one client per user and resolves to them, in
 *   order, once all are connected. A user is a name (`'alice'`) or
 *   `[name, claims]` with extra connection token claims.
 */
export async function startTestServer(t, { config = baseConfig(), ...startOptions } = {}) {
  const server = await startHerald({ config, ...startOptions });
  const clients = [];
  t.after(() => teardown(server, ...clients));

  function client(options = {}, url = server.wsUrl) {
    const c = newClient(url, options);
    clients.push(c);
    return c;
  }

  async function connect(...users) {
    const made = users.map((u) => {
      const [name, claims] = Array.isArray(u) ? u : [u, {}];
      return client({ token: connToken(name, claims) });
    });
    await Promise.all(made.map((c) => connectClient(c)));
    return made;
  }

  return { server, clients, client, connect };
}

/** Records every publication on `sub` into the returned array. */
export function collectPublications(sub) {
  const pubs = [];
  sub.on('publication', (ctx) => pubs.push(ctx));
  return pubs;
}

/**
 * Creates a subscription of `client` to `channel`, starts collecting its
 * publications, subscribes and waits for `subscribed`. With `server`, a failed
 * subscribe is reported with the server's log tail. Resolves to
 * `{ sub, pubs, ctx }` (`ctx`: the subscribed context).
 */
export async function subscribeCollecting(client, channel, options = {}, server = null) {
  const sub = client.newSubscription(channel, options);
  const pubs = collectPublications(sub);
  const ctx = await subscribeAndWait(sub).catch((err) => {
    if (!server) throw err;
    throw Object.assign(new Error(err.message + logTail(server)), { ctx: err.ctx });
  });
  return { sub, pubs, ctx };
}

/**
 * Subscribes `sub`, expecting the server to refuse it; fails the test with
 * `failMessage` if the subscription succeeds. Resolves to the rejection error
 * (its `ctx` holds the SDK's error/unsubscribe context).
 */
export function expectSubscribeRefused(sub, failMessage) {
  return subscribeAndWait(sub).then(
    () => assert.fail(failMessage),
    (e) => e,
  );
}

/** `baseConfig()` with `namespaces` appended to its channel namespaces. */
export function configWithNamespaces(...namespaces) {
  const config = baseConfig();
  config.channel.namespaces.push(...namespaces);
  return config;
}

/**
 * Publishes `{ n }` for n = from..to over the HTTP API, one at a time, asserting
 * each reply has a result; resolves to the results in order.
 */
export async function publishNumbered(server, channel, from, to) {
  const results = [];
  for (let n = from; n <= to; n++) {
    const r = await server.api('publish', { channel, data: { n } });
    assert.ok(r.result, `publish ${n} to ${channel}: ${JSON.stringify(r)}${logTail(server)}`);
    results.push(r.result);
  }
  return results;
}
