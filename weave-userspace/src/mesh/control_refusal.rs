//! Control connections refused or closed for misbehaving, by reason: counted for `/metrics`,
//! and logged one line each — at most [`LOG_BURST`] lines a second, so a flood of garbage
//! connections cannot flood the log (a line then says how many went unlogged).

pub use super::log_budget::LOG_BURST;
use super::log_budget::{warn_within, LogBudget};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Why a control connection was refused or closed by us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many inbound handshakes were under way ([`crate::router`]'s limit).
    HandshakeLimit,
    /// An inbound handshake failed: not a weave-router, a bad preamble or hello, too slow.
    Handshake,
    /// A frame before the handshake was done announced more than the handshake allows.
    OversizeFrame,
    /// Its command queue overflowed: the peer does not read what we send.
    SlowPeer,
    /// A write made no progress for the write-stall limit.
    WriteStalled,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::HandshakeLimit,
        Refusal::Handshake,
        Refusal::OversizeFrame,
        Refusal::SlowPeer,
        Refusal::WriteStalled,
    ];

    /// The label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::Handshake => "handshake_failed",
            Refusal::OversizeFrame => "oversize_frame",
            Refusal::SlowPeer => "slow_peer",
            Refusal::WriteStalled => "write_stalled",
        }
    }
}

/// Refusals counted by this process, by reason (in the order of [`Refusal::ALL`]).
pub struct RefusalCounters([AtomicU64; Refusal::ALL.len()]);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

pub static COUNTERS: RefusalCounters = RefusalCounters([ZERO; Refusal::ALL.len()]);

impl RefusalCounters {
    pub fn count(&self, reason: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.0[i].fetch_add(1, Relaxed);
    }

    /// (label, count) for every reason.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.0)
            .map(|(r, c)| (r.label(), c.load(Relaxed)))
            .collect()
    }
}

static BUDGET: Mutex<LogBudget> = Mutex::new(LogBudget::new());

/// Counts a refusal and logs `line` (naming the source and the reason) within the budget.
pub fn refuse(reason: Refusal, line: std::fmt::Arguments<'_>) {
    COUNTERS.count(reason);
    warn_within(&BUDGET, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_counted_under_its_own_label() {
        let counters = RefusalCounters([ZERO; Refusal::ALL.len()]);
        counters.count(Refusal::SlowPeer);
        counters.count(Refusal::SlowPeer);
        counters.count(Refusal::HandshakeLimit);
        let snap = counters.snapshot();
        assert!(snap.contains(&("slow_peer", 2)));
        assert!(snap.contains(&("handshake_limit", 1)));
        assert!(snap.contains(&("write_stalled", 0)));
    }
}
