// Measures what loading the web client costs in a real Chromium: a first
// load (empty cache) and a reload, each as requests, bytes received over
// the network (headers included) and TCP connections, from the DevTools
// protocol's Network events. The WebSocket the page opens is not counted.
//
//   node tests/browser/pageload.mjs        (after cargo build --release)
//
// Env: WSCHAT_BIN (default target/release/wschat), CHROMIUM (default
//      /usr/bin/chromium), WSCHAT_ARGS (extra server flags).
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = path.resolve(root, process.env.WSCHAT_BIN || 'target/release/wschat');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function startServer() {
  const port = await freePort();
  const extra = (process.env.WSCHAT_ARGS || '').split(' ').filter(Boolean);
  const child = spawn(BIN, ['--addr', `127.0.0.1:${port}`, ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout });
  await new Promise((resolve, reject) => {
    rl.once('line', resolve);
    child.once('exit', (c) => reject(new Error(`server exited ${c}`)));
  });
  return { child, url: `http://127.0.0.1:${port}/` };
}

/// Runs `load` and returns the network figures it caused.
async function measure(cdp, load) {
  const reqs = new Map();
  const onResp = (e) => {
    if (e.type === 'WebSocket') return;
    reqs.set(e.requestId, {
      url: e.response.url,
      status: e.response.status,
      conn: e.response.connectionId,
      cached: e.response.fromDiskCache || e.response.fromMemoryCache,
      enc: e.response.headers['content-encoding'] || e.response.headers['Content-Encoding'] || '',
      bytes: 0,
    });
  };
  const onDone = (e) => { const r = reqs.get(e.requestId); if (r) r.bytes = e.encodedDataLength; };
  const onCache = (e) => { reqs.set(e.requestId, { url: e.requestId, status: 'memory cache', conn: 0, cached: true, bytes: 0 }); };
  cdp.on('Network.responseReceived', onResp);
  cdp.on('Network.loadingFinished', onDone);
  cdp.on('Network.requestServedFromCache', onCache);
  await load();
  await new Promise((r) => setTimeout(r, 1000));
  cdp.off('Network.responseReceived', onResp);
  cdp.off('Network.loadingFinished', onDone);
  cdp.off('Network.requestServedFromCache', onCache);
  const list = [...reqs.values()];
  const network = list.filter((r) => !r.cached);
  return {
    requests: list.length,
    over_network: network.length,
    bytes: network.reduce((a, r) => a + r.bytes, 0),
    connections: new Set(network.map((r) => r.conn)).size,
    detail: list.map((r) => `${r.status} ${r.url.replace(/^http:\/\/[^/]+/, '')} ${r.enc} ${r.bytes} B conn ${r.conn}${r.cached ? ' (cache)' : ''}`),
  };
}

const { child, url } = await startServer();
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
try {
  const page = await (await browser.newContext()).newPage();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const first = await measure(cdp, () => page.goto(url, { waitUntil: 'load' }));
  const reload = await measure(cdp, () => page.reload({ waitUntil: 'load' }));
  for (const [name, m] of [['first load', first], ['reload', reload]]) {
    console.log(`${name}: ${m.requests} requests (${m.over_network} over the network), ${m.bytes} B received, ${m.connections} connections`);
    for (const d of m.detail) console.log(`  ${d}`);
  }
} finally {
  await browser.close();
  child.kill();
}
