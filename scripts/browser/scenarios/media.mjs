// Media quality: simulcast publishing and per-subscriber layer selection.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  NETNS_CHROMIUM,
  SHAPE_URL,
  log,
  waitFor,
  step,
  assert,
  randomRoom,
  scenario,
  assertNoConsoleErrors,
  installStatHelper,
  sleep,
  waitForRisingFrom,
} from '../lib.mjs';

// In-page: the page's video send encodings (rid → frame height, in the order sent) once every
// one of them produces frames of rising size; null until then.
async function encodedLayers() {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return null;
  const sender = pc.getSenders().find((x) => x.track && x.track.kind === 'video');
  if (!sender) return null;
  const rids = sender.getParameters().encodings.map((e) => e.rid).filter(Boolean);
  const h = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.framesEncoded > 0 && s.frameHeight) {
      h[s.rid] = s.frameHeight;
    }
  });
  if (rids.length < 2 || !rids.every((r) => h[r])) return null;
  for (let i = 1; i < rids.length; i += 1) if (!(h[rids[i - 1]] < h[rids[i]])) return null;
  return { rids, heights: rids.map((r) => h[r]), top: h[rids[rids.length - 1]] };
}

// In-page: like `encodedLayers`, but a layer the SFU paused (dynacast) before the encoder ever
// produced it counts with its configured height (capture height / scaleResolutionDownBy): in a
// room where nobody needs the top layers, they may be switched off before the sender's bandwidth
// estimate ramped up to them. The lowest layer must have encoded.
async function encodedOrPausedLayers() {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return null;
  const sender = pc.getSenders().find((x) => x.track && x.track.kind === 'video');
  if (!sender) return null;
  const encodings = sender.getParameters().encodings.filter((e) => e.rid);
  const capture = sender.track.getSettings().height || 0;
  const h = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.framesEncoded > 0 && s.frameHeight) {
      h[s.rid] = s.frameHeight;
    }
  });
  if (encodings.length < 2 || !h[encodings[0].rid]) return null;
  const heights = [];
  for (const e of encodings) {
    if (h[e.rid]) heights.push(h[e.rid]);
    else if (e.active === false && capture) heights.push(Math.round(capture / (e.scaleResolutionDownBy || 1)));
    else return null;
  }
  for (let i = 1; i < heights.length; i += 1) if (!(heights[i - 1] < heights[i])) return null;
  const rids = encodings.map((e) => e.rid);
  return { rids, heights, top: heights[heights.length - 1], paused: encodings.filter((e) => !h[e.rid]).map((e) => e.rid) };
}

// In-page: the device-pixel height of the tile showing participant `pid`'s video.
function tileHeight(pid) {
  const v = document.querySelector(`video[data-participant-id="${CSS.escape(pid)}"]`);
  return v ? Math.round(v.getBoundingClientRect().height * (window.devicePixelRatio || 1)) : 0;
}

/**
 * The layer the SFU should forward to a tile `tile` device pixels high (as dataplane `hints.rs`:
 * the lowest at least tile / 1.15 high, else the top): its index and the frame heights that
 * bound it — above the next lower layer, at most its own.
 */
function expectedLayer(heights, tile) {
  let i = heights.findIndex((h) => h * 1.15 >= tile);
  if (i < 0) i = heights.length - 1;
  return { index: i, above: i > 0 ? heights[i - 1] : 0, atMost: heights[i] };
}

/** Wait until `me` decodes `from`'s video at the layer its tile needs; returns the height. */
async function decodesLayerForTile(me, from, heights, timeoutMs) {
  await installStatHelper(me);
  const tile = await me.page.evaluate(tileHeight, from.id);
  const want = expectedLayer(heights, tile);
  const h = await waitFor(me.page, async ([pid, above, atMost]) => {
    // eslint-disable-next-line no-undef
    const v = await window.__e2eRemoteStat([pid, 'video', 'frameHeight']);
    return v > above && v <= atMost ? v : 0;
  }, timeoutMs, `${me.name}: inbound frameHeight from ${from.name} in (${want.above}, ${want.atMost}] for a ${tile}-pixel tile`,
  [from.id, want.above, want.atMost]);
  log(`        ${me.name}: ${tile}-pixel tile of ${from.name} -> layer ${want.index}, decoding ${h} lines`);
  return h;
}

