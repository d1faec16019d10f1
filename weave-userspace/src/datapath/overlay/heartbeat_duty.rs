//! Which end of a connection sends the plain fast-path heartbeats.
//!
//! The peer's kernel answers each plain heartbeat with an echo, without waking its router.
//! So one end's heartbeats show the fast path both ways to both ends: the peer counts each
//! heartbeat that arrives (it hears us), we count each echo (we hear it). When both ends
//! sent them, every pair of routers exchanged four packets a second; in an idle full mesh
//! of 100 routers on one machine those were half of all the packets on the underlay.
//!
//! Of two routers that both speak
//! [`HEARTBEAT_DUTY_VERSION`](crate::mesh::protocol::HEARTBEAT_DUTY_VERSION), the one with
//! the lower name sends at every check. The other sends too whenever
//! - none of the peer's heartbeats arrived since its last check (the peer's process is
//!   busy or gone, or the path towards us is cut): then, as before, its own heartbeats and
//!   their echoes show it whatever still crosses;
//! - its heartbeat is of the path-MTU floor's size: the search waits for that echo
//!   ([`super::path_mtu::FloorEchoes`]);
//! - it is the first check.

/// The heartbeat duty of one end of one connection.
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatDuty {
    /// This end sends at every check.
    always: bool,
    /// The count of the peer's heartbeats received at the last check.
    peer_heartbeats: Option<u64>,
}

impl HeartbeatDuty {
    /// The duty of a connection from `ours` to `theirs` whose ends both leave the sending
    /// to the lower name when `shared`.
    pub fn between<N: Ord>(ours: &N, theirs: &N, shared: bool) -> Self {
        Self {
            always: !shared || ours < theirs,
            peer_heartbeats: None,
        }
    }

    /// At a check: takes in the count of the peer's heartbeats (and probes) received so far,
    /// and says whether to send a plain heartbeat now; `floor_sized` when it would be of the
    /// path-MTU floor's size.
    pub fn send_now(&mut self, peer_heartbeats: u64, floor_sized: bool) -> bool {
        let arrived = self
            .peer_heartbeats
            .is_some_and(|seen| peer_heartbeats > seen);
        self.peer_heartbeats = Some(peer_heartbeats);
        self.always || floor_sized || !arrived
    }

    /// Whether this end sends at every check.
    pub fn always(&self) -> bool {
        self.always
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_name_sends_at_every_check() {
        let mut duty = HeartbeatDuty::between(&1, &2, true);
        assert!(duty.always());
        for count in [0, 1, 2, 3, 3, 3] {
            assert!(duty.send_now(count, false));
        }
    }

    #[test]
    fn the_higher_name_sends_only_while_the_peers_heartbeats_do_not_arrive() {
        let mut duty = HeartbeatDuty::between(&2, &1, true);
        assert!(!duty.always());
        // The first check: nothing to compare with.
        assert!(duty.send_now(5, false));
        // The peer's heartbeats arrive: its echoes of ours are not needed.
        assert!(!duty.send_now(6, false));
        assert!(!duty.send_now(8, false));
        // They stop (its process is busy, or the path towards us is cut): ours again,
        // every check until they come back.
        assert!(duty.send_now(8, false));
        assert!(duty.send_now(8, false));
        assert!(!duty.send_now(9, false));
    }

    #[test]
    fn a_floor_sized_heartbeat_is_always_sent() {
        let mut duty = HeartbeatDuty::between(&2, &1, true);
        duty.send_now(0, false);
        assert!(duty.send_now(1, true));
        assert!(!duty.send_now(2, false));
    }

    #[test]
    fn without_a_shared_duty_both_ends_send_at_every_check() {
        for (ours, theirs) in [(1, 2), (2, 1)] {
            let mut duty = HeartbeatDuty::between(&ours, &theirs, false);
            assert!(duty.always());
            assert!(duty.send_now(0, false));
            assert!(duty.send_now(1, false));
        }
    }
}
