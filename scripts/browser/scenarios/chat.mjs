// Chat (broadcast, whisper, hostile text) and mute state seen by the others.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  log,
  waitFor,
  step,
  assert,
  randomRoom,
  randomText,
  remoteStatAbove,
  waitForRisingFrom,
  audioPower,
  readRemoteStat,
  scenario,
  assertNoConsoleErrors,
  tileMuted,
} from '../lib.mjs';

// Chat: broadcast, whisper (private on both ends; the third participant's page AND DataChannel
// never see it), unread badge, over-long message, XSS-shaped names and messages, history for a
// late joiner (earlier public messages once, in order, no whisper). Saves chat-whisper.png.
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

  // History: a late joiner gets the room's earlier public messages once, in order, never the
  // whisper; then live messages as usual.
  const dave = await step('dave joins late', () => t.join(room, 'Dave'));
  await step('dave connected', () => t.waitConnected(dave));
  await t.waitChatOpen(dave);
  await step('dave sees the earlier public messages once, in order, and never the whisper', async () => {
    await waitFor(dave.page, hasMessage, 10_000, 'dave: the first broadcast, from history', [alice.id, hello, 'false']);
    await waitFor(dave.page, hasMessage, 10_000, 'dave: a later broadcast, from history', [alice.id, after, 'false']);
    const info = await dave.page.evaluate(([texts, secretText]) => {
      const shown = Array.from(document.querySelectorAll('.chat-message .chat-text')).map((m) => m.textContent);
      return {
        counts: texts.map((x) => shown.filter((y) => y === x).length),
        order: texts.map((x) => shown.indexOf(x)),
        secretShown: document.body.textContent.includes(secretText),
        secretRaw: (window.sfu.dcLog || []).filter((m) => m.includes(secretText)).length,
        history: (window.sfu.dcLog || []).filter((m) => m.includes('"history":true')).length,
      };
    }, [[hello, after, xssText], secret]);
    assert(info.counts.every((c) => c === 1), `each earlier message shown exactly once (${JSON.stringify(info)})`);
    assert(info.order.every((i, k) => k === 0 || i > info.order[k - 1]), `in the order they were sent (${JSON.stringify(info)})`);
    assert(!info.secretShown && info.secretRaw === 0, `the whisper never reached dave (${JSON.stringify(info)})`);
    assert(info.history >= 3, `replayed messages are marked history (${JSON.stringify(info)})`);
  });
  const live = randomText('live after dave joined');
  await step('a live broadcast after the join reaches dave once', async () => {
    await bob.page.fill('#chat-input', live);
    await bob.page.press('#chat-input', 'Enter');
    await waitFor(dave.page, hasMessage, 10_000, 'dave: the live broadcast', [bob.id, live, 'false']);
    const n = await dave.page.evaluate((x) => Array.from(document.querySelectorAll('.chat-message .chat-text')).filter((m) => m.textContent === x).length, live);
    assert(n === 1, `shown once (${n})`);
  });

  await step('no console errors', async () => assertNoConsoleErrors([...all, dave]));
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
