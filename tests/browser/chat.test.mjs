// End-to-end test of the web client in a real Chromium, against a real server
// process that this script owns (it kills and restarts it mid-test).
//
// Env: WSCHAT_BIN (server binary, default target/release/wschat),
//      WSCHAT_CMD (a whole command line instead, e.g. for a mock; `--addr` is appended),
//      CHROMIUM (default /usr/bin/chromium), ARTIFACTS (default ci-logs/browser),
//      PORT (default: a free one).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = path.resolve(root, process.env.WSCHAT_BIN || 'target/release/wschat');
const CMD = process.env.WSCHAT_CMD || '';
// Extra server flags (e.g. `--static-dir static` to serve the client from disk with a debug build).
const EXTRA = (process.env.WSCHAT_ARGS || '').split(' ').filter(Boolean);
// The text limit the server is started with: the client must learn it from `welcome`.
const TEXT_LIMIT = 1000;
// With WSCHAT_TLS_CERT and WSCHAT_TLS_KEY the server speaks only TLS: the
// page is https, the chat wss (run.sh --tls makes a self-signed pair).
const TLS_ARGS = process.env.WSCHAT_TLS_CERT
  ? ['--tls-cert', process.env.WSCHAT_TLS_CERT, '--tls-key', process.env.WSCHAT_TLS_KEY]
  : [];
const SCHEME = TLS_ARGS.length ? 'https' : 'http';
const ARTIFACTS = path.resolve(root, process.env.ARTIFACTS || 'ci-logs/browser');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 10_000;
// The server's store: fresh for this run, kept across the restart below.
const DATA = fs.mkdtempSync(path.join(os.tmpdir(), 'wschat-browser-'));

let passed = 0;
let failed = 0;
let server = null;
let browser = null;
let serverLog = null;
const pages = {};

function log(...a) { console.log('browser:', ...a); }

async function check(name, fn) {
  try {
    await fn();
    passed++;
    log(`ok   ${name}`);
  } catch (e) {
    failed++;
    log(`FAIL ${name}: ${String(e && e.message || e).split('\n')[0]}`);
    // KEEP_GOING=1: go on after a failure (to see which checks an older client fails).
    if (!process.env.KEEP_GOING) throw new StopTest(name);
  }
}
class StopTest extends Error {}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function startServer(port) {
  const addr = `127.0.0.1:${port}`;
  const child = CMD
    ? spawn('bash', ['-c', `exec ${CMD} --addr ${addr} ${TLS_ARGS.join(' ')}`], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(BIN, ['--addr', addr, '--data-dir', DATA, '--max-text-chars', String(TEXT_LIMIT), ...EXTRA, ...TLS_ARGS], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => serverLog.write(d));
  child.stderr.on('data', (d) => serverLog.write(d));
  child.on('exit', (code, sig) => serverLog.write(`[server exited code=${code} signal=${sig}]\n`));
  return child;
}

async function waitHealthy(port, ms = 15_000) {
  const until = Date.now() + ms;
  let last = '';
  while (Date.now() < until) {
    if (server && server.exitCode !== null) throw new Error(`server exited early (code ${server.exitCode}); see ${path.join(ARTIFACTS, 'server.log')}`);
    try {
      const r = await fetch(`${SCHEME}://127.0.0.1:${port}/healthz`);
      if (r.status === 200) return;
      last = `status ${r.status}`;
    } catch (e) { last = e.cause?.code || e.message; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`GET /healthz did not answer 200 within ${ms} ms (last: ${last})`);
}

function killServer(sig = 'SIGKILL') {
  return new Promise((resolve) => {
    if (!server || server.exitCode !== null || server.signalCode !== null) return resolve();
    server.once('exit', () => resolve());
    server.kill(sig);
  });
}

// ------------------------------------------------------------------ page helpers
const tid = (page, id) => page.locator(`[data-testid="${id}"]`);

async function signIn(page, base, nick) {
  await page.goto(base);
  await tid(page, 'nick-input').waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
  await tid(page, 'nick-input').fill(nick);
  await tid(page, 'nick-submit').click();
  await waitState(page, 'online');
  await page.waitForFunction((n) => document.querySelector('[data-testid="my-nick"]')?.textContent === n, nick, { timeout: STEP_TIMEOUT });
}

async function waitState(page, s, timeout = STEP_TIMEOUT) {
  await page.waitForFunction((st) => document.querySelector('[data-testid="connection-status"]')?.dataset.state === st, s, { timeout });
}

async function joinRoom(page, room) {
  await tid(page, 'join-toggle').click();
  await tid(page, 'join-room-input').fill(room);
  await tid(page, 'join-room-input').press('Enter');
  await page.locator(`[data-testid="room-entry"][data-room="${room}"][aria-current="page"]`).waitFor({ timeout: STEP_TIMEOUT });
  await page.waitForFunction(() => /member/.test(document.querySelector('[data-testid="member-count"]')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
}

async function say(page, text, { button = false } = {}) {
  const box = tid(page, 'composer');
  await box.click();
  await box.fill(text);
  if (button) await tid(page, 'send').click();
  else await box.press('Enter');
}

// The text appears exactly once, acknowledged (not pending).
async function seesOnce(page, text, timeout = STEP_TIMEOUT) {
  await page.waitForFunction((t) => {
    const hits = [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]')]
      .filter((m) => m.querySelector('[data-testid="message-text"]')?.textContent === t);
    return hits.length === 1 && hits[0].dataset.state === 'sent';
  }, text, { timeout });
  // And stays single a moment later (no late duplicate).
  await page.waitForTimeout(150);
  const n = await page.evaluate((t) => [...document.querySelectorAll('[data-testid="message-text"]')].filter((m) => m.textContent === t).length, text);
  if (n !== 1) throw new Error(`"${text}" shown ${n} times`);
}

async function memberPresent(page, nick, present = true) {
  await page.locator(`[data-testid="member-list"] [data-testid="member"][data-nick="${nick}"]`)
    .waitFor({ state: present ? 'attached' : 'detached', timeout: STEP_TIMEOUT });
}

async function shot(page, name, { width, height, scheme }) {
  await page.setViewportSize({ width, height });
  await page.emulateMedia({ colorScheme: scheme });
  await page.waitForTimeout(250);
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

// Every feature at desktop and phone width, light and dark; the page is
// left at desktop width, light.
async function shotAll(page, name) {
  for (const scheme of ['light', 'dark']) {
    await shot(page, `${name}-desktop-${scheme}`, { width: 1280, height: 800, scheme });
    await shot(page, `${name}-phone-${scheme}`, { width: 390, height: 780, scheme });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.emulateMedia({ colorScheme: 'light' });
}

// Runs in bob's pages before the client: records every Notification made
// and lets the test hide the tab (headless Chromium is always "visible").
function pageHooks() {
  window.__hidden = false;
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get() { return window.__hidden; } });
  Object.defineProperty(Document.prototype, 'visibilityState', { configurable: true, get() { return window.__hidden ? 'hidden' : 'visible'; } });
  window.__setHidden = (h) => { window.__hidden = h; document.dispatchEvent(new Event('visibilitychange')); };
  window.__notes = [];
  const N = window.Notification;
  if (N) {
    window.Notification = class extends N {
      constructor(title, opts) { window.__notes.push({ title, body: opts && opts.body }); super(title, opts); }
    };
  }
}

const lastText = (page) => page.evaluate(() => {
  const all = document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]');
  return all.length ? all[all.length - 1].querySelector('[data-testid="message-text"]').textContent : '';
});
async function openRoom(page, room) {
  await page.locator(`[data-testid="room-entry"][data-room="${room}"]`).click();
  await page.locator(`[data-testid="room-entry"][data-room="${room}"][aria-current="page"]`).waitFor({ timeout: STEP_TIMEOUT });
}
// Scrolls the message list to the end, which reads what is there.
async function toBottom(page) {
  await page.evaluate(() => { const l = document.querySelector('[data-testid="message-list"]'); l.scrollTop = l.scrollHeight; });
  await page.waitForFunction(() => document.getElementById('jump').hidden, null, { timeout: STEP_TIMEOUT });
}
const overlaps = (a, b) => a && b && a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

// Accounts and moderation: the operator logs in from the nick dialog, a
// guest registers, the operator deletes the guest's message and both drop it.
const OP_PASSWORD = 'boss password 1';
// Images (docs/protocol.md, "Images"): a logged-in user pastes an image;
// the other page shows it as a thumbnail that links to the full size;
// deleting the message removes it on both pages and on the server.
async function images({ base, boss, eve }) {
  let url = null;
  await check('images: an image pasted on one page shows as a thumbnail on the other', async () => {
    await eve.evaluate(async () => {
      const c = document.createElement('canvas');
      c.width = 320; c.height = 200;
      const g = c.getContext('2d');
      const grad = g.createLinearGradient(0, 0, 320, 200);
      grad.addColorStop(0, '#4f46e5'); grad.addColorStop(1, '#f59e0b');
      g.fillStyle = grad; g.fillRect(0, 0, 320, 200);
      g.fillStyle = '#fff'; g.font = 'bold 36px sans-serif'; g.fillText('wschat', 100, 112);
      const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
      const dt = new DataTransfer();
      dt.items.add(new File([blob], 'image.png', { type: 'image/png' }));
      const box = document.querySelector('[data-testid="composer"]');
      box.value = 'a picture';
      box.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    });
    await seesOnce(boss, 'a picture');
    const thumb = boss.locator('[data-testid="message"]', { hasText: 'a picture' }).locator('[data-testid="message-image"]');
    await thumb.waitFor({ timeout: STEP_TIMEOUT });
    await boss.waitForFunction(() => [...document.querySelectorAll('[data-testid="message-image"]')].some((i) => i.complete && i.naturalWidth === 320), null, { timeout: STEP_TIMEOUT });
    const box = await thumb.boundingBox();
    if (!box || box.width > 241 || box.height > 241) throw new Error(`thumbnail not bounded: ${JSON.stringify(box)}`);
    if (!(await thumb.getAttribute('alt'))?.includes('eve')) throw new Error('no alt text');
    const link = boss.locator('[data-testid="message"]', { hasText: 'a picture' }).locator('a.msg-image-link');
    if ((await link.getAttribute('target')) !== '_blank') throw new Error('the thumbnail does not open full size');
    url = new URL(await link.getAttribute('href'), base).href;
    const r = await boss.request.get(url);
    if (r.status() !== 200 || r.headers()['content-security-policy'] !== "default-src 'none'; sandbox") throw new Error(`served ${r.status()}`);
    await eve.locator('[data-testid="message"]', { hasText: 'a picture' }).locator('[data-testid="message-image"]').waitFor({ timeout: STEP_TIMEOUT });
    await shotAll(boss, 'images');
  });
  await check('images: a click opens the image full size in a viewer; Escape or a click closes it, focus goes back', async () => {
    const link = boss.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'a picture' }).locator('a.msg-image-link');
    const viewer = tid(boss, 'image-viewer');
    const tabs = boss.context().pages().length;
    const opened = async () => {
      await viewer.waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
      const st = await boss.evaluate(() => {
        const d = document.querySelector('[data-testid="image-viewer"]');
        const img = d.querySelector('[data-testid="viewer-image"]');
        return { modal: d.matches(':modal'), inside: d.contains(document.activeElement), src: img.getAttribute('src'), alt: img.alt,
          caption: d.querySelector('[data-testid="viewer-caption"]').textContent, label: d.getAttribute('aria-label') };
      });
      if (!st.modal || !st.inside) throw new Error(`not a modal dialog holding the focus: ${JSON.stringify(st)}`);
      if (st.src !== new URL(url).pathname || !st.alt.includes('eve') || st.caption !== 'a picture' || st.label !== 'Image from eve') throw new Error(`viewer shows ${JSON.stringify(st)}`);
      await boss.waitForFunction(() => { const i = document.querySelector('[data-testid="viewer-image"]'); return i.complete && i.naturalWidth === 320; }, null, { timeout: STEP_TIMEOUT });
    };
    const closedToThumb = async (how) => {
      await viewer.waitFor({ state: 'hidden', timeout: STEP_TIMEOUT });
      const back = await boss.evaluate(() => document.activeElement?.matches('a.msg-image-link') && document.activeElement.closest('[data-testid="message"]')?.textContent.includes('a picture'));
      if (!back) throw new Error(`after ${how} the focus is not back on the thumbnail`);
    };
    await link.click();
    await opened();
    // Full size: its own 320 × 200 px (the thumbnail is at most 240 px wide).
    const big = await tid(boss, 'viewer-image').boundingBox();
    if (!big || Math.round(big.width) !== 320 || Math.round(big.height) !== 200) throw new Error(`viewer image ${JSON.stringify(big)}`);
    await shotAll(boss, 'image-viewer');
    await boss.keyboard.press('Escape');
    await closedToThumb('Escape');
    // By keyboard: Enter on the focused thumbnail opens it; a click on the image closes it.
    await boss.keyboard.press('Enter');
    await opened();
    await tid(boss, 'viewer-image').click();
    await closedToThumb('a click on the image');
    // And the close button.
    await link.click();
    await opened();
    await tid(boss, 'viewer-close').click();
    await closedToThumb('the close button');
    if (boss.context().pages().length !== tabs) throw new Error('a plain click opened a tab as well');
  });
  await check('images: a file that is not an image is refused in plain words', async () => {
    await eve.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['<svg/>'], 'x.svg', { type: 'image/svg+xml' }));
      document.querySelector('[data-testid="composer"]').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    });
    await eve.waitForFunction(() => /Only PNG, JPEG, GIF and WebP/.test(document.querySelector('[data-testid="composer-error"]')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
  });
  await check('images: deleting the message removes the image everywhere', async () => {
    const msg = boss.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'a picture' });
    await msg.hover();
    await msg.locator('[data-testid="msg-delete"]').click();
    for (const page of [boss, eve]) {
      await page.locator('[data-testid="message-image"]').first().waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    }
    const r = await boss.request.get(url);
    if (r.status() !== 404) throw new Error(`deleted image still served: ${r.status()}`);
  });
}

