#!/usr/bin/env node
// Headless-Chromium end-to-end test of the web page against a running signaling + dataplane.
//
//   BASE_URL=http://127.0.0.1:18080 OUT_DIR=test-output node e2e.mjs
//
// Environment:
//   BASE_URL        where the signaling server serves the page (default http://127.0.0.1:18080)
//   OUT_DIR         directory for screenshots (default test-output)
//   E2E_SCENARIOS   optional comma-separated list of scenario names to run (default: all)
//   E2E_QUERY       optional extra query string appended to page URLs, e.g. iceTransportPolicy=relay
//   E2E_TIMEOUT_MS  overall hard timeout (default 240000)
//   RESTART_SIGNALING_URL
//                   base URL of a control endpoint that can kill and restart the signaling server
//                   behind BASE_URL: `POST /kill` (SIGKILL; answers once it is dead) and
//                   `POST /start` (same port; answers once /healthz is 200). Needed by the
//                   `reconnect` scenario, which is skipped without it.
//   TURN_URL        non-empty when the signaling server hands out TURN credentials for a running
//                   TURN server; the `turn` scenario is skipped without it.
//
// Scenarios (in order): prejoin, three-party, chat, mute, leave, receive-only, errors, turn,
// reconnect. See each scenario's comment for what it proves.
//
// Drives Debian's /usr/bin/chromium through playwright-core with the flags from
// /work/shared/TESTING.md ("Headless Chromium with WebRTC"). Every wait is a bounded poll.
// Exit code 0: all selected scenarios passed (or were skipped); 1: a scenario failed; 2: setup
// error or hard timeout. On failure each page's state, console errors and a screenshot are dumped.

import { chromium } from 'playwright-core';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
const OUT_DIR = process.env.OUT_DIR || 'test-output';
const ONLY = (process.env.E2E_SCENARIOS || '').split(',').map((s) => s.trim()).filter(Boolean);
const EXTRA_QUERY = (process.env.E2E_QUERY || '').replace(/^[?&]+/, '');
const HARD_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 240_000);
const RESTART_URL = (process.env.RESTART_SIGNALING_URL || '').replace(/\/+$/, '');
const TURN_URL = process.env.TURN_URL || '';

const BASE_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];
// Camera and microphone granted without a prompt (fake devices).
const GRANT_ARGS = [...BASE_ARGS, '--use-fake-ui-for-media-stream'];
// Camera and microphone denied: no fake UI, and any permission prompt is refused.
const DENY_ARGS = [...BASE_ARGS, '--deny-permission-prompts'];

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
    await sleep(Math.min(100, Math.max(10, deadline - Date.now())));
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

function randomText(prefix) {
  return `${prefix} ${Math.random().toString(36).slice(2, 10)}`;
}

