#!/usr/bin/env node
// Headless-Chromium end-to-end test of the web page against a running signaling + dataplane.
//
//   BASE_URL=http://127.0.0.1:18080 OUT_DIR=test-output node e2e.mjs
//
// Environment:
//   BASE_URL        where the signaling server serves the page (required in practice;
//                   default http://127.0.0.1:18080)
//   OUT_DIR         directory for screenshots (default test-output)
//   E2E_SCENARIOS   optional comma-separated list of scenario names to run (default: all)
//   E2E_QUERY       optional extra query string appended to page URLs, e.g. iceTransportPolicy=relay
//   E2E_TIMEOUT_MS  overall hard timeout (default 150000)
//   RESTART_SIGNALING_URL
//                   base URL of a control endpoint that can kill and restart the signaling server
//                   behind BASE_URL: `POST /kill` (SIGKILL; answers once it is dead) and
//                   `POST /start` (same port; answers once /healthz is 200). Needed by the
//                   `reconnect` scenario, which is skipped without it.
//
// Scenarios (in order): two-party, reconnect.
//
// Drives Debian's /usr/bin/chromium through playwright-core with the flags from
// /work/shared/TESTING.md ("Headless Chromium with WebRTC"). Exit code 0: all scenarios passed;
// 1: a scenario failed; 2: setup error or hard timeout.

import { chromium } from 'playwright-core';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
const OUT_DIR = process.env.OUT_DIR || 'test-output';
const ONLY = (process.env.E2E_SCENARIOS || '').split(',').map((s) => s.trim()).filter(Boolean);
const EXTRA_QUERY = (process.env.E2E_QUERY || '').replace(/^[?&]+/, '');
const HARD_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 150_000);
const RESTART_URL = (process.env.RESTART_SIGNALING_URL || '').replace(/\/+$/, '');

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];

const T0 = Date.now();
const elapsed = () => `${((Date.now() - T0) / 1000).toFixed(1)}s`;
const log = (...args) => console.log(`[${elapsed()}]`, ...args);

// ------------------------------------------------------------------ helpers

/** Poll `fn` inside the page (via page.evaluate) until it returns a truthy value; return it. */
async function waitFor(page, fn, timeoutMs, description, arg) {
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
    await sleep(Math.min(150, Math.max(10, deadline - Date.now())));
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Run `fn`, log it as a step with its duration; rethrow on failure. */
async function step(description, fn) {
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

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Thrown by t.skip(): the scenario is reported as skipped, not passed or failed. */
class SkipScenario extends Error {}

function randomRoom(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

function pageUrl(room, name) {
  const q = new URLSearchParams({ room, name });
  return `${BASE_URL}/?${q}${EXTRA_QUERY ? `&${EXTRA_QUERY}` : ''}`;
}

// In-page: summed inbound-rtp counter of one kind from window.sfu.pc.getStats(), or 0 unless it
// exceeds `base` (so it can be polled by waitFor).
async function inboundStatAbove([kind, field, base]) {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return 0;
  const report = await pc.getStats();
  let total = 0;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === kind && typeof s[field] === 'number') total += s[field];
  });
  return total > base ? total : 0;
}

/** Wait until an inbound-rtp counter is > 0, then until it rises above that first sample. */
async function waitForRisingStat(page, kind, field, timeoutMs, who) {
  const first = await waitFor(page, inboundStatAbove, timeoutMs, `${who}: inbound-rtp ${kind} ${field} > 0`, [kind, field, 0]);
  const second = await waitFor(page, inboundStatAbove, timeoutMs,
    `${who}: inbound-rtp ${kind} ${field} rising above ${first}`, [kind, field, first]);
  return [first, second];
}

// ------------------------------------------------------------------ scenario harness

const scenarios = [];

/** Register a scenario. `fn(t)` gets a harness: t.join(room, name) → participant handle. */
function scenario(name, fn) {
  scenarios.push({ name, fn });
}

let browser = null;

async function launchBrowser() {
  const args = [...CHROMIUM_ARGS];
  const origin = new URL(BASE_URL).origin;
  const host = new URL(BASE_URL).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) {
    // getUserMedia needs a secure context; loopback is one, other http origins are not.
    args.push(`--unsafely-treat-insecure-origin-as-secure=${origin}`);
  }
  return chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
}