// The page sends its camera as simulcast encodings (rid q, h, f at ¼, ½ and full resolution of its
// 720p camera); the SFU forwards each subscriber one of them — on an unconstrained link the one
// its tile needs — as one continuous, decodable stream; `?simulcast=0` publishes a single
// encoding, which is forwarded as before.
scenario('simulcast', async (t) => {
  const room = randomRoom('e2e-simulcast');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  // Bob's big window needs alice's top layer, carol's smaller one a lower layer: one room, two
  // layers of the same video (and the top one stays needed, so dynacast leaves it running).
  const bob = await step('bob opens the page in a big window (1920×1440)',
    () => t.join(room, 'Bob', { viewport: { width: 1920, height: 1440 } }));
  const carol = await step('carol opens the page with ?simulcast=0',
    () => t.join(room, 'Carol', { query: { simulcast: '0' } }));
  await step('all connected', () => Promise.all([alice, bob, carol].map((p) => t.waitConnected(p))));

  const layers = await step('alice encodes every simulcast layer, of rising size', async () => {
    try {
      return await waitFor(alice.page, encodedLayers, 25_000, 'alice: outbound-rtp video frames for each rid');
    } catch (err) {
      const seen = await alice.page.evaluate(async () => {
        const out = [];
        (await window.sfu.pc.getStats()).forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'video') {
            out.push({ rid: s.rid, h: s.frameHeight, enc: s.framesEncoded, active: s.active, limit: s.qualityLimitationReason, sent: s.packetsSent });
          }
        });
        return out;
      });
      log(`        alice's video encodings: ${JSON.stringify(seen)}`);
      throw err;
    }
  });
  log(`        alice's layers: ${layers.rids.join(', ')} at ${layers.heights.join(' / ')} lines`);

  await step('carol sends one encoding', async () => {
    const l = await carol.page.evaluate(async () => {
      const out = [];
      (await window.sfu.pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video') out.push(s.rid || null);
      });
      return out;
    });
    assert(l.length === 1 && !l[0], `one video encoding without rid (got ${JSON.stringify(l)})`);
  });

  for (const me of [bob, carol]) {
    await step(`${me.name} decodes the layer of alice's video its tile needs`,
      () => decodesLayerForTile(me, alice, layers.heights, 25_000));
    const [a, b] = await waitForRisingFrom(me, alice, 'video', 'framesDecoded', 10_000, 10);
    log(`        ${me.name} <- alice: framesDecoded ${a} -> ${b}`);
  }
  await step('alice and bob decode carol\'s single encoding', async () => {
    for (const me of [alice, bob]) await waitForRisingFrom(me, carol, 'video', 'framesDecoded', 15_000, 5);
  });
  await step('one inbound video stream per remote publisher (never several layers at once)', async () => {
    const n = await bob.page.evaluate(async () => {
      let count = 0;
      (await window.sfu.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') count += 1;
      });
      return count;
    });
    assert(n === 2, `bob has 2 inbound video streams (got ${n})`);
  });
  assertNoConsoleErrors([alice, bob, carol]);
});

// In-page: packetsSent and active of the page's own video encoding `rid`.
async function encodingSent(rid) {
  const pc = window.sfu && window.sfu.pc;
  if (!pc) return null;
  let out = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid === rid) out = { sent: s.packetsSent, active: s.active };
  });
  return out;
}

