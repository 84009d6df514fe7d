// Helpers to run a live Herald server for the SDK tests, plus small utilities
// (JWT signing, condition waits, an SDK client factory).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import WebSocket from 'ws';

import { createCentrifuge, frameLines as wireLines } from './protocol.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || join(REPO_ROOT, 'target', 'debug', 'herald');

const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

// eslint-disable-next-line no-control-regex
const ANSI_RE = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;

export function stripAnsi(s) {
  return s.replace(ANSI_RE, '');
}

// Extracts the bound port from one log line, or returns null. Accepts the
// plain tracing format (`listening addr=127.0.0.1:1234`) and, as a fallback,
// a JSON log line (`"addr":"127.0.0.1:1234"`).
function listeningPort(line) {
  if (!/listening/i.test(line)) return null;
  const m = line.match(/addr"?\s*[=:]\s*"?127\.0\.0\.1:(\d+)/);
  return m ? Number(m[1]) : null;
}

/**
 * Starts Herald with the given config on an ephemeral port.
 *
 * @param {object} opts
 * @param {object} [opts.config] Centrifugo v6 style configuration, written as JSON.
 * @param {boolean} [opts.dev] pass --dev
 * @param {Record<string,string>} [opts.env] extra environment variables
 * @param {string} [opts.dataDir] pass --data-dir (kept on stop, so another
 *   run can reuse it; the caller removes it). Default: a fresh directory
 *   inside the run's temporary directory, removed on stop.
 */
export async function startHerald({ config = {}, dev = false, env = {}, dataDir } = {}) {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(
      `Herald binary not found at ${HERALD_BIN}: run \`cargo build\` in ${REPO_ROOT} or set HERALD_BIN`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), 'herald-sdk-'));
  const configFile = join(dir, 'config.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));

  const args = ['serve', '--config', configFile, '--port', '0', '--address', '127.0.0.1'];
  if (dev) args.push('--dev');
  if (dataDir) args.push('--data-dir', dataDir);

  const child = spawn(HERALD_BIN, args, {
    cwd: dir,
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  let output = '';
  let stderrBuf = '';
  let exited = false;
  let exitCode = null;
  const exitPromise = new Promise((res) => {
    child.once('exit', (code, signal) => {
      exited = true;
      exitCode = code === null ? signal : code;
      res(exitCode);
    });
  });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    output += stripAnsi(d);
  });

  const portPromise = new Promise((res, rej) => {
    let done = false;
    const finish = (fn, v) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      fn(v);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(
        rej,
        new Error(
          `Herald did not log a "listening ... addr=127.0.0.1:PORT" line within ${START_TIMEOUT_MS} ms.\n` +
            `command: ${HERALD_BIN} ${args.join(' ')}\nconfig: ${JSON.stringify(config)}\n` +
            `--- captured output ---\n${output}`,
        ),
      );
    }, START_TIMEOUT_MS);
    child.stderr.on('data', (d) => {
      const text = stripAnsi(d);
      output += text;
      if (done) return;
      stderrBuf += text;
      let idx;
      while ((idx = stderrBuf.indexOf('\n')) >= 0) {
        const line = stderrBuf.slice(0, idx);
        stderrBuf = stderrBuf.slice(idx + 1);
        const p = listeningPort(line);
        if (p) {
          finish(res, p);
          return;
        }
      }
    });
    child.once('error', (err) => finish(rej, new Error(`failed to spawn ${HERALD_BIN}: ${err.message}`)));
    exitPromise.then((code) =>
      finish(
        rej,
        new Error(
          `Herald exited (code ${code}) before listening.\ncommand: ${HERALD_BIN} ${args.join(' ')}\n` +
            `config: ${JSON.stringify(config)}\n--- captured output ---\n${output}`,
        ),
      ),
    );
  });

  let port;
  try {
    port = await portPromise;
  } catch (err) {
    if (!exited) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const httpUrl = `http://127.0.0.1:${port}`;
  const apiKey = config?.http_api?.key;

  async function api(method, body = {}) {
    const headers = { 'Content-Type': 'application/json' };
    if (apiKey) headers['X-API-Key'] = apiKey;
    const resp = await fetch(`${httpUrl}/api/${method}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
    });
    const text = await resp.text();
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`/api/${method}: HTTP ${resp.status}, body is not JSON: ${JSON.stringify(text)}`);
    }
  }

  let stopping = null;
  function stop() {
    if (stopping) return stopping;
    stopping = (async () => {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => {
          if (!exited) child.kill('SIGKILL');
        }, STOP_TIMEOUT_MS);
        await exitPromise;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
      return exitCode;
    })();
    return stopping;
  }

  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
    httpUrl,
    api,
    stop,
    logs: () => output,
    process: child,
  };
}

// ---------------------------------------------------------------------------
// JWT

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

/** Builds an HS256-signed JWT from `claims`. */
export function hs256(claims, secret) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** Current time in whole seconds (JWT NumericDate). */
export function nowSec() {
  return Math.floor(Date.now() / 1000);
}

// ---------------------------------------------------------------------------
// Waiting

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Polls `predicate` (sync or async) until it returns a truthy value; resolves
 * to that value. Rejects after `timeoutMs` with `message` (string or function).
 */
export async function waitFor(predicate, timeoutMs = 3000, message = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() >= deadline) {
      const msg = typeof message === 'function' ? message() : message;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${msg}`);
    }
    await sleep(10);
  }
}

/** Resolves with the first `event` emitted by `emitter`; rejects after `timeoutMs`. */
export function once(emitter, event, timeoutMs = 3000) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      emitter.removeListener(event, on);
      rej(new Error(`timed out after ${timeoutMs} ms waiting for '${event}' event`));
    }, timeoutMs);
    function on(ctx) {
      clearTimeout(t);
      res(ctx);
    }
    emitter.once(event, on);
  });
}

