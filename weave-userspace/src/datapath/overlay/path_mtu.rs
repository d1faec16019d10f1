//! The path MTU of one connection's fast path, verified by probing.
//!
//! Pure: the router asks once a second which probes to send ([`PathMtuSearch::probes`]),
//! the data path writes them into the bridge's port towards the peers, where the programs
//! address them to the peer like copies of a broadcast (DF set, never fragmented), and the
//! peer reports the largest probe of each round that arrived ([`PathMtuSearch::seen`]).
//! Sizes are outer IPv4 packet lengths; a container frame of MTU `m` makes an outer packet
//! of `m + 50` bytes on the underlay.
//!
//! The search keeps the largest size known to cross (`verified`) and the smallest known not
//! to (`too_big`), and sends a round of [`PROBES_PER_ROUND`] sizes spread between them, so
//! that any MTU between [`FLOOR`] and a jumbo frame is found exactly in a few rounds. A round
//! is concluded when the peer reports all of it arrived, or [`ROUND_TIMEOUT`] after it
//! was sent (what was not reported by then is taken as too big). A report that comes after
//! its round timed out (a peer too busy to report on time: a loaded host, a mesh forming)
//! still counts: what it shows crossed is verified, and the loss taken back, so a slow
//! report never leaves a connection with a smaller MTU or on the sleeve for nothing (the
//! last [`LATE_ROUNDS_KEPT`] rounds are kept for it), and later rounds wait longer (twice
//! the lateness, up to [`MAX_ROUND_TIMEOUT`]; back down as reports come on time). The path
//! is said to carry only small frames when even the [`FLOOR`] probe is lost
//! [`FLOOR_FAILURES`] rounds in a row over [`FLOOR_LOST_AFTER`], long enough for a late
//! report to come. While the floor is in question the plain heartbeats to the peer are of
//! its size, and an echo of one, which the peer's kernel sends back without its router,
//! counts as the round's floor probe reported ([`FloorEchoes`]). Once found, the MTU is
//! checked again every [`RECHECK_EVERY`] (the size itself and the ceiling: a path that
//! shrinks or grows is noticed). An ICMP "fragmentation needed" from the underlay about our
//! own outer packets ([`PathMtuSearch::frag_needed`]) is a hint, never a verdict: it bounds
//! the search and starts a round at once, and the probes decide.

use std::time::{Duration, Instant};

/// The smallest outer packet probed: IPv4's minimum datagram every host must take.
pub const FLOOR: u16 = 576;
/// Probes per round.
pub const PROBES_PER_ROUND: usize = 8;
/// How long after a round is sent its missing probes count as lost.
pub const ROUND_TIMEOUT: Duration = Duration::from_millis(1500);
/// Rounds in a row that must lose even the [`FLOOR`] probe before the path is said to
/// carry only small frames.
pub const FLOOR_FAILURES: u8 = 2;
/// How long, from the first of those rounds, the floor must keep failing before the path
/// is said to carry only small frames: a peer on a saturated machine reports seconds late,
/// and its late reports take the failures back ([`PathMtuSearch::seen`]).
pub const FLOOR_LOST_AFTER: Duration = Duration::from_secs(10);
/// How often a found MTU is checked again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// Concluded rounds kept for a report that comes after [`ROUND_TIMEOUT`].
pub const LATE_ROUNDS_KEPT: usize = 3;
/// The longest a round waits for its report: [`ROUND_TIMEOUT`] grows up to this when
/// reports come late (twice the lateness seen), and shrinks back as they come on time.
pub const MAX_ROUND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after its timeout a round may still be concluded by it: checks come once a
/// second, so a later one means the router itself was held up ([`PathMtuSearch::tick`]).
pub const OVERDUE_BY: Duration = Duration::from_secs(3);

/// A round of probes in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Round {
    number: u32,
    sizes: Vec<u16>,
    sent_at: Instant,
    /// When a timeout that came while our router was held up lets the round be concluded
    /// ([`PathMtuSearch::tick`]; otherwise `sent_at` and the timeout say).
    extended_until: Option<Instant>,
    /// The largest probe of the round the peer reported, so far.
    largest_seen: Option<u16>,
}

/// Rounds in a row in which the floor probe was lost.
#[derive(Clone, Copy, Debug)]
struct FloorFailures {
    rounds: u8,
    /// When the first of them was sent.
    since: Instant,
}

/// What concluding a round changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// [`PathMtuSearch::limit`] or [`PathMtuSearch::only_small_frames`] changed: the new
    /// limit.
    pub verified_changed: Option<Option<u16>>,
}

