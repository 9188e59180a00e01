#!/usr/bin/env python3
"""WHIP publisher and WHEP viewer built on aiortc, an independent (non-browser) WebRTC stack.

    aiortc_whip.py whip URL SECONDS            publish a moving test picture (VP8) and a tone
    aiortc_whip.py whep URL SECONDS MIN_FRAMES view: decode video frames, count them

Each mode POSTs its SDP offer (`application/sdp`), applies the 201 answer, runs for SECONDS
(the viewer stops early once it decoded MIN_FRAMES), DELETEs its Location, and prints one JSON
line with what happened. Exit status 0 only if the peer connection connected and (viewer) at
least MIN_FRAMES frames were decoded. Used by `bench/tests/e2e/interop.rs`.
"""

import asyncio
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

from aiortc import (
    AudioStreamTrack,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from av import AudioFrame, VideoFrame


class MovingPicture(VideoStreamTrack):
    """320x240 frames whose content changes every frame (so the encoder sends real data)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.n += 1
        frame = VideoFrame(320, 240, "yuv420p")
        # Luma: a bright bar moving across a dark picture; chroma: a slowly changing tint.
        x = (self.n * 4) % 320
        row = bytes(255 if x - 20 <= c < x else 16 for c in range(320))
        y = frame.planes[0]
        y.update(row * 240 if y.line_size == 320 else (row + bytes(y.line_size - 320)) * 240)
        for plane in frame.planes[1:]:
            plane.update(bytes([(self.n * 3) % 256]) * (plane.line_size * plane.height))
        frame.pts = pts
        frame.time_base = time_base
        return frame


class Tone(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames at 48 kHz."""

    def __init__(self):
        super().__init__()
        self.t = 0

    async def recv(self):
        frame = await super().recv()  # paced silence: keep its timing, fill in samples
        n = frame.samples
        pcm = bytearray()
        for i in range(n):
            v = int(math.sin(2 * math.pi * 440 * (self.t + i) / 48000) * 8000)
            pcm += v.to_bytes(2, "little", signed=True)
        self.t += n
        out = AudioFrame(format="s16", layout="mono", samples=n)
        out.planes[0].update(bytes(pcm))
        out.sample_rate = 48000
        out.pts = frame.pts
        out.time_base = fractions.Fraction(1, 48000)
        return out


def http(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def negotiate(pc, url):
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await asyncio.to_thread(
        http, "POST", url, pc.localDescription.sdp.encode()
    )
    if status != 201:
        raise RuntimeError(f"POST {url}: {status} {answer.strip()}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return urljoin(url, headers.get("Location") or headers.get("location"))


async def wait_connected(pc, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pc.connectionState == "connected":
            return True
        if pc.connectionState == "failed":
            return False
        await asyncio.sleep(0.05)
    return False


async def whip(url, seconds):
    pc = RTCPeerConnection()
    video = MovingPicture()
    pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    location = await negotiate(pc, url)
    connected = await wait_connected(pc, 15)
    await asyncio.sleep(seconds)
    status, _, _ = await asyncio.to_thread(http, "DELETE", location)
    await pc.close()
    result = {"connected": connected, "frames_sent": video.n, "delete": status}
    print(json.dumps(result), flush=True)
    return connected and status == 200


async def whep(url, seconds, min_frames):
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    counts = {"video": 0, "audio": 0, "width": 0}
    done = asyncio.Event()

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            counts[track.kind] += 1
            if track.kind == "video":
                counts["width"] = frame.width
                if counts["video"] >= min_frames:
                    done.set()

    @pc.on("track")
    def on_track(track):
        asyncio.ensure_future(consume(track))

    location = await negotiate(pc, url)
    connected = await wait_connected(pc, 15)
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    status, _, _ = await asyncio.to_thread(http, "DELETE", location)
    await pc.close()
    result = {
        "connected": connected,
        "video_frames": counts["video"],
        "audio_frames": counts["audio"],
        "width": counts["width"],
        "delete": status,
    }
    print(json.dumps(result), flush=True)
    return connected and counts["video"] >= min_frames and status == 200


def main():
    mode, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "whip":
        ok = asyncio.run(whip(url, seconds))
    elif mode == "whep":
        ok = asyncio.run(whep(url, seconds, int(sys.argv[4])))
    else:
        sys.exit(f"unknown mode {mode}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