async function accounts({ base, ctxOpts, outside }) {
  const boss = await (await browser.newContext(ctxOpts)).newPage();
  const eve = await (await browser.newContext(ctxOpts)).newPage();
  pages.boss = boss;
  pages.eve = eve;
  for (const [who, page] of [['boss', boss], ['eve', eve]]) {
    page.on('pageerror', (e) => { log(`${who} page error: ${e.message}`); outside.push(`${who}: page error ${e.message}`); });
  }
  const badge = (page) => page.locator('.me-text [data-testid="account-badge"]');
  const rowOf = (page, nick) => page.locator('[data-testid="member-list"] li', { has: page.locator(`[data-testid="member"][data-nick="${nick}"]`) });
  await check('accounts: a wrong password is refused in plain words', async () => {
    await boss.goto(base);
    await tid(boss, 'nick-input').waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
    await tid(boss, 'nick-input').fill('boss');
    await tid(boss, 'password-input').fill('not the password');
    await tid(boss, 'login').click();
    await boss.waitForFunction(() => /Wrong nickname or password/.test(document.querySelector('[data-testid="nick-error"]')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
  });
  await check('accounts: the operator logs in from the nick dialog; token kept, password not', async () => {
    await tid(boss, 'password-input').fill(OP_PASSWORD);
    await tid(boss, 'login').click();
    await boss.waitForFunction(() => document.querySelector('[data-testid="my-nick"]')?.textContent === 'boss', null, { timeout: STEP_TIMEOUT });
    await badge(boss).waitFor({ timeout: STEP_TIMEOUT });
    const stored = await boss.evaluate(() => Object.keys(localStorage).map((k) => [k, localStorage.getItem(k)]));
    const sess = JSON.parse(stored.find(([k]) => k === 'wschat.session')?.[1] || 'null');
    if (!sess || !/^[0-9a-f]{64}$/.test(sess.token) || sess.account !== 'boss') throw new Error(`session kept: ${JSON.stringify(sess)}`);
    if (stored.some(([, v]) => String(v).includes(OP_PASSWORD))) throw new Error('the password is in localStorage');
  });
  await check('accounts: a guest registers from the nick dialog and gets the badge', async () => {
    await signIn(eve, base, 'eve');
    if (await badge(eve).count()) throw new Error('a guest has the badge');
    await tid(eve, 'nick-change').click();
    await tid(eve, 'password-input').fill('eve password 1');
    await shot(eve, 'desktop-nick-dialog-account', { width: 1280, height: 800, scheme: 'light' });
    await tid(eve, 'register').click();
    await badge(eve).waitFor({ timeout: STEP_TIMEOUT });
    await tid(eve, 'nick-input').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT });
  });
  await check('moderation: only the operator gets the controls; deleting drops the message on both pages', async () => {
    await joinRoom(boss, 'modroom');
    await joinRoom(eve, 'modroom');
    await memberPresent(boss, 'eve');
    await say(eve, 'delete me please');
    await seesOnce(boss, 'delete me please');
    await say(eve, 'this one stays');
    await seesOnce(boss, 'this one stays');
    if (await tid(eve, 'msg-delete').count()) throw new Error('a plain user has a Delete button');
    if (await tid(eve, 'member-server-ban').count()) throw new Error('a plain user has a server ban');
    await boss.locator('[data-testid="member-list"] [data-testid="member-server-ban"]').first().waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    if (await tid(eve, 'member-kick').count()) throw new Error('a plain user has a Kick button');
    await boss.locator('[data-testid="member-list"] [data-testid="member-kick"]').first().waitFor({ timeout: STEP_TIMEOUT });
    const msg = boss.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'delete me please' });
    await msg.hover();
    await msg.locator('[data-testid="msg-delete"]').click();
    for (const page of [boss, eve]) {
      await page.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'delete me please' }).waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    }
    await seesOnce(eve, 'this one stays');
  });
  await check('accounts: a second page sees the badge of a registered nick, in the member list and on its messages', async () => {
    const evesRow = boss.locator('[data-testid="member-list"] [data-testid="member"][data-nick="eve"]');
    await evesRow.locator('[data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
    await eve.locator('[data-testid="member-list"] [data-testid="member"][data-nick="boss"] [data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
    // The name (and its badge) heads a run of one author's messages.
    await boss.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'this one stays' }).locator('[data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
    await say(boss, 'signed by boss');
    await eve.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'signed by boss' }).locator('[data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
  });
  await check('moderation: a room owner appoints a moderator, who gets the controls there', async () => {
    // eve (registered) creates a room: she owns it. fred registers too.
    const fred = await (await browser.newContext(ctxOpts)).newPage();
    pages.fred = fred;
    fred.on('pageerror', (e) => { log(`fred page error: ${e.message}`); outside.push(`fred: page error ${e.message}`); });
    await signIn(fred, base, 'fred');
    await tid(fred, 'nick-change').click();
    await tid(fred, 'password-input').fill('fred password 1');
    await tid(fred, 'register').click();
    await badge(fred).waitFor({ timeout: STEP_TIMEOUT });
    await joinRoom(eve, 'evesroom');
    await joinRoom(fred, 'evesroom');
    await memberPresent(eve, 'fred');
    // gus, a guest: a plain member, whom a moderator outranks.
    const gus = await (await browser.newContext(ctxOpts)).newPage();
    pages.gus = gus;
    gus.on('pageerror', (e) => { log(`gus page error: ${e.message}`); outside.push(`gus: page error ${e.message}`); });
    await signIn(gus, base, 'gus');
    await joinRoom(gus, 'evesroom');
    await memberPresent(fred, 'gus');
    await say(eve, 'my room, my rules');
    await seesOnce(fred, 'my room, my rules');
    if (await tid(fred, 'member-kick').count() || await tid(fred, 'msg-delete').count()) throw new Error('fred has controls before he is appointed');
    const fredsRow = eve.locator('[data-testid="member-list"] li', { has: eve.locator('[data-testid="member"][data-nick="fred"]') });
    await fredsRow.locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    if (await fredsRow.locator('[data-testid="member-server-ban"]').count()) throw new Error('an owner has a server ban');
    await fredsRow.hover();
    await fredsRow.locator('[data-testid="member-moderator"]').click();
    await fred.locator('[data-testid="notice"]', { hasText: 'You are now a moderator of this room.' }).waitFor({ timeout: STEP_TIMEOUT });
    await rowOf(fred, 'gus').locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await fred.locator('[data-testid="msg-delete"]').first().waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    if (await fred.locator('[data-testid="member-moderator"], [data-testid="member-unmoderator"]').count()) throw new Error('a moderator may not appoint');
    await fredsRow.locator('[data-testid="mod-tag"]').waitFor({ timeout: STEP_TIMEOUT });
    await fredsRow.locator('[data-testid="member-unmoderator"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
  });
  await check('moderation: kick, mute and ban show only on members one outranks (not on the owner or an operator)', async () => {
    const fred = pages.fred;
    const noControls = async (page, nick, who) => {
      const n = await rowOf(page, nick).locator('[data-testid="member-kick"], [data-testid="member-mute"], [data-testid="member-ban"]').count();
      if (n) throw new Error(`${who} has ${n} moderation controls on ${nick}, who outranks or equals them`);
    };
    // The operator joins: a moderator and the owner rank below him.
    await joinRoom(boss, 'evesroom');
    await openRoom(boss, 'modroom');
    for (const page of [eve, fred]) await memberPresent(page, 'boss');
    await rowOf(fred, 'gus').locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await noControls(fred, 'eve', 'a moderator');
    await noControls(fred, 'boss', 'a moderator');
    await rowOf(eve, 'fred').locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await rowOf(eve, 'gus').locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await noControls(eve, 'boss', 'the owner');
    // The same from `joined` (its `roles`), after a reload of the owner's page.
    await eve.reload();
    await waitState(eve, 'online');
    await openRoom(eve, 'evesroom');
    await rowOf(eve, 'fred').locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await memberPresent(eve, 'boss');
    await noControls(eve, 'boss', 'the owner, after a reload');
    // The operator's page has them on everyone.
    await openRoom(boss, 'evesroom');
    for (const nick of ['eve', 'fred', 'gus']) await rowOf(boss, nick).locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await openRoom(boss, 'modroom');
  });
  await check('moderation: a moderator deletes the owner\'s message; the owner removes the moderator', async () => {
    const fred = pages.fred;
    const fredsRow = rowOf(eve, 'fred');
    // The moderator deletes the owner's message: both pages drop it.
    const msg = fred.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'my room, my rules' });
    await msg.hover();
    await fred.locator('[data-testid="member-list"] [data-testid="member"][data-nick="eve"]').hover();
    await shot(fred, 'desktop-room-moderator', { width: 1280, height: 800, scheme: 'light' });
    await msg.hover();
    await msg.locator('[data-testid="msg-delete"]').click();
    for (const page of [eve, fred]) {
      await page.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'my room, my rules' }).waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    }
    await fredsRow.hover();
    await shot(eve, 'desktop-room-owner', { width: 1280, height: 800, scheme: 'light' });
    await fredsRow.locator('[data-testid="member-unmoderator"]').click();
    await fred.locator('[data-testid="notice"]', { hasText: 'You no longer moderate this room.' }).waitFor({ timeout: STEP_TIMEOUT });
    await fred.locator('[data-testid="member-list"] [data-testid="member-kick"]').first().waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    await openRoom(eve, 'modroom');
  });
  await check('moderation: the owner bans a member and lifts the ban from the notice; the member joins again', async () => {
    const gus = pages.gus;
    await openRoom(eve, 'evesroom');
    const gusRow = rowOf(eve, 'gus');
    await gusRow.hover();
    await gusRow.locator('[data-testid="member-ban"]').click();
    await memberPresent(eve, 'gus', false);
    const note = eve.locator('[data-testid="notice"]', { hasText: 'gus was banned from the room by eve' });
    await note.waitFor({ timeout: STEP_TIMEOUT });
    await note.locator('[data-testid="notice-action"]', { hasText: 'Lift ban' }).click();
    await eve.locator('[data-testid="notice"]', { hasText: 'eve lifted the ban on gus here.' }).waitFor({ timeout: STEP_TIMEOUT });
    await joinRoom(gus, 'evesroom');
    await memberPresent(eve, 'gus');
    await openRoom(eve, 'modroom');
  });
  await check('moderation: the topic shows in the header; the event is a quiet line', async () => {
    await say(boss, '/topic Be kind here');
    await eve.waitForFunction(() => document.querySelector('[data-testid="room-topic"]')?.textContent === 'Be kind here', null, { timeout: STEP_TIMEOUT });
    await eve.locator('[data-testid="notice"]', { hasText: 'boss set the topic: Be kind here' }).waitFor({ timeout: STEP_TIMEOUT });
  });
  await images({ base, boss, eve });
  await check('accounts: a reload logs in again with the token; the tombstone stays hidden', async () => {
    await boss.reload();
    await waitState(boss, 'online');
    await badge(boss).waitFor({ timeout: STEP_TIMEOUT });
    await boss.waitForFunction(() => document.querySelector('[data-testid="my-nick"]')?.textContent === 'boss', null, { timeout: STEP_TIMEOUT });
    await openRoom(boss, 'modroom');
    await seesOnce(boss, 'this one stays');
    // From the history of `joined` now, not live: the lock shows all the same,
    // and on the message found by search.
    await boss.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'this one stays' }).locator('[data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
    await tid(boss, 'search-toggle').click();
    await tid(boss, 'search-input').fill('stays');
    await tid(boss, 'search-submit').click();
    await tid(boss, 'search-result').filter({ hasText: 'this one stays' }).locator('.search-match [data-testid="registered-badge"]').waitFor({ timeout: STEP_TIMEOUT });
    await tid(boss, 'search-input').press('Escape');
    await tid(boss, 'search-panel').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT });
    const texts = await boss.locator('[data-testid="message-list"] [data-testid="message-text"]').allTextContents();
    if (texts.some((t) => t === '' || t.includes('delete me please'))) throw new Error(`shown: ${JSON.stringify(texts)}`);
    if ((await boss.locator('[data-testid="room-topic"]').textContent()) !== 'Be kind here') throw new Error('no topic from joined');
    await tid(boss, 'msg-delete').first().waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
    await boss.locator('[data-testid="member-list"] [data-testid="member"][data-nick="eve"]').hover();
    await shot(boss, 'desktop-operator', { width: 1280, height: 800, scheme: 'light' });
  });
  await check('accounts: log out forgets the token and drops the controls', async () => {
    await tid(boss, 'nick-change').click();
    await tid(boss, 'logout').click();
    await badge(boss).waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    if (await boss.evaluate(() => JSON.parse(localStorage.getItem('wschat.session') || 'null'))) throw new Error('token still kept');
    await tid(boss, 'msg-delete').first().waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
  });
  await check('moderation: a logout is a new rank for the room (the owner now has controls on the guest nick the operator became)', async () => {
    await openRoom(eve, 'evesroom');
    const guestRow = eve.locator('[data-testid="member-list"] li', { has: eve.locator('[data-testid="member"][data-nick^="guest-"]') });
    await guestRow.locator('[data-testid="member-kick"]').waitFor({ state: 'attached', timeout: STEP_TIMEOUT });
  });
}