/// The probing state of one connection.
#[derive(Clone, Debug)]
pub struct PathMtuSearch {
    /// The largest outer packet the local side could send (the underlay device's MTU).
    ceiling: u16,
    /// The largest size known to cross.
    verified: Option<u16>,
    /// The largest outer packet to send: what the last finished search found, lowered at
    /// once by a failed check or an ICMP hint (see [`PathMtuSearch::limit`]).
    limit: Option<u16>,
    /// The smallest size known not to cross.
    too_big: Option<u16>,
    /// Whether rounds found that not even [`FLOOR`] crosses ([`FLOOR_FAILURES`] rounds in a
    /// row over [`FLOOR_LOST_AFTER`]: a link that is simply cut is the heartbeats' to notice).
    floor_lost: bool,
    /// The floor probe's losses in a row, if the last round that had it lost it.
    floor_failures: Option<FloorFailures>,
    round: Option<Round>,
    /// When the verified MTU is checked again.
    recheck_at: Option<Instant>,
    /// The rounds concluded last (at most [`LATE_ROUNDS_KEPT`], oldest first), for a
    /// report that comes after they timed out.
    concluded: Vec<Round>,
    /// The largest probe such a late report showed crossing, until the next
    /// [`PathMtuSearch::tick`] takes it in.
    late_crossed: Option<u16>,
    /// When the earliest round reported late was sent, until the next tick measures it.
    late_sent_at: Option<Instant>,
    /// How long a round waits for its report now (from [`ROUND_TIMEOUT`] up to
    /// [`MAX_ROUND_TIMEOUT`]).
    timeout: Duration,
}

impl PathMtuSearch {
    /// A search for a path whose local end sends at most `ceiling` bytes (at least [`FLOOR`]).
    pub fn new(ceiling: u16) -> Self {
        Self {
            ceiling: ceiling.max(FLOOR),
            verified: None,
            limit: None,
            too_big: None,
            floor_lost: false,
            floor_failures: None,
            round: None,
            recheck_at: None,
            concluded: Vec::new(),
            late_crossed: None,
            late_sent_at: None,
            timeout: ROUND_TIMEOUT,
        }
    }

    /// The largest outer packet verified to cross, if any is yet.
    pub fn verified(&self) -> Option<u16> {
        self.verified
    }

    /// The largest outer packet to send now: `None` until the first search finishes (the
    /// rounds in between do not move it up and down); then what it found. A failed check
    /// or an ICMP hint lowers it at once; only a finished search raises it.
    pub fn limit(&self) -> Option<u16> {
        self.limit
    }

    /// Whether the search has run and found that not even [`FLOOR`] crosses: the fast path
    /// carries only small frames.
    pub fn only_small_frames(&self) -> bool {
        self.floor_lost
    }

    /// Whether the search is done (until the next check).
    pub fn settled(&self) -> bool {
        self.round.is_none() && self.recheck_at.is_some()
    }

    /// Whether the floor's crossing is in question now: a round is in flight or due, or
    /// the floor failed lately (a lost floor among them: its failures stay recorded until
    /// it crosses again). Plain heartbeats are then sent at [`FLOOR`] size
    /// ([`FloorEchoes`]).
    pub fn wants_floor_echoes(&self) -> bool {
        !self.settled() || self.floor_failures.is_some()
    }

    /// An echo of a heartbeat of [`FLOOR`] bytes came back through the fast path: the peer's
    /// kernel turned it round, so the floor crosses both ways now, whatever the peer's report
    /// of the round in flight, which its router may send late, will say. Taken as a report
    /// that the round's floor probe arrived.
    pub fn floor_echoed(&mut self) {
        if let Some(number) = self.round.as_ref().map(|r| r.number) {
            self.seen(number, FLOOR);
        }
    }

    /// The sizes to probe now in round `number`, or nothing (a round is in flight, or the
    /// MTU is found and not due for a check). `number` must be newer than the last one.
    pub fn probes(&mut self, now: Instant, number: u32) -> Vec<u16> {
        if self.round.is_some() || self.recheck_at.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let sizes = if self.recheck_at.is_some() {
            // A check of what was found: it still crosses, and nothing larger now does.
            self.too_big = None;
            let mut s = vec![self.verified.unwrap_or(FLOOR)];
            if s[0] < self.ceiling {
                s.push(self.ceiling);
            }
            self.recheck_at = None;
            s
        } else {
            self.spread()
        };
        self.round = Some(Round {
            number,
            sizes: sizes.clone(),
            sent_at: now,
            extended_until: None,
            largest_seen: None,
        });
        sizes
    }

