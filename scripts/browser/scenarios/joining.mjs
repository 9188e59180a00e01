// Joining: the pre-join screen (preview, devices, validation) and a three-party call with media both ways.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  log,
  waitFor,
  step,
  assert,
  randomRoom,
  waitForRisingFrom,
  scenario,
  assertNoConsoleErrors,
  waitRemoteVideos,
  mutedSet,
} from '../lib.mjs';

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
