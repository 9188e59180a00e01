//! SDP negotiation as the web page does it: the initial offer (sendonly audio and video plus the
//! `chat` DataChannel), the server's answer, renegotiation offers from the server, and which
//! payload types (and video codec) the peer publishes with once negotiated.

use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Simulcast, SimulcastLayer};

use super::{Peer, PeerError};

impl Peer {
    /// Publish video as H.264 instead of VP8 (when the SFU accepts both). Call before the answer.
    pub fn prefer_h264(&mut self) {
        self.video_codec = Codec::H264;
    }

    /// The payload type and codec this peer publishes video with, once negotiated.
    pub fn video_send_codec(&self) -> Option<(u8, Codec)> {
        let (_, pt) = self.video?;
        let pt = pt?;
        let codec = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == pt)?
            .spec()
            .codec;
        Some((*pt, codec))
    }

    /// The codec of a received payload type.
    pub fn codec_of(&self, pt: u8) -> Option<Codec> {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| *p.pt() == pt)
            .map(|p| p.spec().codec)
    }

    /// The initial offer: sendonly audio and/or video plus the `chat` DataChannel.
    pub fn create_offer(&mut self, audio: bool, video: bool) -> String {
        self.offer_with(audio, video, true)
    }

    /// A WHIP publisher's offer: sendonly audio and/or video, no data channel.
    pub fn create_whip_offer(&mut self, audio: bool, video: bool) -> String {
        self.offer_with(audio, video, false)
    }

    fn offer_with(&mut self, audio: bool, video: bool, chat: bool) -> String {
        let mut api = self.rtc.sdp_api();
        if audio {
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(self.name.clone()),
                None,
                None,
            );
            self.audio = Some((mid, None));
        }
        if video {
            let simulcast = (!self.simulcast.is_empty()).then(|| {
                let mut s = Simulcast::new();
                for l in &self.simulcast {
                    s.add_send_layer(SimulcastLayer::new(&l.rid));
                }
                s
            });
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(self.name.clone()),
                None,
                simulcast,
            );
            self.video = Some((mid, None));
        }
        if chat && self.chat.is_none() {
            self.chat = Some(api.add_channel("chat".into()));
        }
        let Some((offer, pending)) = api.apply() else {
            return String::new();
        };
        self.pending = Some(pending);
        self.drain();
        offer.to_sdp_string()
    }

    /// A viewer's offer (WHEP): `audio` and `video` recvonly m-lines, nothing sent, no data
    /// channel.
    pub fn create_viewer_offer(&mut self, audio: usize, video: usize) -> String {
        let mut api = self.rtc.sdp_api();
        let kinds = std::iter::repeat_n(MediaKind::Audio, audio)
            .chain(std::iter::repeat_n(MediaKind::Video, video));
        for kind in kinds {
            api.add_media(kind, Direction::RecvOnly, None, None, None);
        }
        let Some((offer, pending)) = api.apply() else {
            return String::new();
        };
        self.pending = Some(pending);
        self.drain();
        offer.to_sdp_string()
    }

    /// Apply the server's answer to our offer.
    pub fn handle_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(PeerError::NoPendingOffer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.resolve_send_pts();
        self.drain();
        Ok(())
    }

    /// Answer a server offer (renegotiation). A pending own offer is rolled back.
    pub fn handle_offer(&mut self, sdp: &str) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        self.pending = None;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.drain();
        Ok(answer.to_sdp_string())
    }

    /// The payload types to publish with: Opus for audio; for video the preferred codec if the
    /// server accepted it, else the other one.
    fn resolve_send_pts(&mut self) {
        let pick = |rtc: &Rtc, mid: Mid, codec: Codec| -> Option<Pt> {
            let media = rtc.media(mid)?;
            let remote = media.remote_pts();
            rtc.codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
                .map(|p| p.pt())
        };
        if let Some((mid, pt)) = &mut self.audio {
            *pt = pick(&self.rtc, *mid, Codec::Opus);
        }
        let (first, second) = match self.video_codec {
            Codec::H264 => (Codec::H264, Codec::Vp8),
            _ => (Codec::Vp8, Codec::H264),
        };
        if let Some((mid, pt)) = &mut self.video {
            *pt = pick(&self.rtc, *mid, first).or_else(|| pick(&self.rtc, *mid, second));
        }
    }
}
