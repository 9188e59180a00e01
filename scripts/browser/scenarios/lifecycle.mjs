// Leaving and rejoining, receive-only participants (permissions denied), error banners, TURN relay only.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  TURN_URL,
  log,
  waitFor,
  step,
  assert,
  randomRoom,
  randomText,
  waitForRisingFrom,
  scenario,
  assertNoConsoleErrors,
  waitRemoteVideos,
  selectedPair,
} from '../lib.mjs';

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
      const pair = await p.page.evaluate(selectedPair);
      const info = {
        ...await p.page.evaluate(() => ({
          policy: window.sfu.pc.getConfiguration().iceTransportPolicy,
          turn: window.sfu.pc.getConfiguration().iceServers.some((s) => [].concat(s.urls).some((u) => u.startsWith('turn:'))),
        })),
        pair: pair && pair.state,
        local: pair && pair.local && `${pair.local.type} ${pair.local.address}:${pair.local.port} ${pair.local.relayProtocol || ''}`,
        localType: pair && pair.local && pair.local.type,
        remote: pair && pair.remote && `${pair.remote.type} ${pair.remote.address}:${pair.remote.port}`,
      };
      log(`        ${p.name}: policy ${info.policy}, pair ${info.pair}, local ${info.local}, remote ${info.remote}`);
      assert(info.policy === 'relay' && info.turn, `relay-only policy with a TURN server (${JSON.stringify(info)})`);
      assert(info.localType === 'relay', `local candidate type relay (${JSON.stringify(info)})`);
    });
  }
  await step('no console errors', async () => assertNoConsoleErrors([alice, bob]));
});