function makeHarness(scenarioName) {
  const participants = [];
  const t = {
    participants,
    /** Skip the rest of this scenario (reported as `SKIP <name> (<reason>)`). */
    skip(reason) {
      throw new SkipScenario(reason);
    },
    /** Open a new browser context + page for `name` in `room`; does not wait for anything. */
    async join(room, name, { query = '' } = {}) {
      const context = await browser.newContext({ permissions: ['camera', 'microphone'], viewport: { width: 1280, height: 720 } });
      const page = await context.newPage();
      const p = { name, room, context, page, consoleErrors: [] };
      page.on('console', (msg) => {
        if (msg.type() === 'error') p.consoleErrors.push(msg.text());
      });
      page.on('pageerror', (err) => p.consoleErrors.push(`pageerror: ${err.message}`));
      participants.push(p);
      const url = pageUrl(room, name) + (query ? `&${query}` : '');
      await page.goto(url, { waitUntil: 'load', timeout: 15_000 });
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
    async screenshot(p, file) {
      await mkdir(OUT_DIR, { recursive: true });
      const full = path.join(OUT_DIR, file);
      await p.page.screenshot({ path: full });
      log(`  saved ${full}`);
    },
    async dumpDebug() {
      for (const p of participants) {
        try {
          const info = await p.page.evaluate(() => {
            const pc = window.sfu && window.sfu.pc;
            const banner = document.querySelector('#banner');
            return {
              status: document.querySelector('#status')?.dataset.state,
              statusText: document.querySelector('#status')?.textContent.trim().replace(/\s+/g, ' '),
              banner: banner && !banner.hidden ? `${banner.dataset.state}: ${banner.textContent.trim()}` : null,
              participantId: window.sfu && window.sfu.participantId,
              pc: pc ? { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState, signalingState: pc.signalingState } : null,
              dc: window.sfu && window.sfu.dc ? window.sfu.dc.readyState : null,
              remoteVideos: Array.from(document.querySelectorAll('video[data-participant-id]')).map((v) => v.dataset.participantId),
              chat: Array.from(document.querySelectorAll('#chat-log > *')).map((m) => `${m.className}[${m.dataset.from || ''}]: ${m.textContent.trim().replace(/\s+/g, ' ')}`).slice(-10),
            };
          });
          console.log(`  debug ${p.name}: ${JSON.stringify(info)}`);
        } catch (err) {
          console.log(`  debug ${p.name}: could not read page state: ${err.message.split('\n')[0]}`);
        }
        console.log(`  debug ${p.name} console errors: ${p.consoleErrors.length ? '\n    ' + p.consoleErrors.join('\n    ') : '(none)'}`);
        try {
          await mkdir(OUT_DIR, { recursive: true });
          const file = path.join(OUT_DIR, `${scenarioName}-failure-${p.name}.png`.replace(/[^A-Za-z0-9_.-]/g, '_'));
          await p.page.screenshot({ path: file, timeout: 5_000 });
          console.log(`  debug ${p.name} screenshot: ${file}`);
        } catch { /* page may be gone */ }
      }
    },
    async close() {
      await Promise.allSettled(participants.map((p) => p.context.close()));
    },
  };
  return t;
}

// ------------------------------------------------------------------ scenarios

scenario('two-party', async (t) => {
  const room = randomRoom('e2e');
  log(`  room ${room}`);

  const alice = await step('alice opens the page', () => t.join(room, 'alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const bob = await step('bob opens the page', () => t.join(room, 'bob'));
  await step('bob connected', () => t.waitConnected(bob));
  assert(alice.id !== bob.id, 'participant ids differ');

  for (const [me, other] of [[alice, bob], [bob, alice]]) {
    await step(`${me.name} shows exactly one remote video, for ${other.name}`, () => waitFor(
      me.page,
      (otherId) => {
        const vids = document.querySelectorAll('video[data-participant-id]');
        return vids.length === 1 && vids[0].dataset.participantId === otherId;
      },
      15_000,
      `${me.name}: exactly one video[data-participant-id="${other.id}"]`,
      other.id,
    ));
  }

  await Promise.all([alice, bob].map((p) => step(`${p.name} decodes remote video frames (rising)`, async () => {
    const [a, b] = await waitForRisingStat(p.page, 'video', 'framesDecoded', 20_000, p.name);
    log(`        ${p.name} framesDecoded ${a} -> ${b}`);
  })));
  await Promise.all([alice, bob].map((p) => step(`${p.name} receives remote audio packets (rising)`, async () => {
    const [a, b] = await waitForRisingStat(p.page, 'audio', 'packetsReceived', 15_000, p.name);
    log(`        ${p.name} audio packetsReceived ${a} -> ${b}`);
  })));

  await step('remote tiles show the other name', async () => {
    for (const [me, other] of [[alice, bob], [bob, alice]]) {
      const label = await me.page.evaluate((id) => {
        const v = document.querySelector(`video[data-participant-id="${id}"]`);
        const tile = v && v.closest('.tile');
        return tile ? tile.textContent.trim() : null;
      }, other.id);
      assert(label && label.includes(other.name), `${me.name}'s tile for ${other.name} is labelled (got ${JSON.stringify(label)})`);
    }
  });

  await Promise.all([t.waitChatOpen(alice), t.waitChatOpen(bob)]);

  const aliceText = `hello from alice ${Math.random().toString(36).slice(2, 8)}`;
  const bobText = `hi alice, bob here <b>${Math.random().toString(36).slice(2, 8)}</b>`;
  const hasMessage = ([from, text]) => Array.from(document.querySelectorAll('.chat-message'))
    .some((m) => m.dataset.from === from && m.dataset.private === 'false'
      && (m.querySelector('.chat-text')?.textContent ?? m.textContent).includes(text));

  await step('alice sends a chat to everyone (click)', async () => {
    await alice.page.fill('#chat-input', aliceText);
    await alice.page.click('#chat-send', { timeout: 10_000 });
  });
  await step('bob sees alice\'s message', () => waitFor(bob.page, hasMessage, 10_000,
    `bob: .chat-message[data-from="${alice.id}"] with "${aliceText}"`, [alice.id, aliceText]));
  await step('alice sees her own message', () => waitFor(alice.page, hasMessage, 5_000,
    `alice: own .chat-message[data-from="${alice.id}"]`, [alice.id, aliceText]));

  await step('bob sends a chat to everyone (Enter)', async () => {
    await bob.page.fill('#chat-input', bobText);
    await bob.page.press('#chat-input', 'Enter');
  });
  await step('alice sees bob\'s message (as text, not HTML)', async () => {
    await waitFor(alice.page, hasMessage, 10_000,
      `alice: .chat-message[data-from="${bob.id}"] with "${bobText}"`, [bob.id, bobText]);
    const injected = await alice.page.evaluate(() => document.querySelectorAll('#chat-log b').length);
    assert(injected === 0, 'chat text is not interpreted as HTML');
  });
  await step('input cleared after sending', async () => {
    const [a, b] = await Promise.all([alice, bob].map((p) => p.page.inputValue('#chat-input')));
    assert(a === '' && b === '', `chat inputs cleared (alice=${JSON.stringify(a)}, bob=${JSON.stringify(b)})`);
  });

  await step('no console errors', async () => {
    for (const p of [alice, bob]) {
      assert(p.consoleErrors.length === 0, `${p.name} has no console errors (got ${JSON.stringify(p.consoleErrors)})`);
    }
  });

  await t.screenshot(alice, 'two-party.png');
});

// Signaling is killed (SIGKILL) and restarted under a running call: media keeps flowing during the
// outage (it never passes through signaling), both pages show `reconnecting`, then resume their
// sessions on the restarted server with the SAME RTCPeerConnection, and signaling works again.
scenario('reconnect', async (t) => {
  if (!RESTART_URL) t.skip('RESTART_SIGNALING_URL not set');

  let killed = false;
  const control = async (what) => {
    const res = await fetch(`${RESTART_URL}/${what}`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
    const body = (await res.text()).trim();
    assert(res.ok, `POST ${RESTART_URL}/${what} answered ${res.status} ${body}`);
    return body;
  };
  const statusIs = (want) => {
    const s = document.querySelector('#status');
    return !!s && s.dataset.state === want;
  };
  // Summed inbound-rtp video framesDecoded of a page (0 without a peer connection).
  const framesDecoded = (p) => p.page.evaluate(inboundStatAbove, ['video', 'framesDecoded', -1]);

  try {
    const room = randomRoom('e2e-reconnect');
    log(`  room ${room}`);
    const alice = await step('alice opens the page', () => t.join(room, 'alice'));
    await step('alice connected', () => t.waitConnected(alice));
    const bob = await step('bob opens the page', () => t.join(room, 'bob'));
    await step('bob connected', () => t.waitConnected(bob));
    const pairs = [[alice, bob], [bob, alice]];

    for (const [me, other] of pairs) {
      await step(`${me.name} shows the remote video of ${other.name}`, () => waitFor(me.page,
        (otherId) => !!document.querySelector(`video[data-participant-id="${otherId}"]`),
        15_000, `${me.name}: video[data-participant-id="${other.id}"]`, other.id));
    }
    await Promise.all([alice, bob].map((p) => step(`${p.name} decodes remote video frames (rising)`, async () => {
      const [a, b] = await waitForRisingStat(p.page, 'video', 'framesDecoded', 20_000, p.name);
      log(`        ${p.name} framesDecoded ${a} -> ${b}`);
    })));
    await Promise.all([t.waitChatOpen(alice), t.waitChatOpen(bob)]);

    const marker = `pc-${Math.random().toString(36).slice(2, 10)}`;
    await step('mark the peer connections and WebSockets', async () => {
      for (const p of [alice, bob]) {
        await p.page.evaluate((m) => {
          window.sfu.pc.__e2eMarker = m;
          window.sfu.ws.__e2eMarker = m;
        }, marker);
      }
    });

    const before = {};
    for (const p of [alice, bob]) before[p.name] = await framesDecoded(p);
    log(`        framesDecoded before the outage: alice ${before.alice}, bob ${before.bob}`);

    await step('kill signaling (POST /kill)', async () => {
      killed = true;
      await control('kill');
    });
    await Promise.all([alice, bob].map((p) => step(`${p.name} shows #status[data-state=reconnecting] and the banner`, async () => {
      await waitFor(p.page, statusIs, 5_000, `${p.name}: #status[data-state=reconnecting]`, 'reconnecting');
      const banner = await p.page.evaluate(() => {
        const b = document.querySelector('#banner');
        return { hidden: b.hidden, state: b.dataset.state, text: b.textContent.trim() };
      });
      assert(!banner.hidden && banner.state === 'warning' && /reconnecting/i.test(banner.text),
        `${p.name}: warning banner about reconnecting (got ${JSON.stringify(banner)})`);
    })));

    await sleep(1_000);
    await step('remote video kept decoding during the outage', async () => {
      for (const p of [alice, bob]) {
        const frames = await framesDecoded(p);
        const stillDown = await p.page.evaluate(statusIs, 'reconnecting');
        log(`        ${p.name} framesDecoded ${before[p.name]} -> ${frames} while signaling is down`);
        assert(stillDown, `${p.name} is still reconnecting (signaling is down)`);
        assert(frames > before[p.name], `${p.name}: framesDecoded rose during the outage (${before[p.name]} -> ${frames})`);
      }
    });

    const restarted = Date.now();
    await step('restart signaling (POST /start)', async () => {
      await control('start');
      killed = false;
    });
    await Promise.all([alice, bob].map((p) => step(`${p.name} back to #status[data-state=connected]`, async () => {
      await waitFor(p.page, statusIs, 15_000, `${p.name}: #status[data-state=connected]`, 'connected');
      log(`        ${p.name} connected ${Date.now() - restarted} ms after the restart was requested`);
    })));
    await step('same RTCPeerConnection and participant, new WebSocket, banner hidden', async () => {
      for (const p of [alice, bob]) {
        const info = await p.page.evaluate(() => {
          const b = document.querySelector('#banner');
          return {
            pcMarker: window.sfu.pc && window.sfu.pc.__e2eMarker,
            pcState: window.sfu.pc && window.sfu.pc.connectionState,
            wsMarker: window.sfu.ws && window.sfu.ws.__e2eMarker,
            wsOpen: !!window.sfu.ws && window.sfu.ws.readyState === WebSocket.OPEN,
            participantId: window.sfu.participantId,
            resumes: window.sfu.resumes,
            rejoins: window.sfu.rejoins,
            banner: b.hidden ? null : b.textContent.trim(),
          };
        });
        assert(info.pcMarker === marker, `${p.name}: window.sfu.pc is the same object (marker ${JSON.stringify(info.pcMarker)})`);
        assert(info.pcState === 'connected', `${p.name}: peer connection connected (got ${info.pcState})`);
        assert(info.wsOpen && info.wsMarker === undefined, `${p.name}: window.sfu.ws is a new, open WebSocket`);
        assert(info.participantId === p.id, `${p.name}: same participant id (${p.id} vs ${info.participantId})`);
        assert(info.resumes === 1 && info.rejoins === 0, `${p.name}: resumed once, no rejoin (resumes=${info.resumes}, rejoins=${info.rejoins})`);
        assert(info.banner === null, `${p.name}: banner hidden after the resume (got ${JSON.stringify(info.banner)})`);
      }
    });
    for (const [me, other] of pairs) {
      await step(`${me.name} still lists ${other.name} and shows their video`, () => waitFor(me.page,
        (otherId) => !!document.querySelector(`#people-list [data-participant-ref="${otherId}"]`)
          && document.querySelectorAll('video[data-participant-id]').length === 1
          && !!document.querySelector(`video[data-participant-id="${otherId}"]`),
        5_000, `${me.name}: ${other.name} in #people-list and as the only remote video`, other.id));
    }
    await Promise.all([alice, bob].map((p) => step(`${p.name} keeps decoding after the resume`, async () => {
      const now = await framesDecoded(p);
      const later = await waitFor(p.page, inboundStatAbove, 10_000,
        `${p.name}: framesDecoded rising above ${now}`, ['video', 'framesDecoded', now]);
      log(`        ${p.name} framesDecoded ${now} -> ${later}`);
    })));

    const text = `after the restart ${Math.random().toString(36).slice(2, 8)}`;
    await step('alice sends a chat after the resume', async () => {
      await alice.page.fill('#chat-input', text);
      await alice.page.click('#chat-send', { timeout: 10_000 });
    });
    await step('bob receives it', () => waitFor(bob.page, ([from, want]) => Array.from(document.querySelectorAll('.chat-message'))
      .some((m) => m.dataset.from === from && (m.querySelector('.chat-text')?.textContent ?? '').includes(want)),
    10_000, `bob: .chat-message[data-from="${alice.id}"] with "${text}"`, [alice.id, text]));

    await t.screenshot(alice, 'reconnected.png');

    // Signaling events flow through the resumed session: bob leaves, alice is told.
    await step('bob leaves; alice gets participant_left through the new signaling connection', async () => {
      await bob.page.click('#leave', { timeout: 5_000 });
      await waitFor(alice.page, (bobId) => !document.querySelector(`video[data-participant-id="${bobId}"]`)
        && !document.querySelector(`#people-list [data-participant-ref="${bobId}"]`), 10_000,
      `alice: bob's tile and list entry removed`, bob.id);
    });

    await step('no console errors (other than failed WebSocket attempts during the outage)', async () => {
      for (const p of [alice, bob]) {
        const errors = p.consoleErrors.filter((e) => !/WebSocket connection to .* failed/.test(e));
        assert(errors.length === 0, `${p.name} has no console errors (got ${JSON.stringify(errors)})`);
      }
    });
  } finally {
    if (killed) {
      // Leave signaling running for whatever runs next.
      await control('start').catch((err) => log(`  could not restart signaling: ${err.message}`));
    }
  }
});

// ------------------------------------------------------------------ runner

async function main() {
  const selected = ONLY.length ? scenarios.filter((s) => ONLY.includes(s.name)) : scenarios;
  if (selected.length === 0) {
    console.log(`FAIL no scenario matches E2E_SCENARIOS=${ONLY.join(',')} (known: ${scenarios.map((s) => s.name).join(', ')})`);
    return 2;
  }
  log(`BASE_URL=${BASE_URL} OUT_DIR=${OUT_DIR}`);
  browser = await launchBrowser();
  log(`chromium ${browser.version()} launched`);
  let failed = 0;
  let skipped = 0;
  for (const s of selected) {
    const t = makeHarness(s.name);
    const start = Date.now();
    log(`RUN   ${s.name}`);
    try {
      await s.fn(t);
      log(`PASS  ${s.name} (${Date.now() - start} ms)`);
    } catch (err) {
      if (err instanceof SkipScenario) {
        skipped += 1;
        log(`SKIP ${s.name} (${err.message})`);
        continue;
      }
      failed += 1;
      log(`FAIL  ${s.name} (${Date.now() - start} ms): ${err && err.message ? err.message : err}`);
      await t.dumpDebug();
    } finally {
      await t.close();
    }
  }
  const skipNote = skipped ? `, ${skipped} skipped` : '';
  if (failed) log(`FAIL ${failed} of ${selected.length} scenario(s) failed${skipNote}`);
  else if (skipped) log(`PASS ${selected.length - skipped} scenario(s) passed${skipNote}`);
  else log(`PASS all ${selected.length} scenario(s)`);
  return failed ? 1 : 0;
}

async function closeBrowser() {
  const b = browser;
  browser = null;
  if (!b) return;
  await Promise.race([b.close().catch(() => {}), sleep(5_000)]);
}

const hardTimer = setTimeout(async () => {
  log(`FAIL hard timeout: the run exceeded ${HARD_TIMEOUT_MS} ms`);
  await closeBrowser();
  process.exit(2);
}, HARD_TIMEOUT_MS);

let code = 2;
try {
  code = await main();
} catch (err) {
  log(`FAIL setup error: ${err && err.stack ? err.stack : err}`);
  code = 2;
} finally {
  await closeBrowser();
  clearTimeout(hardTimer);
}
process.exit(code);
