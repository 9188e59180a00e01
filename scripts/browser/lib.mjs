// Shared by the browser end-to-end scenarios: configuration from the environment, Chromium
// launch, bounded waits, WebRTC stats probes, the per-scenario harness (pages, console errors,
// debug dumps) and the scenario registry. Entry point: e2e.mjs.

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

export const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
export const OUT_DIR = process.env.OUT_DIR || 'test-output';
export const ONLY = (process.env.E2E_SCENARIOS || '').split(',').map((s) => s.trim()).filter(Boolean);
export const EXTRA_QUERY = (process.env.E2E_QUERY || '').replace(/^[?&]+/, '');
export const HARD_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 240_000);
export const RESTART_URL = (process.env.RESTART_SIGNALING_URL || '').replace(/\/+$/, '');
export const TURN_URL = process.env.TURN_URL || '';
export const ALLOW_SKIP = process.env.E2E_ALLOW_SKIP === '1';
// A script that runs Chromium inside the test's network namespace (`exec ip netns exec NS
// /usr/bin/chromium "$@"`), and the test's endpoint that shapes that namespace's link
// (`POST /shape`, `POST /unshape`): the `constrained` scenario.
export const NETNS_CHROMIUM = process.env.E2E_NETNS_CHROMIUM || '';
export const SHAPE_URL = (process.env.SHAPE_URL || '').replace(/\/+$/, '');
// Debian's Firefox ESR, driven over WebDriver BiDi by npm `puppeteer-core` (no downloaded
// browser): the `firefox` scenario.
export const FIREFOX = process.env.E2E_FIREFOX || '';

export const BASE_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];
// Camera and microphone granted without a prompt (fake devices).
export const GRANT_ARGS = [...BASE_ARGS, '--use-fake-ui-for-media-stream'];
// Camera and microphone denied: no fake UI, and any permission prompt is refused.
export const DENY_ARGS = [...BASE_ARGS, '--deny-permission-prompts'];

export const T0 = Date.now();
export const elapsed = () => `${((Date.now() - T0) / 1000).toFixed(1)}s`;
export const log = (...args) => console.log(`[${elapsed()}]`, ...args);

// ------------------------------------------------------------------ helpers

