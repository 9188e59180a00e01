//! Joining simulated viewers that cannot renegotiate (WHEP): recvonly slots in the offer.

use control::{Request, Response};

use super::Sim;

impl Sim {
    /// Join peer `id` to `room` as a viewer (WHEP) with `audio` and `video` recvonly slots,
    /// filled from `from`'s tracks (anyone's when `None`). Returns the response.
    pub fn join_viewer(
        &mut self,
        id: &str,
        room: &str,
        from: Option<&str>,
        audio: usize,
        video: usize,
    ) -> Response {
        if !self.peers.iter().any(|p| p.id == id) {
            self.add_peer(id);
        }
        let offer = self.peer_mut(id).peer.create_viewer_offer(audio, video);
        let resp = self.command(Request::Join {
            room: room.into(),
            participant: id.into(),
            name: format!("name-{id}"),
            offer: Some(offer),
            epoch: None,
            grants: control::Grants::default(),
            identity: None,
            viewer: Some(control::Viewer {
                from: from.map(str::to_string),
            }),
        });
        self.after_join(id, resp)
    }
}