function pageUrl(params) {
  const q = new URLSearchParams(params);
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

// In-page: an inbound-rtp counter of the tracks received from ONE remote participant (found via
// its video[data-participant-id] element's stream), or -1 if there is none yet.
async function remoteStat([pid, kind, field]) {
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

async function remoteStatAbove([pid, kind, field, base]) {
  // eslint-disable-next-line no-undef
  const v = await window.__e2eRemoteStat([pid, kind, field]);
  return v > base ? v : 0;
}

/** Wait until an inbound-rtp counter is > 0, then until it rises above that first sample. */
async function waitForRisingStat(page, kind, field, timeoutMs, who) {
  const first = await waitFor(page, inboundStatAbove, timeoutMs, `${who}: inbound-rtp ${kind} ${field} > 0`, [kind, field, 0]);
  const second = await waitFor(page, inboundStatAbove, timeoutMs,
    `${who}: inbound-rtp ${kind} ${field} rising above ${first}`, [kind, field, first]);
  return [first, second];
}

/** Like waitForRisingStat, for the media `me` receives from participant `other` only. */
async function waitForRisingFrom(me, other, kind, field, timeoutMs, minRise = 1) {
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
async function audioPower(me, other, seconds, skip = 0) {
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

async function installStatHelper(p) {
  await p.page.evaluate(`window.__e2eRemoteStat = ${remoteStat.toString()}`);
}

async function readRemoteStat(p, other, kind, field) {
  await installStatHelper(p);
  return p.page.evaluate(remoteStat, [other.id, kind, field]);
}

// ------------------------------------------------------------------ scenario harness

const scenarios = [];

/** Register a scenario. `fn(t)` gets a harness: t.join(room, name) → participant handle. */
function scenario(name, fn) {
  scenarios.push({ name, fn });
}

const browsers = { grant: null, deny: null };

async function launch(args) {
  const full = [...args];
  const origin = new URL(BASE_URL).origin;
  const host = new URL(BASE_URL).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) {
    // getUserMedia needs a secure context; loopback is one, other http origins are not.
    full.push(`--unsafely-treat-insecure-origin-as-secure=${origin}`);
  }
  return chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: full });
}

async function browserFor(kind) {
  if (!browsers[kind]) browsers[kind] = await launch(kind === 'deny' ? DENY_ARGS : GRANT_ARGS);
  return browsers[kind];
}

function makeHarness(scenarioName) {
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
    async open(label, params, { media = 'grant', viewport = { width: 1280, height: 720 }, beforeGoto } = {}) {
      const b = await browserFor(media);
      const context = await b.newContext({ permissions: media === 'deny' ? [] : ['camera', 'microphone'], viewport });
      const page = await context.newPage();
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
    async join(room, name, { query = {}, media = 'grant', label = name, viewport } = {}) {
      const p = await t.open(label, { room, name, ...query }, { media, viewport });
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
function assertNoConsoleErrors(pages, ignore = []) {
  for (const p of pages) {
    const errors = p.consoleErrors.filter((e) => !ignore.some((re) => re.test(e)));
    assert(errors.length === 0, `${p.name} has no console errors (got ${JSON.stringify(errors)})`);
  }
}

/** Each page shows exactly one remote video per other participant, and nothing else. */
async function waitRemoteVideos(me, others, timeoutMs = 15_000) {
  await waitFor(me.page, (ids) => {
    const got = Array.from(document.querySelectorAll('video[data-participant-id]')).map((v) => v.dataset.participantId).sort();
    return got.length === ids.length && got.every((id, i) => id === ids[i]);
  }, timeoutMs, `${me.name}: exactly the remote videos of ${others.map((o) => o.name).join(', ')}`,
  others.map((o) => o.id).sort());
}

/** In-page: the data-muted value of participant `pid`'s tile ('' … 'audio video'), or null. */
function tileMuted(pid) {
  const tile = document.querySelector(`.tile[data-participant-id="${CSS.escape(pid)}"]`);
  const m = tile && tile.querySelector('[data-muted]');
  return m ? m.getAttribute('data-muted') : null;
}

function mutedSet(value) {
  return new Set(String(value || '').split(/\s+/).filter(Boolean));
}

// ------------------------------------------------------------------ scenarios

// The pre-join screen: live preview, device selects, name validation (incl. an over-long name),
// keyboard order, joining with the camera turned off (announced to others as video muted).
scenario('prejoin', async (t) => {
  const room = randomRoom('e2e-prejoin');
  log(`  room ${room}`);
  const dana = await step('open /?room=… (no name): the pre-join screen', () => t.open('dana', { room }));

  await step('pre-join screen shown, Join disabled, name field focused, room prefilled', async () => {
    const info = await dana.page.evaluate(() => ({
      joinVisible: !document.querySelector('#join-view').hidden,
      callHidden: document.querySelector('#call-view').hidden,
      joinDisabled: document.querySelector('#join-button').disabled,
      focused: document.activeElement && document.activeElement.id,
      room: document.querySelector('#join-room').value,
    }));
    assert(info.joinVisible && info.callHidden, `join view visible, call view hidden (${JSON.stringify(info)})`);
    assert(info.joinDisabled, 'Join is disabled without a name');
    assert(info.focused === 'join-name', `the name field has focus (got ${info.focused})`);
    assert(info.room === room, `room prefilled from the URL (got ${info.room})`);
  });

  await step('live camera preview plays', () => waitFor(dana.page, () => {
    const v = document.querySelector('#preview-video');
    return !!v && v.videoWidth > 0 && v.readyState >= 2 && !v.paused && v.srcObject && v.srcObject.getVideoTracks().length === 1;
  }, 10_000, 'dana: #preview-video playing a camera track'));

  const devices = await step('camera and microphone selects list the devices', async () => {
    const d = await waitFor(dana.page, () => {
      const cams = Array.from(document.querySelectorAll('#camera-select option')).filter((o) => o.value);
      const mics = Array.from(document.querySelectorAll('#mic-select option')).filter((o) => o.value);
      if (!cams.length || !mics.length || document.querySelector('#mic-select').disabled) return null;
      return { cams: cams.map((o) => [o.value, o.textContent]), mics: mics.map((o) => [o.value, o.textContent]) };
    }, 10_000, 'dana: #camera-select and #mic-select filled');
    log(`        cameras: ${d.cams.map((c) => c[1]).join(', ')}; microphones: ${d.mics.map((m) => m[1]).join(', ')}`);
    return d;
  });

  if (devices.mics.length > 1) {
    const [wantId, wantLabel] = devices.mics[devices.mics.length - 1];
    await step(`choosing another microphone (${wantLabel}) switches the preview's audio track`, async () => {
      await dana.page.selectOption('#mic-select', wantId);
      await waitFor(dana.page, (id) => {
        const v = document.querySelector('#preview-video');
        const tr = v && v.srcObject && v.srcObject.getAudioTracks()[0];
        return !!tr && tr.readyState === 'live' && tr.getSettings().deviceId === id && !document.querySelector('#mic-select').disabled;
      }, 10_000, `dana: preview audio track from device ${wantLabel}`, wantId);
    });
  }

  const longName = 'x'.repeat(65);
  await step('an over-long name (65 characters) is explained and cannot be submitted', async () => {
    await dana.page.fill('#join-name', longName);
    const info = await dana.page.evaluate(() => ({
      disabled: document.querySelector('#join-button').disabled,
      hint: document.querySelector('#join-name-hint').textContent,
      hintError: document.querySelector('#join-name-hint').classList.contains('is-error'),
      invalid: document.querySelector('#join-name').getAttribute('aria-invalid'),
    }));
    assert(info.disabled, 'Join disabled for a 65-character name');
    assert(info.hintError && /too long/i.test(info.hint) && /64/.test(info.hint), `clear message about the length (got ${JSON.stringify(info.hint)})`);
    assert(info.invalid === 'true', 'name field marked aria-invalid');
  });

  await step('a valid name enables Join', async () => {
    await dana.page.fill('#join-name', 'Dana');
    await waitFor(dana.page, () => !document.querySelector('#join-button').disabled, 2_000, 'dana: Join enabled');
  });

  await step('Tab order: name → room → camera → microphone → mic toggle → camera toggle → Join', async () => {
    await dana.page.focus('#join-name');
    const order = [await dana.page.evaluate(() => document.activeElement.id)];
    for (let i = 0; i < 6; i += 1) {
      await dana.page.keyboard.press('Tab');
      order.push(await dana.page.evaluate(() => document.activeElement.id));
    }
    const want = ['join-name', 'join-room', 'camera-select', 'mic-select', 'prejoin-audio', 'prejoin-video', 'join-button'];
    assert(JSON.stringify(order) === JSON.stringify(want), `tab order ${JSON.stringify(order)} (want ${JSON.stringify(want)})`);
  });

  await step('turn the camera off before joining (keyboard)', async () => {
    await dana.page.focus('#prejoin-video');
    await dana.page.keyboard.press('Space');
    await waitFor(dana.page, () => document.querySelector('#prejoin-video').getAttribute('aria-checked') === 'false'
      && document.querySelector('#preview-tile').classList.contains('no-video'), 2_000, 'dana: camera toggle pressed, preview shows the placeholder');
  });

  const erin = await step('erin joins the room directly', () => t.join(room, 'erin'));
  await step('erin connected', () => t.waitConnected(erin));

  await step('press Enter on Join: dana joins', async () => {
    await dana.page.focus('#join-button');
    await dana.page.keyboard.press('Enter');
    await t.waitConnected(dana);
    const url = await dana.page.evaluate(() => location.search);
    const q = new URLSearchParams(url);
    assert(q.get('room') === room && q.get('name') === 'Dana', `URL carries room and name for a reload (got ${url})`);
  });

  await step('dana\'s own tile and the camera button show the camera off; the track is disabled, not removed', async () => {
    const info = await dana.page.evaluate(() => ({
      muted: document.querySelector('#local-tile [data-muted]').getAttribute('data-muted'),
      pressed: document.querySelector('#mute-video').dataset.off,
      placeholder: document.querySelector('#local-tile').classList.contains('no-video'),
      tracks: window.sfu.localStream.getTracks().map((tr) => `${tr.kind}:${tr.enabled}:${tr.readyState}`),
    }));
    assert(mutedSet(info.muted).has('video') && !mutedSet(info.muted).has('audio'), `own data-muted is "video" (got ${JSON.stringify(info.muted)})`);
    assert(info.pressed === 'true' && info.placeholder, `camera button pressed, placeholder shown (${JSON.stringify(info)})`);
    assert(info.tracks.includes('video:false:live') && info.tracks.includes('audio:true:live'), `tracks ${info.tracks}`);
  });

  await step('erin sees dana with the camera off (state sent once the channel opened) and her name', async () => {
    await waitFor(erin.page, ([pid]) => {
      const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
      const m = tile && tile.querySelector('[data-muted]');
      return !!m && m.getAttribute('data-muted') === 'video' && tile.classList.contains('no-video')
        && tile.querySelector('.tile-name').textContent === 'Dana' && tile.querySelector('.avatar').textContent === 'D';
    }, 10_000, 'erin: dana\'s tile data-muted="video" with the avatar placeholder', [dana.id]);
  });

  await step('erin decodes dana\'s audio (microphone on)', async () => {
    const [a, b] = await waitForRisingFrom(erin, dana, 'audio', 'packetsReceived', 15_000);
    log(`        erin audio packetsReceived from dana ${a} -> ${b}`);
  });

  await t.close(erin);
  await t.close(dana);

  const fay = await step('open /?room=…&name=<65 characters>: no auto-join, the problem is explained', () => t.open('fay', { room, name: 'y'.repeat(65) }, { media: 'deny' }));
  await step('the join form shows the name problem, Join disabled', async () => {
    const info = await fay.page.evaluate(() => ({
      joinVisible: !document.querySelector('#join-view').hidden,
      error: document.querySelector('#join-error').hidden ? '' : document.querySelector('#join-error').textContent,
      disabled: document.querySelector('#join-button').disabled,
      ws: !!window.sfu.ws,
    }));
    assert(info.joinVisible && !info.ws, `join form shown, no connection opened (${JSON.stringify(info)})`);
    assert(/too long/i.test(info.error) && info.disabled, `error explains the name length (${JSON.stringify(info)})`);
  });
  assertNoConsoleErrors([dana, erin, fay]);
});

// Three participants: everyone decodes both others' video and receives both others' audio; tiles
// are labelled; the participant list and speaking indicators work. Saves three-party.png.
scenario('three-party', async (t) => {
  const room = randomRoom('e2e-three');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const [bob, carol] = await step('bob and carol open the page', () => Promise.all([t.join(room, 'Bob'), t.join(room, 'Carol')]));
  await step('bob and carol connected', () => Promise.all([t.waitConnected(bob), t.waitConnected(carol)]));
  const all = [alice, bob, carol];
  assert(new Set(all.map((p) => p.id)).size === 3, 'participant ids differ');

  for (const me of all) {
    const others = all.filter((o) => o !== me);
    await step(`${me.name} shows exactly one remote video for each of ${others.map((o) => o.name).join(' and ')}`,
      () => waitRemoteVideos(me, others));
  }

  await Promise.all(all.map((me) => step(`${me.name} decodes both others' video and receives both others' audio (rising)`, async () => {
    for (const other of all.filter((o) => o !== me)) {
      const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 20_000);
      const [c, d] = await waitForRisingFrom(me, other, 'audio', 'packetsReceived', 15_000);
      log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}, audio packetsReceived ${c} -> ${d}`);
    }
  })));

  await step('tiles carry names; own tile and the participant list are complete', async () => {
    for (const me of all) {
      const info = await me.page.evaluate(() => ({
        tiles: Object.fromEntries(Array.from(document.querySelectorAll('.tile[data-participant-id]'))
          .map((tile) => [tile.dataset.participantId, tile.querySelector('.tile-name').textContent])),
        localName: document.querySelector('#local-tile .tile-name').textContent,
        localVideoId: document.querySelector('#local-video').hasAttribute('data-participant-id'),
        localPlaying: (() => { const v = document.querySelector('#local-video'); return v.videoWidth > 0 && !v.paused; })(),
        people: Array.from(document.querySelectorAll('#people-list [data-participant-ref]')).map((li) => li.dataset.participantRef).sort(),
        peopleCount: document.querySelector('#people-count').textContent,
        gridCount: document.querySelector('#video-grid').dataset.count,
      }));
      for (const other of all.filter((o) => o !== me)) {
        assert(info.tiles[other.id] === other.displayName, `${me.name}: tile of ${other.name} labelled (got ${JSON.stringify(info.tiles)})`);
      }
      assert(info.localName === `${me.displayName} (you)` && !info.localVideoId && info.localPlaying,
        `${me.name}: own tile labelled and playing, #local-video without data-participant-id (${JSON.stringify(info)})`);
      assert(JSON.stringify(info.people) === JSON.stringify(all.filter((o) => o !== me).map((o) => o.id).sort()),
        `${me.name}: participant list (got ${info.people})`);
      assert(info.peopleCount === '3' && info.gridCount === '3', `${me.name}: 3 people, 3 tiles (${info.peopleCount}, ${info.gridCount})`);
    }
  });

  await step('speaking indicators light up from received audio levels (remote and own)', async () => {
    for (const me of all) {
      await waitFor(me.page, () => document.querySelectorAll('.tile[data-participant-id][data-speaking="true"]').length > 0,
        10_000, `${me.name}: a remote tile with data-speaking="true"`);
    }
    await waitFor(alice.page, () => document.querySelector('#local-tile').dataset.speaking === 'true',
      10_000, 'alice: own tile data-speaking="true"');
  });

  await step('a few chat lines for the picture', async () => {
    await Promise.all(all.map((p) => t.waitChatOpen(p)));
    await alice.page.fill('#chat-input', 'Hi both! Can you hear me?');
    await alice.page.press('#chat-input', 'Enter');
    await waitFor(bob.page, () => document.querySelectorAll('.chat-message').length >= 1, 5_000, 'bob: alice\'s message');
    await bob.page.fill('#chat-input', 'Loud and clear, Alice.');
    await bob.page.press('#chat-input', 'Enter');
    await waitFor(alice.page, () => document.querySelectorAll('.chat-message').length >= 2, 5_000, 'alice: bob\'s reply');
  });

  await step('carol mutes her microphone: alice and bob show it on her tile and in the list', async () => {
    await carol.page.click('#mute-audio');
    for (const me of [alice, bob]) {
      await waitFor(me.page, (pid) => document.querySelector(`.tile[data-participant-id="${pid}"] [data-muted]`)?.getAttribute('data-muted') === 'audio'
        && document.querySelector(`#people-list [data-participant-ref="${pid}"] [data-muted]`)?.getAttribute('data-muted') === 'audio',
      2_000, `${me.name}: carol data-muted="audio"`, carol.id);
    }
  });

  await step('layout: tiles do not overlap and fit the grid', async () => {
    const boxes = await alice.page.evaluate(() => {
      const grid = document.querySelector('#video-grid').getBoundingClientRect();
      const tiles = Array.from(document.querySelectorAll('#video-grid > .tile')).map((e) => e.getBoundingClientRect());
      return { grid: [grid.left, grid.top, grid.right, grid.bottom], tiles: tiles.map((r) => [r.left, r.top, r.right, r.bottom]) };
    });
    const [gl, gt, gr, gb] = boxes.grid;
    for (const [i, a] of boxes.tiles.entries()) {
      assert(a[0] >= gl - 1 && a[1] >= gt - 1 && a[2] <= gr + 1 && a[3] <= gb + 1, `tile ${i} inside the grid (${a} vs ${boxes.grid})`);
      assert(a[2] - a[0] > 200, `tile ${i} is reasonably large (${a[2] - a[0]} px)`);
      for (const b of boxes.tiles.slice(i + 1)) {
        const overlap = a[0] < b[2] - 1 && b[0] < a[2] - 1 && a[1] < b[3] - 1 && b[1] < a[3] - 1;
        assert(!overlap, `tiles do not overlap (${a} / ${b})`);
      }
    }
  });

  await step('accessibility basics: every control labelled, live regions, keyboard order controls → chat, visible focus', async () => {
    const info = await alice.page.evaluate(() => {
      const visible = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
      const unlabelled = Array.from(document.querySelectorAll('button, input, select'))
        .filter(visible)
        .filter((e) => !(e.getAttribute('aria-label') || (e.labels && e.labels.length) || e.textContent.trim()))
        .map((e) => e.id || e.outerHTML.slice(0, 60));
      const clickableDivs = Array.from(document.querySelectorAll('[onclick], div[role=button], span[role=button]')).length;
      return {
        unlabelled,
        clickableDivs,
        chatLive: document.querySelector('#chat-log').getAttribute('aria-live'),
        bannerLive: document.querySelector('#banner').getAttribute('aria-live') || document.querySelector('#banner').getAttribute('role'),
        statusLive: document.querySelector('#status').getAttribute('aria-live'),
      };
    });
    assert(info.unlabelled.length === 0, `all visible controls have a label (unlabelled: ${info.unlabelled})`);
    assert(info.clickableDivs === 0, 'no div/span buttons');
    assert(info.chatLive === 'polite' && info.bannerLive && info.statusLive, `live regions (${JSON.stringify(info)})`);
    await alice.page.focus('#mute-audio');
    const order = [];
    const outlines = [];
    for (let i = 0; i < 8; i += 1) {
      const f = await alice.page.evaluate(() => {
        const e = document.activeElement;
        const cs = getComputedStyle(e);
        return { id: e.id, outline: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0 };
      });
      order.push(f.id);
      if (i > 0) outlines.push(f.outline);
      await alice.page.keyboard.press('Tab');
    }
    const want = ['mute-audio', 'mute-video', 'people-toggle', 'chat-toggle', 'leave', 'panel-close', 'chat-to', 'chat-input'];
    assert(JSON.stringify(order) === JSON.stringify(want), `in-call tab order ${JSON.stringify(order)} (want ${JSON.stringify(want)})`);
    assert(outlines.every(Boolean), `keyboard focus is visible (outline) on every control (${outlines})`);
    await alice.page.keyboard.press('Shift+Tab'); // leave the focus ring off the screenshot's input
    await alice.page.evaluate(() => document.activeElement.blur());
  });

  await step('no console errors', async () => assertNoConsoleErrors(all));
  await t.screenshot(alice, 'three-party.png', { fullPage: true });
});

// Chat: broadcast, whisper (private on both ends; the third participant's page AND DataChannel
// never see it), unread badge, over-long message, XSS-shaped names and messages. Saves
// chat-whisper.png.
scenario('chat', async (t) => {
  const room = randomRoom('e2e-chat');
  log(`  room ${room}`);
  const xssName = '<img src=x onerror=window.__xss=1>';
  const xssText = '<script>window.__xss=1</script><b>bold</b>';
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const [bob, carol] = await step('bob and the XSS-named carol open the page', () => Promise.all([
    t.join(room, 'Bob'), t.join(room, xssName, { label: 'carol' })]));
  await step('bob and carol connected', () => Promise.all([t.waitConnected(bob), t.waitConnected(carol)]));
  const all = [alice, bob, carol];
  await Promise.all(all.map((p) => t.waitChatOpen(p)));
  await step('everyone lists the two others', () => Promise.all(all.map((me) => waitFor(me.page, (ids) => ids.every((id) => !!document.querySelector(`#people-list [data-participant-ref="${id}"]`)),
    10_000, `${me.name}: people list`, all.filter((o) => o !== me).map((o) => o.id)))));

  const hasMessage = ([from, text, priv]) => Array.from(document.querySelectorAll('.chat-message'))
    .some((m) => m.dataset.from === from && m.dataset.private === priv
      && m.querySelector('.chat-text')?.textContent === text);

  const hello = randomText('hello everyone from alice');
  await step('alice sends a broadcast (click Send)', async () => {
    await alice.page.fill('#chat-input', hello);
    await alice.page.click('#chat-send', { timeout: 10_000 });
  });
  await Promise.all([bob, carol].map((p) => step(`${p.name} receives it (not private), with sender and time`, async () => {
    await waitFor(p.page, hasMessage, 10_000, `${p.name}: .chat-message[data-from=alice][data-private=false]`, [alice.id, hello, 'false']);
    const meta = await p.page.evaluate(([from, text]) => {
      const m = Array.from(document.querySelectorAll('.chat-message')).find((x) => x.dataset.from === from && x.querySelector('.chat-text').textContent === text);
      return { name: m.querySelector('.chat-name').textContent, time: m.querySelector('time').textContent, dt: m.querySelector('time').dateTime };
    }, [alice.id, hello]);
    assert(meta.name === 'Alice' && /\d/.test(meta.time) && meta.dt, `${p.name}: sender and time shown (${JSON.stringify(meta)})`);
  })));
  await step('alice sees her own message; the input was cleared', async () => {
    await waitFor(alice.page, hasMessage, 5_000, 'alice: own message', [alice.id, hello, 'false']);
    assert(await alice.page.inputValue('#chat-input') === '', 'input cleared');
  });

  await step('unread badge: bob closes the chat panel, gets a message, badge shows 1; opening clears it', async () => {
    await bob.page.click('#chat-toggle');
    await waitFor(bob.page, () => document.querySelector('#side-panel').hidden && document.querySelector('#chat-unread').hidden,
      2_000, 'bob: panel closed, #chat-unread hidden');
    const ping = randomText('ping while closed');
    await carol.page.fill('#chat-input', ping);
    await carol.page.press('#chat-input', 'Enter');
    await waitFor(bob.page, () => {
      const b = document.querySelector('#chat-unread');
      return !b.hidden && b.textContent.trim() === '1' && /1 unread/.test(document.querySelector('#chat-toggle').getAttribute('aria-label'));
    }, 10_000, 'bob: #chat-unread visible with 1');
    await bob.page.click('#chat-toggle');
    await waitFor(bob.page, (args) => !document.querySelector('#side-panel').hidden && document.querySelector('#chat-unread').hidden
      && Array.from(document.querySelectorAll('.chat-message .chat-text')).some((m) => m.textContent === args), 2_000,
    'bob: panel open, badge hidden, message visible', ping);
  });

  const secret = randomText('whisper secret for bob only');
  await step('alice whispers to bob (select bob in #chat-to, Enter)', async () => {
    await alice.page.selectOption('#chat-to', bob.id);
    const note = await alice.page.evaluate(() => ({
      note: !document.querySelector('#chat-private-note').hidden,
      placeholder: document.querySelector('#chat-input').placeholder,
    }));
    assert(note.note && /private/i.test(note.placeholder) && note.placeholder.includes('Bob'), `composer marked private (${JSON.stringify(note)})`);
    await alice.page.fill('#chat-input', secret);
    await alice.page.press('#chat-input', 'Enter');
  });
  await step('bob sees the whisper marked private', async () => {
    await waitFor(bob.page, hasMessage, 10_000, 'bob: .chat-message[data-private=true] from alice', [alice.id, secret, 'true']);
    const tag = await bob.page.evaluate((text) => {
      const m = Array.from(document.querySelectorAll('.chat-message')).find((x) => x.querySelector('.chat-text').textContent === text);
      return m.querySelector('.chat-private-tag')?.textContent;
    }, secret);
    assert(/private/i.test(tag || ''), `bob: private tag shown (${tag})`);
  });
  await step('alice sees the echo marked private, addressed to bob', async () => {
    await waitFor(alice.page, hasMessage, 10_000, 'alice: echo .chat-message[data-private=true]', [alice.id, secret, 'true']);
    const tag = await alice.page.evaluate((text) => {
      const m = Array.from(document.querySelectorAll('.chat-message')).find((x) => x.querySelector('.chat-text').textContent === text);
      return m.querySelector('.chat-private-tag')?.textContent;
    }, secret);
    assert(/private/i.test(tag || '') && tag.includes('Bob'), `alice: "private to Bob" tag (${tag})`);
  });

  const after = randomText('broadcast after the whisper');
  await step('alice switches back to everyone and broadcasts; carol receives that', async () => {
    await alice.page.selectOption('#chat-to', '');
    await alice.page.fill('#chat-input', after);
    await alice.page.press('#chat-input', 'Enter');
    await waitFor(carol.page, hasMessage, 10_000, 'carol: the later broadcast', [alice.id, after, 'false']);
  });
  await step('carol\'s page never showed the whisper and her DataChannel never received it', async () => {
    const info = await carol.page.evaluate((text) => ({
      page: document.body.textContent.includes(text),
      raw: (window.sfu.dcLog || []).filter((m) => m.includes(text)).length,
      rawTotal: (window.sfu.dcLog || []).length,
      rawHasAfter: (window.sfu.dcLog || []).some((m) => m.includes('broadcast after the whisper')),
    }), secret);
    assert(info.rawTotal > 0 && info.rawHasAfter, `carol's raw DataChannel log is recording (${JSON.stringify(info)})`);
    assert(!info.page, 'whisper text not on carol\'s page');
    assert(info.raw === 0, `no raw DataChannel message with the whisper reached carol (${info.raw})`);
  });

  await step('carol (XSS-shaped name) sends an XSS-shaped message; everyone renders both as text', async () => {
    await carol.page.fill('#chat-input', xssText);
    await carol.page.press('#chat-input', 'Enter');
    for (const p of [alice, bob]) {
      await waitFor(p.page, hasMessage, 10_000, `${p.name}: carol's message as text`, [carol.id, xssText, 'false']);
    }
    await waitFor(carol.page, hasMessage, 5_000, 'carol: own message as text', [carol.id, xssText, 'false']);
    for (const p of all) {
      const info = await p.page.evaluate(([name, cid]) => ({
        xss: typeof window.__xss,
        imgs: document.querySelectorAll('img').length,
        bolds: document.querySelectorAll('#chat-log b, .tile b, #people-list b').length,
        scripts: document.querySelectorAll('body script').length,
        tileName: cid ? document.querySelector(`.tile[data-participant-id="${cid}"] .tile-name`)?.textContent : null,
        person: cid ? document.querySelector(`#people-list [data-participant-ref="${cid}"] .person-name`)?.textContent : null,
        option: cid ? document.querySelector(`#chat-to option[value="${cid}"]`)?.textContent : null,
        sender: cid ? Array.from(document.querySelectorAll('.chat-message')).find((m) => m.dataset.from === cid)?.querySelector('.chat-name').textContent : null,
        localName: document.querySelector('#local-tile .tile-name').textContent,
      }), [xssName, p === carol ? null : carol.id]);
      assert(info.xss === 'undefined', `${p.name}: window.__xss undefined (got ${info.xss})`);
      assert(info.imgs === 0 && info.bolds === 0 && info.scripts === 0, `${p.name}: no <img>/<b>/<script> created (${JSON.stringify(info)})`);
      if (p === carol) {
        assert(info.localName === `${xssName} (you)`, `carol: own name as text (${info.localName})`);
      } else {
        assert(info.tileName === xssName && info.person === xssName && info.sender === xssName && info.option.includes(xssName),
          `${p.name}: carol's name rendered as text everywhere (${JSON.stringify(info)})`);
      }
    }
  });

  await step('an over-long message (5000 bytes) is explained and not sent', async () => {
    const long = 'é'.repeat(2500); // 5000 UTF-8 bytes, 2500 characters
    await alice.page.fill('#chat-input', long);
    const info = await alice.page.evaluate(() => ({
      count: document.querySelector('#chat-count').hidden ? '' : document.querySelector('#chat-count').textContent,
      over: document.querySelector('#chat-count').classList.contains('over'),
      disabled: document.querySelector('#chat-send').disabled,
    }));
    assert(info.over && /too long/i.test(info.count) && info.count.includes('5000') && info.disabled,
      `counter says too long and Send is disabled (${JSON.stringify(info)})`);
    await alice.page.press('#chat-input', 'Enter');
    await waitFor(alice.page, () => Array.from(document.querySelectorAll('.chat-error')).some((e) => /too long/i.test(e.textContent)),
      2_000, 'alice: .chat-error about the length');
    assert((await alice.page.inputValue('#chat-input')) === long, 'the text stays in the input to be shortened');
    const sync = randomText('sync');
    await alice.page.fill('#chat-input', sync);
    await alice.page.press('#chat-input', 'Enter');
    await waitFor(bob.page, hasMessage, 10_000, 'bob: the next message', [alice.id, sync, 'false']);
    const leaked = await bob.page.evaluate(() => (window.sfu.dcLog || []).some((m) => m.length > 4000));
    assert(!leaked, 'bob never received the over-long message');
  });

  await step('no console errors', async () => assertNoConsoleErrors(all));
  await t.screenshot(bob, 'chat-whisper.png', { fullPage: true });
});

// Mute: A's microphone/camera mute is shown on B's tile for A within 2 s; unmuting restores media
// (B's framesDecoded for A rises again, audio packets and energy keep rising). A late joiner gets
// the current mute state.
scenario('mute', async (t) => {
  const room = randomRoom('e2e-mute');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const bob = await step('bob opens the page', () => t.join(room, 'Bob'));
  await step('bob connected', () => t.waitConnected(bob));
  await Promise.all([t.waitChatOpen(alice), t.waitChatOpen(bob)]);
  await step('bob decodes alice\'s video', () => waitForRisingFrom(bob, alice, 'video', 'framesDecoded', 20_000));
  await step('bob shows alice as unmuted', async () => {
    const v = await bob.page.evaluate(tileMuted, alice.id);
    assert(v === '', `bob: alice's data-muted is "" (got ${JSON.stringify(v)})`);
  });

  const energy = () => readRemoteStat(bob, alice, 'audio', 'totalAudioEnergy');
  const unmutedPower = await step('bob measures alice\'s audio power (unmuted)', () => audioPower(bob, alice, 1.5));

  await step('alice mutes the microphone: bob sees it within 2 s', async () => {
    await alice.page.click('#mute-audio');
    const t0 = Date.now();
    await waitFor(bob.page, (pid) => {
      const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
      const v = tile && tile.querySelector('[data-muted]').getAttribute('data-muted');
      return v !== null && v.split(' ').includes('audio') && !v.split(' ').includes('video');
    }, 2_000, 'bob: alice data-muted="audio"', alice.id);
    log(`        shown on bob after ${Date.now() - t0} ms`);
    const own = await alice.page.evaluate(() => ({
      muted: document.querySelector('#local-tile [data-muted]').getAttribute('data-muted'),
      pressed: document.querySelector('#mute-audio').dataset.off,
      label: document.querySelector('#mute-audio').getAttribute('aria-label'),
      track: window.sfu.localStream.getAudioTracks().map((tr) => `${tr.enabled}:${tr.readyState}`).join(),
    }));
    assert(own.muted === 'audio' && own.pressed === 'true' && /unmute/i.test(own.label) && own.track === 'false:live',
      `alice: own tile/button show the mute, track disabled but live (${JSON.stringify(own)})`);
  });
  await step('alice turns the camera off: bob sees "audio video" and the placeholder within 2 s', async () => {
    await alice.page.click('#mute-video');
    const t0 = Date.now();
    await waitFor(bob.page, (pid) => {
      const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
      const set = new Set((tile.querySelector('[data-muted]').getAttribute('data-muted') || '').split(' '));
      const ph = tile.querySelector('.tile-placeholder');
      return set.has('audio') && set.has('video') && tile.classList.contains('no-video') && getComputedStyle(ph).display !== 'none';
    }, 2_000, 'bob: alice data-muted="audio video" with the placeholder', alice.id);
    log(`        shown on bob after ${Date.now() - t0} ms`);
    const own = await alice.page.evaluate(() => document.querySelector('#local-tile').classList.contains('no-video')
      && document.querySelector('#local-tile [data-muted]').getAttribute('data-muted') === 'audio video');
    assert(own, 'alice: own tile shows the placeholder and "audio video"');
  });

  const carol = await step('carol joins late and gets alice\'s current state', async () => {
    const c = await t.join(room, 'Carol');
    await t.waitConnected(c);
    await waitFor(c.page, (pid) => {
      const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
      return !!tile && tile.querySelector('[data-muted]').getAttribute('data-muted') === 'audio video'
        && document.querySelector(`#people-list [data-participant-ref="${pid}"] [data-muted]`)?.getAttribute('data-muted') === 'audio video';
    }, 10_000, 'carol: alice data-muted="audio video" on the tile and in the list', alice.id);
    return c;
  });
  await t.close(carol);

  await step('the microphone is silent while muted (audio power far below the unmuted one)', async () => {
    const mutedPower = await audioPower(bob, alice, 1.5, 0.3);
    log(`        alice's audio power on bob: unmuted ${unmutedPower.toFixed(4)}, muted ${mutedPower.toFixed(4)}`);
    assert(unmutedPower > 0.01, `audible before muting (${unmutedPower})`);
    assert(mutedPower < unmutedPower * 0.2, `muted power ${mutedPower} < 20% of unmuted ${unmutedPower}`);
  });

  await step('alice turns the camera on: bob sees it within 2 s and decodes fresh frames', async () => {
    await alice.page.click('#mute-video');
    const t0 = Date.now();
    await waitFor(bob.page, (pid) => {
      const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
      const set = new Set((tile.querySelector('[data-muted]').getAttribute('data-muted') || '').split(' ').filter(Boolean));
      return set.has('audio') && !set.has('video') && !tile.classList.contains('no-video');
    }, 2_000, 'bob: alice data-muted="audio", video visible', alice.id);
    log(`        shown on bob after ${Date.now() - t0} ms`);
    const before = await readRemoteStat(bob, alice, 'video', 'framesDecoded');
    const now = await waitFor(bob.page, remoteStatAbove, 10_000, `bob: framesDecoded from alice > ${before + 20}`, [alice.id, 'video', 'framesDecoded', before + 20]);
    log(`        bob framesDecoded from alice ${before} -> ${now}`);
  });

  await step('alice unmutes: bob sees "" within 2 s; audio packets and energy rise again', async () => {
    const pk = await readRemoteStat(bob, alice, 'audio', 'packetsReceived');
    const en = await energy();
    await alice.page.click('#mute-audio');
    const t0 = Date.now();
    await waitFor(bob.page, (pid) => document.querySelector(`.tile[data-participant-id="${pid}"] [data-muted]`).getAttribute('data-muted') === '',
      2_000, 'bob: alice data-muted=""', alice.id);
    log(`        shown on bob after ${Date.now() - t0} ms`);
    const pk2 = await waitFor(bob.page, remoteStatAbove, 5_000, 'bob: audio packets from alice rising', [alice.id, 'audio', 'packetsReceived', pk]);
    const en2 = await waitFor(bob.page, remoteStatAbove, 5_000, 'bob: audio energy from alice rising', [alice.id, 'audio', 'totalAudioEnergy', en + 0.1]);
    log(`        audio packetsReceived ${pk} -> ${pk2}, totalAudioEnergy ${en.toFixed(4)} -> ${en2.toFixed(4)}`);
    const own = await alice.page.evaluate(() => document.querySelector('#local-tile [data-muted]').getAttribute('data-muted'));
    assert(own === '', `alice: own data-muted "" (got ${own})`);
  });

  await step('no console errors', async () => assertNoConsoleErrors([alice, bob]));
});

// Leave: the leaver's tile disappears for the others within 2 s; rejoining with the same name
// (reload) works and media flows again; closing the tab (pagehide) also leaves at once.
scenario('leave', async (t) => {
  const room = randomRoom('e2e-leave');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const bob = await step('bob opens the page', () => t.join(room, 'Bob'));
  await step('bob connected', () => t.waitConnected(bob));
  await step('alice decodes bob\'s video', () => waitForRisingFrom(alice, bob, 'video', 'framesDecoded', 20_000));

  const gone = (pid) => !document.querySelector(`[data-participant-id="${pid}"]`)
    && !document.querySelector(`#people-list [data-participant-ref="${pid}"]`);
  // In-page timing (both pages share the machine's clock): when alice's DOM lost bob's tile and
  // list entry, vs. when bob clicked / his page was hidden. Excludes the test driver's own latency.
  const watchRemoval = (pid) => {
    window.__e2eGoneAt = undefined;
    const check = () => {
      if (window.__e2eGoneAt === undefined && !document.querySelector(`[data-participant-id="${pid}"]`)
        && !document.querySelector(`#people-list [data-participant-ref="${pid}"]`)) {
        window.__e2eGoneAt = Date.now();
        obs.disconnect();
      }
    };
    const obs = new MutationObserver(check);
    obs.observe(document.body, { childList: true, subtree: true });
  };
  const oldBob = bob.id;
  await step('bob clicks #leave: his tile and list entry disappear on alice\'s page within 2 s', async () => {
    await alice.page.evaluate(watchRemoval, oldBob);
    await bob.page.evaluate(() => document.querySelector('#leave').addEventListener('click', () => { window.__e2eClickAt = Date.now(); }, { capture: true }));
    await bob.page.click('#leave', { timeout: 5_000 });
    await waitFor(alice.page, gone, 10_000, 'alice: bob\'s tile removed', oldBob);
    const clickAt = await bob.page.evaluate(() => window.__e2eClickAt);
    const goneAt = await alice.page.evaluate(() => window.__e2eGoneAt);
    log(`        removed ${goneAt - clickAt} ms after the click`);
    assert(goneAt - clickAt < 2_000, `removed within 2 s of the click (${goneAt - clickAt} ms)`);
  });
  await step('bob sees that he left, with a Rejoin button; camera released', async () => {
    const info = await bob.page.evaluate(() => ({
      status: document.querySelector('#status').dataset.state,
      card: !document.querySelector('#end-card').hidden,
      title: document.querySelector('#end-title').textContent,
      rejoin: !document.querySelector('#rejoin').hidden,
      tracks: window.sfu.localStream.getTracks().map((tr) => tr.readyState),
    }));
    assert(info.status === 'closed' && info.card && /left/i.test(info.title) && info.rejoin, `end card (${JSON.stringify(info)})`);
    assert(info.tracks.every((s) => s === 'ended'), `camera/mic stopped (${info.tracks})`);
  });

  await step('bob rejoins with the same name (reload)', async () => {
    await bob.page.reload({ waitUntil: 'load' });
    await t.waitConnected(bob);
    assert(bob.id !== oldBob, 'a new participant id after the rejoin');
  });
  await step('alice lists and shows the rejoined bob (and only him)', () => waitRemoteVideos(alice, [bob]));
  await Promise.all([[alice, bob], [bob, alice]].map(([me, other]) => step(`${me.name} decodes ${other.name}'s video and audio again`, async () => {
    const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 20_000);
    const [c, d] = await waitForRisingFrom(me, other, 'audio', 'packetsReceived', 15_000);
    log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
  })));
  const name = await alice.page.evaluate((pid) => document.querySelector(`.tile[data-participant-id="${pid}"] .tile-name`)?.textContent, bob.id);
  assert(name === 'Bob', `rejoined bob labelled "Bob" (got ${name})`);

  await step('bob closes the tab: alice sees him leave within 2 s (leave on pagehide)', async () => {
    await alice.page.evaluate(watchRemoval, bob.id);
    const t0 = Date.now();
    await t.close(bob, { runBeforeUnload: true });
    await waitFor(alice.page, gone, 10_000, 'alice: bob\'s tile removed after the tab closed', bob.id);
    const goneAt = await alice.page.evaluate(() => window.__e2eGoneAt);
    log(`        removed ${goneAt - t0} ms after closing`);
    assert(goneAt - t0 < 2_000, `removed within 2 s of closing the tab (${goneAt - t0} ms)`);
  });
  await step('alice is alone: the waiting hint is shown', () => waitFor(alice.page, () => !document.querySelector('#waiting').hidden
    && document.querySelectorAll('video[data-participant-id]').length === 0, 2_000, 'alice: #waiting visible'));
  await step('no console errors', async () => assertNoConsoleErrors([alice]));
});

// Receive-only: camera/microphone permission denied. The page explains it, joins anyway, sees and
// hears the others; the others list it (muted).
scenario('receive-only', async (t) => {
  const room = randomRoom('e2e-recvonly');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const rita = await step('rita opens the page on a phone-sized screen in a browser that denies camera and microphone',
    () => t.join(room, 'Rita', { media: 'deny', viewport: { width: 390, height: 760 } }));
  await step('getUserMedia really fails on rita\'s page', async () => {
    const r = await rita.page.evaluate(() => navigator.mediaDevices.getUserMedia({ audio: true, video: true })
      .then((s) => { s.getTracks().forEach((tr) => tr.stop()); return 'granted'; }, (e) => e.name));
    assert(r === 'NotAllowedError', `getUserMedia rejected with NotAllowedError (got ${r})`);
  });
  await step('rita connected (receive-only)', () => t.waitConnected(rita));
  await step('rita sees a friendly notice; mic/camera buttons disabled', async () => {
    const info = await waitFor(rita.page, () => {
      const b = document.querySelector('#banner');
      if (b.hidden) return null;
      return {
        state: b.dataset.state,
        text: b.textContent.trim(),
        audio: document.querySelector('#mute-audio').disabled,
        video: document.querySelector('#mute-video').disabled,
        label: document.querySelector('#mute-audio').getAttribute('aria-label'),
        muted: document.querySelector('#local-tile [data-muted]').getAttribute('data-muted'),
        stream: !!window.sfu.localStream,
      };
    }, 10_000, 'rita: #banner visible');
    log(`        banner (${info.state}): ${info.text}`);
    assert(info.state === 'warning' && /blocked/i.test(info.text) && /watch, listen and chat/i.test(info.text), `friendly warning (${JSON.stringify(info)})`);
    assert(info.audio && info.video && /no microphone/i.test(info.label) && info.muted === 'audio video' && !info.stream,
      `controls disabled, own tile "audio video" (${JSON.stringify(info)})`);
  });
  await step('rita decodes alice\'s video and receives her audio (rising)', async () => {
    await waitRemoteVideos(rita, [alice]);
    const [a, b] = await waitForRisingFrom(rita, alice, 'video', 'framesDecoded', 20_000);
    const [c, d] = await waitForRisingFrom(rita, alice, 'audio', 'packetsReceived', 15_000);
    log(`        rita <- alice: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
  });
  await step('alice lists rita (as muted, avatar tile, no video)', () => waitFor(alice.page, (pid) => {
    const li = document.querySelector(`#people-list [data-participant-ref="${pid}"]`);
    const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
    return !!li && li.querySelector('.person-name').textContent === 'Rita'
      && li.querySelector('[data-muted]').getAttribute('data-muted') === 'audio video'
      && (!tile || tile.classList.contains('no-video'));
  }, 10_000, 'alice: rita in #people-list, muted', rita.id));
  await step('rita lists alice', () => waitFor(rita.page, (pid) => !!document.querySelector(`#people-list [data-participant-ref="${pid}"]`),
    5_000, 'rita: alice in #people-list', alice.id));
  await step('small screen: the chat panel starts closed and opens as an overlay; Escape closes it', async () => {
    const closed = await rita.page.evaluate(() => document.querySelector('#side-panel').hidden);
    assert(closed, 'panel closed at first on a small screen');
    await rita.page.click('#chat-toggle');
    const info = await rita.page.evaluate(() => {
      const panel = document.querySelector('#side-panel');
      const r = panel.getBoundingClientRect();
      return { hidden: panel.hidden, position: getComputedStyle(panel).position, width: r.width, focus: document.activeElement.id };
    });
    const expanded = await rita.page.getAttribute('#chat-toggle', 'aria-expanded');
    assert(!info.hidden && expanded === 'true' && info.position === 'fixed' && info.width >= 380 && info.focus === 'chat-input',
      `overlay over the full width, input focused (${JSON.stringify(info)})`);
    await rita.page.keyboard.press('Escape');
    await waitFor(rita.page, () => document.querySelector('#side-panel').hidden && document.activeElement.id === 'chat-toggle',
      2_000, 'rita: Escape closed the overlay, focus back on #chat-toggle');
    await rita.page.click('#chat-toggle');
  });
  await step('rita can chat', async () => {
    await t.waitChatOpen(rita);
    const text = randomText('hello from the receive-only side');
    await rita.page.fill('#chat-input', text);
    await rita.page.press('#chat-input', 'Enter');
    await waitFor(alice.page, ([from, want]) => Array.from(document.querySelectorAll('.chat-message'))
      .some((m) => m.dataset.from === from && m.querySelector('.chat-text').textContent === want), 10_000, 'alice: rita\'s message', [rita.id, text]);
  });
  await step('no console errors', async () => assertNoConsoleErrors([alice, rita]));
});

// Friendly errors: the signaling server's join errors (room_full, unauthorized, unavailable) and a
// lost connection, answered by a fake /ws (Playwright WebSocket routing), are shown as a banner
// with human text, an error status and a Try-again card.
scenario('errors', async (t) => {
  const cases = [
    ['room_full', /room is full/i],
    ['unauthorized', /access/i],
    ['unavailable', /unavailable|try again/i],
  ];
  for (const [code, want] of cases) {
    const p = await t.open(`err-${code}`, { room: randomRoom('e2e-err'), name: 'Zoe' }, {
      media: 'deny',
      beforeGoto: (h) => h.page.routeWebSocket(/\/ws$/, (ws) => {
        ws.onMessage((m) => {
          const msg = JSON.parse(String(m));
          if (msg.type === 'join') ws.send(JSON.stringify({ type: 'error', code, message: `test ${code}` }));
        });
      }),
    });
    await step(`${code}: error banner with human text, status error, Try again`, async () => {
      const info = await waitFor(p.page, () => {
        const b = document.querySelector('#banner');
        if (b.hidden || b.dataset.state !== 'error') return null;
        return {
          text: b.textContent.trim(),
          status: document.querySelector('#status').dataset.state,
          card: !document.querySelector('#end-card').hidden,
          title: document.querySelector('#end-title').textContent,
          button: document.querySelector('#rejoin').textContent,
        };
      }, 10_000, `${code}: #banner[data-state=error]`);
      log(`        ${code}: "${info.text}"`);
      assert(want.test(info.text) && !info.text.startsWith(code), `human text (${info.text})`);
      assert(info.status === 'error' && info.card && /try again/i.test(info.button), `state (${JSON.stringify(info)})`);
    });
    await t.close(p);
  }
  const lost = await t.open('err-lost', { room: randomRoom('e2e-err'), name: 'Zoe' }, {
    media: 'deny',
    beforeGoto: (h) => h.page.routeWebSocket(/\/ws$/, (ws) => {
      ws.onMessage(() => ws.close({ code: 1011, reason: 'gone' }));
    }),
  });
  await step('lost connection before joining: banner explains it, Rejoin offered', async () => {
    const info = await waitFor(lost.page, () => {
      const b = document.querySelector('#banner');
      if (b.hidden || b.dataset.state === 'none') return null;
      if (document.querySelector('#end-card').hidden) return null;
      return { state: b.dataset.state, text: b.textContent.trim(), status: document.querySelector('#status').dataset.state };
    }, 10_000, 'lost: banner + end card');
    log(`        lost connection (${info.state}): "${info.text}"`);
    assert(/connection/i.test(info.text) && ['error', 'warning'].includes(info.state), `human text (${JSON.stringify(info)})`);
  });
});

// TURN: both pages use iceTransportPolicy=relay; media flows both ways through coturn and the
// selected candidate pair's local candidate is a relay candidate on both pages.
scenario('turn', async (t) => {
  if (!TURN_URL) t.skip('TURN_URL not set');
  const room = randomRoom('e2e-turn');
  log(`  room ${room} via ${TURN_URL}`);
  const query = { iceTransportPolicy: 'relay' };
  const alice = await step('alice opens the page (relay only)', () => t.join(room, 'Alice', { query }));
  await step('alice connected', () => t.waitConnected(alice, 25_000));
  const bob = await step('bob opens the page (relay only)', () => t.join(room, 'Bob', { query }));
  await step('bob connected', () => t.waitConnected(bob, 25_000));
  await Promise.all([[alice, bob], [bob, alice]].map(([me, other]) => step(`${me.name} decodes ${other.name}'s video and audio through TURN`, async () => {
    const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 20_000);
    const [c, d] = await waitForRisingFrom(me, other, 'audio', 'packetsReceived', 15_000);
    log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
  })));
  for (const p of [alice, bob]) {
    await step(`${p.name}: the selected candidate pair uses a local relay candidate`, async () => {
      const info = await p.page.evaluate(async () => {
        const pc = window.sfu.pc;
        const report = await pc.getStats();
        const byId = new Map();
        report.forEach((s) => byId.set(s.id, s));
        let pair = null;
        report.forEach((s) => {
          if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
        });
        if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
        const local = pair && byId.get(pair.localCandidateId);
        const remote = pair && byId.get(pair.remoteCandidateId);
        return {
          policy: pc.getConfiguration().iceTransportPolicy,
          turn: pc.getConfiguration().iceServers.some((s) => [].concat(s.urls).some((u) => u.startsWith('turn:'))),
          pair: pair && pair.state,
          local: local && `${local.candidateType} ${local.address || local.ip}:${local.port} ${local.relayProtocol || ''}`,
          localType: local && local.candidateType,
          remote: remote && `${remote.candidateType} ${remote.address || remote.ip}:${remote.port}`,
        };
      });
      log(`        ${p.name}: policy ${info.policy}, pair ${info.pair}, local ${info.local}, remote ${info.remote}`);
      assert(info.policy === 'relay' && info.turn, `relay-only policy with a TURN server (${JSON.stringify(info)})`);
      assert(info.localType === 'relay', `local candidate type relay (${JSON.stringify(info)})`);
    });
  }
  await step('no console errors', async () => assertNoConsoleErrors([alice, bob]));
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

    // Bounded poll (not a fixed sleep): frames keep rising while signaling is still down.
    await step('remote video kept decoding during the outage', async () => {
      for (const p of [alice, bob]) {
        const frames = await waitFor(p.page, inboundStatAbove, 5_000, `${p.name}: framesDecoded rising above ${before[p.name] + 10} during the outage`,
          ['video', 'framesDecoded', before[p.name] + 10]);
        const stillDown = await p.page.evaluate(statusIs, 'reconnecting');
        log(`        ${p.name} framesDecoded ${before[p.name]} -> ${frames} while signaling is down`);
        assert(stillDown, `${p.name} is still reconnecting (signaling is down)`);
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
      assertNoConsoleErrors([alice, bob], [/WebSocket connection to .* failed/]);
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
  if (selected.length === 0 || (ONLY.length && selected.length !== ONLY.length)) {
    console.log(`FAIL unknown scenario in E2E_SCENARIOS=${ONLY.join(',')} (known: ${scenarios.map((s) => s.name).join(', ')})`);
    return 2;
  }
  log(`BASE_URL=${BASE_URL} OUT_DIR=${OUT_DIR} TURN_URL=${TURN_URL || '(none)'}`);
  const b = await browserFor('grant');
  log(`chromium ${b.version()} launched`);
  let failed = 0;
  let skipped = 0;
  const results = [];
  for (const s of selected) {
    const t = makeHarness(s.name);
    const start = Date.now();
    log(`RUN   ${s.name}`);
    try {
      await s.fn(t);
      log(`PASS  ${s.name} (${Date.now() - start} ms)`);
      results.push(`PASS ${s.name} (${Date.now() - start} ms)`);
    } catch (err) {
      if (err instanceof SkipScenario) {
        skipped += 1;
        log(`SKIP ${s.name} (${err.message})`);
        results.push(`SKIP ${s.name} (${err.message})`);
        continue;
      }
      failed += 1;
      log(`FAIL  ${s.name} (${Date.now() - start} ms): ${err && err.message ? err.message : err}`);
      results.push(`FAIL ${s.name}: ${err && err.message ? err.message : err}`);
      await t.dumpDebug();
    } finally {
      await t.closeAll();
    }
  }
  log(`summary:\n    ${results.join('\n    ')}`);
  const skipNote = skipped ? `, ${skipped} skipped` : '';
  if (failed) log(`FAIL ${failed} of ${selected.length} scenario(s) failed${skipNote}`);
  else if (skipped) log(`PASS ${selected.length - skipped} scenario(s) passed${skipNote}`);
  else log(`PASS all ${selected.length} scenario(s)`);
  return failed ? 1 : 0;
}

async function closeBrowsers() {
  const list = Object.values(browsers).filter(Boolean);
  browsers.grant = null;
  browsers.deny = null;
  await Promise.all(list.map((b) => Promise.race([b.close().catch(() => {}), sleep(5_000)])));
}

const hardTimer = setTimeout(async () => {
  log(`FAIL hard timeout: the run exceeded ${HARD_TIMEOUT_MS} ms`);
  await closeBrowsers();
  process.exit(2);
}, HARD_TIMEOUT_MS);

let code = 2;
try {
  code = await main();
} catch (err) {
  log(`FAIL setup error: ${err && err.stack ? err.stack : err}`);
  code = 2;
} finally {
  await closeBrowsers();
  clearTimeout(hardTimer);
}
process.exit(code);