// DM history and read positions (logged in): a DM survives a reload, the
// new-messages marker after a reload comes from the server's position (not
// this device's), and reading on one page clears the badge on the other.
async function dmread({ base, ctxOpts, outside }) {
  const ctxD = await browser.newContext(ctxOpts);
  const dora = await ctxD.newPage();
  const finn = await (await browser.newContext(ctxOpts)).newPage();
  pages.dora = dora;
  pages.finn = finn;
  const watch = (who, page) => page.on('pageerror', (e) => { log(`${who} page error: ${e.message}`); outside.push(`${who}: page error ${e.message}`); });
  watch('dora', dora);
  watch('finn', finn);
  const badge = (page) => page.locator('.me-text [data-testid="account-badge"]');
  const registerAs = async (page, nick) => {
    await signIn(page, base, nick);
    await tid(page, 'nick-change').click();
    await tid(page, 'password-input').fill(`${nick} password 1`);
    await tid(page, 'register').click();
    await badge(page).waitFor({ timeout: STEP_TIMEOUT });
    await tid(page, 'nick-input').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT });
  };
  const unread = (page, sel) => page.locator(`${sel} [data-testid="unread"]`);
  const dmEntry = (nick) => `[data-testid="dm-entry"][data-nick="${nick}"]`;
  const roomEntry = (room) => `[data-testid="room-entry"][data-room="${room}"]`;
  const markerBefore = (page, text) => page.waitForFunction((t) => document.querySelector('[data-testid="new-marker"]')?.nextElementSibling?.querySelector('[data-testid="message-text"]')?.textContent === t, text, { timeout: STEP_TIMEOUT });

  await check('dm history: two users register and share a room', async () => {
    await registerAs(dora, 'dora');
    await registerAs(finn, 'finn');
    await joinRoom(dora, 'readroom');
    await joinRoom(finn, 'readroom');
    await memberPresent(dora, 'finn');
  });
  await check('dm history: a DM between accounts survives a reload on both sides', async () => {
    await finn.locator('[data-testid="member-list"] [data-testid="member"][data-nick="dora"]').click();
    await finn.locator(`${dmEntry('dora')}[aria-current="page"]`).waitFor({ timeout: STEP_TIMEOUT });
    await say(finn, 'kept for later');
    await seesOnce(finn, 'kept for later');
    await unread(dora, dmEntry('finn')).waitFor({ timeout: STEP_TIMEOUT });
    await finn.reload();
    await waitState(finn, 'online');
    // The conversation comes back open, from the server.
    await finn.locator(`${dmEntry('dora')}[aria-current="page"]`).waitFor({ timeout: STEP_TIMEOUT });
    await seesOnce(finn, 'kept for later');
    await dora.reload();
    await waitState(dora, 'online');
    await unread(dora, dmEntry('finn')).waitFor({ timeout: STEP_TIMEOUT });
    await dora.locator(dmEntry('finn')).click();
    await seesOnce(dora, 'kept for later');
    await say(dora, 'got it, thanks');
    await seesOnce(finn, 'got it, thanks');
  });
  await shotAll(dora, 'dm-history');
  await check('dm search: the search box finds a message of a private conversation between accounts', async () => {
    // dora is in her conversation with finn (the last check sent there).
    await tid(dora, 'search-toggle').click();
    await tid(dora, 'search-input').fill('later');
    await tid(dora, 'search-input').press('Enter');
    const hit = dora.locator('[data-testid="search-result"]', { hasText: 'kept for later' });
    await hit.waitFor({ timeout: STEP_TIMEOUT });
    await dora.waitForFunction(() => /1 message with finn/.test(document.getElementById('search-status')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
    await hit.locator('button').click();
    await dora.locator('[data-testid="message"].flash', { hasText: 'kept for later' }).waitFor({ timeout: STEP_TIMEOUT });
    await tid(dora, 'search-input').press('Escape');
  });
  await check('read position: after a reload the marker is where the account stopped reading (not this device)', async () => {
    await openRoom(dora, 'readroom');
    await openRoom(finn, 'readroom');
    for (const t of ['read one', 'read two']) await say(finn, t);
    await seesOnce(dora, 'read two');
    await toBottom(dora);
    await dora.waitForTimeout(1200); // the client sends its position at most every 500 ms
    await openRoom(dora, 'general');
    for (const t of ['unread three', 'unread four']) await say(finn, t);
    await seesOnce(finn, 'unread four');
    await unread(dora, roomEntry('readroom')).waitFor({ timeout: STEP_TIMEOUT });
    // This device forgets its own positions: only the server's remain.
    await dora.evaluate(() => localStorage.removeItem('wschat.read'));
    await dora.reload();
    await waitState(dora, 'online');
    await unread(dora, roomEntry('readroom')).waitFor({ timeout: STEP_TIMEOUT });
    const n = await unread(dora, roomEntry('readroom')).textContent();
    if (n !== '2') throw new Error(`unread after reload: ${n}`);
    await openRoom(dora, 'readroom');
    await markerBefore(dora, 'unread three');
  });
  await shotAll(dora, 'read-marker');
  await check('read position: reading on one page clears the badge on the other page', async () => {
    const phone = await ctxD.newPage();
    pages.phone = phone;
    watch('phone', phone);
    await phone.setViewportSize({ width: 390, height: 780 });
    await phone.goto(base);
    await waitState(phone, 'online');
    await badge(phone).waitFor({ timeout: STEP_TIMEOUT });
    await openRoom(dora, 'general');
    await phone.locator('[data-testid="menu-toggle"]').click();
    await openRoom(phone, 'general');
    await say(finn, 'for both pages');
    await seesOnce(finn, 'for both pages');
    await unread(dora, roomEntry('readroom')).waitFor({ timeout: STEP_TIMEOUT });
    await phone.locator('[data-testid="menu-toggle"]').click();
    await unread(phone, roomEntry('readroom')).waitFor({ timeout: STEP_TIMEOUT });
    await shot(phone, 'read-sync-before-phone-light', { width: 390, height: 780, scheme: 'light' });
    await openRoom(dora, 'readroom');
    await toBottom(dora);
    await unread(phone, roomEntry('readroom')).waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
    await shot(phone, 'read-sync-after-phone-dark', { width: 390, height: 780, scheme: 'dark' });
    await phone.emulateMedia({ colorScheme: 'light' });
  });
}

async function features({ base, alice, bob, carol, dave }) {
  await openRoom(alice, 'team');
  await openRoom(bob, 'team');

  // ---- limits from welcome, errors in plain words
  await check('the composer uses the server’s text limit from welcome (not 4000)', async () => {
    await tid(alice, 'composer').fill('x'.repeat(TEXT_LIMIT + 1));
    const c = await tid(alice, 'counter').textContent();
    if (!new RegExp(`1 character over this server’s limit of ${TEXT_LIMIT}`).test(c)) throw new Error(`counter: ${c}`);
    if (!(await tid(alice, 'send').isDisabled())) throw new Error('send is enabled over the limit');
    await tid(alice, 'composer').press('Enter');
    const e = await tid(alice, 'composer-error').textContent();
    if (!/1001 characters long; this server takes at most 1000/.test(e)) throw new Error(`error: ${e}`);
  });
  await shotAll(alice, 'limits');
  await check('exactly the limit is sent', async () => {
    await say(alice, 'y'.repeat(TEXT_LIMIT));
    await seesOnce(bob, 'y'.repeat(TEXT_LIMIT));
  });
  await check('a refusal by the server is explained in plain words', async () => {
    await say(alice, 'abc\u202edef');
    const st = alice.locator('[data-testid="message"][data-state="failed"] [data-testid="message-status"]');
    await st.waitFor({ timeout: STEP_TIMEOUT });
    const t = await st.textContent();
    if (!/text-direction override/.test(t) || /invalid field/.test(t)) throw new Error(`status: ${t}`);
    await st.getByText('Discard').click();
  });
  await check('toasts do not cover the Send button (desktop and phone)', async () => {
    for (const width of [1280, 390]) {
      await alice.setViewportSize({ width, height: width > 500 ? 800 : 780 });
      await say(alice, '/nick bob');
      const t = tid(alice, 'toast').last();
      await t.waitFor({ timeout: STEP_TIMEOUT });
      if (!/“bob” is taken/.test(await t.textContent())) throw new Error(await t.textContent());
      if (overlaps(await t.boundingBox(), await tid(alice, 'send').boundingBox())) throw new Error(`toast over Send at ${width}px`);
      if (overlaps(await t.boundingBox(), await tid(alice, 'composer').boundingBox())) throw new Error(`toast over the composer at ${width}px`);
    }
    await shotAll(alice, 'toast');
    for (const b of await alice.locator('[data-testid="toast"] button').all()) await b.click().catch(() => {});
  });

  // ---- avatars and links
  await check('avatars: two letters, colour from the whole nick', async () => {
    const av = await alice.evaluate(() => Object.fromEntries(['alice', 'bob'].map((n) => {
      const a = document.querySelector(`[data-testid="member"][data-nick="${n}"] .avatar`);
      return [n, { text: a.textContent, bg: getComputedStyle(a).backgroundColor }];
    })));
    if (av.alice.text !== 'Al' || av.bob.text !== 'Bo') throw new Error(JSON.stringify(av));
    if (av.alice.bg === av.bob.bg) throw new Error(`same colour ${av.alice.bg}`);
  });
  await check('www. addresses are links (https)', async () => {
    await say(bob, 'mirror at www.example.org/wschat.');
    const a = alice.locator('[data-testid="message-text"] a[href="https://www.example.org/wschat"]');
    await a.waitFor({ timeout: STEP_TIMEOUT });
    if ((await a.textContent()) !== 'www.example.org/wschat') throw new Error(await a.textContent());
  });

  // ---- presence collapsed
  await check('consecutive joins and leaves collapse into one line', async () => {
    await joinRoom(carol, 'team');
    await joinRoom(dave, 'team');
    await carol.locator('[data-testid="leave"]').click();
    await memberPresent(alice, 'carol2', false);
    const sum = tid(alice, 'presence-summary').last();
    await alice.waitForFunction(() => /carol2 and carol joined · carol2 left/.test([...document.querySelectorAll('[data-testid="presence-summary"]')].pop()?.textContent || ''), null, { timeout: STEP_TIMEOUT });
    await sum.click();
    const lines = await alice.locator('.presence-group[open] li').allTextContents();
    if (lines.length !== 3) throw new Error(JSON.stringify(lines));
  });
  await shotAll(alice, 'presence');

  // ---- mentions
  await check('@ completes from the room’s members', async () => {
    await tid(alice, 'composer').click();
    await tid(alice, 'composer').fill('');
    await alice.keyboard.type('thanks @bo', { delay: 20 });
    await tid(alice, 'completion-item').first().waitFor({ timeout: STEP_TIMEOUT });
    const items = await alice.locator('[data-testid="completion-item"] > span:last-child').allTextContents();
    if (JSON.stringify(items) !== '["bob"]') throw new Error(JSON.stringify(items));
  });
  await shotAll(alice, 'mention-complete');
  await check('a mention is highlighted for everyone and marked for the person mentioned', async () => {
    await alice.keyboard.press('Tab');
    const v = await tid(alice, 'composer').inputValue();
    if (v !== 'thanks @bob ') throw new Error(`composer: ${JSON.stringify(v)}`);
    await alice.keyboard.type('for the review');
    await alice.keyboard.press('Enter');
    await seesOnce(bob, 'thanks @bob for the review');
    await bob.locator('[data-testid="message"][data-mention="me"] [data-testid="mention"].is-me').waitFor({ timeout: STEP_TIMEOUT });
    const own = alice.locator('[data-testid="message"]').filter({ hasText: 'thanks @bob for the review' });
    await own.locator('[data-testid="mention"]').waitFor({ timeout: STEP_TIMEOUT });
    if (await own.getAttribute('data-mention')) throw new Error('marked for alice too');
    const dm = await dave.locator('[data-testid="message"]').filter({ hasText: 'thanks @bob' }).locator('[data-testid="mention"]:not(.is-me)').count();
    if (dm !== 1) throw new Error(`dave sees ${dm} highlighted mentions`);
  });
  await check('a mention in another room shows a mention badge there', async () => {
    await openRoom(bob, 'general');
    await say(alice, 'ping @Bob, the build is green');
    const badge = bob.locator('[data-testid="room-entry"][data-room="team"] [data-testid="mention-badge"]');
    await badge.waitFor({ timeout: STEP_TIMEOUT });
    if ((await badge.textContent()) !== '@1') throw new Error(await badge.textContent());
  });
  await shotAll(bob, 'mention-badge');

  // ---- notifications, mute, sound, title
  await check('notifications: opt-in from the panel (permission granted)', async () => {
    await tid(bob, 'notify-toggle').click();
    await tid(bob, 'pref-notify').check();
    await tid(bob, 'pref-sound').check();
    await bob.waitForFunction(() => document.querySelector('[data-testid="pref-notify"]').checked, null, { timeout: STEP_TIMEOUT });
  });
  await shotAll(bob, 'notify-panel');
  await check('a mention notifies while the tab is hidden, and the title counts unread', async () => {
    await tid(bob, 'notify-toggle').click(); // close
    await openRoom(bob, 'team');
    await toBottom(bob);
    await bob.evaluate(() => window.__setHidden(true));
    const sounds0 = Number(await bob.evaluate(() => document.documentElement.dataset.sounds || 0));
    await say(alice, '@bob are you around?');
    await bob.waitForFunction(() => window.__notes.length === 1, null, { timeout: STEP_TIMEOUT });
    const n = await bob.evaluate(() => window.__notes[0]);
    if (n.title !== 'alice mentioned you in #team' || n.body !== '@bob are you around?') throw new Error(JSON.stringify(n));
    const title = await bob.title();
    if (!/^\(1 · @1\) #team/.test(title)) throw new Error(`title: ${title}`);
    const sounds = Number(await bob.evaluate(() => document.documentElement.dataset.sounds || 0));
    if (sounds !== sounds0 + 1) throw new Error(`sounds ${sounds0} -> ${sounds}`);
  });
  await check('a plain message does not notify; a muted room does not notify', async () => {
    await say(alice, 'no mention here');
    await seesOnce(bob, 'no mention here');
    await bob.evaluate(() => window.__setHidden(false));
    await tid(bob, 'notify-toggle').click();
    await tid(bob, 'mute-conv').check();
    await tid(bob, 'notify-toggle').click();
    await bob.evaluate(() => window.__setHidden(true));
    await say(alice, '@bob muted now?');
    await seesOnce(bob, '@bob muted now?');
    if ((await bob.evaluate(() => window.__notes.length)) !== 1) throw new Error(JSON.stringify(await bob.evaluate(() => window.__notes)));
    await bob.locator('[data-testid="room-entry"][data-room="team"].muted').waitFor({ timeout: STEP_TIMEOUT });
  });
  await check('a private message notifies while hidden', async () => {
    await alice.locator('[data-testid="member"][data-nick="bob"]').click();
    await say(alice, 'a private word');
    await bob.waitForFunction(() => window.__notes.length === 2, null, { timeout: STEP_TIMEOUT });
    const n = await bob.evaluate(() => window.__notes[1]);
    if (n.title !== 'alice (private message)') throw new Error(JSON.stringify(n));
    await bob.evaluate(() => window.__setHidden(false));
    await openRoom(alice, 'team');
    await tid(bob, 'notify-toggle').click();
    await tid(bob, 'mute-conv').uncheck();
    await tid(bob, 'notify-toggle').click();
  });

  // ---- new-messages marker and jump button
  await check('"New messages" sits where the unread part begins', async () => {
    await openRoom(bob, 'general');
    const teamUnread = () => bob.evaluate(() => Number(document.querySelector('[data-testid="room-entry"][data-room="team"] [data-testid="unread"]')?.textContent || 0));
    const was = await teamUnread();
    for (const t of ['first unread', 'second unread', 'third unread']) await say(alice, t);
    await seesOnce(alice, 'third unread');
    // All three at bob's page (not only acknowledged to alice) before he looks.
    await bob.waitForFunction((n) => Number(document.querySelector('[data-testid="room-entry"][data-room="team"] [data-testid="unread"]')?.textContent || 0) >= n, was + 3, { timeout: STEP_TIMEOUT });
    await openRoom(bob, 'team');
    const next = await bob.evaluate(() => {
      const m = document.querySelector('[data-testid="new-marker"]');
      return m && m.nextElementSibling?.querySelector('[data-testid="message-text"]')?.textContent;
    });
    if (next !== 'first unread') throw new Error(`after the marker: ${next}`);
  });
  await shotAll(bob, 'new-marker');
  await check('scrolled up: "Jump to latest (N new)" counts what arrives', async () => {
    // A little way up: the marker still in view, the end not.
    await bob.evaluate(() => { const l = document.querySelector('[data-testid="message-list"]'); l.scrollTop = l.scrollHeight - l.clientHeight - 220; });
    await say(alice, 'fourth');
    await say(alice, 'fifth');
    await bob.waitForFunction(() => document.getElementById('jump').textContent.startsWith('Jump to latest (2 new)'), null, { timeout: STEP_TIMEOUT });
  });
  await shotAll(bob, 'jump-latest');
  await check('jumping to the latest reads them', async () => {
    await bob.locator('#jump').click();
    await bob.waitForFunction(() => document.getElementById('jump').hidden, null, { timeout: STEP_TIMEOUT });
  });
  await check('after a reload the marker is where this device stopped reading', async () => {
    await openRoom(bob, 'general');
    await say(alice, 'while you reloaded');
    await say(alice, 'and one more');
    await seesOnce(alice, 'and one more');
    await bob.reload();
    await waitState(bob, 'online');
    await bob.locator('[data-testid="room-entry"][data-room="team"] [data-testid="unread"]').waitFor({ timeout: STEP_TIMEOUT });
    const n = await bob.locator('[data-testid="room-entry"][data-room="team"] [data-testid="unread"]').textContent();
    if (n !== '2') throw new Error(`unread after reload: ${n}`);
    await openRoom(bob, 'team');
    await bob.waitForFunction(() => document.querySelector('[data-testid="new-marker"]')?.nextElementSibling?.querySelector('[data-testid="message-text"]')?.textContent === 'while you reloaded', null, { timeout: STEP_TIMEOUT });
  });

  // ---- formatting and emoji
  await check('Markdown subset rendered as elements, never as HTML', async () => {
    const src = '**bold** and *it* and `x<b>y</b>` and a [doc](https://example.org/doc)\n> quoted **<img src=x onerror=window.__pwned=1>**\n```\nfn main() {}\n```';
    await tid(alice, 'composer').fill(src);
    await tid(alice, 'composer').press('Enter');
    const msg = bob.locator('[data-testid="message"]').filter({ hasText: 'quoted' }).last();
    await msg.waitFor({ timeout: STEP_TIMEOUT });
    const r = await msg.evaluate((li) => ({
      strong: li.querySelector('.text > p strong')?.textContent,
      em: li.querySelector('em')?.textContent,
      code: li.querySelector('p code')?.textContent,
      link: li.querySelector('a')?.getAttribute('href'),
      host: li.querySelector('a .link-host')?.textContent,
      quote: li.querySelector('blockquote')?.textContent,
      pre: li.querySelector('pre code')?.textContent,
      img: !!li.querySelector('img') || window.__pwned === 1,
    }));
    const want = { strong: 'bold', em: 'it', code: 'x<b>y</b>', link: 'https://example.org/doc', host: ' (example.org)', quote: 'quoted <img src=x onerror=window.__pwned=1>', pre: 'fn main() {}', img: false };
    if (JSON.stringify(r) !== JSON.stringify(want)) throw new Error(JSON.stringify(r));
  });
  await check('emoji: :shortcode: becomes the emoji as you type, and the picker inserts one', async () => {
    await tid(alice, 'composer').click();
    await tid(alice, 'composer').fill('');
    await alice.keyboard.type('shipped :tada:', { delay: 15 });
    let v = await tid(alice, 'composer').inputValue();
    if (v !== 'shipped 🎉') throw new Error(JSON.stringify(v));
    await tid(alice, 'emoji-toggle').click();
    await tid(alice, 'emoji-picker').waitFor({ timeout: STEP_TIMEOUT });
  });
  await shotAll(alice, 'emoji-picker');
  await check('an emoji from the picker is sent', async () => {
    await alice.locator('[data-testid="emoji"][aria-label="rocket"]').click();
    const v = await tid(alice, 'composer').inputValue();
    if (v !== 'shipped 🎉🚀') throw new Error(JSON.stringify(v));
    await tid(alice, 'composer').press('Enter');
    await seesOnce(bob, 'shipped 🎉🚀');
  });
  await shotAll(bob, 'formatting');

  // ---- room directory
  await check('room directory: rooms with member counts, filtered, joined from the list', async () => {
    await joinRoom(dave, 'lobby');
    await tid(carol, 'browse-rooms').click();
    const row = (r) => carol.locator(`[data-testid="dir-room"][data-room="${r}"]`);
    await row('lobby').waitFor({ timeout: STEP_TIMEOUT });
    const sub = await row('team').locator('.dir-sub').textContent();
    if (sub !== '3 members') throw new Error(`team: ${sub}`);
    await shotAll(carol, 'directory');
    await tid(carol, 'dir-filter').fill('lob');
    await carol.waitForFunction(() => document.querySelectorAll('[data-testid="dir-room"]').length === 1, null, { timeout: STEP_TIMEOUT });
    await row('lobby').locator('[data-testid="dir-join"]').click();
    await carol.locator('[data-testid="room-entry"][data-room="lobby"][aria-current="page"]').waitFor({ timeout: STEP_TIMEOUT });
    await memberPresent(carol, 'carol'); // dave's page holds the nick carol
  });
}


// Replies, reactions, edits and deletes of one's own message (issue 13):
// alice and bob in #team, each change seen live on the other page.
async function messageActions({ alice, bob, archive }) {
  const msgOn = (page, text) => page.locator('[data-testid="message-list"] [data-testid="message"]')
    .filter({ has: page.locator('[data-testid="message-text"]', { hasText: text }) }).last();
  for (const page of [alice, bob]) {
    page.on('dialog', (d) => d.accept()); // "Delete this message for everyone?"
    await openRoom(page, 'team');
    await toBottom(page).catch(() => {});
  }
  await check('replies: bob answers alice\'s message; alice sees the quote, and it leads to the parent', async () => {
    await say(alice, 'Which day is the release?');
    await seesOnce(bob, 'Which day is the release?');
    const parent = msgOn(bob, 'Which day is the release?');
    await parent.hover();
    await parent.locator('[data-testid="msg-reply"]').click();
    await tid(bob, 'reply-bar').waitFor({ timeout: STEP_TIMEOUT });
    await say(bob, 'Friday, I think');
    await seesOnce(alice, 'Friday, I think');
    const reply = msgOn(alice, 'Friday, I think');
    const quote = reply.locator('[data-testid="reply-quote"]');
    await quote.waitFor({ timeout: STEP_TIMEOUT });
    if (!(await quote.textContent()).includes('Which day is the release?')) throw new Error(`quote: ${await quote.textContent()}`);
    const pid = await msgOn(alice, 'Which day is the release?').getAttribute('data-id');
    if ((await quote.getAttribute('data-reply-to')) !== pid) throw new Error('the quote names another message');
    await quote.click();
    await alice.locator(`[data-testid="message"][data-id="${pid}"].flash`).waitFor({ timeout: STEP_TIMEOUT });
  });
  await check('reactions: a reaction\'s count updates on the other page, toggled per person', async () => {
    const onBob = msgOn(bob, 'Which day is the release?');
    await onBob.hover();
    await onBob.locator('[data-testid="msg-react"]').click();
    await tid(bob, 'react-picker').waitFor({ timeout: STEP_TIMEOUT });
    await bob.locator('[data-testid="react-picker"] button[aria-label="thumbs up"]').click();
    const chip = (page) => msgOn(page, 'Which day is the release?').locator('[data-testid="reaction"][data-emoji="👍"]');
    const count = async (page, n) => page.waitForFunction(([t, want]) => {
      const li = [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]')]
        .filter((m) => m.querySelector('[data-testid="message-text"]')?.textContent === t).pop();
      const c = li?.querySelector('[data-testid="reaction"][data-emoji="👍"] [data-testid="reaction-count"]')?.textContent ?? '0';
      return c === String(want);
    }, ['Which day is the release?', n], { timeout: STEP_TIMEOUT });
    await count(alice, 1);
    if ((await chip(alice).getAttribute('aria-pressed')) !== 'false') throw new Error('alice did not react');
    if ((await chip(bob).getAttribute('aria-pressed')) !== 'true') throw new Error('bob\'s own reaction not marked');
    await chip(alice).click();
    await count(bob, 2);
    await chip(bob).click();
    await count(alice, 1);
    await chip(bob).click();
    await count(alice, 2);
  });
  await check('edit: only on one\'s own messages; the new text and "(edited)" show on both pages, quotes too', async () => {
    const onBob = msgOn(bob, 'Which day is the release?');
    await onBob.hover();
    if (await onBob.locator('[data-testid="msg-edit"]').count()) throw new Error('bob may edit alice\'s message');
    const mine = msgOn(alice, 'Which day is the release?');
    await mine.hover();
    await mine.locator('[data-testid="msg-edit"]').click();
    const box = tid(alice, 'edit-input');
    await box.waitFor({ timeout: STEP_TIMEOUT });
    await shotAll(alice, 'message-edit');
    await box.fill('Which day is the release? Friday or Monday?');
    await box.press('Enter');
    for (const page of [alice, bob]) {
      await msgOn(page, 'Friday or Monday?').locator('[data-testid="edited-mark"]').waitFor({ timeout: STEP_TIMEOUT });
    }
    await bob.waitForFunction(() => [...document.querySelectorAll('[data-testid="reply-quote"]')]
      .some((q) => q.textContent.includes('Friday or Monday?')), null, { timeout: STEP_TIMEOUT });
    const reactions = await msgOn(bob, 'Friday or Monday?').locator('[data-testid="reaction-count"]').allTextContents();
    if (reactions.join() !== '2') throw new Error(`reactions after the edit: ${reactions}`);
  });
  await check('delete: one\'s own message goes from both pages; the reply quoting it says so', async () => {
    await say(alice, 'oops, wrong room');
    await seesOnce(bob, 'oops, wrong room');
    const mine = msgOn(alice, 'oops, wrong room');
    await mine.hover();
    await mine.locator('[data-testid="msg-delete-own"]').click();
    for (const page of [alice, bob]) {
      await page.waitForFunction(() => ![...document.querySelectorAll('[data-testid="message-text"]')]
        .some((t) => t.textContent === 'oops, wrong room'), null, { timeout: STEP_TIMEOUT });
    }
  });
  await check('keyboard: the actions are reachable with Tab and the picker with arrows and Escape', async () => {
    const m = msgOn(bob, 'Friday or Monday?');
    await m.locator('[data-testid="msg-react"]').focus();
    const shown = await m.locator('.msg-actions').evaluate((e) => getComputedStyle(e).opacity);
    if (shown !== '1') throw new Error(`actions hidden while focused (opacity ${shown})`);
    await bob.keyboard.press('Enter');
    await tid(bob, 'react-picker').waitFor({ timeout: STEP_TIMEOUT });
    await bob.keyboard.press('ArrowRight');
    const name = await bob.evaluate(() => document.activeElement?.getAttribute('aria-label'));
    if (name !== 'red heart') throw new Error(`focus on ${name}`);
    await bob.keyboard.press('Escape');
    await tid(bob, 'react-picker').waitFor({ state: 'detached', timeout: STEP_TIMEOUT });
  });
  if (archive) {
    await check('replies: a quote of a message the page has not loaded opens the history around it', async () => {
      // #archive's message 2 is older than the 50 the live list holds.
      await alice.evaluate(async (u) => {
        const ws = new WebSocket(`${u}?nick=quoter`);
        await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
        const done = new Promise((res) => { ws.onmessage = (ev) => { if (JSON.parse(ev.data).ref === 'q') res(); }; });
        ws.send(JSON.stringify({ type: 'join', room: 'archive' }));
        ws.send(JSON.stringify({ type: 'message', room: 'archive', text: 'about that needle', reply_to: 2, ref: 'q' }));
        await done;
        ws.close();
      }, archive);
      await openRoom(bob, 'archive');
      const quote = msgOn(bob, 'about that needle').locator('[data-testid="reply-quote"]');
      await quote.waitFor({ timeout: STEP_TIMEOUT });
      if (!(await quote.textContent()).includes('needle is here')) throw new Error(`quote: ${await quote.textContent()}`);
      if (await bob.locator('[data-testid="message-list"] [data-testid="message"][data-id="2"]').count()) throw new Error('message 2 is loaded: the check proves nothing');
      await quote.click();
      await bob.locator('[data-testid="context-view"] [data-testid="context-message"].target[data-id="2"]').waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
      await tid(bob, 'context-close').click({ timeout: STEP_TIMEOUT });
      await openRoom(bob, 'team');
    });
  }
  // The toolbar open on a message with a reply below and reactions.
  await bob.evaluate(() => {
    const li = [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]')]
      .filter((m) => m.textContent.includes('Friday or Monday?')).pop();
    li?.classList.add('actions-open');
  });
  const onBob = msgOn(bob, 'Friday, I think');
  await onBob.hover();
  await onBob.locator('[data-testid="msg-reply"]').click();
  await shotAll(bob, 'message-actions');
  await tid(bob, 'reply-cancel').click();
}

// ------------------------------------------------------------------ scenario
async function scenario() {
  const port = process.env.PORT ? Number(process.env.PORT) : await freePort();
  const base = `${SCHEME}://127.0.0.1:${port}/`;
  log(`server: ${CMD ? CMD : BIN} --addr 127.0.0.1:${port}`);
  if (!CMD) {
    // The operator, made on the data directory before the server holds it.
    await check('wschat account add boss --op (password from stdin)', () => {
      const r = spawnSync(BIN, ['--data-dir', DATA, 'account', 'add', 'boss', '--op'], { input: OP_PASSWORD + '\n', encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`exit ${r.status}: ${r.stderr}`);
    });
  }
  server = startServer(port);
  await check('server answers GET /healthz with 200', () => waitHealthy(port));

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic',
      ...(TLS_ARGS.length ? ['--ignore-certificate-errors'] : [])],
  });
  const ctxOpts = { viewport: { width: 1280, height: 800 }, colorScheme: 'light', locale: 'en-GB', timezoneId: 'UTC' };
  const ctxA = await browser.newContext(ctxOpts);
  // Bob allows notifications; his pages record them and can be "hidden" (see pageHooks).
  const ctxB = await browser.newContext({ ...ctxOpts, permissions: ['notifications'] });
  await ctxB.addInitScript(pageHooks);
  const ctxC = await browser.newContext(ctxOpts);
  const alice = await ctxA.newPage();
  const bob = await ctxB.newPage();
  const carol = await ctxC.newPage();
  pages.alice = alice;
  pages.bob = bob;
  pages.carol = carol;
  const outside = [];
  for (const [who, page] of [['alice', alice], ['bob', bob], ['carol', carol]]) {
    page.on('pageerror', (e) => { log(`${who} page error: ${e.message}`); outside.push(`${who}: page error ${e.message}`); });
    page.on('console', (m) => { if (m.type() === 'error') log(`${who} console: ${m.text()}`); });
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.hostname !== '127.0.0.1' && u.protocol !== 'data:') outside.push(`${who}: ${r.url()}`);
    });
  }

  // The 101 answers as Chromium saw them (DevTools protocol), to check that
  // permessage-deflate (RFC 7692) was negotiated.
  const handshakes = [];
  const cdp = await ctxA.newCDPSession(alice);
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response));

  await check('alice picks a nickname and goes online', () => signIn(alice, base, 'alice'));
  await check('bob picks a nickname and goes online', () => signIn(bob, base, 'bob'));
  await check('carol picks a nickname and goes online', () => signIn(carol, base, 'carol'));
  await check('the default room #general is joined', async () => {
    await alice.locator('[data-testid="room-entry"][data-room="general"]').waitFor({ timeout: STEP_TIMEOUT });
    await memberPresent(alice, 'bob');
  });
  await check('Chromium negotiated permessage-deflate (the 101 headers)', async () => {
    const deadline = Date.now() + STEP_TIMEOUT;
    const ext = () => handshakes
      .filter((r) => r.status === 101)
      .map((r) => Object.entries(r.headers).find(([k]) => k.toLowerCase() === 'sec-websocket-extensions')?.[1] || '')
      .find((v) => /permessage-deflate/.test(v));
    while (!ext() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const v = ext();
    if (!v) throw new Error(`no permessage-deflate in ${JSON.stringify(handshakes.map((r) => r.headers))}`);
    if (!/server_no_context_takeover/.test(v) || !/client_no_context_takeover/.test(v)) throw new Error(`answer: ${v}`);
  });
  await check('alice joins #team', () => joinRoom(alice, 'team'));
  await check('bob joins #team', () => joinRoom(bob, 'team'));
  await check('alice sees bob in the member list (presence)', () => memberPresent(alice, 'bob'));
  await check('bob sees alice in the member list', () => memberPresent(bob, 'alice'));

  await check('alice → bob: bob sees the message once', async () => {
    await say(alice, 'Hi bob! Did you see the release notes?');
    await seesOnce(bob, 'Hi bob! Did you see the release notes?');
  });
  await check('alice sees her own message acknowledged', () => seesOnce(alice, 'Hi bob! Did you see the release notes?'));
  await check('bob → alice (send button): alice sees the message once', async () => {
    await say(bob, 'Yes — the reconnect logic looks solid. Details: https://example.org/notes', { button: true });
    await seesOnce(alice, 'Yes — the reconnect logic looks solid. Details: https://example.org/notes');
  });
  await check('a long message (compressed both ways) arrives once', async () => {
    const long = 'A longer message, long enough to be compressed by both ends of the connection: ' + 'la '.repeat(80) + 'end.';
    await say(alice, long);
    await seesOnce(bob, long);
  });
  await check('links are made clickable safely', async () => {
    const a = alice.locator('[data-testid="message-text"] a[href="https://example.org/notes"]');
    await a.waitFor({ timeout: STEP_TIMEOUT });
    const rel = await a.getAttribute('rel');
    if (!/noopener/.test(rel || '') || !/noreferrer/.test(rel || '')) throw new Error(`rel=${rel}`);
  });
  await check('markup in a message is shown as text, never parsed', async () => {
    const evil = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
    await say(bob, evil);
    await seesOnce(alice, evil);
    const pwned = await alice.evaluate(() => window.__pwned === 1 || !!document.querySelector('[data-testid="message-list"] img, [data-testid="message-list"] b'));
    if (pwned) throw new Error('HTML from a message was interpreted');
  });

  await check('typing indicator: bob sees "alice is typing" while alice types', async () => {
    await tid(alice, 'composer').click();
    await alice.keyboard.type('Let me check the', { delay: 40 });
    await bob.waitForFunction(() => /alice is typing/.test(document.querySelector('[data-testid="typing-indicator"]')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
  });
  await check('typing indicator clears when alice sends', async () => {
    await alice.keyboard.type(' numbers', { delay: 20 });
    await alice.keyboard.down('Shift'); await alice.keyboard.press('Enter'); await alice.keyboard.up('Shift');
    await alice.keyboard.type('(second line)');
    await alice.keyboard.press('Enter');
    await seesOnce(bob, 'Let me check the numbers\n(second line)');
    await bob.waitForFunction(() => !/typing/.test(document.querySelector('[data-testid="typing-indicator"]')?.textContent || ''), null, { timeout: STEP_TIMEOUT });
  });

  await check('private message: bob → alice shows in a DM conversation with an unread count', async () => {
    await bob.locator('[data-testid="member-list"] [data-testid="member"][data-nick="alice"]').click();
    await bob.locator('[data-testid="dm-entry"][data-nick="alice"][aria-current="page"]').waitFor({ timeout: STEP_TIMEOUT });
    await say(bob, 'psst, lunch at noon?');
    await seesOnce(bob, 'psst, lunch at noon?');
    await alice.locator('[data-testid="dm-entry"][data-nick="bob"] [data-testid="unread"]').waitFor({ timeout: STEP_TIMEOUT });
    await alice.locator('[data-testid="dm-entry"][data-nick="bob"]').click();
    await seesOnce(alice, 'psst, lunch at noon?');
    await say(alice, 'Sure, see you there');
    await seesOnce(bob, 'Sure, see you there');
    await alice.locator('[data-testid="room-entry"][data-room="team"]').click();
    await bob.locator('[data-testid="room-entry"][data-room="team"]').click();
  });
  await check('a message in another room counts as unread', async () => {
    await bob.locator('[data-testid="room-entry"][data-room="general"]').click();
    await say(bob, 'Anyone up for a review this afternoon?');
    await alice.locator('[data-testid="room-entry"][data-room="general"] [data-testid="unread"]').waitFor({ timeout: STEP_TIMEOUT });
    await bob.locator('[data-testid="room-entry"][data-room="team"]').click();
    await say(bob, 'I pushed the fix for the slow-consumer case, tests are green');
    await seesOnce(alice, 'I pushed the fix for the slow-consumer case, tests are green');
  });

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await check('screenshots before the restart', async () => {
    await alice.locator('[data-testid="composer"]').fill('');
    await shot(alice, 'desktop-light', { width: 1280, height: 800, scheme: 'light' });
    await shot(alice, 'desktop-dark', { width: 1280, height: 800, scheme: 'dark' });
    await shot(bob, 'phone-light', { width: 390, height: 780, scheme: 'light' });
    await shot(bob, 'phone-dark', { width: 390, height: 780, scheme: 'dark' });
    await bob.locator('[data-testid="menu-toggle"]').click();
    await shot(bob, 'phone-sidebar-dark', { width: 390, height: 780, scheme: 'dark' });
    await bob.keyboard.press('Escape');
    await bob.setViewportSize({ width: 1280, height: 800 });
    await bob.emulateMedia({ colorScheme: 'light' });
  });

  await check('server killed: both pages show the reconnecting state', async () => {
    // Carol stays offline across the restart, so that someone else can take her nick first.
    await ctxC.setOffline(true);
    await killServer('SIGKILL');
    await waitState(alice, 'reconnecting');
    await waitState(bob, 'reconnecting');
    const text = await tid(alice, 'connection-status').textContent();
    if (!/reconnecting/i.test(text)) throw new Error(`status text: ${text}`);
  });
  await shot(alice, 'desktop-reconnecting', { width: 1280, height: 800, scheme: 'light' });
  await check('server restarted on the same port', async () => {
    server = startServer(port);
    await waitHealthy(port);
  });
  let dave = null;
  await check('nick taken while away: the client says so and stops (no retry loop)', async () => {
    const ctxD = await browser.newContext(ctxOpts);
    dave = await ctxD.newPage();
    pages.dave = dave;
    dave.on('pageerror', (e) => outside.push(`dave: page error ${e.message}`));
    await signIn(dave, base, 'carol');
    await ctxC.setOffline(false);
    await waitState(carol, 'online', 25_000);
    await tid(carol, 'nick-input').waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
    const err = await carol.locator('#nick-error').textContent();
    if (!/“carol” is taken by someone else/.test(err) || !/guest-/.test(err)) throw new Error(`dialog says: ${err}`);
    if (await tid(carol, 'toast').count()) throw new Error(`a toast too: ${await tid(carol, 'toast').first().textContent()}`);
  });
  await shotAll(carol, 'nick-taken');
  await check('a 40-character nick is refused with the reason, not cut to 32', async () => {
    await tid(carol, 'nick-input').fill('c'.repeat(40));
    await tid(carol, 'nick-submit').click();
    const err = await carol.locator('#nick-error').textContent();
    if (!/at most 32 characters/.test(err) || !/has 40/.test(err)) throw new Error(`error: ${err}`);
    if ((await tid(carol, 'nick-input').inputValue()).length !== 40) throw new Error('the input was cut');
    await tid(carol, 'nick-input').fill('carol2');
    await tid(carol, 'nick-submit').click();
    await carol.waitForFunction(() => document.querySelector('[data-testid="my-nick"]')?.textContent === 'carol2', null, { timeout: STEP_TIMEOUT });
  });
  await check('both pages reconnect by themselves', async () => {
    await waitState(alice, 'online', 25_000);
    await waitState(bob, 'online', 25_000);
    await alice.locator('[data-testid="room-entry"][data-room="team"][aria-current="page"]').waitFor({ timeout: STEP_TIMEOUT });
    await memberPresent(alice, 'bob');
    await memberPresent(bob, 'alice');
  });
  await check('after reconnecting: alice → bob', async () => {
    await say(alice, 'Back online after the restart');
    await seesOnce(bob, 'Back online after the restart');
  });
  await check('after reconnecting: bob → alice', async () => {
    await say(bob, 'Same here, nothing lost');
    await seesOnce(alice, 'Same here, nothing lost');
  });
  await check('no message id shown twice in any list', async () => {
    for (const page of [alice, bob]) {
      const dup = await page.evaluate(() => {
        const ids = [...document.querySelectorAll('[data-testid="message"][data-id]')].map((m) => m.dataset.id);
        return ids.length - new Set(ids).size;
      });
      if (dup) throw new Error(`${dup} duplicate ids`);
    }
  });
  await shot(bob, 'desktop-after-restart', { width: 1280, height: 800, scheme: 'light' });
  if (!CMD) {
    await check('search finds a message from before the restart and shows it', async () => {
      await tid(bob, 'search-toggle').click();
      await tid(bob, 'search-input').fill('restart');
      await tid(bob, 'search-submit').click();
      const hit = tid(bob, 'search-result').filter({ hasText: 'Back online after the restart' });
      await hit.waitFor({ timeout: STEP_TIMEOUT });
      await hit.locator('button').click();
      await bob.locator('[data-testid="message"].flash').waitFor({ timeout: STEP_TIMEOUT });
    });
    await shot(bob, 'desktop-search', { width: 1280, height: 800, scheme: 'light' });
    await check('search → click → the history around an old hit, then back to the latest', async () => {
      // #archive gets 152 messages, the hit among the first, so the live list
      // (the newest 50) does not hold it. Posted from a page of its own over
      // 8 connections: each loopback connection has its own 20-message bucket.
      const url = `${SCHEME === 'https' ? 'wss' : 'ws'}://127.0.0.1:${port}/ws`;
      await alice.evaluate(async (u) => {
        for (let c = 0; c < 8; c++) {
          const ws = new WebSocket(`${u}?nick=seed${c}`);
          await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
          let acks = 0;
          const done = new Promise((res) => {
            ws.onmessage = (ev) => { const m = JSON.parse(ev.data); if (m.type === 'message' && m.ref && ++acks === 19) res(); };
          });
          ws.send(JSON.stringify({ type: 'join', room: 'archive' }));
          for (let i = 0; i < 19; i++) {
            const n = c * 19 + i + 1;
            const text = n === 2 ? 'the <b>haystack</b> needle is here' : `filler message ${n}`;
            ws.send(JSON.stringify({ type: 'message', room: 'archive', text, ref: `r${n}` }));
          }
          await done;
          ws.close();
        }
      }, url);
      await joinRoom(bob, 'archive');
      await tid(bob, 'search-toggle').click();
      await tid(bob, 'search-input').fill('needle');
      await tid(bob, 'search-submit').click();
      const hit = tid(bob, 'search-result').filter({ hasText: 'needle is here' });
      await hit.waitFor({ timeout: STEP_TIMEOUT });
      // The match is marked with <mark>, the message's own "<b>" stays text.
      const marked = await hit.locator('mark').allTextContents();
      if (marked.join() !== 'needle') throw new Error(`marked: ${marked}`);
      if (await hit.locator('b').count()) throw new Error('markup from the message was inserted');
      if (!(await hit.textContent()).includes('<b>haystack</b>')) throw new Error('the text is not shown as text');
      // With the messages before and after it.
      const ctx = await hit.locator('[data-testid="search-context"]').allTextContents();
      if (ctx.length !== 2 || !/filler message 1$/.test(ctx[0]) || !/filler message 3$/.test(ctx[1])) throw new Error(`context: ${ctx}`);
      const liveHas = await bob.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'needle is here' }).count();
      if (liveHas) throw new Error('the live list already holds the hit: the test proves nothing');
      await hit.locator('button').click();
      await tid(bob, 'context-bar').waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
      const target = bob.locator('[data-testid="context-view"] [data-testid="context-message"].target');
      await target.waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
      if (!(await target.textContent()).includes('needle is here')) throw new Error('wrong message targeted');
      await bob.locator('[data-testid="context-view"] [data-testid="context-message"]', { hasText: 'filler message 1' }).first().waitFor({ timeout: STEP_TIMEOUT });
      const shown = await bob.locator('[data-testid="context-view"] [data-testid="context-message"]').count();
      if (shown !== 50) throw new Error(`${shown} messages around the hit, expected a page of 50`);
      await shot(bob, 'desktop-search-context', { width: 1280, height: 800, scheme: 'light' });
      // Scrolling down pages forward (`after`) until the newest message.
      await bob.waitForFunction(() => {
        const v = document.querySelector('[data-testid="context-view"]');
        v.scrollTop = v.scrollHeight;
        return [...v.querySelectorAll('[data-testid="context-message"]')].some((li) => li.textContent.includes('filler message 152'));
      }, null, { timeout: STEP_TIMEOUT, polling: 250 });
      await tid(bob, 'context-live').waitFor({ timeout: STEP_TIMEOUT });
      const ids = await bob.$$eval('[data-testid="context-view"] [data-testid="context-message"]', (els) => els.map((e) => Number(e.dataset.id)));
      if (ids.length !== 152 || ids.some((id, i) => id !== i + 1)) throw new Error(`ids shown: ${ids.length}, not 1..152 in order`);
      await tid(bob, 'context-close').click({ timeout: STEP_TIMEOUT });
      await tid(bob, 'context-view').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT });
      await bob.locator('[data-testid="message-list"] [data-testid="message"]', { hasText: 'filler message 152' }).waitFor({ state: 'visible', timeout: STEP_TIMEOUT });
    });
  }
  await features({ base, alice, bob, carol, dave });
  await messageActions({ alice, bob, archive: CMD ? null : `${SCHEME === 'https' ? 'wss' : 'ws'}://127.0.0.1:${port}/ws` });
  if (!CMD) await accounts({ base, ctxOpts, outside });
  if (!CMD) await dmread({ base, ctxOpts, outside });
  await check('no request left the machine and no page error', () => {
    if (outside.length) throw new Error(outside.join('; '));
  });
}

