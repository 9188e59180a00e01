//! What the simulated peers received on their chat channels (chat, events the SFU sends there).

use super::Sim;

impl Sim {
    /// The string lists `field` of every channel message of type `kind` `id` received, in order
    /// (e.g. `active_speakers` / `speakers`, `layers` / `active`).
    pub fn channel_lists(&self, id: &str, kind: &str, field: &str) -> Vec<Vec<String>> {
        self.chat_of(id)
            .into_iter()
            .filter(|m| m["type"] == kind)
            .map(|m| {
                m[field]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Chat messages received by `id`, parsed.
    pub fn chat_of(&self, id: &str) -> Vec<serde_json::Value> {
        self.peer(id)
            .peer
            .received
            .chat
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect()
    }
}
