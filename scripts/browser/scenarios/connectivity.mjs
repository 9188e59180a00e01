// Connectivity behind a firewall that drops UDP (and TCP to plain TURN's port), like a corporate or
// hotel network: ICE over TCP straight to the dataplane, and TURN over TLS on 443. Pages marked
// `netns` run in the test's network namespace, whose nftables rules do the blocking; the others
// run outside it on UDP. Both scenarios run only when named (`bench/tests/browser` phase
// `firewalled` sets E2E_NETNS_CHROMIUM, TURN_URL and LOSS_URL).

import {
  NETNS_CHROMIUM,
  TURN_URL,
  assert,
  assertNoConsoleErrors,
  log,
  randomRoom,
  randomText,
  scenario,
  selectedPair,
  sleep,
  step,
  waitFor,
  waitForRisingFrom,
} from '../lib.mjs';

const LOSS_URL = (process.env.LOSS_URL || '').replace(/\/+$/, '');

async function pairOf(p) {
  const pair = await waitFor(p.page, selectedPair, 10_000, `${p.name}: a selected candidate pair`);
  log(`        ${p.name}: local ${JSON.stringify(pair.local)}, remote ${JSON.stringify(pair.remote)}`);
  return pair;
}

const hasMessage = ([from, text]) => Array.from(document.querySelectorAll('.chat-message'))
  .some((m) => m.dataset.from === from && m.querySelector('.chat-text')?.textContent === text);

/** Everyone decodes everyone else's video and gets their audio; a message from each reaches all. */
async function mediaAndChat(t, pages) {
  const pairs = pages.flatMap((me) => pages.filter((o) => o !== me).map((o) => [me, o]));
  await Promise.all(pairs.map(([me, other]) => step(`${me.name} decodes ${other.name}'s video and gets its audio`, async () => {
    const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 30_000, 5);
    const [c, d] = await waitForRisingFrom(me, other, 'audio', 'packetsReceived', 20_000, 10);
    log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
  })));
  await Promise.all(pages.map((p) => t.waitChatOpen(p, 15_000)));
  for (const from of pages) {
    const text = randomText(`hello from ${from.name}`);
    await from.page.fill('#chat-input', text);
    await from.page.click('#chat-send', { timeout: 10_000 });
    await Promise.all(pages.filter((p) => p !== from).map((p) => waitFor(p.page, hasMessage, 10_000,
      `${p.name}: the chat message from ${from.name}`, [from.id, text])));
  }
  log(`        chat: every page got every other page's message`);
}

function needsFirewall(t) {
  if (!NETNS_CHROMIUM || !TURN_URL) t.skip('needs E2E_NETNS_CHROMIUM and TURN_URL (the test harness sets them)');
}

// ICE-TCP: one page on UDP, one behind the UDP-dropping firewall that reaches the dataplane's
// passive TCP candidate, one behind it through TURN over TLS (relay-only policy). All three
// see, hear and chat with each other. Then 5 % of the dataplane's TCP segments toward the
// namespace are dropped for 10 s: the TCP page's video stalls at worst (head-of-line blocking),
// never deadlocks, and everyone still decodes after.
scenario('ice-tcp', async (t) => {
  needsFirewall(t);
  if (!LOSS_URL) t.skip('needs LOSS_URL (the test harness sets it)');
  const room = randomRoom('e2e-icetcp');
  log(`  room ${room}`);
  const udp = await step('udp opens the page outside the firewall', () => t.join(room, 'Udp'));
  const tcp = await step('tcp opens the page behind the firewall', () => t.join(room, 'Tcp', { netns: true }));
  const relay = await step('relay opens the page behind the firewall, relay only',
    () => t.join(room, 'Relay', { netns: true, query: { iceTransportPolicy: 'relay' } }));
  const all = [udp, tcp, relay];
  await step('all connected', () => Promise.all(all.map((p) => t.waitConnected(p, 40_000))));

  await step('udp: the selected pair is UDP', async () => {
    const pair = await pairOf(udp);
    assert(pair.remote.protocol === 'udp', `udp page on UDP (${JSON.stringify(pair)})`);
  });
  await step('tcp: the selected pair is TCP to the dataplane\'s passive host candidate', async () => {
    const pair = await pairOf(tcp);
    assert(pair.local.protocol === 'tcp' && pair.remote.protocol === 'tcp', `a TCP pair (${JSON.stringify(pair)})`);
    assert(pair.remote.type === 'host' && pair.remote.tcpType === 'passive', `to the host passive candidate (${JSON.stringify(pair)})`);
    assert(pair.local.type !== 'relay', `not relayed (${JSON.stringify(pair)})`);
  });
  await step('relay: the selected pair is relayed by TURN over TLS', async () => {
    const pair = await pairOf(relay);
    assert(pair.local.type === 'relay' && pair.local.relayProtocol === 'tls', `a TLS relay candidate (${JSON.stringify(pair)})`);
  });
  await mediaAndChat(t, all);

  const loss = async (what) => {
    const r = await fetch(`${LOSS_URL}/${what}`, { method: 'POST' });
    assert(r.ok, `${what}: HTTP ${r.status} ${await r.text()}`);
  };
  await step('5 % of the TCP segments toward the firewalled pages are dropped for 10 s', async () => {
    await loss('tcploss');
    try {
      await sleep(10_000);
    } finally {
      await loss('notcploss');
    }
  });
  await step('after the loss everyone still decodes everyone (no deadlock on the TCP path)', async () => {
    await Promise.all(all.flatMap((me) => all.filter((o) => o !== me).map(async (other) => {
      const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 30_000, 10);
      log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}`);
    })));
    const states = await Promise.all(all.map((p) => p.page.evaluate(() => window.sfu.pc.connectionState)));
    assert(states.every((s) => s === 'connected'), `still connected (${states.join(', ')})`);
  });
  assertNoConsoleErrors(all);
}, { netns: true });

// ICE-TCP off: the firewalled page has no TCP candidate to reach, so it connects through TURN
// over TLS on 443 (its policy is the default `all`: nothing forces the relay but the firewall).
scenario('turn-tls', async (t) => {
  needsFirewall(t);
  const room = randomRoom('e2e-turntls');
  log(`  room ${room}`);
  const udp = await step('udp opens the page outside the firewall', () => t.join(room, 'Udp'));
  const fw = await step('fw opens the page behind the firewall', () => t.join(room, 'Fw', { netns: true }));
  await step('both connected', () => Promise.all([udp, fw].map((p) => t.waitConnected(p, 40_000))));
  await step('fw: the selected pair is relayed by TURN over TLS', async () => {
    const pair = await pairOf(fw);
    assert(pair.local.type === 'relay' && pair.local.relayProtocol === 'tls', `a TLS relay candidate (${JSON.stringify(pair)})`);
  });
  await mediaAndChat(t, [udp, fw]);
  assertNoConsoleErrors([udp, fw]);
}, { netns: true });