/** Poll `fn` inside the page (via page.evaluate) until it returns a truthy value; return it. */
export async function waitFor(page, fn, timeoutMs, description, arg) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await page.evaluate(fn, arg);
      lastError = undefined;
      if (last) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? `last error: ${String(lastError.message || lastError).split('\n')[0]}`
        : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description} (${detail})`);
    }
    await sleep(Math.min(100, Math.max(10, deadline - Date.now())));
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Run `fn`, log it as a step with its duration; rethrow on failure. */
export async function step(description, fn) {
  const t = Date.now();
  try {
    const result = await fn();
    log(`  ok    ${description} (${Date.now() - t} ms)`);
    return result;
  } catch (err) {
    log(`  FAIL  ${description} (${Date.now() - t} ms)`);
    throw err;
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Thrown by t.skip(): the scenario is reported as skipped, not passed or failed. */
export class SkipScenario extends Error {}

export function randomRoom(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export function randomText(prefix) {
  return `${prefix} ${Math.random().toString(36).slice(2, 10)}`;
}

export function pageUrl(params) {
  const q = new URLSearchParams(params);
  return `${BASE_URL}/?${q}${EXTRA_QUERY ? `&${EXTRA_QUERY}` : ''}`;
}

// In-page: summed inbound-rtp counter of one kind from window.sfu.pc.getStats(), or 0 unless it
// exceeds `base` (so it can be polled by waitFor).
export async function inboundStatAbove([kind, field, base]) {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return 0;
  const report = await pc.getStats();
  let total = 0;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === kind && typeof s[field] === 'number') total += s[field];
  });
  return total > base ? total : 0;
}

// In-page: an inbound-rtp counter of the tracks received from ONE remote participant (found via
// its video[data-participant-id] element's stream), or -1 if there is none yet.
export async function remoteStat([pid, kind, field]) {
  const v = document.querySelector(`video[data-participant-id="${CSS.escape(pid)}"]`);
  const pc = window.sfu && window.sfu.pc;
  if (!v || !v.srcObject || !pc) return -1;
  const ids = new Set(v.srcObject.getTracks().filter((t) => t.kind === kind).map((t) => t.id));
  if (ids.size === 0) return -1;
  const report = await pc.getStats();
  let total = -1;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === kind && ids.has(s.trackIdentifier) && typeof s[field] === 'number') {
      total = Math.max(total, 0) + s[field];
    }
  });
  return total;
}

export async function remoteStatAbove([pid, kind, field, base]) {
  // eslint-disable-next-line no-undef
  const v = await window.__e2eRemoteStat([pid, kind, field]);
  return v > base ? v : 0;
}

/** Wait until an inbound-rtp counter is > 0, then until it rises above that first sample. */
export async function waitForRisingStat(page, kind, field, timeoutMs, who) {
  const first = await waitFor(page, inboundStatAbove, timeoutMs, `${who}: inbound-rtp ${kind} ${field} > 0`, [kind, field, 0]);
  const second = await waitFor(page, inboundStatAbove, timeoutMs,
    `${who}: inbound-rtp ${kind} ${field} rising above ${first}`, [kind, field, first]);
  return [first, second];
}

/** Like waitForRisingStat, for the media `me` receives from participant `other` only. */
export async function waitForRisingFrom(me, other, kind, field, timeoutMs, minRise = 1) {
  await installStatHelper(me);
  const first = await waitFor(me.page, remoteStatAbove, timeoutMs,
    `${me.name}: inbound-rtp ${kind} ${field} from ${other.name} > 0`, [other.id, kind, field, 0]);
  const second = await waitFor(me.page, remoteStatAbove, timeoutMs,
    `${me.name}: inbound-rtp ${kind} ${field} from ${other.name} rising above ${first + minRise - 1}`,
    [other.id, kind, field, first + minRise - 1]);
  return [first, second];
}

/**
 * Mean audio power (totalAudioEnergy / totalSamplesDuration) that `me` received from `other` over a
 * window of at least `seconds` of received audio, after skipping `skip` seconds.
 */
export async function audioPower(me, other, seconds, skip = 0) {
  await installStatHelper(me);
  const read = () => me.page.evaluate(async (pid) => ({
    // eslint-disable-next-line no-undef
    e: await window.__e2eRemoteStat([pid, 'audio', 'totalAudioEnergy']),
    // eslint-disable-next-line no-undef
    d: await window.__e2eRemoteStat([pid, 'audio', 'totalSamplesDuration']),
  }), other.id);
  const until = async (d0, secs, what) => {
    const deadline = Date.now() + secs * 1000 + 10_000;
    for (;;) {
      const x = await read();
      if (x.d >= d0 + secs) return x;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${secs} s of ${what} audio from ${other.name} on ${me.name}`);
      await sleep(100);
    }
  };
  let a = await read();
  if (skip > 0) a = await until(a.d, skip, 'skipped');
  const b = await until(a.d, seconds, 'measured');
  return (b.e - a.e) / (b.d - a.d);
}

// In-page: the selected candidate pair's local and remote candidates.
export async function selectedPair() {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return null;
  const c = (id) => {
    const x = byId.get(id);
    return x && { type: x.candidateType, protocol: x.protocol, relayProtocol: x.relayProtocol || null, tcpType: x.tcpType || null, address: x.address || x.ip, port: x.port };
  };
  return { state: pair.state, local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
}

export async function installStatHelper(p) {
  await p.page.evaluate(`window.__e2eRemoteStat = ${remoteStat.toString()}`);
}

export async function readRemoteStat(p, other, kind, field) {
  await installStatHelper(p);
  return p.page.evaluate(remoteStat, [other.id, kind, field]);
}

// ------------------------------------------------------------------ scenario harness

export const scenarios = [];

/**
 * Register a scenario. `fn(t)` gets a harness: t.join(room, name) → participant handle. With
 * `{ netns: true }` it needs a page in a network namespace and runs only when named in
 * E2E_SCENARIOS (the test harness runs it on its own, against a node on the veth's address).
 */
export function scenario(name, fn, { netns = false } = {}) {
  scenarios.push({ name, fn, netns });
}

// Launched on first use: 'grant', 'deny', and the same two inside the namespace ('netns-…').
export const browsers = {};

export async function launch(args, executablePath = '/usr/bin/chromium') {
  const full = [...args];
  const origin = new URL(BASE_URL).origin;
  const host = new URL(BASE_URL).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) {
    // getUserMedia needs a secure context; loopback is one, other http origins are not.
    full.push(`--unsafely-treat-insecure-origin-as-secure=${origin}`);
  }
  return chromium.launch({ executablePath, headless: true, args: full });
}

/** Headless Firefox with fake camera and microphone, allowed on an http origin. */
async function launchFirefox() {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.devices.insecure.enabled': true,
      'media.getusermedia.insecure.enabled': true,
    },
  });
}

