// Signaling killed and restarted under a call: the page resumes its session.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  RESTART_URL,
  log,
  waitFor,
  sleep,
  step,
  assert,
  randomRoom,
  inboundStatAbove,
  waitForRisingStat,
  scenario,
  assertNoConsoleErrors,
} from '../lib.mjs';

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

    // Chat does not pass through signaling: messages sent while it is down (a broadcast and a
    // whisper) reach the other page over the DataChannel, each once.
    const outageText = `during the outage ${Math.random().toString(36).slice(2, 8)}`;
    const outageWhisper = `whisper during the outage ${Math.random().toString(36).slice(2, 8)}`;
    await step('alice sends a broadcast and a whisper to bob while signaling is down', async () => {
      await alice.page.fill('#chat-input', outageText);
      await alice.page.press('#chat-input', 'Enter');
      await alice.page.selectOption('#chat-to', bob.id);
      await alice.page.fill('#chat-input', outageWhisper);
      await alice.page.press('#chat-input', 'Enter');
      await alice.page.selectOption('#chat-to', '');
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

    await step('bob has what alice sent during the outage, each once', async () => {
      for (const want of [outageText, outageWhisper]) {
        await waitFor(bob.page, (x) => Array.from(document.querySelectorAll('.chat-message .chat-text')).some((m) => m.textContent === x),
          10_000, `bob: "${want}"`, want);
      }
      const n = await bob.page.evaluate((xs) => xs.map((x) => Array.from(document.querySelectorAll('.chat-message .chat-text'))
        .filter((m) => m.textContent === x).length), [outageText, outageWhisper]);
      assert(n[0] === 1 && n[1] === 1, `shown once each (${JSON.stringify(n)})`);
    });

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