    /// Sizes strictly between what is known to cross and what is known not to: the
    /// upper bound first (most paths carry the full size), then evenly spread below it.
    fn spread(&self) -> Vec<u16> {
        let (low, high) = self.bounds();
        let gap = high.saturating_sub(low);
        if gap <= 1 {
            return Vec::new();
        }
        let candidates = (gap - 1) as usize;
        let n = candidates.min(PROBES_PER_ROUND);
        let mut sizes: Vec<u16> = (0..n)
            .map(|i| high - 1 - ((candidates - 1) * i / n.max(1)) as u16)
            .collect();
        if self.verified.is_none() && !sizes.contains(&FLOOR) && FLOOR < high {
            // The floor is always probed until something crosses: if it never does, the
            // path carries only small frames, and that is worth knowing at once.
            sizes.pop();
            sizes.push(FLOOR);
        }
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        sizes
    }

    /// The peer's report: the largest probe of round `number` that reached it. A report
    /// about a round already concluded is taken in by the next [`PathMtuSearch::tick`].
    ///
    /// A report about a round older than those kept (a peer tens of seconds behind: a
    /// machine saturated while a large mesh forms) still shows that a probe of `largest`
    /// bytes crossed, as the peer's kernel measured it. It counts only against a floor
    /// lost or failing: stale, it must not undo a smaller MTU found since, but the path
    /// carried that much and is not to be taken for one that carries only small frames.
    pub fn seen(&mut self, number: u32, largest: u16) {
        if let Some(round) = self.round.as_mut().filter(|r| r.number == number) {
            round.largest_seen = Some(round.largest_seen.map_or(largest, |l| l.max(largest)));
            return;
        }
        let kept = self.concluded.iter().find(|r| r.number == number);
        let oldest = self
            .concluded
            .first()
            .or(self.round.as_ref())
            .map(|r| r.number);
        let crossed = match kept {
            Some(r) => {
                self.late_sent_at = Some(self.late_sent_at.map_or(r.sent_at, |t| t.min(r.sent_at)));
                r.sizes.iter().copied().filter(|s| *s <= largest).max()
            }
            None if oldest.is_some_and(|o| number < o) => {
                // Later than any round kept: wait for reports as long as rounds may.
                self.timeout = MAX_ROUND_TIMEOUT;
                (self.floor_failures.is_some() && (FLOOR..=self.ceiling).contains(&largest))
                    .then_some(largest)
            }
            None => None,
        };
        if let Some(c) = crossed {
            self.late_crossed = Some(self.late_crossed.map_or(c, |l| l.max(c)));
        }
    }

    /// Takes in what a late report showed crossing: verified, and whatever its timeout
    /// concluded against it taken back (the bound above, a lowered limit, the floor's
    /// failures). The search settles if nothing is left between the bounds, else goes on.
    fn take_late_report(&mut self, now: Instant) {
        let Some(c) = self.late_crossed.take() else {
            return;
        };
        if self.verified.is_some_and(|v| v >= c) && !self.floor_lost {
            return;
        }
        let verified = self.verified.map_or(c, |v| v.max(c));
        self.verified = Some(verified);
        self.floor_lost = false;
        self.floor_failures = None;
        if self.too_big.is_some_and(|t| t <= verified) {
            self.too_big = None;
        }
        if self.limit.is_some_and(|l| l < verified) {
            self.limit = Some(verified);
        }
        if self
            .round
            .as_ref()
            .is_some_and(|r| r.sizes.iter().all(|s| *s <= verified))
        {
            // It probes only sizes now known to cross.
            self.round = None;
        }
        if self.round.is_none() {
            if self.nothing_left_between() {
                self.settle(now);
            } else {
                self.recheck_at = None;
            }
        }
    }

    /// The largest size known to cross (or just below [`FLOOR`]) and the smallest known not
    /// to (or just above the ceiling): the search probes strictly between them.
    fn bounds(&self) -> (u16, u16) {
        (
            self.verified.unwrap_or(FLOOR - 1),
            self.too_big.unwrap_or(self.ceiling + 1),
        )
    }

    /// Whether no size is left to probe between [`PathMtuSearch::bounds`].
    fn nothing_left_between(&self) -> bool {
        let (low, high) = self.bounds();
        high.saturating_sub(low) <= 1
    }

    /// Ends a search: what was found is the limit, checked again after [`RECHECK_EVERY`];
    /// when nothing crossed, tried again after [`ROUND_TIMEOUT`].
    fn settle(&mut self, now: Instant) {
        let wait = if self.verified.is_some() {
            RECHECK_EVERY
        } else {
            ROUND_TIMEOUT
        };
        self.recheck_at = Some(now + wait);
        if self.floor_lost && self.verified.is_none() {
            self.too_big = None;
        }
        if self.verified.is_some() {
            self.limit = self.verified;
        }
    }

