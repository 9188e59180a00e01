// Media quality: simulcast publishing and per-subscriber layer selection.
// Registered with `scenario()`; run in import order by ../e2e.mjs.

import {
  log,
  waitFor,
  step,
  assert,
  randomRoom,
  scenario,
  assertNoConsoleErrors,
  installStatHelper,
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

// The page sends its camera as simulcast encodings (rid q, h, f at ¼, ½ and full resolution; the
// two upper ones for a 360…539-line camera such as the fake 640×480 one); the SFU forwards each subscriber one of them — on an unconstrained link the top
// one — with one continuous, decodable stream; `?simulcast=0` publishes a single encoding, which
// is forwarded as before.
scenario('simulcast', async (t) => {
  const room = randomRoom('e2e-simulcast');
  log(`  room ${room}`);
  const alice = await step('alice opens the page', () => t.join(room, 'Alice'));
  const bob = await step('bob opens the page', () => t.join(room, 'Bob'));
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
    await installStatHelper(me);
    const h = await step(`${me.name} decodes alice's top layer (frameHeight ${layers.top})`, () => waitFor(me.page,
      async ([pid, top]) => {
        // eslint-disable-next-line no-undef
        const v = await window.__e2eRemoteStat([pid, 'video', 'frameHeight']);
        return v >= top ? v : 0;
      }, 25_000, `${me.name}: inbound frameHeight from alice >= ${layers.top}`, [alice.id, layers.top]));
    const [a, b] = await waitForRisingFrom(me, alice, 'video', 'framesDecoded', 10_000, 10);
    log(`        ${me.name} <- alice: frameHeight ${h}, framesDecoded ${a} -> ${b}`);
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