// Tile hints and dynacast: a subscriber whose window is small gets the smaller layer; when nobody
// needs the top layer the publisher is told to stop encoding it (its outbound-rtp for that rid
// stops sending); when the subscriber's window grows the layer comes back and is forwarded.
scenario('dynacast', async (t) => {
  const room = randomRoom('e2e-dynacast');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  const bob = await step('bob opens the page in a small window (320×240)',
    () => t.join(room, 'Bob', { viewport: { width: 320, height: 240 } }));
  await step('both connected', () => Promise.all([alice, bob].map((p) => t.waitConnected(p))));
  const layers = await step('alice encodes every simulcast layer (or the SFU paused it first)',
    () => waitFor(alice.page, encodedOrPausedLayers, 25_000, 'alice: outbound-rtp video frames for each rid not paused'));
  const low = layers.heights[0];
  const topRid = layers.rids[layers.rids.length - 1];
  log(`        alice's layers: ${layers.rids.join(', ')} at ${layers.heights.join(' / ')} lines${layers.paused.length ? ` (paused before encoding: ${layers.paused.join(', ')})` : ''}`);
  await installStatHelper(bob);
  await step(`bob's small tile gets the ${low}-line layer`, () => waitFor(bob.page, async ([pid, h]) => {
    // eslint-disable-next-line no-undef
    const v = await window.__e2eRemoteStat([pid, 'video', 'frameHeight']);
    return v > 0 && v <= h ? v : 0;
  }, 20_000, `bob: inbound frameHeight from alice <= ${low}`, [alice.id, low]));
  await step(`alice stops encoding '${topRid}' (nobody needs it)`, async () => {
    await waitFor(alice.page, async (rid) => {
      const pc = window.sfu && window.sfu.pc;
      const tr = pc && pc.getTransceivers().find((x) => x.sender && x.sender.track && x.sender.track.kind === 'video');
      const e = tr && tr.sender.getParameters().encodings.find((x) => x.rid === rid);
      return !!e && e.active === false;
    }, 20_000, `alice: encoding ${topRid} set inactive by the SFU`, topRid);
    await sleep(1500);
    const a = await alice.page.evaluate(encodingSent, topRid);
    await sleep(1500);
    const b = await alice.page.evaluate(encodingSent, topRid);
    log(`        '${topRid}' packetsSent ${a && a.sent} -> ${b && b.sent}`);
    assert(a && b && b.sent === a.sent, `no ${topRid} packets sent while inactive (${JSON.stringify([a, b])})`);
  });
  await step('bob\'s window grows (1920×1440): the top layer comes back and bob decodes it', async () => {
    await bob.page.setViewportSize({ width: 1920, height: 1440 });
    await sleep(500);
    const tile = await bob.page.evaluate(tileHeight, alice.id);
    assert(expectedLayer(layers.heights, tile).index === layers.heights.length - 1,
      `bob's ${tile}-pixel tile needs the top layer`);
    const h = await decodesLayerForTile(bob, alice, layers.heights, 25_000);
    const s = await alice.page.evaluate(encodingSent, topRid);
    log(`        bob decodes ${h} lines; alice's '${topRid}' active=${s && s.active}`);
    await waitForRisingFrom(bob, alice, 'video', 'framesDecoded', 10_000, 10);
  });
  assertNoConsoleErrors([alice, bob]);
});

// Active speakers: the SFU ranks who speaks from the audio level in the packets (RFC 6464) and
// tells every page; alice talks (the fake microphone's tone), bob and carol have muted their
// microphones: bob's and carol's pages highlight alice's tile; when alice mutes and carol
// unmutes, the highlight moves to carol.
scenario('speakers', async (t) => {
  const room = randomRoom('e2e-speakers');
  log(`  room ${room}`);
  const [alice, bob, carol] = await step('alice, bob and carol open the page',
    () => Promise.all([t.join(room, 'Alice'), t.join(room, 'Bob'), t.join(room, 'Carol')]));
  await step('all connected', () => Promise.all([alice, bob, carol].map((p) => t.waitConnected(p))));
  await step('bob and carol mute their microphones', async () => {
    await bob.page.click('#mute-audio');
    await carol.page.click('#mute-audio');
  });
  const speaking = (me, who) => waitFor(me.page, (pid) => {
    const tile = document.querySelector(`.tile[data-participant-id="${pid}"]`);
    const others = Array.from(document.querySelectorAll('.tile[data-active-speaker]'));
    return !!tile && tile.dataset.activeSpeaker === 'true' && others.length === 1;
  }, 15_000, `${me.name}: ${who.name}'s tile is the (only) active speaker`, who.id);
  for (const me of [bob, carol]) {
    await step(`${me.name} highlights alice as the speaker`, () => speaking(me, alice));
  }
  await step('alice mutes, carol unmutes: bob and alice highlight carol', async () => {
    await alice.page.click('#mute-audio');
    await carol.page.click('#mute-audio');
    try {
      await speaking(bob, carol);
      await speaking(alice, carol);
    } catch (err) {
      // What carol sends, and what her microphone hears, when the highlight does not come.
      const audio = await carol.page.evaluate(async () => {
        const out = [];
        (await window.sfu.pc.getStats()).forEach((s) => {
          if ((s.type === 'outbound-rtp' || s.type === 'media-source') && s.kind === 'audio') {
            out.push({ type: s.type, sent: s.packetsSent, level: s.audioLevel, energy: s.totalAudioEnergy });
          }
        });
        const t = window.sfu.localStream && window.sfu.localStream.getAudioTracks()[0];
        return { stats: out, track: t && { enabled: t.enabled, muted: t.muted, state: t.readyState } };
      });
      log(`        carol's audio: ${JSON.stringify(audio)}`);
      throw err;
    }
  });
  const n = await bob.page.evaluate(() => window.sfu.dcLog.filter((m) => m.includes('"active_speakers"')).length);
  log(`        bob got ${n} active_speakers messages`);
  assert(n <= 30, `active_speakers is sent on change only (${n} messages)`);
  assertNoConsoleErrors([alice, bob, carol]);
});

