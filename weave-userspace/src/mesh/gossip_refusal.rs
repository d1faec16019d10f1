//! Gossip refused because of who sent it: the reasons, and a count of each for `/metrics`
//! (`weave_gossip_refused_total{reason}`). Malformed gossip closes its connection; the
//! others are dropped, each with one log line naming the connection's peer, at most
//! [`LOG_BURST`](super::log_budget::LOG_BURST) lines a second: a peer that floods us with
//! gossip it should not send cannot flood the log, and neither can the honest races of a
//! large mesh forming (a change passed on by a neighbour that does not know yet that we
//! hear it from its origin).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::log_budget::{warn_within, LogBudget};

/// Why gossip was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// It does not validate (versions, short IDs, sizes): the connection closes.
    Malformed,
    /// A record or change of one of our direct peers from a peer other than that one.
    NotFromOwner,
    /// A direct peer's record of itself with another UID than its connection's.
    OtherRun,
    /// A record, change or unicast about a peer we reach, from a neighbour no closer to it
    /// than we are.
    NotAlongRoute,
    /// New peers beyond [`crate::mesh::topology::MAX_PEERS`].
    TooManyPeers,
    /// A claim on our short ID we do not yield to: the claimant is not reachable, or we
    /// changed ours too recently.
    ShortIdClaim,
    /// A gossip-channel unicast that ran out of hops.
    HopLimit,
    /// An IPAM space request from a peer we do not reach.
    UnknownRequester,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Malformed,
        Refusal::NotFromOwner,
        Refusal::OtherRun,
        Refusal::NotAlongRoute,
        Refusal::TooManyPeers,
        Refusal::ShortIdClaim,
        Refusal::HopLimit,
        Refusal::UnknownRequester,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::NotFromOwner => "not_from_owner",
            Refusal::OtherRun => "other_run",
            Refusal::NotAlongRoute => "not_along_route",
            Refusal::TooManyPeers => "too_many_peers",
            Refusal::ShortIdClaim => "short_id_claim",
            Refusal::HopLimit => "hop_limit",
            Refusal::UnknownRequester => "unknown_requester",
        }
    }

    /// What the log line says.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::NotFromOwner => "a direct peer's record is taken from that peer only",
            Refusal::OtherRun => "a record of itself with another UID than its connection's",
            Refusal::NotAlongRoute => "the sender is no closer to that peer than we are",
            Refusal::TooManyPeers => "the mesh is at its peer limit",
            Refusal::ShortIdClaim => "a claim on our short ID we do not yield to",
            Refusal::HopLimit => "out of hops",
            Refusal::UnknownRequester => "a space request from a peer we do not reach",
        }
    }
}

static LOG_BUDGET: Mutex<LogBudget> = Mutex::new(LogBudget::new());

/// Logs a line about refused gossip (counted with [`RefusalCounts::count`]) within the
/// budget.
pub fn log_refused(line: std::fmt::Arguments<'_>) {
    warn_within(&LOG_BUDGET, line);
}

/// How many times gossip was refused, per reason, since the start.
pub struct RefusalCounts([AtomicU64; Refusal::ALL.len()]);

pub static REFUSED: RefusalCounts = RefusalCounts::new();

impl RefusalCounts {
    #[allow(clippy::declare_interior_mutable_const)]
    const fn new() -> Self {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Self([ZERO; Refusal::ALL.len()])
    }

    pub fn count(&self, reason: Refusal) {
        self.0[reason as usize].fetch_add(1, Relaxed);
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), self.0[*r as usize].load(Relaxed)))
            .collect()
    }
}
