/*
 * herald-client.js - a small client for Herald (Centrifugo client protocol v2,
 * JSON over WebSocket). No build step and no dependencies: load it with a
 * <script> tag (global `HeraldClient`) or require() it in Node and pass a
 * WebSocket implementation, e.g. new HeraldClient(url, { WebSocket: require('ws') }).
 *
 *   const client = new HeraldClient('ws://localhost:8000/connection/websocket');
 *   await client.connect();
 *   await client.subscribe('chat:lobby', (pub) => console.log(pub.data), { joinLeave: true });
 *   await client.publish('chat:lobby', { text: 'hi' });
 *   const recent = await client.history('chat:lobby', { limit: 20, reverse: true });
 *
 * Without WebSocket (a proxy that blocks it), pass { httpStream:
 * '/connection/http_stream' } (and { emulation: '/emulation' } if elsewhere):
 * a WebSocket that never opens makes the client use HTTP-streaming from then
 * on (the server needs http_stream.enabled).
 *
 * Events (client.on(name, fn)): connecting, connected, disconnected,
 * reconnecting, subscribed (also after each resubscribe, with the server's
 * `recovered` / `was_recovering` flags), unsubscribed, publication, join,
 * leave, message, error ({ type, error }), frame (raw JSON lines).
 */
(function (root) {
  'use strict';

  // Errors produced by the client itself. Server errors use codes >= 100,
  // so small numbers cannot be confused with them.
  const ERR_TIMEOUT = { code: 1, message: 'timeout' };
  const ERR_CLOSED = { code: 2, message: 'connection closed' };
  const ERR_NOT_CONNECTED = { code: 3, message: 'not connected' };

  const OPEN = 1; // WebSocket.OPEN, the same in browsers and in `ws`
  const noop = function () {};

  // The server picks the close code; these ranges mean "don't come back"
  // (bad request, banned, ...). Everything else is worth a reconnect.
  function isTerminal(code) {
    return (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);
  }

  class HeraldClient {
    constructor(url, options) {
      options = options || {};
      this.url = url;
      this.options = {
        token: options.token,
        name: options.name || 'herald-js',
        data: options.data,
        timeout: options.timeout || 10000,
        minReconnectDelay: options.minReconnectDelay || 500,
        maxReconnectDelay: options.maxReconnectDelay || 20000,
        // Where WebSocket cannot get through (some proxies), fall back to
        // HTTP-streaming: `httpStream` is its endpoint and `emulation` the
        // one later commands are posted to (needs `fetch`).
        httpStream: options.httpStream,
        emulation: options.emulation || '/emulation',
      };
      this.transport = 'websocket';
      this._WebSocket = options.WebSocket ||
        (typeof WebSocket !== 'undefined' ? WebSocket : null);
      if (!this._WebSocket) {
        throw new Error('HeraldClient: no WebSocket available, pass { WebSocket } in options');
      }
      this.state = 'disconnected'; // 'disconnected' | 'connecting' | 'connected'
      this.clientId = null;
      this._ws = null;
      this._nextId = 1;
      this._pending = new Map(); // command id -> { method, resolve, reject, timer }
      this._outbox = [];         // encoded commands waiting for the next flush
      this._subs = new Map();    // channel -> subscription record (kept across reconnects)
      this._listeners = {};
      this._connectWaiters = [];
      this._attempt = 0;
      this._reconnectTimer = null;
      this._pingTimer = null;
      this._closing = false;     // true after disconnect(): never reconnect
    }

    // ---- events -------------------------------------------------------------

    on(event, fn) {
      (this._listeners[event] = this._listeners[event] || []).push(fn);
      return this;
    }

    off(event, fn) {
      const list = this._listeners[event] || [];
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
      return this;
    }

    _emit(event, arg) {
      for (const fn of (this._listeners[event] || []).slice()) {
        // A throwing listener must not break the protocol loop that called it.
        try { fn(arg); } catch (err) { console.error('HeraldClient listener for "' + event + '" threw', err); }
      }
    }

    _setState(state) {
      if (this.state === state) return;
      this.state = state;
      if (state === 'connecting') this._emit('connecting', {});
    }

    // ---- public API ---------------------------------------------------------

    // Resolves with the server's connect result once connected. Transient
    // failures are retried in the background; only a terminal one rejects.
    connect() {
      if (this.state === 'connected') return Promise.resolve(this._connectResult);
      const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
      if (this.state === 'disconnected') {
        this._closing = false;
        this._attempt = 0;
        this._open();
      }
      return p;
    }

    // The subscription is remembered, so it is restored after reconnects
    // and may be requested before connect() has finished. Options:
    //   joinLeave: true      ask for join/leave pushes (the namespace must
    //                        have join_leave enabled)
    //   recoverable: true    ask for recovery after reconnects (the namespace
    //                        must allow it, or force it)
    //   since: {offset, epoch}  recover from this stream position on the
    //                        first subscribe too, e.g. one saved by an
    //                        earlier page load
    // After a reconnect, a recoverable subscription asks for what it missed
    // and the server replays it; the 'subscribed' event says `recovered`.
    subscribe(channel, onPublication, options) {
      let sub = this._subs.get(channel);
      if (!sub) {
        options = options || {};
        sub = {
          onPublication: onPublication,
          subscribed: false,
          waiters: [],
          joinLeave: !!options.joinLeave,
          wantRecovery: !!options.recoverable,
        };
        if (options.since && options.since.epoch !== undefined) {
          sub.recoverable = true;
          sub.epoch = options.since.epoch;
          sub.offset = options.since.offset || 0;
        }
        this._subs.set(channel, sub);
        if (this.state === 'connected') this._sendSubscribe(channel, sub);
      } else if (onPublication) {
        sub.onPublication = onPublication;
      }
      if (sub.subscribed) return Promise.resolve(sub.result);
      return new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    }

    unsubscribe(channel) {
      const sub = this._subs.get(channel);
      this._subs.delete(channel);
      if (sub) settle(sub.waiters, 'reject', ERR_NOT_CONNECTED);
      if (this.state !== 'connected') return Promise.resolve({});
      return this._call('unsubscribe', { channel: channel });
    }

    publish(channel, data) {
      return this._command('publish', { channel: channel, data: data });
    }

    presence(channel) {
      return this._command('presence', { channel: channel });
    }

    presenceStats(channel) {
      return this._command('presence_stats', { channel: channel });
    }

    // `options` is a limit, or { limit, reverse, since: {offset, epoch} }.
    // Without a limit the server answers with the stream position only;
    // `reverse: true` gives the newest publications first.
    history(channel, options) {
      if (typeof options === 'number') options = { limit: options };
      options = options || {};
      const req = { channel: channel };
      if (options.limit !== undefined) req.limit = options.limit;
      if (options.reverse) req.reverse = true;
      if (options.since) req.since = { offset: options.since.offset || 0, epoch: options.since.epoch };
      return this._command('history', req);
    }

    // Closes for good (until connect() is called again). Resolves once the
    // socket is closed, so Node programs can exit cleanly.
    disconnect() {
      this._closing = true;
      const ws = this._ws;
      const closed = new Promise((resolve) => {
        if (!ws || ws.readyState > OPEN) return resolve();
        const timer = setTimeout(resolve, 1000); // don't hang on a dead peer
        ws.onclose = () => { clearTimeout(timer); resolve(); };
      });
      this._lost(1000, 'client disconnect', false);
      return closed;
    }

    // ---- transport ----------------------------------------------------------

    _open() {
      this._setState('connecting');
      this._disconnectPush = null;
      let ws;
      try {
        ws = this.transport === 'http_stream'
          ? new HttpStreamSocket(this.options.httpStream, this.options.emulation)
          : new this._WebSocket(this.url);
      } catch (err) {
        this._emit('error', { type: 'transport', error: err });
        this._scheduleReconnect();
        return;
      }
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        const req = { name: this.options.name };
        if (this.options.token) req.token = this.options.token;
        if (this.options.data !== undefined) req.data = this.options.data;
        this._call('connect', req).then(
          (res) => { if (ws === this._ws) this._onConnected(res); },
          (err) => { if (ws === this._ws) this._onConnectError(err); });
      };
      ws.onmessage = (ev) => { if (ws === this._ws) this._onFrame(ev.data); };
      // Browsers give no detail on errors and a close event always follows,
      // but `ws` throws on an 'error' nobody listens to, so keep a handler.
      ws.onerror = noop;
      ws.onclose = (ev) => {
        if (ws !== this._ws) return;
        // A transport that never got through: try the other one next time
        // (a WebSocket a proxy blocks, or a server without http_stream).
        const through = this.transport === 'websocket' ? opened : ws.established;
        if (!through && this.options.httpStream) {
          this.transport = this.transport === 'websocket' ? 'http_stream' : 'websocket';
        }
        this._lost(ev.code, ev.reason);
      };
    }

    // Commands queued in the same tick go out in one frame, one JSON per line
    // (this is what makes resubscribing to many channels a single round trip).
    _send(cmd) {
      const line = JSON.stringify(cmd);
      this._emit('frame', { direction: 'out', data: line });
      this._outbox.push(line);
      if (this._outbox.length > 1) return;
      Promise.resolve().then(() => {
        const frame = this._outbox.join('\n');
        this._outbox = [];
        if (this._ws && this._ws.readyState === OPEN) this._ws.send(frame);
      });
    }

    _call(method, params) {
      return new Promise((resolve, reject) => {
        const id = this._nextId++;
        const timer = setTimeout(() => {
          this._pending.delete(id);
          reject(ERR_TIMEOUT);
        }, this.options.timeout);
        this._pending.set(id, { method: method, resolve: resolve, reject: reject, timer: timer });
        this._send({ id: id, [method]: params });
      });
    }

    _command(method, params) {
      if (this.state !== 'connected') return Promise.reject(ERR_NOT_CONNECTED);
      return this._call(method, params);
    }

    _onFrame(data) {
      this._armPingTimer(); // any traffic proves the connection is alive
      for (const line of String(data).split('\n')) {
        if (!line.trim()) continue;
        this._emit('frame', { direction: 'in', data: line });
        let msg;
        try { msg = JSON.parse(line); } catch (err) {
          this._emit('error', { type: 'decode', error: err, data: line });
          continue;
        }
        if (msg.id) this._onReply(msg);
        else if (msg.push) this._onPush(msg.push);
        else if (this._pong && this._ws) { // ping -> pong
          this._emit('frame', { direction: 'out', data: '{}' });
          this._ws.send('{}');
        }
      }
    }

    _onReply(msg) {
      const p = this._pending.get(msg.id);
      if (!p) return; // already timed out
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(msg.error);
      else p.resolve(msg[p.method] || {});
    }

    _onConnected(res) {
      this.clientId = res.client;
      this._connectResult = res;
      this._attempt = 0;
      this._pong = !!res.pong;
      this._pingInterval = res.ping || 0;
      this._armPingTimer();
      this.state = 'connected';
      for (const [channel, sub] of this._subs) this._sendSubscribe(channel, sub);
      settle(this._connectWaiters, 'resolve', res);
      this._emit('connected', res);
    }

    _onConnectError(err) {
      this._emit('error', { type: 'connect', error: err });
      // Timeouts and errors the server marks temporary are worth retrying;
      // anything else (bad token, ...) will fail the same way next time.
      const retry = err === ERR_TIMEOUT || err.temporary || err.code === 100;
      this._lost(retry ? 1000 : 3500, err.message, retry, err);
    }

    // If the server stops pinging us, the connection is dead even though the
    // socket may not have noticed yet (e.g. a laptop waking from sleep).
    _armPingTimer() {
      clearTimeout(this._pingTimer);
      if (this.state !== 'connected' || !this._pingInterval) return;
      this._pingTimer = setTimeout(() => this._lost(1000, 'no ping from server', true),
        (this._pingInterval + 10) * 1000);
    }

    // Single place for every kind of connection loss. `reconnect` undefined
    // means: decide from the close code.
    _lost(code, reason, reconnect, error) {
      const ws = this._ws;
      this._ws = null;
      if (ws) {
        ws.onopen = ws.onmessage = noop;
        if (ws.readyState <= OPEN) {
          // Keep the onclose that disconnect() set (it resolves its promise);
          // otherwise the late close event of this socket is of no interest.
          if (!this._closing) ws.onclose = noop;
          try { ws.close(1000); } catch (e) { /* already closing */ }
        }
      }
      clearTimeout(this._pingTimer);
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._outbox = [];
      for (const p of this._pending.values()) { clearTimeout(p.timer); p.reject(ERR_CLOSED); }
      this._pending.clear();
      for (const sub of this._subs.values()) sub.subscribed = false;

      // A disconnect push arrives just before the close and is more precise.
      const push = this._disconnectPush;
      if (push) {
        code = push.code;
        reason = push.reason;
        if (push.reconnect === false) reconnect = false;
      }
      if (reconnect === undefined) reconnect = !isTerminal(code);
      if (this._closing) reconnect = false;

      const prevState = this.state;
      const wasConnected = prevState === 'connected';
      const info = { code: code, reason: reason || '', reconnect: reconnect };
      if (reconnect) {
        if (wasConnected) this._emit('disconnected', info);
        this._scheduleReconnect();
        return;
      }
      this.state = 'disconnected';
      const failure = error || { code: code, message: reason || 'disconnected' };
      settle(this._connectWaiters, 'reject', failure);
      for (const sub of this._subs.values()) settle(sub.waiters, 'reject', ERR_NOT_CONNECTED);
      if (prevState !== 'disconnected') this._emit('disconnected', info);
    }

    _scheduleReconnect() {
      // Exponential backoff with jitter, so that after a server restart all
      // clients don't come knocking in the very same millisecond.
      const o = this.options;
      const base = Math.min(o.maxReconnectDelay, o.minReconnectDelay * Math.pow(2, this._attempt));
      const delay = Math.round(Math.min(o.maxReconnectDelay, base * (0.8 + 0.4 * Math.random())));
      this._attempt++;
      this._setState('connecting');
      this._emit('reconnecting', { delay: delay, attempt: this._attempt });
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        this._open();
      }, delay);
    }

    // ---- subscriptions and pushes --------------------------------------------

    _sendSubscribe(channel, sub) {
      const req = { channel: channel };
      if (sub.joinLeave) req.join_leave = true;
      if (sub.wantRecovery) req.recoverable = true;
      // After a reconnect, ask the server for what we missed, if it can tell.
      if (sub.recoverable && sub.epoch !== undefined) {
        req.recover = true;
        req.epoch = sub.epoch;
        req.offset = sub.offset || 0;
      }
      this._call('subscribe', req).then((res) => {
        if (this._subs.get(channel) !== sub) return; // unsubscribed meanwhile
        sub.subscribed = true;
        sub.result = res;
        sub.recoverable = !!res.recoverable;
        if (res.epoch !== undefined) sub.epoch = res.epoch;
        for (const pub of res.publications || []) this._deliver(channel, pub);
        if (res.offset !== undefined) sub.offset = res.offset;
        settle(sub.waiters, 'resolve', res);
        this._emit('subscribed', Object.assign({ channel: channel }, res));
      }, (err) => {
        if (this._subs.get(channel) !== sub || err === ERR_CLOSED) return; // retried on reconnect
        this._subs.delete(channel);
        settle(sub.waiters, 'reject', err);
        this._emit('error', { type: 'subscribe', channel: channel, error: err });
      });
    }

    _onPush(push) {
      const channel = push.channel;
      if (push.pub) {
        this._deliver(channel, push.pub);
      } else if (push.join) {
        this._emit('join', { channel: channel, info: push.join.info });
      } else if (push.leave) {
        this._emit('leave', { channel: channel, info: push.leave.info });
      } else if (push.message) {
        this._emit('message', { data: push.message.data });
      } else if (push.subscribe) {
        // Server-side subscription: publications will simply start arriving.
        this._emit('subscribed', Object.assign({ channel: channel, server: true }, push.subscribe));
      } else if (push.unsubscribe) {
        const u = push.unsubscribe;
        const sub = this._subs.get(channel);
        // Codes 2500-2999 ask us to subscribe again; others end the subscription.
        if (sub && u.code >= 2500 && u.code < 3000 && this.state === 'connected') {
          sub.subscribed = false;
          this._sendSubscribe(channel, sub);
        } else {
          this._subs.delete(channel);
        }
        this._emit('unsubscribed', { channel: channel, code: u.code, reason: u.reason });
      } else if (push.disconnect) {
        this._disconnectPush = push.disconnect; // used when the close follows
      }
    }

    _deliver(channel, pub) {
      const sub = this._subs.get(channel);
      if (sub && pub.offset !== undefined) sub.offset = pub.offset;
      const ctx = { channel: channel, data: pub.data, info: pub.info, offset: pub.offset, tags: pub.tags };
      if (sub && sub.onPublication) {
        try { sub.onPublication(ctx); } catch (err) { console.error('HeraldClient publication handler threw', err); }
      }
      this._emit('publication', ctx);
    }
  }

  // HTTP-streaming in the shape of a WebSocket: the first frame sent (the
  // connect command) is POSTed to the stream endpoint, whose response
  // carries replies and pushes one per line; later frames are POSTed to the
  // emulation endpoint with the session and node the connect reply named.
  class HttpStreamSocket {
    constructor(url, emulation) {
      this.url = url;
      this.emulation = emulation;
      this.readyState = 0;
      this._abort = new AbortController();
      this._session = null;
      this._waiting = []; // frames sent before the connect reply came
      this.onopen = this.onmessage = this.onclose = this.onerror = noop;
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = OPEN;
        this.onopen();
      }, 0);
    }

    send(frame) {
      if (this.readyState !== OPEN) return;
      if (!this._started) {
        this._started = true;
        this._stream(frame);
      } else if (this._session) {
        this._post(frame);
      } else {
        this._waiting.push(frame);
      }
    }

    close() {
      if (this.readyState > OPEN) return;
      this._end(1000, '');
    }

    _end(code, reason) {
      if (this.readyState > OPEN) return;
      this.readyState = 3;
      this._abort.abort();
      this.onclose({ code: code, reason: reason });
    }

    async _stream(connect) {
      try {
        const response = await fetch(this.url, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: connect,
          signal: this._abort.signal,
        });
        if (!response.ok) return this._end(1006, 'HTTP ' + response.status);
        this.established = true;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let at;
          while ((at = buffer.indexOf('\n')) >= 0) {
            const line = buffer.slice(0, at);
            buffer = buffer.slice(at + 1);
            this._line(line);
          }
        }
        this._end(1006, 'stream ended');
      } catch (err) {
        this._end(1006, String(err && err.message || err));
      }
    }

    _line(line) {
      if (!this._session && line.indexOf('"connect"') >= 0) {
        try {
          const reply = JSON.parse(line);
          if (reply.connect && reply.connect.session) {
            this._session = reply.connect.session;
            this._node = reply.connect.node;
          }
        } catch (e) { /* the client reports undecodable lines */ }
      }
      if (this.readyState === OPEN) this.onmessage({ data: line });
      if (this._session) for (const frame of this._waiting.splice(0)) this._post(frame);
    }

    _post(frame) {
      fetch(this.emulation, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ session: this._session, node: this._node, data: frame }),
        signal: this._abort.signal,
      }).then((r) => {
        // The node is gone (404) or failing: reconnect.
        if (r.status === 404 || r.status >= 500) this._end(1006, 'HTTP ' + r.status);
      }, () => { /* aborted with the stream */ });
    }
  }

  function settle(waiters, how, value) {
    for (const w of waiters.splice(0)) w[how](value);
  }

  HeraldClient.isTerminalCloseCode = isTerminal;

  if (typeof module !== 'undefined' && module.exports) module.exports = HeraldClient;
  else root.HeraldClient = HeraldClient;
})(typeof globalThis !== 'undefined' ? globalThis : this);
