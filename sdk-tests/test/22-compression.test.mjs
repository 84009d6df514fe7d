// WebSocket permessage-deflate with the SDK over the `ws` package, which
// offers it as browsers do: with `websocket.compression` on, the socket
// agrees to it, publications both ways arrive intact and cross the wire in a
// fraction of their size; with it off (the default) nothing is compressed.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { collectPublications, configWithNamespaces, startTestServer } from '../lib/fixtures.mjs';
import { connToken, connectClient, spyWebSocket, subscribeAndWait, waitFor } from '../lib/server.mjs';

function configWith(websocket) {
  return { ...configWithNamespaces({ name: 'room', allow_subscribe_for_client: true, allow_publish_for_client: true }), websocket };
}

/** Repetitive, like most JSON a chat or a feed publishes. */
function bigData(n) {
  return { n, items: Array.from({ length: 300 }, (_, i) => ({ id: i, text: `message number ${i} in the room` })) };
}

async function twoClients(t, websocket) {
  const { server, client } = await startTestServer(t, { config: configWith(websocket) });
  const spy = spyWebSocket();
  const a = client({ token: connToken('a'), websocket: spy.WebSocket });
  const b = client({ token: connToken('b') });
  await Promise.all([connectClient(a), connectClient(b)]);
  return { server, a, b, socket: spy.frames.sockets[0] };
}

test('with websocket.compression the socket deflates both ways', { timeout: 30_000 }, async (t) => {
  const { server, a, b, socket } = await twoClients(t, { compression: true, compression_min_size: 64 });
  assert.match(socket.extensions, /^permessage-deflate/, `agreed: "${socket.extensions}"`);

  const subA = a.newSubscription('room:z');
  const subB = b.newSubscription('room:z');
  const gotA = collectPublications(subA);
  const gotB = collectPublications(subB);
  await Promise.all([subscribeAndWait(subA), subscribeAndWait(subB)]);

  const before = socket._socket.bytesRead;
  const r = await server.api('publish', { channel: 'room:z', data: bigData(1) });
  assert.ok(r.result, JSON.stringify(r));
  await waitFor(() => gotA.length === 1, 5000, () => `got ${gotA.length}`);
  assert.deepEqual(gotA[0].data, bigData(1));
  const size = JSON.stringify(bigData(1)).length;
  const wire = socket._socket.bytesRead - before;
  assert.ok(wire * 5 < size, `${wire} bytes on the wire for ${size} bytes of data`);

  // The client's own publication goes compressed to the server.
  const sentBefore = socket._socket.bytesWritten;
  await subA.publish(bigData(2));
  await waitFor(() => gotB.length === 2, 5000, () => `b got ${gotB.length}`);
  assert.deepEqual(gotB[1].data, bigData(2));
  const sent = socket._socket.bytesWritten - sentBefore;
  assert.ok(sent * 5 < size, `${sent} bytes sent for ${size} bytes of data`);
});

test('without websocket.compression nothing is deflated', { timeout: 30_000 }, async (t) => {
  const { server, a, socket } = await twoClients(t, {});
  assert.equal(socket.extensions, '');
  const sub = a.newSubscription('room:plain');
  const got = collectPublications(sub);
  await subscribeAndWait(sub);
  const before = socket._socket.bytesRead;
  await server.api('publish', { channel: 'room:plain', data: bigData(3) });
  await waitFor(() => got.length === 1, 5000, () => `got ${got.length}`);
  assert.deepEqual(got[0].data, bigData(3));
  assert.ok(socket._socket.bytesRead - before >= JSON.stringify(bigData(3)).length);
});