// ---------------------------------------------------------------------------
// SDK

/**
 * Creates a Centrifuge client using the `ws` package, records every client
 * event into `client.events` as `{ type, ctx, at }`, and does not connect.
 */
export function newClient(url, options = {}) {
  const client = createCentrifuge(url, {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 3000,
    ...options,
  });
  client.events = [];
  for (const type of [
    'state',
    'connecting',
    'connected',
    'disconnected',
    'error',
    'subscribing',
    'subscribed',
    'unsubscribed',
    'publication',
    'join',
    'leave',
    'message',
  ]) {
    client.on(type, (ctx) => client.events.push({ type, ctx, at: Date.now() }));
  }
  client.eventsOf = (type) => client.events.filter((e) => e.type === type).map((e) => e.ctx);
  // Events after the first 'connected' (skips the initial 'connecting', code 0).
  client.eventsAfterConnect = (...types) => {
    const i = client.events.findIndex((e) => e.type === 'connected');
    if (i < 0) return [];
    return client.events.slice(i + 1).filter((e) => types.length === 0 || types.includes(e.type));
  };
  return client;
}

/** Connects `client` and waits for the `connected` event. */
export async function connectClient(client, timeoutMs = 3000) {
  const p = once(client, 'connected', timeoutMs).catch((err) => {
    const seen = client.events.map((e) => `${e.type} ${JSON.stringify(e.ctx)}`).join('\n  ');
    throw new Error(`${err.message}; client events so far:\n  ${seen}`);
  });
  client.connect();
  return p;
}

/** Subscribes `sub` and waits for `subscribed`; rejects on an `error` first. */
export function subscribeAndWait(sub, timeoutMs = 3000) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      cleanup();
      rej(new Error(`timed out after ${timeoutMs} ms waiting for subscription to ${sub.channel}`));
    }, timeoutMs);
    function onSub(ctx) {
      cleanup();
      res(ctx);
    }
    function onErr(ctx) {
      cleanup();
      rej(Object.assign(new Error(`subscribe to ${sub.channel} failed: ${JSON.stringify(ctx)}`), { ctx }));
    }
    function onUnsub(ctx) {
      cleanup();
      rej(Object.assign(new Error(`subscription to ${sub.channel} ended: ${JSON.stringify(ctx)}`), { ctx }));
    }
    function cleanup() {
      clearTimeout(t);
      sub.removeListener('subscribed', onSub);
      sub.removeListener('error', onErr);
      sub.removeListener('unsubscribed', onUnsub);
    }
    sub.on('subscribed', onSub);
    sub.on('error', onErr);
    sub.on('unsubscribed', onUnsub);
    sub.subscribe();
  });
}

/** A base config most tests start from; pass overrides via deep merge. */
export const SECRET = 's3cret';
export const API_KEY = 'api-key';

export function baseConfig(overrides = {}) {
  return deepMerge(
    {
      client: {
        token: { hmac_secret_key: SECRET },
        allowed_origins: ['*'],
        ping_interval: '25s',
        pong_timeout: '8s',
      },
      http_api: { key: API_KEY },
      channel: {
        without_namespace: { allow_subscribe_for_client: true, allow_publish_for_client: true },
        namespaces: [
          { name: 'chat', allow_subscribe_for_client: true, allow_publish_for_subscriber: true },
          { name: 'ro', allow_subscribe_for_client: true },
          { name: 'private' },
          { name: 'dm', allow_user_limited_channels: true },
        ],
      },
    },
    overrides,
  );
}

function deepMerge(a, b) {
  if (Array.isArray(b) || typeof b !== 'object' || b === null) return b;
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = k in out && typeof out[k] === 'object' && !Array.isArray(out[k]) ? deepMerge(out[k], v) : v;
  }
  return out;
}

/** Connection token for `user`, valid for `ttlSec` seconds, plus extra claims. */
export function connToken(user, { ttlSec = 3600, secret = SECRET, ...extra } = {}) {
  const iat = nowSec();
  return hs256({ sub: user, iat, exp: iat + ttlSec, ...extra }, secret);
}

/** Subscription token for `user` on `channel`. */
export function subToken(user, channel, { ttlSec = 3600, secret = SECRET, ...extra } = {}) {
  const iat = nowSec();
  return hs256({ sub: user, channel, iat, exp: iat + ttlSec, ...extra }, secret);
}

/** Disconnects every client and stops the server; safe to call with nulls. */
export async function teardown(server, ...clients) {
  for (const c of clients) {
    try {
      c?.disconnect();
    } catch {
      /* ignore */
    }
  }
  if (server) await server.stop();
}

/** Formats a server's log tail for assertion messages. */
export function logTail(server, lines = 40) {
  if (!server) return '';
  return `\n--- herald log tail ---\n${server.logs().split('\n').slice(-lines).join('\n')}`;
}

/**
 * Returns a `ws` WebSocket subclass that records raw frames, for passing to the
 * SDK as its `websocket` option: `frames.received` / `frames.sent` hold the
 * frame texts, `frames.sockets` every socket the SDK opened.
 */
export function spyWebSocket() {
  const frames = { received: [], sent: [], sockets: [] };
  class SpyWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      frames.sockets.push(this);
      this.on('message', (data) => {
        frames.received.push({ at: Date.now(), lines: wireLines(data, false) });
      });
    }

    send(data, ...rest) {
      frames.sent.push({ at: Date.now(), lines: wireLines(data, true) });
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: SpyWebSocket, frames };
}

/**
 * The messages of the spied frames `list`, one JSON line each (a Protobuf
 * frame's messages written as the JSON format would write them).
 */
export function frameLines(list) {
  return list.flatMap((f) => f.lines);
}
