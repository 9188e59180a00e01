// WHIP and WHEP from a browser: a page publishes its camera with one HTTP POST of its SDP offer
// (no WebSocket) and two ordinary pages decode it; a page of the ordinary kind publishes and a
// WHEP viewer (a bare RTCPeerConnection with recvonly transceivers, offer POSTed to /whep/…)
// decodes its video. DELETE ends both sessions. The WHIP/WHEP pages run on the server's origin
// (`/healthz`, a plain page) so `fetch` needs no CORS and getUserMedia has a secure context.

import {
  BASE_URL,
  assert,
  assertNoConsoleErrors,
  log,
  randomRoom,
  scenario,
  step,
  waitFor,
  waitForRisingFrom,
} from '../lib.mjs';

// In-page: publish the fake camera and microphone over WHIP to `path`; keeps the session on
// `window.whip` ({ pc, location }). Returns the HTTP status and Location.
async function whipPublish(path) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const location = r.headers.get('Location');
  const body = await r.text();
  if (r.status !== 201) return { status: r.status, body };
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  window.whip = { pc, location };
  return { status: r.status, location };
}

// In-page: view over WHEP (`path`) with one audio and one video recvonly transceiver.
async function whepView(path) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const location = r.headers.get('Location');
  const body = await r.text();
  if (r.status !== 201) return { status: r.status, body };
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  window.whep = { pc, location };
  return { status: r.status, location };
}

// In-page: `window[name]`'s inbound video frames decoded and audio packets, once at least
// `minFrames` and `minAudio`; else null.
async function inboundAtLeast([name, minFrames, minAudio]) {
  const s = window[name];
  if (!s || !s.pc) return null;
  let frames = 0;
  let audio = 0;
  (await s.pc.getStats()).forEach((x) => {
    if (x.type === 'inbound-rtp' && x.kind === 'video') frames += x.framesDecoded || 0;
    if (x.type === 'inbound-rtp' && x.kind === 'audio') audio += x.packetsReceived || 0;
  });
  return frames >= minFrames && audio >= minAudio ? { frames, audio, state: s.pc.connectionState } : null;
}

async function deleteSession(name) {
  const r = await fetch(window[name].location, { method: 'DELETE' });
  window[name].pc.close();
  return r.status;
}

async function openBare(t, label) {
  const p = await t.open(label, {});
  await p.page.goto(`${BASE_URL}/healthz`, { waitUntil: 'load', timeout: 15_000 });
  return p;
}

// A page publishing over WHIP: two pages in the room (WebSocket) decode it, see it in their
// roster, and see it leave after DELETE.
scenario('whip', async (t) => {
  const room = randomRoom('e2e-whip');
  log(`  room ${room}`);
  const bob = await step('bob opens the page (receive only)', () => t.join(room, 'Bob', { media: 'deny' }));
  const carol = await step('carol opens the page (receive only)', () => t.join(room, 'Carol', { media: 'deny' }));
  await step('bob and carol connected', () => Promise.all([bob, carol].map((p) => t.waitConnected(p))));
  const pub = await step('a bare page publishes its camera over WHIP', () => openBare(t, 'whip'));
  const res = await step('POST /whip/<room> answers 201 with a Location', async () => {
    const r = await pub.page.evaluate(whipPublish, `/whip/${room}?name=Broadcaster`);
    assert(r.status === 201 && r.location && r.location.startsWith(`/whip/${room}/`), `201 + Location (${JSON.stringify(r)})`);
    return r;
  });
  log(`        Location: ${res.location}`);
  const pid = await step('bob sees the WHIP publisher in the room', () => waitFor(bob.page, () => {
    const li = Array.from(document.querySelectorAll('#people-list [data-participant-ref]'))
      .find((x) => x.textContent.includes('Broadcaster'));
    return li ? li.dataset.participantRef : null;
  }, 15_000, 'bob: Broadcaster in the people list'));
  const broadcaster = { id: pid, name: 'Broadcaster' };
  await Promise.all([bob, carol].map((me) => step(`${me.name} decodes the WHIP publisher's video and gets its audio`, async () => {
    const [a, b] = await waitForRisingFrom(me, broadcaster, 'video', 'framesDecoded', 25_000, 10);
    const [c, d] = await waitForRisingFrom(me, broadcaster, 'audio', 'packetsReceived', 15_000, 10);
    log(`        ${me.name} <- WHIP: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
  })));
  await step('DELETE ends the WHIP session; the room sees it leave', async () => {
    const status = await pub.page.evaluate(deleteSession, 'whip');
    assert(status === 200, `DELETE: 200 (got ${status})`);
    await waitFor(bob.page, (id) => !document.querySelector(`#people-list [data-participant-ref="${id}"]`),
      10_000, 'bob: the WHIP publisher left', pid);
  });
  assertNoConsoleErrors([bob, carol]);
  // The bare page is /healthz: its favicon request is a 404.
  assertNoConsoleErrors([pub], [/status of 404/]);
});

// A WHEP viewer of a page's camera: decodes its video.
scenario('whep', async (t) => {
  const room = randomRoom('e2e-whep');
  log(`  room ${room}`);
  const alice = await step('alice opens the page (publishes)', () => t.join(room, 'Alice'));
  await step('alice connected', () => t.waitConnected(alice));
  const viewer = await step('a bare page views the room over WHEP', () => openBare(t, 'whep'));
  await step('POST /whep/<room>/<alice> answers 201 with a Location', async () => {
    const r = await viewer.page.evaluate(whepView, `/whep/${room}/${alice.id}`);
    assert(r.status === 201 && r.location && r.location.startsWith(`/whep/${room}/`), `201 + Location (${JSON.stringify(r)})`);
  });
  const got = await step('the WHEP viewer decodes alice\'s video and gets her audio',
    () => waitFor(viewer.page, inboundAtLeast, 30_000, 'whep: framesDecoded ≥ 30 and audio packets ≥ 20',
      ['whep', 30, 20]));
  log(`        WHEP viewer: framesDecoded ${got.frames}, audio packets ${got.audio}, ${got.state}`);
  await step('DELETE ends the WHEP session', async () => {
    const status = await viewer.page.evaluate(deleteSession, 'whep');
    assert(status === 200, `DELETE: 200 (got ${status})`);
  });
  assertNoConsoleErrors([alice]);
  assertNoConsoleErrors([viewer], [/status of 404/]);
});