    /// An ICMP "fragmentation needed" from the underlay about one of our outer packets to
    /// the peer, with the next hop's MTU: the search goes on below it at once. Values that
    /// no path has (below [`FLOOR`], or not below what we send) are ignored.
    pub fn frag_needed(&mut self, next_hop_mtu: u16) -> bool {
        if next_hop_mtu < FLOOR || next_hop_mtu >= self.ceiling {
            return false;
        }
        if self.too_big.is_some_and(|t| t <= next_hop_mtu + 1) {
            return false;
        }
        self.too_big = Some(next_hop_mtu + 1);
        if self.verified.is_some_and(|v| v > next_hop_mtu) {
            self.verified = None;
        }
        self.limit = Some(self.limit.map_or(next_hop_mtu, |l| l.min(next_hop_mtu)));
        // The next call to `probes` starts a round below the hint.
        self.round = None;
        self.recheck_at = None;
        true
    }

    /// Takes in a late report, then concludes the round in flight when the peer reported
    /// all of it, or when it timed out; returns what changed.
    ///
    /// A tick that comes [`OVERDUE_BY`] or more after the round's timeout (our own router
    /// kept from its checks: the peer's report may be waiting behind the events that kept
    /// it) concludes nothing: the round gets one more check's time.
    pub fn tick(&mut self, now: Instant) -> Outcome {
        let before = (self.limit(), self.floor_lost);
        if let Some(sent) = self.late_sent_at.take() {
            let late = now.saturating_duration_since(sent) * 2;
            self.timeout = self
                .timeout
                .max(late.clamp(ROUND_TIMEOUT, MAX_ROUND_TIMEOUT));
        }
        self.take_late_report(now);
        let timeout = self.timeout;
        let mut on_time = false;
        let due = self.round.as_mut().is_some_and(|round| {
            let all_seen = round
                .largest_seen
                .is_some_and(|l| round.sizes.iter().all(|s| *s <= l));
            let deadline = round.extended_until.unwrap_or(round.sent_at + timeout);
            if !all_seen && now >= deadline + OVERDUE_BY {
                round.extended_until = Some(now + super::choice::CHECK_EVERY);
                return false;
            }
            on_time = all_seen;
            all_seen || now >= deadline
        });
        if on_time {
            self.timeout = (self.timeout * 3 / 4).max(ROUND_TIMEOUT);
        }
        if due {
            let round = self.round.take().expect("checked above");
            self.conclude(&round, now);
            if self.concluded.len() == LATE_ROUNDS_KEPT {
                self.concluded.remove(0);
            }
            self.concluded.push(round);
        }
        Outcome {
            verified_changed: (before != (self.limit(), self.floor_lost)).then_some(self.limit()),
        }
    }

    /// What a round shows: the largest size reported crossed is verified, the smallest
    /// lost above it bounds the search; settles the search when nothing is left between.
    fn conclude(&mut self, round: &Round, now: Instant) {
        let crossed = round
            .sizes
            .iter()
            .copied()
            .filter(|s| round.largest_seen.is_some_and(|l| *s <= l))
            .max();
        let lost = round
            .sizes
            .iter()
            .copied()
            .filter(|s| crossed.is_none_or(|c| *s > c))
            .min();
        if let Some(c) = crossed {
            self.verified = Some(self.verified.map_or(c, |v| v.max(c)));
            self.floor_lost = false;
        }
        if let (Some(l), Some(v)) = (lost, self.limit) {
            if l <= v {
                // Smaller than what was believed: the new value only comes down from here.
                self.limit = Some(l - 1);
            }
        }
        if let Some(l) = lost {
            self.too_big = Some(self.too_big.map_or(l, |t| t.min(l)));
            if self.verified.is_some_and(|v| v >= l) {
                // What crossed before does not now: the path shrank.
                self.verified = None;
            }
        }
        let floor_failed =
            lost == Some(FLOOR) || (crossed.is_none() && round.sizes.contains(&FLOOR));
        if floor_failed {
            let failures = self.floor_failures.get_or_insert(FloorFailures {
                rounds: 0,
                since: round.sent_at,
            });
            failures.rounds = failures.rounds.saturating_add(1);
            self.floor_lost = failures.rounds >= FLOOR_FAILURES
                && now.saturating_duration_since(failures.since) >= FLOOR_LOST_AFTER;
        } else if round.sizes.contains(&FLOOR) || crossed.is_some() {
            self.floor_failures = None;
        }
        if self.nothing_left_between() || floor_failed {
            // Found (or nothing to find): check again later, or sooner when nothing crossed.
            self.settle(now);
        }
    }
}

