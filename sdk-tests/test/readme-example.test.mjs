// The README's JavaScript client example, run verbatim in Node.js (only the
// server's address and a real token put in): it connects, subscribes and
// prints what the server API publishes.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { startTestServer } from '../lib/fixtures.mjs';
import { REPO_ROOT, connToken, logTail, waitFor } from '../lib/server.mjs';

/** The first ```js block of the README that makes a Centrifuge client. */
function readmeExample() {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  const example = blocks.find((b) => b.includes('new Centrifuge('));
  assert.ok(example, 'the README has a JavaScript client example');
  return example;
}

test('the README JavaScript example works as written in Node.js', { timeout: 30_000 }, async (t) => {
  const { server } = await startTestServer(t);
  const code = readmeExample()
    .replace('ws://localhost:8000/connection/websocket', server.wsUrl)
    .replace('CONNECTION_JWT', JSON.stringify(connToken('reader')));
  assert.ok(code.includes(server.wsUrl), 'the example connects to the documented URL');
  // Beside the tests, so that its imports resolve to this folder's packages.
  const file = join(REPO_ROOT, 'sdk-tests', `readme-example-${process.pid}.mjs`);
  writeFileSync(file, code);
  t.after(() => rmSync(file, { force: true }));

  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill());
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });

  // Publish until the example prints it (it subscribes shortly after start).
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`the example exited: ${err}`);
    await server.api('publish', { channel: 'chat:room', data: { text: 'from the README test' } });
    await new Promise((r) => setTimeout(r, 100));
    return out.includes('from the README test');
  }, 10_000, () => `the example to print the publication; stderr: ${err}${logTail(server)}`);
  assert.equal(err, '', 'nothing on stderr');
});