export async function browserFor(kind) {
  if (kind === 'firefox') {
    if (!FIREFOX) throw new Error('a Firefox page needs E2E_FIREFOX');
    browsers.firefox ??= await launchFirefox();
    return browsers.firefox;
  }
  if (!browsers[kind]) {
    const netns = kind.startsWith('netns-');
    if (netns && !NETNS_CHROMIUM) throw new Error('a namespaced page needs E2E_NETNS_CHROMIUM');
    const args = kind.endsWith('deny') ? DENY_ARGS : GRANT_ARGS;
    // The namespaced scenarios' TURN server has a self-signed certificate (turns: on 443).
    const extra = netns ? ['--ignore-certificate-errors'] : [];
    browsers[kind] = await launch([...args, ...extra], netns ? NETNS_CHROMIUM : undefined);
  }
  return browsers[kind];
}

export function makeHarness(scenarioName) {
  const participants = [];
  const t = {
    participants,
    /** Skip the rest of this scenario (reported as `SKIP <name> (<reason>)`). */
    skip(reason) {
      throw new SkipScenario(reason);
    },
    /**
     * Open a new browser context + page. `params` are the URL query parameters (room, name, …);
     * `media: 'deny'` opens it in a browser where camera/microphone permission is refused.
     * Does not wait for anything but the load event.
     */
    async open(label, params, { media = 'grant', viewport = { width: 1280, height: 720 }, beforeGoto, netns = false, firefox = false } = {}) {
      const b = await browserFor(firefox ? 'firefox' : netns ? `netns-${media}` : media);
      let context;
      let page;
      if (firefox) {
        // puppeteer: a browser context per participant, like playwright's.
        context = await b.createBrowserContext();
        page = await context.newPage();
        await page.setViewport(viewport);
      } else {
        context = await b.newContext({ permissions: media === 'deny' ? [] : ['camera', 'microphone'], viewport });
        page = await context.newPage();
      }
      const p = { name: label, context, page, consoleErrors: [], closed: false };
      page.on('console', (msg) => {
        if (msg.type() === 'error') p.consoleErrors.push(msg.text());
      });
      page.on('pageerror', (err) => p.consoleErrors.push(`pageerror: ${err.message}`));
      participants.push(p);
      if (beforeGoto) await beforeGoto(p);
      await page.goto(pageUrl(params), { waitUntil: 'load', timeout: 15_000 });
      return p;
    },
    /** Open a page that joins `room` as `name` at once (the `/?room=R&name=N` auto-join). */
    async join(room, name, { query = {}, media = 'grant', label = name, viewport, netns, firefox } = {}) {
      const p = await t.open(label, { room, name, ...query }, { media, viewport, netns, firefox });
      p.room = room;
      p.displayName = name;
      return p;
    },
    async waitConnected(p, timeoutMs = 20_000) {
      await waitFor(p.page, () => {
        const s = document.querySelector('#status');
        return s && s.dataset.state === 'connected';
      }, timeoutMs, `${p.name}: #status[data-state=connected]`);
      p.id = await p.page.evaluate(() => window.sfu.participantId);
      assert(typeof p.id === 'string' && p.id.length > 0, `${p.name}: window.sfu.participantId is set`);
      return p.id;
    },
    async waitChatOpen(p, timeoutMs = 10_000) {
      await waitFor(p.page, () => !!(window.sfu.dc && window.sfu.dc.readyState === 'open'),
        timeoutMs, `${p.name}: chat DataChannel open`);
    },
    async screenshot(p, file, { fullPage = false } = {}) {
      await mkdir(OUT_DIR, { recursive: true });
      const full = path.join(OUT_DIR, file);
      await p.page.screenshot({ path: full, fullPage });
      log(`  saved ${full}`);
    },
    /** Close one participant's page + context now (frees its camera/CPU). */
    async close(p, { runBeforeUnload = false } = {}) {
      if (p.closed) return;
      p.closed = true;
      if (runBeforeUnload) {
        await p.page.close({ runBeforeUnload: true }).catch(() => {});
        // The context is closed with the scenario; the page handles pagehide and goes away.
      } else {
        await p.context.close().catch(() => {});
      }
    },
    async dumpDebug() {
      for (const p of participants) {
        if (p.closed) {
          console.log(`  debug ${p.name}: (closed) console errors: ${p.consoleErrors.length ? p.consoleErrors.join(' | ') : '(none)'}`);
          continue;
        }
        try {
          const info = await p.page.evaluate(() => {
            const pc = window.sfu && window.sfu.pc;
            const banner = document.querySelector('#banner');
            return {
              url: location.search,
              view: document.body.dataset.view,
              status: document.querySelector('#status')?.dataset.state,
              statusText: document.querySelector('#status')?.textContent.trim().replace(/\s+/g, ' '),
              banner: banner && !banner.hidden ? `${banner.dataset.state}: ${banner.textContent.trim()}` : null,
              participantId: window.sfu && window.sfu.participantId,
              pc: pc ? { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState, signalingState: pc.signalingState } : null,
              dc: window.sfu && window.sfu.dc ? window.sfu.dc.readyState : null,
              remoteTiles: Array.from(document.querySelectorAll('.tile[data-participant-id]')).map((tile) => ({
                id: tile.dataset.participantId,
                name: tile.querySelector('.tile-name')?.textContent,
                muted: tile.querySelector('[data-muted]')?.dataset.muted,
                noVideo: tile.classList.contains('no-video'),
              })),
              people: Array.from(document.querySelectorAll('#people-list > li')).map((li) => li.textContent.trim().replace(/\s+/g, ' ')),
              chat: Array.from(document.querySelectorAll('#chat-log > *')).map((m) => `${m.className}[${m.dataset.from || ''}]: ${m.textContent.trim().replace(/\s+/g, ' ').slice(0, 120)}`).slice(-10),
              dcLog: (window.sfu && window.sfu.dcLog || []).slice(-5),
            };
          });
          console.log(`  debug ${p.name}: ${JSON.stringify(info)}`);
          const pair = await p.page.evaluate(async () => {
            const pc = window.sfu && window.sfu.pc;
            if (!pc) return null;
            const byId = new Map();
            const report = await pc.getStats();
            report.forEach((s) => byId.set(s.id, s));
            const out = [];
            report.forEach((s) => {
              if (s.type !== 'candidate-pair' || s.state !== 'succeeded') return;
              const l = byId.get(s.localCandidateId) || {};
              const r = byId.get(s.remoteCandidateId) || {};
              out.push(`${s.nominated ? '*' : ''}${l.candidateType}/${l.protocol}->${r.candidateType}/${r.protocol} sent ${s.packetsSent ?? s.bytesSent} recv ${s.packetsReceived ?? s.bytesReceived}`);
            });
            return out;
          }).catch(() => null);
          console.log(`  debug ${p.name} candidate pairs (succeeded): ${JSON.stringify(pair)}`);
        } catch (err) {
          console.log(`  debug ${p.name}: could not read page state: ${err.message.split('\n')[0]}`);
        }
        console.log(`  debug ${p.name} console errors: ${p.consoleErrors.length ? '\n    ' + p.consoleErrors.join('\n    ') : '(none)'}`);
        try {
          await mkdir(OUT_DIR, { recursive: true });
          const file = path.join(OUT_DIR, `${scenarioName}-failure-${p.name}.png`.replace(/[^A-Za-z0-9_./-]/g, '_'));
          await p.page.screenshot({ path: file, timeout: 5_000 });
          console.log(`  debug ${p.name} screenshot: ${file}`);
        } catch { /* page may be gone */ }
      }
    },
    async closeAll() {
      await Promise.allSettled(participants.map((p) => p.context.close()));
    },
  };
  return t;
}

