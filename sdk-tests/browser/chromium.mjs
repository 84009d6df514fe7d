// Headless Chromium for the browser tests: Debian's build (HERALD_CHROMIUM
// overrides the path) driven by playwright-core, a page that records every
// request it makes, and screenshots kept where HERALD_SCREENSHOTS points
// (the system's temporary folder by default) for a person to look at.

import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

const EXECUTABLE = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
export const SHOTS = process.env.HERALD_SCREENSHOTS || join(tmpdir(), 'herald-screenshots');

// Flags that keep Chromium from calling home on a machine without a
// network, and let it run as root in a container.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Chromium; close it with `browser.close()`. */
export async function launch() {
  return chromium.launch({ executablePath: EXECUTABLE, args: ARGS });
}

/**
 * A new page of `browser` at `viewport` whose requests are kept in
 * `page.requests` (URLs), requests that failed in `page.failed`, and
 * script errors in `page.errors`.
 */
export async function recordingPage(browser, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.requests = [];
  page.errors = [];
  page.on('request', (r) => page.requests.push(r.url()));
  page.failed = [];
  // Script errors; a refused request (a wrong password's 401) is not one.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) page.errors.push(m.text());
  });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('requestfailed', (r) => page.failed.push(`${r.url()}: ${r.failure()?.errorText}`));
  return page;
}

/** Requests of `page` that went to another host than `origin`. */
export function foreignRequests(page, origin) {
  const host = new URL(origin).host;
  return page.requests.filter((u) => !u.startsWith('data:') && new URL(u).host !== host);
}

/** Saves a full-page screenshot as `<SHOTS>/<name>.png`; returns the path. */
export async function screenshot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