// ------------------------------------------------------------------ main
fs.mkdirSync(ARTIFACTS, { recursive: true });
serverLog = fs.createWriteStream(path.join(ARTIFACTS, 'server.log'));
const cleanup = () => {
  try { server?.kill('SIGKILL'); } catch { /* gone */ }
  try { fs.rmSync(DATA, { recursive: true, force: true }); } catch { /* gone */ }
};
process.on('exit', cleanup);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => { cleanup(); process.exit(1); });

const hardTimeout = setTimeout(() => {
  log('FAIL the whole test took longer than 360 s');
  log(`${passed} passed, ${failed + 1} failed`);
  console.log(`browser: ${passed} passed, ${failed + 1} failed`);
  cleanup();
  process.exit(1);
}, process.env.KEEP_GOING ? 900_000 : 360_000);

let crashed = null;
try {
  await scenario();
} catch (e) {
  if (!(e instanceof StopTest)) { crashed = e; failed++; log(`FAIL unexpected error: ${e && e.stack || e}`); }
  for (const [who, page] of Object.entries(pages)) {
    try { await page.screenshot({ path: path.join(ARTIFACTS, `failure-${who}.png`) }); } catch { /* page gone */ }
  }
}
clearTimeout(hardTimeout);
try { await browser?.close(); } catch { /* already gone */ }
await killServer('SIGTERM');
serverLog.end();
if (failed || crashed) log(`artifacts (screenshots, server.log) in ${ARTIFACTS}`);
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
