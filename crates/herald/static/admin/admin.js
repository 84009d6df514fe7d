// Herald's admin UI: plain JavaScript, no dependencies, nothing loaded from
// elsewhere. It talks to the admin API beside it: /init, /auth, /api/{method}
// (the server API's methods plus `connections`) and /watch (a channel's live
// events as Server-Sent Events, read with fetch so the session rides in a
// header).
'use strict';

(() => {
  const base = new URL('.', document.currentScript.src).pathname;
  const POLL_MS = 2000;
  const HISTORY = 60; // samples kept for the chart: two minutes
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem('herald-admin-token') || '';
  let insecure = false;
  let pollTimer = null;
  let previous = null; // last info sample: {at, perNode: {uid: publications}}
  const samples = [];
  let watching = null; // {channel, abort}

  // ---- plumbing ---------------------------------------------------------

  function headers() {
    const h = { 'Content-Type': 'application/json' };
    if (token) h.Authorization = `token ${token}`;
    return h;
  }

  class ApiFailure extends Error {}

  async function api(method, params = {}) {
    const resp = await fetch(`${base}api/${method}`, {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify(params),
    });
    if (resp.status === 401) {
      showLogin('Your session ended; log in again.');
      throw new ApiFailure('not logged in');
    }
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new ApiFailure(body.error || `HTTP ${resp.status}`);
    if (body.error) throw new ApiFailure(`${body.error.message} (code ${body.error.code})`);
    return body.result;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c ?? ''));
    return node;
  }

  function toast(text) {
    const t = $('toast');
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
  }

  const fmt = (n) => Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 });

  function uptime(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function short(json) {
    const text = typeof json === 'string' ? json : JSON.stringify(json);
    return text.length > 300 ? `${text.slice(0, 300)}…` : text;
  }

  // ---- login ------------------------------------------------------------

  function showLogin(message = '') {
    stopPolling();
    stopWatching();
    token = '';
    sessionStorage.removeItem('herald-admin-token');
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message;
    $('password').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('logout').hidden = insecure;
    startPolling();
  }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('login-error').textContent = '';
    const resp = await fetch(`${base}auth`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ password: $('password').value }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      $('login-error').textContent = body.error || `Login failed (HTTP ${resp.status})`;
      return;
    }
    token = body.token;
    sessionStorage.setItem('herald-admin-token', token);
    $('password').value = '';
    showApp();
  });

  $('logout').addEventListener('click', () => showLogin());

  // ---- tabs -------------------------------------------------------------

  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => show(tab.dataset.view));
  }

  function show(view) {
    for (const tab of document.querySelectorAll('.tab')) {
      tab.classList.toggle('active', tab.dataset.view === view);
    }
    for (const section of document.querySelectorAll('.view')) {
      section.hidden = section.id !== `view-${view}`;
    }
    if (view === 'channels') listChannels();
    if (view === 'connections') listConnections();
  }

  // ---- overview ---------------------------------------------------------

  function startPolling() {
    stopPolling();
    refresh();
    pollTimer = setInterval(refresh, POLL_MS);
  }

  function stopPolling() {
    clearInterval(pollTimer);
    pollTimer = null;
  }

  async function refresh() {
    let info;
    try {
      info = await api('info');
    } catch (err) {
      $('live').classList.add('stale');
      return;
    }
    $('live').classList.remove('stale');
    const nodes = info.nodes || [];
    const now = performance.now();
    const perNode = {};
    const rates = {};
    for (const n of nodes) {
      perNode[n.uid] = n.num_publications || 0;
      const before = previous ? previous.perNode[n.uid] : undefined;
      rates[n.uid] = before === undefined ? 0
        : Math.max(0, (perNode[n.uid] - before) / ((now - previous.at) / 1000));
    }
    previous = { at: now, perNode };
    const sum = (key) => nodes.reduce((a, n) => a + (n[key] || 0), 0);
    const rate = Object.values(rates).reduce((a, b) => a + b, 0);
    $('s-nodes').textContent = fmt(nodes.length);
    $('s-clients').textContent = fmt(sum('num_clients'));
    $('s-users').textContent = fmt(sum('num_users'));
    $('s-subs').textContent = fmt(sum('num_subs'));
    $('s-channels').textContent = fmt(sum('num_channels'));
    $('s-rate').textContent = fmt(rate);
    const version = nodes[0] && nodes[0].version;
    if (version) $('version').textContent = `v${version}`;
    $('nodes').replaceChildren(...nodes.map((n) => el('tr', {},
      el('td', {}, n.name), el('td', { class: 'muted' }, n.version),
      el('td', { class: 'num' }, fmt(n.num_clients)), el('td', { class: 'num' }, fmt(n.num_users)),
      el('td', { class: 'num' }, fmt(n.num_subs)), el('td', { class: 'num' }, fmt(n.num_channels)),
      el('td', { class: 'num' }, fmt(rates[n.uid])), el('td', { class: 'num' }, uptime(n.uptime)))));
    samples.push({ clients: sum('num_clients'), rate });
    if (samples.length > HISTORY) samples.shift();
    drawChart();
  }

  function drawChart() {
    const line = (key) => {
      const top = Math.max(1, ...samples.map((s) => s[key]));
      return samples.map((s, i) => {
        // The newest sample at the right edge; older ones to its left.
        const x = 600 - ((samples.length - 1 - i) / (HISTORY - 1)) * 600;
        const y = 115 - (s[key] / top) * 105;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      }).join(' ');
    };
    $('line-a').setAttribute('points', line('clients'));
    $('line-b').setAttribute('points', line('rate'));
  }

  // ---- channels ---------------------------------------------------------

  async function listChannels() {
    let result;
    try {
      result = await api('channels', { pattern: $('channel-pattern').value.trim() });
    } catch (err) {
      toast(`channels: ${err.message}`);
      return;
    }
    const names = Object.keys(result.channels || {}).sort();
    $('channel-count').textContent = `${names.length} with subscribers here`;
    $('channel-list').replaceChildren(...names.map((name) => el('li', {},
      el('button', {
        class: watching && watching.channel === name ? 'active' : '',
        onclick: () => openChannel(name),
      }, el('span', { class: 'mono' }, name),
      el('span', { class: 'muted' }, fmt(result.channels[name].num_clients))))));
    if (!names.length) {
      $('channel-list').append(el('li', { class: 'muted' }, 'No channel has subscribers on this node.'));
    }
  }

  $('channel-search').addEventListener('submit', (e) => { e.preventDefault(); listChannels(); });
  $('channel-open').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('channel-name').value.trim();
    if (name) openChannel(name);
  });

  function openChannel(name) {
    stopWatching();
    $('channel-empty').hidden = true;
    $('channel-body').hidden = false;
    $('channel-title').textContent = name;
    $('live-list').replaceChildren();
    $('publish-result').textContent = '';
    for (const b of document.querySelectorAll('#channel-list button')) {
      b.classList.toggle('active', b.firstChild.textContent === name);
    }
    watch(name);
    loadHistory(name);
    loadPresence(name);
  }

  function feedItem(kind, meta, body) {
    return el('li', { class: kind }, el('span', { class: 'meta' }, meta), body);
  }

  function who(info) {
    if (!info) return 'server';
    return info.user ? `user ${info.user}` : `client ${String(info.client).slice(0, 8)}`;
  }

  async function loadHistory(name) {
    let result;
    try {
      result = await api('history', { channel: name, limit: 20, reverse: true });
    } catch (err) {
      $('history-list').replaceChildren(el('li', { class: 'muted' }, err.message));
      return;
    }
    const pubs = result.publications || [];
    $('history-list').replaceChildren(...pubs.map((p) => feedItem('pub',
      `#${p.offset ?? '–'} · ${who(p.info)}`, short(p.data))));
    if (!pubs.length) $('history-list').append(el('li', { class: 'muted' }, 'Nothing kept.'));
  }

  async function loadPresence(name) {
    let result;
    try {
      result = await api('presence', { channel: name });
    } catch (err) {
      $('presence-list').replaceChildren(el('li', { class: 'muted' }, err.message));
      return;
    }
    const members = Object.values(result.presence || {});
    $('presence-list').replaceChildren(...members.map((m) => feedItem('join',
      `user ${m.user || '(anonymous)'}`, el('span', { class: 'mono' }, m.client))));
    if (!members.length) $('presence-list').append(el('li', { class: 'muted' }, 'Nobody here.'));
  }

  $('history-refresh').addEventListener('click', () => watching && loadHistory(watching.channel));

  function watchState(text, on) {
    $('watch-state').textContent = text;
    $('watch-state').classList.toggle('on', on);
  }

  function onEvent(name, frame) {
    const list = $('live-list');
    let item;
    if (frame.pub) {
      item = feedItem('pub', `#${frame.pub.offset ?? '–'} · ${who(frame.pub.info)} · ${new Date().toLocaleTimeString()}`,
        short(frame.pub.data));
    } else if (frame.join || frame.leave) {
      const kind = frame.join ? 'join' : 'leave';
      item = feedItem(kind, `${kind} · ${new Date().toLocaleTimeString()}`, who((frame.join || frame.leave).info));
      // Many joins and leaves in a row ask for presence once.
      clearTimeout(onEvent.presenceTimer);
      onEvent.presenceTimer = setTimeout(() => loadPresence(name), 500);
    } else if (frame.end) {
      watchState('reconnecting', false);
      return;
    } else {
      return;
    }
    list.prepend(item);
    while (list.children.length > 200) list.lastChild.remove();
  }

  async function watch(name) {
    const abort = new AbortController();
    watching = { channel: name, abort };
    watchState('connecting', false);
    while (watching && watching.abort === abort) {
      try {
        const resp = await fetch(`${base}watch?channel=${encodeURIComponent(name)}`, {
          headers: headers(),
          signal: abort.signal,
        });
        if (resp.status === 401) { showLogin('Your session ended; log in again.'); return; }
        if (resp.status >= 400 && resp.status < 500) {
          // Refused for good (a channel name too long, say): no retrying.
          const body = await resp.json().catch(() => ({}));
          watchState(body.error || `refused (HTTP ${resp.status})`, false);
          return;
        }
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        watchState('live', true);
        await readEvents(resp.body, (frame) => onEvent(name, frame));
      } catch (err) {
        if (abort.signal.aborted) return;
      }
      watchState('reconnecting', false);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  // Server-Sent Events from a fetch body: events end with a blank line; an
  // event's data lines join with newlines.
  async function readEvents(body, handle) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split(/\r\n|\r|\n/).filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(l.startsWith('data: ') ? 6 : 5)).join('\n');
        if (data) {
          try { handle(JSON.parse(data)); } catch (_) { /* not one of ours */ }
        }
      }
    }
  }

  function stopWatching() {
    if (watching) watching.abort.abort();
    watching = null;
  }

  function parseData(text) {
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new ApiFailure(`data is not JSON: ${err.message}`);
    }
  }

  $('publish-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!watching) return;
    try {
      const r = await api('publish', { channel: watching.channel, data: parseData($('publish-data').value) });
      $('publish-result').textContent = r.offset ? `published at offset ${r.offset}` : 'published';
      loadHistory(watching.channel);
    } catch (err) {
      $('publish-result').textContent = err.message;
    }
  });

  $('history-remove').addEventListener('click', async () => {
    if (!watching || !confirm(`Remove the history of ${watching.channel}?`)) return;
    try {
      await api('history_remove', { channel: watching.channel });
      loadHistory(watching.channel);
      toast('history removed');
    } catch (err) {
      toast(err.message);
    }
  });

  // ---- connections ------------------------------------------------------

  async function listConnections() {
    let result;
    try {
      result = await api('connections', { search: $('conn-filter').value.trim() });
    } catch (err) {
      toast(`connections: ${err.message}`);
      return;
    }
    const shown = result.connections.length;
    $('conn-count').textContent = result.total > shown ? `${shown} of ${result.total}` : `${result.total}`;
    $('connections').replaceChildren(...result.connections.map((c) => el('tr', {},
      el('td', { class: 'mono' }, c.client),
      el('td', {}, c.user || el('span', { class: 'muted' }, 'anonymous')),
      el('td', {}, `${c.transport} · ${c.protocol}`),
      el('td', {}, ...c.channels.map((ch) => el('span', { class: 'chip' }, ch))),
      el('td', { class: 'num' }, el('button', {
        class: 'danger small',
        onclick: async () => {
          try {
            await api('disconnect', { user: c.user, client: c.client });
            toast(`disconnected ${c.client}`);
            setTimeout(listConnections, 300);
          } catch (err) {
            toast(err.message);
          }
        },
      }, 'Disconnect')))));
  }

  $('conn-search').addEventListener('submit', (e) => { e.preventDefault(); listConnections(); });

  // ---- actions ----------------------------------------------------------

  for (const form of document.querySelectorAll('form.action')) {
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const out = form.querySelector('.result');
      const fields = Object.fromEntries(new FormData(form).entries());
      const params = {};
      for (const [k, v] of Object.entries(fields)) {
        const value = String(v).trim();
        if (!value) continue;
        if (k === 'data') params.data = parseDataSafe(value, out);
        else if (k === 'channels') params.channels = value.split(',').map((s) => s.trim()).filter(Boolean);
        else params[k] = value;
      }
      if (params.data === undefined && 'data' in fields) return;
      try {
        const r = await api(form.dataset.method, params);
        out.className = 'result ok';
        out.textContent = `done${r && r.offset ? ` (offset ${r.offset})` : ''}`;
      } catch (err) {
        out.className = 'result bad';
        out.textContent = err.message;
      }
    });
  }

  function parseDataSafe(text, out) {
    try {
      return JSON.parse(text);
    } catch (err) {
      out.className = 'result bad';
      out.textContent = `data is not JSON: ${err.message}`;
      return undefined;
    }
  }

  // ---- start ------------------------------------------------------------

  (async () => {
    const resp = await fetch(`${base}init`, { headers: headers() });
    const init = await resp.json();
    insecure = init.insecure;
    $('version').textContent = `v${init.version}`;
    if (init.authenticated) showApp();
    else showLogin();
  })();
})();