/** Assert no console errors on these pages (optionally ignoring some patterns). */
export function assertNoConsoleErrors(pages, ignore = []) {
  for (const p of pages) {
    const errors = p.consoleErrors.filter((e) => !ignore.some((re) => re.test(e)));
    assert(errors.length === 0, `${p.name} has no console errors (got ${JSON.stringify(errors)})`);
  }
}

/** Each page shows exactly one remote video per other participant, and nothing else. */
export async function waitRemoteVideos(me, others, timeoutMs = 15_000) {
  await waitFor(me.page, (ids) => {
    const got = Array.from(document.querySelectorAll('video[data-participant-id]')).map((v) => v.dataset.participantId).sort();
    return got.length === ids.length && got.every((id, i) => id === ids[i]);
  }, timeoutMs, `${me.name}: exactly the remote videos of ${others.map((o) => o.name).join(', ')}`,
  others.map((o) => o.id).sort());
}

/** In-page: the data-muted value of participant `pid`'s tile ('' … 'audio video'), or null. */
export function tileMuted(pid) {
  const tile = document.querySelector(`.tile[data-participant-id="${CSS.escape(pid)}"]`);
  const m = tile && tile.querySelector('[data-muted]');
  return m ? m.getAttribute('data-muted') : null;
}

export function mutedSet(value) {
  return new Set(String(value || '').split(/\s+/).filter(Boolean));
}

// ------------------------------------------------------------------ scenarios
