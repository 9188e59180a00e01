#!/usr/bin/env node
// Headless-Chromium end-to-end test of the web page against a running signaling + dataplane.
//
//   BASE_URL=http://127.0.0.1:18080 OUT_DIR=test-output node e2e.mjs
//
// Environment:
//   BASE_URL        where the signaling server serves the page (default http://127.0.0.1:18080)
//   OUT_DIR         directory for screenshots (default test-output)
//   E2E_SCENARIOS   optional comma-separated list of scenario names to run (default: all but
//                   the namespaced ones)
//   E2E_QUERY       optional extra query string appended to page URLs, e.g. iceTransportPolicy=relay
//   E2E_TIMEOUT_MS  overall hard timeout (default 240000)
//   RESTART_SIGNALING_URL
//                   base URL of a control endpoint that can kill and restart the signaling server
//                   behind BASE_URL: `POST /kill` (SIGKILL; answers once it is dead) and
//                   `POST /start` (same port; answers once /healthz is 200). Needed by the
//                   `reconnect` scenario.
//   TURN_URL        non-empty when the signaling server hands out TURN credentials for a running
//                   TURN server; needed by the `turn` scenario.
//   E2E_NETNS_CHROMIUM, SHAPE_URL
//                   a script running Chromium inside a network namespace, and an endpoint shaping
//                   that namespace's link (`POST /shape`: ~300 kbit/s toward it, `POST /unshape`);
//                   needed by the `constrained` scenario, which runs only when named.
//   LOSS_URL        an endpoint dropping 5 % of the dataplane's TCP segments toward the namespace
//                   (`POST /tcploss`, `POST /notcploss`): the `ice-tcp` scenario, which (like
//                   `turn-tls`) runs only when named, with TURN_URL listing `turns:` on 443.
//   E2E_FIREFOX     Debian's firefox-esr (/usr/bin/firefox-esr): the `firefox` scenario, which
//                   runs only when named, against a node on a non-loopback address.
//   E2E_ALLOW_SKIP  set to 1 to accept scenarios skipped for a missing dependency (the ones above);
//                   without it a skipped scenario fails the run.
//
// Scenarios (in order): prejoin, three-party, chat, mute, leave, receive-only, errors, turn,
// reconnect, the media ones (simulcast, dynacast, speakers), whip, whep; `constrained`,
// `firefox`, `ice-tcp` and `turn-tls` only when named. See each scenario's comment for what it proves.
//
// Drives Debian's /usr/bin/chromium through playwright-core (flags in lib.mjs). Every wait is a
// bounded poll. Layout: lib.mjs (config, helpers, harness), scenarios/*.mjs (the scenarios, by
// concern), this file (selection, run, summary, hard timeout).
// Exit code 0: all selected scenarios passed; 1: a scenario failed or was skipped; 2: setup
// error or hard timeout. On failure each page's state, console errors and a screenshot are dumped.


import {
  ALLOW_SKIP, HARD_TIMEOUT_MS, ONLY, BASE_URL, OUT_DIR, TURN_URL, SkipScenario, browserFor, browsers,
  log, makeHarness, scenarios, sleep,
} from './lib.mjs';
// Registration order is run order.
import './scenarios/joining.mjs';
import './scenarios/chat.mjs';
import './scenarios/lifecycle.mjs';
import './scenarios/reconnect.mjs';
import './scenarios/media.mjs';
import './scenarios/whip.mjs';
import './scenarios/connectivity.mjs';
import './scenarios/firefox.mjs';

async function main() {
  const selected = ONLY.length ? scenarios.filter((s) => ONLY.includes(s.name)) : scenarios.filter((s) => !s.netns);
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
  else if (skipped && !ALLOW_SKIP) log(`FAIL ${skipped} scenario(s) skipped (a missing dependency; set E2E_ALLOW_SKIP=1 to accept)`);
  else if (skipped) log(`PASS ${selected.length - skipped} scenario(s) passed${skipNote} (E2E_ALLOW_SKIP=1)`);
  else log(`PASS all ${selected.length} scenario(s)`);
  return failed || (skipped && !ALLOW_SKIP) ? 1 : 0;
}

async function closeBrowsers() {
  const list = Object.values(browsers).filter(Boolean);
  for (const k of Object.keys(browsers)) delete browsers[k];
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