/// The plain heartbeats of one connection's fast path, sent at [`FLOOR`] size while the
/// floor is in question ([`PathMtuSearch::wants_floor_echoes`]), and the echoes the peer's
/// kernel sends back: an echo of one shows the floor crossing without waiting for the peer's
/// router to report the round's probes (on a loaded host that report comes seconds late,
/// and the floor was taken for lost and the peer moved to the sleeve and back, thousands of
/// times while 100 routers formed a mesh).
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorEchoes {
    /// Whether the heartbeat sent at the last check was of the floor's size.
    sent_floor: bool,
    /// The count of echoes of ours from the peer at the last check.
    echoes: u64,
}

impl FloorEchoes {
    /// At a check: takes in the peer's count of echoes of ours (`echoes`, as the data path
    /// counts them) and says whether one came back since the last check of a heartbeat sent
    /// at the floor's size, and how long the plain heartbeat to send now is (outer length; 0:
    /// the smallest) for a search in `search`'s state, on the fast path if `fast`.
    pub fn check(
        &mut self,
        echoes: u64,
        search: Option<&PathMtuSearch>,
        fast: bool,
    ) -> (bool, u16) {
        let echoed = self.sent_floor && echoes > self.echoes;
        self.echoes = echoes;
        self.sent_floor = fast && search.is_some_and(PathMtuSearch::wants_floor_echoes);
        (echoed, if self.sent_floor { FLOOR } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a path that carries up to `path` bytes (a report per round
    /// of the largest probe that fits) until it settles; returns the rounds it took.
    fn search(s: &mut PathMtuSearch, path: u16, start: Instant) -> (Instant, usize) {
        let mut now = start;
        for n in 1..50u32 {
            let sizes = s.probes(now, n);
            if sizes.is_empty() && s.settled() {
                return (now, n as usize - 1);
            }
            if let Some(l) = sizes.iter().copied().filter(|x| *x <= path).max() {
                s.seen(n, l);
            }
            now += Duration::from_secs(1);
            s.tick(now);
            now += Duration::from_secs(2);
            s.tick(now);
        }
        panic!("no result for path {path}: {s:?}");
    }

    /// Sends rounds from `number` on, starting at `at`, with no report of any (each checked
    /// at its timeout, the next sent when the search asks for it), until the path is said
    /// to carry only small frames; returns when, the next round's number, and the rounds.
    fn lose_rounds(s: &mut PathMtuSearch, mut at: Instant, mut number: u32) -> (Instant, u32, u32) {
        let mut rounds = 0;
        while !s.only_small_frames() {
            assert!(rounds < 20, "never said: {s:?}");
            let sizes = s.probes(at, number);
            if !sizes.is_empty() {
                assert!(sizes.contains(&FLOOR), "{sizes:?}");
                number += 1;
                rounds += 1;
                at += ROUND_TIMEOUT;
                s.tick(at);
            } else {
                at += Duration::from_millis(500);
            }
        }
        (at, number, rounds)
    }

    /// A peer whose router never reports in time (a saturated host) but whose kernel
    /// echoes our floor-sized heartbeats: the floor is never taken for lost, the way it is
    /// without the echoes.
    #[test]
    fn echoes_of_floor_sized_heartbeats_keep_the_floor_while_reports_are_late() {
        let t = Instant::now();
        let mut s = PathMtuSearch::new(1500);
        let mut echoes = FloorEchoes::default();
        let mut count = 0;
        let mut number = 1;
        let mut at = t;
        while at < t + FLOOR_LOST_AFTER * 3 {
            // Each check: the echoes since the last one (one per heartbeat), then the round.
            let (echoed, len) = echoes.check(count, Some(&s), true);
            assert!(
                len == FLOOR || s.settled(),
                "small while searching, at {:?}",
                at - t
            );
            if echoed {
                s.floor_echoed();
            }
            count += 1;
            if !s.probes(at, number).is_empty() {
                number += 1;
            }
            s.tick(at);
            assert!(
                !s.only_small_frames(),
                "floor taken for lost at {:?}",
                at - t
            );
            at += Duration::from_secs(1);
        }
        // No report ever came: nothing above the floor is verified.
        assert_eq!(s.verified(), Some(FLOOR));

        let mut s = PathMtuSearch::new(1500);
        lose_rounds(&mut s, t, 1);
        assert!(s.only_small_frames(), "without the echoes");
    }

    #[test]
    fn heartbeats_are_floor_sized_only_on_the_fast_path_while_the_floor_is_in_question() {
        let t = Instant::now();
        let mut echoes = FloorEchoes::default();
        let mut s = PathMtuSearch::new(1500);
        assert_eq!(echoes.check(0, None, true), (false, 0), "no search: small");
        assert_eq!(
            echoes.check(0, Some(&s), false),
            (false, 0),
            "on the sleeve: small"
        );
        assert_eq!(
            echoes.check(5, Some(&s), true),
            (false, FLOOR),
            "echoes of small heartbeats show nothing"
        );
        assert_eq!(
            echoes.check(5, Some(&s), true),
            (false, FLOOR),
            "no new echo"
        );
        assert_eq!(echoes.check(6, Some(&s), true), (true, FLOOR), "an echo");
        // Found: small again, until a recheck is due.
        s.probes(t, 1);
        s.seen(1, 1500);
        s.tick(t + Duration::from_millis(100));
        assert!(s.settled());
        assert_eq!(echoes.check(7, Some(&s), true), (true, 0));
        assert_eq!(
            echoes.check(8, Some(&s), true),
            (false, 0),
            "after a small one"
        );
    }

    #[test]
    fn a_full_size_path_is_verified_in_one_round() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        let sizes = s.probes(t, 1);
        assert_eq!(sizes[0], 1500, "the full size first: {sizes:?}");
        assert!(sizes.contains(&FLOOR));
        s.seen(1, 1500);
        let out = s.tick(t + Duration::from_millis(300));
        assert_eq!(
            out.verified_changed,
            Some(Some(1500)),
            "all reported: no waiting"
        );
        assert!(s.settled());
        assert!(s.probes(t + Duration::from_secs(1), 2).is_empty());
    }

    #[test]
    fn any_smaller_path_is_found_exactly_within_five_rounds() {
        for path in [
            576, 577, 1000, 1280, 1399, 1400, 1420, 1450, 1460, 1492, 1499,
        ] {
            let mut s = PathMtuSearch::new(1500);
            let (_, rounds) = search(&mut s, path, Instant::now());
            assert_eq!(s.verified(), Some(path), "path {path}");
            assert_eq!(s.limit(), Some(path), "path {path}");
            assert!(rounds <= 5, "path {path} took {rounds} rounds");
        }
        let mut s = PathMtuSearch::new(9000);
        let (_, rounds) = search(&mut s, 1500, Instant::now());
        assert_eq!(
            (s.verified(), rounds <= 6),
            (Some(1500), true),
            "{rounds} rounds from a jumbo frame"
        );
    }

    #[test]
    fn a_path_that_carries_nothing_big_says_so_after_floor_lost_after() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        s.probes(t, 1);
        assert_eq!(
            s.tick(t + ROUND_TIMEOUT).verified_changed,
            None,
            "one lost round is not enough"
        );
        assert!(!s.only_small_frames());
        assert!(
            s.probes(t + ROUND_TIMEOUT, 2).is_empty(),
            "tried again after a pause"
        );
        let (at, _, rounds) = lose_rounds(&mut s, t + ROUND_TIMEOUT * 2, 2);
        assert!(rounds + 1 >= FLOOR_FAILURES as u32);
        let took = at - t;
        assert!(
            took >= FLOOR_LOST_AFTER && took < FLOOR_LOST_AFTER + ROUND_TIMEOUT * 3,
            "{took:?}"
        );
        assert_eq!(s.verified(), None);
        // Tried again soon, and found when the path heals.
        let (_, _) = search(&mut s, 1500, at + ROUND_TIMEOUT);
        assert_eq!(s.verified(), Some(1500));
        assert!(!s.only_small_frames());
    }

    #[test]
    fn a_recheck_notices_a_path_that_shrank_or_grew() {
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1500, Instant::now());
        // The path shrinks: the recheck of 1500 fails, the search finds 1400.
        let (t, _) = search(&mut s, 1400, t + RECHECK_EVERY);
        assert_eq!(s.verified(), Some(1400));
        // And grows back.
        search(&mut s, 1500, t + RECHECK_EVERY);
        assert_eq!(s.verified(), Some(1500));
    }

