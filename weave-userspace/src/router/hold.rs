//! Holding a direct peer whose control connection went while its fast path still answers:
//! a dead control connection is not a dead data path (a router killed, crashed or being
//! upgraded leaves its programs running, and they answer our heartbeats with echoes,
//! `weave_ebpf_common::heartbeat`). The peer's entries stay in the data path, routed as
//! they were, and our heartbeats keep going to it; each path check looks at what arrived
//! from it (its own heartbeats and the echoes of ours) and decides, purely, whether to go
//! on holding it ([`HeldPeer::check`]). A peer silent for [`HOLD_SILENCE`] is removed, so a
//! host that is really gone leaves the data path at most `HOLD_SILENCE` plus two path
//! checks after the last heartbeat or echo from it; none is held longer than
//! [`HOLD_LIMIT`], answering or not.

use std::time::{Duration, Instant};

use crate::datapath::overlay::Placement;
use crate::mesh::protocol::Hello;

/// How long a held peer may stay silent (no heartbeat, no echo) before it is removed: a
/// few heartbeat intervals (one a second), so that a lost echo or a late check does not
/// cut a live path.
pub const HOLD_SILENCE: Duration = Duration::from_secs(6);

/// Longest a peer is held after its connection went, answering or not: a router down this
/// long is not restarting, and the rest of the mesh has forgotten it by then.
pub const HOLD_LIMIT: Duration = Duration::from_secs(600);

/// A direct peer held after its connection went.
#[derive(Clone, Debug)]
pub struct HeldPeer {
    /// Where it sits in the data paths (left as it was).
    pub placement: Placement,
    /// Its hello on the lost connection (for status).
    pub hello: Hello,
    /// When the hold began: the first path check after the loss (the core reads no clock).
    pub since: Option<Instant>,
    /// When its heartbeats or echoes were last seen growing (while connected: its
    /// heartbeats' last growth, as the fast-path choice saw it).
    pub last_heard: Option<Instant>,
    /// Heartbeats and echoes received from it at the last check.
    count: Option<u64>,
    /// Whether the last check found new heartbeats or echoes.
    pub answering: bool,
    /// The lost connection's remote address and direction (for status).
    pub remote: std::net::SocketAddr,
    pub outbound: bool,
}

/// What a path check decides for a held peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldVerdict {
    /// Keep its entries: its fast path answers (or has not been silent long enough).
    Hold,
    /// Remove it: nothing arrived from it for this long.
    Silent(Duration),
    /// Remove it: held for [`HOLD_LIMIT`].
    TooLong,
}

impl HeldPeer {
    /// A peer whose connection (to or from `remote`) went, heard last at `last_heard`
    /// (`None`: not known).
    pub fn new(
        placement: Placement,
        hello: Hello,
        last_heard: Option<Instant>,
        remote: std::net::SocketAddr,
        outbound: bool,
    ) -> Self {
        Self {
            placement,
            hello,
            since: None,
            last_heard,
            count: None,
            answering: true,
            remote,
            outbound,
        }
    }

    /// One path check at `now`: `received` heartbeats and echoes from the peer so far.
    pub fn check(&mut self, now: Instant, received: u64) -> HoldVerdict {
        let since = *self.since.get_or_insert(now);
        let last_heard = *self.last_heard.get_or_insert(now);
        // The first check only takes the counter (it cannot tell growth from the past).
        let first = self.count.is_none();
        let grew = self.count.is_some_and(|c| received != c);
        self.count = Some(received);
        self.answering = grew || (first && self.answering);
        let last_heard = if grew {
            self.last_heard = Some(now);
            now
        } else {
            last_heard
        };
        let silent = now.saturating_duration_since(last_heard);
        if silent >= HOLD_SILENCE {
            HoldVerdict::Silent(silent)
        } else if now.saturating_duration_since(since) >= HOLD_LIMIT {
            HoldVerdict::TooLong
        } else {
            HoldVerdict::Hold
        }
    }

