//! Small frames sent together: how the datagrams sealed from a burst of TAP frames are
//! grouped into as few UDP sends as the kernel takes, as a pure plan over offsets.
//!
//! The send thread reads every frame the TAP already holds (never waiting for one more: a
//! lone frame leaves as soon as the TAP is empty, and a burst within [`BATCH_BUDGET`]),
//! seals each into its own datagrams one after another in one buffer, and pushes each
//! datagram here, in order. Back-to-back datagrams to one peer form a *group*: all of
//! one size but the last, which may be shorter and closes it — exactly what one UDP GSO
//! send takes (the receiver gets them coalesced by UDP GRO, one `recvmsg` for the lot). The
//! groups of a batch leave in one `sendmmsg`. The wire format is unchanged (every frame keeps
//! its own seal, counter and replay-window slot), so peers of any version read batches.

use std::time::Duration;

/// Longest a frame waits for the frames behind it (the TAP read loop stops draining then).
pub const BATCH_BUDGET: Duration = Duration::from_micros(25);
/// Most frames read from the TAP into one batch.
pub const MAX_BATCH_FRAMES: usize = 64;
/// A batch is sent once its datagrams hold this many bytes.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How big one group (one UDP GSO send) may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLimits {
    /// Most bytes in one send.
    pub max_bytes: usize,
    /// Most datagrams in one send (the kernel's UDP GSO segment limit).
    pub max_segments: usize,
}

/// Back-to-back datagrams to one peer, sent in one call: `len` bytes from `start` of the
/// batch buffer, cut every `stride` bytes (the last datagram may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group<A> {
    pub to: A,
    pub start: usize,
    pub len: usize,
    pub stride: usize,
    pub count: usize,
}

impl<A> Group<A> {
    /// Whether the last datagram was shorter than the stride (nothing may follow it).
    fn closed(&self) -> bool {
        self.len != self.stride * self.count
    }
}

/// The groups of one batch, in the order their datagrams were pushed.
#[derive(Debug)]
pub struct SendPlan<A> {
    limits: GroupLimits,
    groups: Vec<Group<A>>,
}

impl<A: Copy + PartialEq> SendPlan<A> {
    pub fn new(limits: GroupLimits) -> Self {
        Self {
            limits,
            groups: Vec::new(),
        }
    }

    /// Adds the datagram of `len` bytes at `start` for `to`: it joins the last group when it
    /// follows it in the buffer, goes to the same peer, is no longer than its stride, the
    /// group is not closed and stays within the limits; else it starts a group.
    pub fn push(&mut self, to: A, start: usize, len: usize) {
        let limits = self.limits;
        if let Some(g) = self.groups.last_mut() {
            if g.to == to
                && g.start + g.len == start
                && len <= g.stride
                && !g.closed()
                && g.count < limits.max_segments
                && g.len + len <= limits.max_bytes
            {
                g.len += len;
                g.count += 1;
                return;
            }
        }
        self.groups.push(Group {
            to,
            start,
            len,
            stride: len,
            count: 1,
        });
    }

    pub fn groups(&self) -> &[Group<A>] {
        &self.groups
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn clear(&mut self) {
        self.groups.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GroupLimits = GroupLimits {
        max_bytes: 1000,
        max_segments: 4,
    };

    /// Pushes datagrams of these (peer, length) back to back; returns the plan.
    fn plan(datagrams: &[(u8, usize)]) -> SendPlan<u8> {
        let mut p = SendPlan::new(LIMITS);
        let mut at = 0;
        for &(to, len) in datagrams {
            p.push(to, at, len);
            at += len;
        }
        p
    }

    fn shape(p: &SendPlan<u8>) -> Vec<(u8, usize, usize, usize)> {
        p.groups()
            .iter()
            .map(|g| (g.to, g.start, g.stride, g.count))
            .collect()
    }

    #[test]
    fn small_frames_of_one_size_to_one_peer_leave_in_one_send_in_order() {
        let p = plan(&[(1, 100), (1, 100), (1, 100), (1, 60)]);
        assert_eq!(shape(&p), vec![(1, 0, 100, 4)]);
        assert_eq!(p.groups()[0].len, 360);
    }

    #[test]
    fn a_shorter_datagram_closes_its_group_and_a_longer_one_starts_another() {
        let p = plan(&[(1, 100), (1, 60), (1, 60), (1, 200), (1, 100)]);
        assert_eq!(
            shape(&p),
            vec![(1, 0, 100, 2), (1, 160, 60, 1), (1, 220, 200, 2)]
        );
    }

    #[test]
    fn peers_interleaved_keep_the_order_of_the_frames() {
        let p = plan(&[(1, 100), (2, 100), (1, 100), (1, 100)]);
        assert_eq!(
            shape(&p),
            vec![(1, 0, 100, 1), (2, 100, 100, 1), (1, 200, 100, 2)]
        );
        // Every datagram is in exactly one group, in buffer order.
        let mut next = 0;
        for g in p.groups() {
            assert_eq!(g.start, next);
            next += g.len;
        }
        assert_eq!(next, 400);
    }

    #[test]
    fn a_batch_is_split_where_a_send_would_exceed_the_limits() {
        // Segment limit: four datagrams per send.
        let p = plan(&[(1, 10); 9]);
        assert_eq!(
            shape(&p),
            vec![(1, 0, 10, 4), (1, 40, 10, 4), (1, 80, 10, 1)]
        );
        // Byte limit: 1000 bytes per send.
        let p = plan(&[(1, 400); 3]);
        assert_eq!(shape(&p), vec![(1, 0, 400, 2), (1, 800, 400, 1)]);
    }

    #[test]
    fn a_large_frame_cut_by_the_mtu_stays_one_send_and_a_small_one_follows_it() {
        // A frame cut into MTU-sized segments (the last shorter) closes its group; the next
        // frame, even of the stride's size, starts its own.
        let p = plan(&[(1, 200), (1, 200), (1, 50), (1, 200)]);
        assert_eq!(shape(&p), vec![(1, 0, 200, 3), (1, 450, 200, 1)]);
    }

    #[test]
    fn a_datagram_not_right_behind_the_group_starts_a_new_one() {
        let mut p = SendPlan::new(LIMITS);
        p.push(1u8, 0, 100);
        p.push(1u8, 150, 100);
        assert_eq!(p.groups().len(), 2);
        p.clear();
        assert!(p.is_empty());
    }
}