// A subscriber on a slow link: carol's page runs in a network namespace whose link from the SFU is
// shaped to ~300 kbit/s (`tc tbf` on the veth). She keeps decoding, on alice's lowest layer, while
// bob (unconstrained) keeps the top one; when the shaping is removed carol comes back up.
scenario('constrained', async (t) => {
  if (!NETNS_CHROMIUM || !SHAPE_URL) t.skip('needs E2E_NETNS_CHROMIUM and SHAPE_URL (the test harness sets them)');
  const shape = async (what) => {
    const r = await fetch(`${SHAPE_URL}/${what}`, { method: 'POST' });
    assert(r.ok, `${what}: HTTP ${r.status} ${await r.text()}`);
  };
  const room = randomRoom('e2e-constrained');
  log(`  room ${room}`);
  const alice = await step('alice opens the page (publishes)', () => t.join(room, 'Alice'));
  // Large windows: the tiles need the top layer.
  const viewport = { width: 1920, height: 1440 };
  const bob = await step('bob opens the page (receive only)', () => t.join(room, 'Bob', { media: 'deny', viewport }));
  const carol = await step('carol opens the page in the namespace (receive only)',
    () => t.join(room, 'Carol', { media: 'deny', netns: true, viewport }));
  await step('all connected', () => Promise.all([alice, bob, carol].map((p) => t.waitConnected(p, 30_000))));
  const layers = await step('alice encodes every simulcast layer',
    () => waitFor(alice.page, encodedLayers, 30_000, 'alice: outbound-rtp video frames for each rid'));
  const [low, top] = [layers.heights[0], layers.top];
  // Above the middle layer: the top one (its encoder may scale it down a little under load).
  const topAbove = layers.heights[layers.heights.length - 2];
  log(`        alice's layers: ${layers.rids.join(', ')} at ${layers.heights.join(' / ')} lines`);
  const height = async (me) => me.page.evaluate(
    // eslint-disable-next-line no-undef
    (pid) => window.__e2eRemoteStat([pid, 'video', 'frameHeight']), alice.id);
  const onTop = (me, ms) => waitFor(me.page, async ([pid, h]) => {
    // eslint-disable-next-line no-undef
    const v = await window.__e2eRemoteStat([pid, 'video', 'frameHeight']);
    return v > h ? v : 0;
  }, ms, `${me.name}: inbound frameHeight from alice > ${topAbove} (the top layer)`, [alice.id, topAbove]);
  for (const me of [bob, carol]) await installStatHelper(me);
  await step(`bob and carol decode the top layer (${top} lines) on an open link`,
    () => Promise.all([onTop(bob, 30_000), onTop(carol, 30_000)]));

  await step('carol\'s link drops to 300 kbit/s', () => shape('shape'));
  const t0 = Date.now();
  await step(`carol moves to the lowest layer (${low} lines)`, () => waitFor(carol.page, async ([pid, h]) => {
    // eslint-disable-next-line no-undef
    const v = await window.__e2eRemoteStat([pid, 'video', 'frameHeight']);
    return v > 0 && v <= h ? v : 0;
  }, 30_000, `carol: inbound frameHeight from alice <= ${low}`, [alice.id, low]));
  log(`        carol on ${await height(carol)} lines after ${Date.now() - t0} ms`);
  await step('carol keeps decoding on the slow link, with few freezes; bob keeps the top layer', async () => {
    // eslint-disable-next-line no-undef
    const freezes = () => carol.page.evaluate((pid) => window.__e2eRemoteStat([pid, 'video', 'freezeCount']), alice.id);
    await sleep(3_000); // settle after the switch
    const f0 = await freezes();
    const [a, b] = await waitForRisingFrom(carol, alice, 'video', 'framesDecoded', 10_000, 60);
    const f1 = await freezes();
    log(`        carol framesDecoded ${a} -> ${b}, freezeCount ${f0} -> ${f1}, ${await height(carol)} lines; bob ${await height(bob)} lines`);
    assert(f1 - f0 <= 3, `carol froze ${f1 - f0} times while decoding 60 frames`);
    assert((await height(carol)) <= low, 'carol stays on the lowest layer');
    assert((await height(bob)) > topAbove, 'bob keeps the top layer');
  });
  await step('the link recovers: carol comes back to the top layer', async () => {
    await shape('unshape');
    const t1 = Date.now();
    await onTop(carol, 45_000);
    log(`        carol back on ${await height(carol)} lines after ${Date.now() - t1} ms`);
  });
  assertNoConsoleErrors([alice, bob, carol]);
}, { netns: true });