    /// `control connection lost Ns ago, fast path answering` (or `silent Ns`), what status
    /// shows after `held`.
    pub fn describe(&self, now: Instant) -> String {
        let lost = self
            .since
            .map_or(0, |s| now.saturating_duration_since(s).as_secs());
        let path = match self.last_heard {
            Some(at) if !self.answering => format!(
                "fast path silent {}s",
                now.saturating_duration_since(at).as_secs()
            ),
            _ => "fast path answering".to_string(),
        };
        format!("control connection lost {lost}s ago, {path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::overlay::Overlay;
    use crate::datapath::DatapathPeer;
    use crate::mesh::peer_name::{PeerName, ShortId};

    fn held(last_heard: Option<Instant>) -> HeldPeer {
        let name = PeerName::from_bytes([0x0a, 0, 0, 0, 0, 2]);
        let peer = DatapathPeer {
            short_id: ShortId::new(2).unwrap(),
            underlay: std::net::Ipv4Addr::new(10, 0, 0, 2),
            next_hop: ShortId::new(2).unwrap(),
        };
        let placement = Placement {
            name,
            peer,
            overlay: Overlay::Fastdp,
            watched: true,
            sleeve: crate::sleeve::SleeveFeatures {
                relays: true,
                bundles: true,
            },
        };
        let hello = Hello {
            name,
            nickname: "host2".into(),
            short_id: ShortId::new(2).unwrap(),
            uid: 2000,
            underlay: std::net::Ipv4Addr::new(10, 0, 0, 2),
            data_port: 6784,
            trusted_subnets: Vec::new(),
        };
        let remote = std::net::SocketAddr::from(([10, 0, 0, 2], 6783));
        HeldPeer::new(placement, hello, last_heard, remote, true)
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_peer_is_held_while_heartbeats_or_echoes_grow() {
        let t0 = Instant::now();
        let mut h = held(Some(t0));
        for n in 1..=60u64 {
            assert_eq!(
                h.check(t0 + S * n as u32, n),
                HoldVerdict::Hold,
                "check {n}"
            );
        }
        assert!(h.answering);
        assert_eq!(h.since, Some(t0 + S));
        assert_eq!(
            h.describe(t0 + S * 61),
            "control connection lost 60s ago, fast path answering"
        );
    }

    #[test]
    fn a_silent_peer_is_removed_hold_silence_after_it_was_last_heard() {
        let t0 = Instant::now();
        let mut h = held(Some(t0));
        assert_eq!(
            h.check(t0 + S, 10),
            HoldVerdict::Hold,
            "the first check takes the count"
        );
        assert_eq!(h.check(t0 + S * 2, 11), HoldVerdict::Hold);
        // Silent from here: heard last at t0 + 2 s.
        for n in 3..8 {
            assert_eq!(h.check(t0 + S * n, 11), HoldVerdict::Hold, "{n} s");
        }
        assert!(!h.answering);
        assert_eq!(
            h.describe(t0 + S * 7),
            "control connection lost 6s ago, fast path silent 5s"
        );
        assert_eq!(h.check(t0 + S * 8, 11), HoldVerdict::Silent(HOLD_SILENCE));
    }

    #[test]
    fn silence_counts_from_before_the_connection_went() {
        // Heard last 5 s before the first check after the loss: one more second.
        let t0 = Instant::now();
        let mut h = held(Some(t0));
        assert_eq!(h.check(t0 + S * 5, 40), HoldVerdict::Hold);
        assert_eq!(h.check(t0 + S * 6, 40), HoldVerdict::Silent(S * 6));
    }

    #[test]
    fn a_peer_never_heard_is_removed_after_hold_silence_from_the_first_check() {
        let t0 = Instant::now();
        let mut h = held(None);
        assert_eq!(h.check(t0, 0), HoldVerdict::Hold);
        assert_eq!(
            h.check(t0 + HOLD_SILENCE, 0),
            HoldVerdict::Silent(HOLD_SILENCE)
        );
    }

    #[test]
    fn no_peer_is_held_longer_than_the_limit() {
        let t0 = Instant::now();
        let mut h = held(Some(t0));
        let mut n = 0;
        let mut at = t0;
        while at < t0 + HOLD_LIMIT {
            n += 1;
            at = t0 + S * n;
            assert_eq!(h.check(at, u64::from(n)), HoldVerdict::Hold);
        }
        assert_eq!(h.check(at + S, u64::from(n) + 1), HoldVerdict::TooLong);
    }

    #[test]
    fn a_counter_that_starts_over_counts_as_heard() {
        let t0 = Instant::now();
        let mut h = held(Some(t0));
        assert_eq!(h.check(t0 + S, 500), HoldVerdict::Hold);
        for n in 2..10 {
            assert_eq!(h.check(t0 + S * n, u64::from(n)), HoldVerdict::Hold);
        }
    }
}
