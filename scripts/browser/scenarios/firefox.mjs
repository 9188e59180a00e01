// Firefox: Debian's firefox-esr (driven over WebDriver BiDi by puppeteer-core) and Chromium in
// one room — each decodes the other's video, gets its audio, and their chat crosses. Runs only
// when named, against a node on a veth address (Firefox gathers no loopback candidates), which
// `bench/tests/browser` phase `constrained` provides (with E2E_FIREFOX set).

import {
  FIREFOX,
  assert,
  assertNoConsoleErrors,
  log,
  randomRoom,
  randomText,
  scenario,
  step,
  waitFor,
  waitForRisingFrom,
} from '../lib.mjs';

const hasMessage = ([from, text]) => Array.from(document.querySelectorAll('.chat-message'))
  .some((m) => m.dataset.from === from && m.querySelector('.chat-text')?.textContent === text);

// In-page: send a chat message through the page's own form.
function sendChat(text) {
  const input = document.querySelector('#chat-input');
  input.value = text;
  input.dispatchEvent(new Event('input', { bubbles: true }));
  document.querySelector('#chat-send').click();
}

scenario('firefox', async (t) => {
  if (!FIREFOX) t.skip('needs E2E_FIREFOX (the test harness sets it)');
  const room = randomRoom('e2e-firefox');
  log(`  room ${room}`);
  const fox = await step('fox opens the page in Firefox', () => t.join(room, 'Fox', { firefox: true }));
  const chrome = await step('chrome opens the page in Chromium', () => t.join(room, 'Chrome'));
  await step('both connected', () => Promise.all([fox, chrome].map((p) => t.waitConnected(p, 30_000))));
  const ua = await fox.page.evaluate(() => navigator.userAgent);
  assert(/Firefox\//.test(ua), `the fox page runs in Firefox (${ua})`);
  log(`        ${ua}`);
  for (const [me, other] of [[chrome, fox], [fox, chrome]]) {
    await step(`${me.name} decodes ${other.name}'s video and gets its audio`, async () => {
      const [a, b] = await waitForRisingFrom(me, other, 'video', 'framesDecoded', 30_000, 10);
      const [c, d] = await waitForRisingFrom(me, other, 'audio', 'packetsReceived', 20_000, 10);
      log(`        ${me.name} <- ${other.name}: framesDecoded ${a} -> ${b}, audio packets ${c} -> ${d}`);
    });
  }
  await Promise.all([fox, chrome].map((p) => t.waitChatOpen(p, 15_000)));
  for (const [from, to] of [[fox, chrome], [chrome, fox]]) {
    const text = randomText(`hello from ${from.name}`);
    await step(`${from.name}'s chat message reaches ${to.name}`, async () => {
      await from.page.evaluate(sendChat, text);
      await waitFor(to.page, hasMessage, 10_000, `${to.name}: the message from ${from.name}`, [from.id, text]);
    });
  }
  assertNoConsoleErrors([chrome]);
  // Firefox logs WebRTC warnings as errors in some versions (e.g. about unused ICE candidates).
  assertNoConsoleErrors([fox], [/ICE|candidate|WebRTC/i]);
}, { netns: true });
