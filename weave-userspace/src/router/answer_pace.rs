//! What a neighbour's gossip makes us send to others, paced: another run's record of a
//! direct peer passed to that peer so that it outbids it, and an ask to our own next hop
//! for the record of a peer whose gossip came the wrong way. Each goes at most once per
//! peer concerned per [`ANSWER_INTERVAL`]: one lie repeated thousands of times (or the
//! same honest race, over and over while a large mesh forms) costs the others one message
//! a second, not one per copy — unpaced, a flood of one forged record filled the owner's
//! command queue and closed our connection to it as a slow peer.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::mesh::peer_name::PeerName;

/// Shortest time between two answers about the same peer.
pub const ANSWER_INTERVAL: Duration = Duration::from_secs(1);

/// Above this many peers remembered, those answered longer ago than [`ANSWER_INTERVAL`]
/// are forgotten.
const REMEMBERED: usize = 1024;

/// When we last answered about each peer.
#[derive(Debug, Default)]
pub struct AnswerPace {
    last: BTreeMap<PeerName, Instant>,
}

impl AnswerPace {
    /// Whether an answer about `peer` may go at `now` (and if so, it counts as sent).
    pub fn allow(&mut self, peer: PeerName, now: Instant) -> bool {
        if let Some(at) = self.last.get(&peer) {
            if now.saturating_duration_since(*at) < ANSWER_INTERVAL {
                return false;
            }
        }
        if self.last.len() >= REMEMBERED {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < ANSWER_INTERVAL);
        }
        self.last.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(last: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn one_answer_per_peer_a_second_however_often_asked() {
        let mut pace = AnswerPace::default();
        let t0 = Instant::now();
        assert!(pace.allow(name(1), t0));
        for ms in [0, 1, 500, 999] {
            assert!(
                !pace.allow(name(1), t0 + Duration::from_millis(ms)),
                "{ms} ms"
            );
        }
        assert!(pace.allow(name(2), t0), "another peer has its own pace");
        assert!(pace.allow(name(1), t0 + ANSWER_INTERVAL));
        assert!(!pace.allow(name(1), t0 + ANSWER_INTERVAL));
    }

    #[test]
    fn peers_answered_long_ago_are_forgotten_when_many_are_remembered() {
        let mut pace = AnswerPace::default();
        let t0 = Instant::now();
        for i in 0..REMEMBERED {
            let bytes = (i as u64).to_be_bytes();
            assert!(pace.allow(
                PeerName::from_bytes([2, 1, bytes[4], bytes[5], bytes[6], bytes[7]]),
                t0
            ));
        }
        assert_eq!(pace.last.len(), REMEMBERED);
        assert!(pace.allow(name(1), t0 + ANSWER_INTERVAL));
        assert_eq!(pace.last.len(), 1, "the old ones went");
    }
}