    #[test]
    fn while_a_shrunk_path_is_searched_the_limit_only_comes_down() {
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1500, Instant::now());
        let sizes = s.probes(t + RECHECK_EVERY, 10);
        assert_eq!(sizes, vec![1500]);
        s.tick(t + RECHECK_EVERY + ROUND_TIMEOUT);
        assert_eq!(s.verified(), None);
        assert_eq!(s.limit(), Some(1499), "not raised, not forgotten");
        search(&mut s, 1400, t + RECHECK_EVERY + ROUND_TIMEOUT);
        assert_eq!(s.limit(), Some(1400));
    }

    #[test]
    fn a_report_that_comes_after_its_round_timed_out_takes_the_loss_back() {
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1500, Instant::now());
        // The recheck's report is late (a busy peer): the timeout lowers the limit...
        let t = t + RECHECK_EVERY;
        assert_eq!(s.probes(t, 10), vec![1500]);
        let out = s.tick(t + ROUND_TIMEOUT);
        assert_eq!(out.verified_changed, Some(Some(1499)));
        // ...the next round goes out below it, and then the report comes.
        let next = s.probes(t + ROUND_TIMEOUT, 11);
        assert!(next.iter().all(|x| *x < 1500), "{next:?}");
        s.seen(10, 1500);
        let out = s.tick(t + ROUND_TIMEOUT * 2);
        assert_eq!(
            out.verified_changed,
            Some(Some(1500)),
            "the loss is taken back"
        );
        assert_eq!((s.verified(), s.limit()), (Some(1500), Some(1500)));
        assert!(s.settled(), "nothing left to search: {s:?}");
        // A report of a round long gone, or one that shows nothing new, changes nothing.
        s.seen(3, 1500);
        s.seen(10, 1500);
        assert_eq!(s.tick(t + ROUND_TIMEOUT * 3).verified_changed, None);
    }

    #[test]
    fn a_floor_lost_only_to_late_reports_is_found_again_when_they_come() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        let (at, next, _) = lose_rounds(&mut s, t, 1);
        assert!(s.only_small_frames(), "rounds without a report: {s:?}");
        // The last round's report arrives: everything up to 1500 crossed.
        s.seen(next - 1, 1500);
        let out = s.tick(at + ROUND_TIMEOUT);
        assert_eq!(out.verified_changed, Some(Some(1500)));
        assert!(!s.only_small_frames());
        assert!(s.settled());
        // Two lost rounds within FLOOR_LOST_AFTER say nothing yet, and the late report of
        // the first takes them back.
        let mut s = PathMtuSearch::new(1500);
        for (n, at) in [(1u32, t), (2, t + ROUND_TIMEOUT * 2)] {
            assert!(s.probes(at, n).contains(&FLOOR));
            s.tick(at + ROUND_TIMEOUT);
        }
        assert!(!s.only_small_frames());
        s.seen(1, 1500);
        s.tick(t + ROUND_TIMEOUT * 4);
        assert_eq!(s.verified(), Some(1500));
        // A late report that shows a smaller size crossing verifies it and searches above.
        let mut s = PathMtuSearch::new(1500);
        let sizes = s.probes(t, 1);
        s.tick(t + ROUND_TIMEOUT);
        s.seen(1, 1400);
        s.tick(t + ROUND_TIMEOUT + Duration::from_millis(100));
        let crossed = sizes.iter().copied().filter(|x| *x <= 1400).max();
        assert_eq!(s.verified(), crossed);
        assert!(!s.settled());
        let next = s.probes(t + ROUND_TIMEOUT * 2, 2);
        assert!(
            !next.is_empty() && next.iter().all(|x| Some(*x) > crossed),
            "the search goes on above what crossed: {next:?}"
        );
    }

    #[test]
    fn a_check_that_comes_long_after_the_timeout_waits_for_the_queued_report() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        s.probes(t, 1);
        // Our router was held up for 20 s: the round is not taken as lost yet...
        let late = t + Duration::from_secs(20);
        assert_eq!(s.tick(late).verified_changed, None);
        assert!(!s.settled() && s.verified().is_none(), "{s:?}");
        // ...the report that waited behind the events that held it up comes next...
        s.seen(1, 1500);
        let out = s.tick(late + Duration::from_millis(100));
        assert_eq!(out.verified_changed, Some(Some(1500)));
        // ...and without a report, the next check on time concludes the round: lost, and
        // the next round goes out.
        let mut s = PathMtuSearch::new(1500);
        s.probes(t, 1);
        s.tick(late);
        assert!(s.probes(late, 2).is_empty(), "round 1 still in flight");
        let on_time = late + Duration::from_secs(1);
        s.tick(on_time);
        let next = on_time + ROUND_TIMEOUT;
        assert!(s.probes(next, 2).contains(&FLOOR), "{s:?}");
    }

    #[test]
    fn late_reports_make_rounds_wait_longer_until_reports_come_on_time() {
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1500, Instant::now());
        // A recheck's report comes 4 s late: taken back, and rounds now wait 8 s.
        let t = t + RECHECK_EVERY;
        assert_eq!(s.probes(t, 10), vec![1500]);
        s.tick(t + ROUND_TIMEOUT);
        s.seen(10, 1500);
        s.tick(t + Duration::from_secs(4));
        assert_eq!(s.limit(), Some(1500));
        assert_eq!(s.timeout, Duration::from_secs(8));
        // The next recheck is not taken for lost at 1.5 s, nor at 7 s.
        let t = t + Duration::from_secs(4) + RECHECK_EVERY;
        assert_eq!(s.probes(t, 11), vec![1500]);
        for after in [2, 4, 7] {
            assert_eq!(
                s.tick(t + Duration::from_secs(after)).verified_changed,
                None
            );
        }
        assert_eq!(s.limit(), Some(1500));
        // Its report comes at 7.5 s: on time now; timeouts shrink back with such reports.
        s.seen(11, 1500);
        s.tick(t + Duration::from_millis(7500));
        assert_eq!(s.timeout, Duration::from_secs(6));
        let mut t = t + Duration::from_secs(8);
        for n in 12..20 {
            t += RECHECK_EVERY + Duration::from_secs(1);
            assert_eq!(s.probes(t, n), vec![1500]);
            s.seen(n, 1500);
            s.tick(t + Duration::from_millis(100));
        }
        assert_eq!(s.timeout, ROUND_TIMEOUT);
        // A report later than any round kept: rounds wait the longest.
        s.seen(1, 1500);
        assert_eq!(s.timeout, MAX_ROUND_TIMEOUT);
    }

    #[test]
    fn a_report_of_a_round_no_longer_kept_undoes_a_lost_floor_only() {
        // The peer reports rounds far behind: every round times out, the floor is lost.
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        let mut at = t;
        for n in 1..=(LATE_ROUNDS_KEPT as u32 + 3) {
            s.probes(at, n);
            at += ROUND_TIMEOUT;
            s.tick(at);
            at += ROUND_TIMEOUT;
        }
        assert!(s.only_small_frames(), "{s:?}");
        // Its report of round 1, long out of those kept, comes: 1500 crossed then.
        s.seen(1, 1500);
        let out = s.tick(at);
        assert_eq!(out.verified_changed, Some(Some(1500)));
        assert!(!s.only_small_frames());
        // Sizes no probe could have had, or a round not yet sent, prove nothing.
        let mut s = PathMtuSearch::new(1500);
        let mut at = t;
        for n in 10..=(10 + LATE_ROUNDS_KEPT as u32 + 3) {
            s.probes(at, n);
            at += ROUND_TIMEOUT;
            s.tick(at);
            at += ROUND_TIMEOUT;
        }
        assert!(s.only_small_frames());
        s.seen(1, 9000);
        s.seen(2, FLOOR - 1);
        s.seen(500, 1500);
        assert_eq!(s.tick(at).verified_changed, None);
        assert!(s.only_small_frames());
        // Once the path's MTU is known, a stale report does not undo what was found since.
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1400, t);
        s.seen(0, 1500);
        assert_eq!(s.tick(t + Duration::from_secs(1)).verified_changed, None);
        assert_eq!(s.verified(), Some(1400));
    }

    #[test]
    fn frag_needed_bounds_the_search_and_probes_decide() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        let (t, _) = search(&mut s, 1500, t);
        assert!(s.frag_needed(1400));
        assert_eq!(s.verified(), None, "1500 is no longer taken to cross");
        assert_eq!(s.limit(), Some(1400), "honoured at once");
        let sizes = s.probes(t, 100);
        assert_eq!(sizes[0], 1400, "probing starts at the hint: {sizes:?}");
        s.seen(100, 1400);
        s.tick(t + Duration::from_secs(3));
        assert_eq!(s.verified(), Some(1400));
        // Nonsense hints change nothing.
        assert!(!s.frag_needed(68));
        assert!(!s.frag_needed(1500));
        assert!(!s.frag_needed(9000));
        assert_eq!(s.verified(), Some(1400));
    }

    #[test]
    fn a_forged_hint_is_undone_by_the_next_check() {
        let mut s = PathMtuSearch::new(1500);
        let (t, _) = search(&mut s, 1500, Instant::now());
        assert!(s.frag_needed(600));
        let (t, _) = search(&mut s, 1500, t);
        assert_eq!(s.limit(), Some(600), "believed until checked");
        search(&mut s, 1500, t + RECHECK_EVERY);
        assert_eq!(s.verified(), Some(1500));
    }

    #[test]
    fn reports_of_other_rounds_are_ignored() {
        let mut s = PathMtuSearch::new(1500);
        let t = Instant::now();
        s.probes(t, 5);
        s.seen(4, 1500);
        s.tick(t + ROUND_TIMEOUT);
        assert_eq!(s.verified(), None);
    }
}
