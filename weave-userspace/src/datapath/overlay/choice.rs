//! Which data path carries one connection's frames: the kernel fast path while VXLAN gets
//! through both ways, the sleeve otherwise.
//!
//! Pure: the router samples the peer's received-packet counter of the fast path once a
//! second (the peer's fast-path heartbeats move it, and so do the echoes of ours that the
//! peer's kernel sends back: either came to us through the fast path from the peer, and an
//! echo keeps coming while the peer's process is too busy to send its own heartbeats on
//! time), passes on the peer's reports of whether it hears ours, and applies the switches
//! [`OverlayChoice`] returns. Hysteresis
//! keeps a flaky path from flapping: the peer is no longer heard after [`LOST_AFTER`]
//! without a heartbeat, and heard again only after heartbeats for [`STABLE_AFTER`]. The
//! fast path is used only while both ends hear each other. A peer that never reports
//! (it has no sleeve to fall back to) keeps the fast path.

use std::time::{Duration, Instant};

/// How often heartbeats are sent and the counters sampled.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the fast path may stay silent before the peer is no longer heard.
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// How long heartbeats must keep coming before the peer is heard again.
pub const STABLE_AFTER: Duration = Duration::from_secs(2);
/// How often the report of whether we hear the peer is repeated when it has not changed.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A data path between two routers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// The kernel fast path: VXLAN on UDP 6784, built by the tc programs.
    Fastdp,
    /// The user-space sleeve: UDP 6783, sealed when a password is set.
    Sleeve,
}

impl Overlay {
    /// As `status connections` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Overlay::Fastdp => "fastdp",
            Overlay::Sleeve => "sleeve",
        }
    }
}

/// What a sample or a report changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Tell the peer whether we hear it (it changed, or it is time to repeat it).
    pub report: Option<bool>,
    /// Move the peer to this data path.
    pub switch: Option<Overlay>,
}

/// The choice of data path for one connection. It starts on the fast path, as if the
/// peer were heard, and leaves it after [`LOST_AFTER`] of silence or when the peer says it
/// does not hear us.
#[derive(Clone, Debug)]
pub struct OverlayChoice {
    lost_after: Duration,
    stable_after: Duration,
    /// The counter at the last sample.
    last_count: Option<u64>,
    /// When the last sample was taken.
    last_sample: Option<Instant>,
    /// When the counter last grew (or sampling began).
    last_growth: Option<Instant>,
    /// When the current run of heartbeats began (no silence of `lost_after` since).
    run_since: Option<Instant>,
    /// Whether we hear the peer's fast path (what we report).
    heard: bool,
    /// Whether the peer hears ours, as it last reported (`None` until it does).
    remote_heard: Option<bool>,
    /// When we last reported `heard`.
    reported_at: Option<Instant>,
    /// Heartbeats cross but no probe of even the smallest size did
    /// ([`super::path_mtu::PathMtuSearch::only_small_frames`]).
    only_small_frames: bool,
    overlay: Overlay,
}

impl Default for OverlayChoice {
    fn default() -> Self {
        Self::new(LOST_AFTER, STABLE_AFTER)
    }
}

impl OverlayChoice {
    pub fn new(lost_after: Duration, stable_after: Duration) -> Self {
        Self {
            lost_after,
            stable_after,
            last_count: None,
            last_sample: None,
            last_growth: None,
            run_since: None,
            heard: true,
            remote_heard: None,
            reported_at: None,
            only_small_frames: false,
            overlay: Overlay::Fastdp,
        }
    }

    /// The data path chosen now.
    pub fn overlay(&self) -> Overlay {
        self.overlay
    }

    /// Whether we hear the peer's fast path.
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// When the peer's heartbeats last grew (or sampling began); `None` before sampling.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_growth
    }

    /// Whether the peer last said it hears ours (`None`: it never said).
    pub fn remote_heard(&self) -> Option<bool> {
        self.remote_heard
    }

    /// Takes a sample of the peer's received-packet counter at `now` (the first one only
    /// starts the clock).
    ///
    /// A sample that comes `lost_after` or more after the one before it (our own process
    /// kept from its checks, and so from sending its heartbeats, which the peer's kernel
    /// echoes: a machine saturated while a large mesh forms) judges nothing: a silence
    /// while we did not send is no sign of a blocked path, so the clock starts again.
    pub fn sample(&mut self, now: Instant, count: u64) -> Change {
        let grew = self.last_count.is_some_and(|c| count > c);
        let we_were_late = self
            .last_sample
            .is_some_and(|t| now.saturating_duration_since(t) >= self.lost_after);
        self.last_sample = Some(now);
        if self.last_count.is_none() || (we_were_late && self.heard && !grew) {
            self.last_growth = Some(now);
        }
        self.last_count = Some(count);
        if grew {
            self.last_growth = Some(now);
            self.run_since.get_or_insert(now);
        }
        let silent = self
            .last_growth
            .is_none_or(|t| now.duration_since(t) >= self.lost_after);
        if silent {
            self.run_since = None;
        }
        let was = self.heard;
        if self.heard && silent {
            self.heard = false;
        } else if !self.heard && self.run_len() >= self.stable_after {
            self.heard = true;
        }
        let due = self
            .reported_at
            .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY);
        let report = (self.heard != was || due).then(|| {
            self.reported_at = Some(now);
            self.heard
        });
        Change {
            report,
            switch: self.decide(),
        }
    }

    /// How long the current run of heartbeats has lasted: from its first to its latest.
    fn run_len(&self) -> Duration {
        match (self.run_since, self.last_growth) {
            (Some(from), Some(to)) => to.duration_since(from),
            _ => Duration::ZERO,
        }
    }

    /// The peer says whether it hears our fast path.
    pub fn remote_report(&mut self, heard: bool) -> Change {
        self.remote_heard = Some(heard);
        Change {
            report: None,
            switch: self.decide(),
        }
    }

    /// Whether the fast path carries only small frames (the path-MTU search found that
    /// nothing of even the smallest probe size crosses while heartbeats do).
    pub fn set_only_small_frames(&mut self, only_small: bool) -> Change {
        self.only_small_frames = only_small;
        Change {
            report: None,
            switch: self.decide(),
        }
    }

    /// Why the sleeve carries the peer, as status shows it (empty on the fast path).
    pub fn why_sleeve(&self) -> &'static str {
        if self.overlay == Overlay::Fastdp {
            ""
        } else if !self.heard {
            "fast path blocked: no heartbeats from the peer"
        } else if self.remote_heard == Some(false) {
            "fast path blocked: the peer hears none of our heartbeats"
        } else if self.only_small_frames {
            "fast path blocked: it carries heartbeats but no frame of 576 bytes (path MTU too small)"
        } else {
            "fast path blocked"
        }
    }

    /// The fast path while both ends hear each other and it carries more than small
    /// frames, else the sleeve (once the peer has reported at all); `Some` on a change.
    fn decide(&mut self) -> Option<Overlay> {
        let remote_heard = self.remote_heard?;
        let want = if self.heard && remote_heard && !self.only_small_frames {
            Overlay::Fastdp
        } else {
            Overlay::Sleeve
        };
        (want != self.overlay).then(|| {
            self.overlay = want;
            want
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_carries_only_small_frames_goes_to_the_sleeve_and_back() {
        let mut c = OverlayChoice::default();
        let t = Instant::now();
        c.sample(t, 1);
        c.remote_report(true);
        assert_eq!(c.overlay(), Overlay::Fastdp);
        assert_eq!(c.set_only_small_frames(true).switch, Some(Overlay::Sleeve));
        assert!(c.why_sleeve().contains("path MTU"), "{}", c.why_sleeve());
        assert_eq!(c.set_only_small_frames(false).switch, Some(Overlay::Fastdp));
        assert_eq!(c.why_sleeve(), "");
    }

    const S: Duration = Duration::from_secs(1);

    /// A choice sampled once a second from `t0`, with a counter that grows while heard.
    struct Run {
        choice: OverlayChoice,
        t0: Instant,
        second: u32,
        count: u64,
    }

    impl Run {
        fn new() -> Self {
            let mut r = Self {
                choice: OverlayChoice::default(),
                t0: Instant::now(),
                second: 0,
                count: 100,
            };
            let first = r.choice.sample(r.t0, r.count);
            assert_eq!(first.report, Some(true), "the first sample reports");
            assert_eq!(first.switch, None);
            assert_eq!(r.choice.remote_report(true), Change::default());
            r
        }

        /// One second later, with `heartbeats` more packets counted.
        fn tick(&mut self, heartbeats: u64) -> Change {
            self.second += 1;
            self.count += heartbeats;
            self.choice.sample(self.t0 + S * self.second, self.count)
        }

        /// `n` seconds of ticks; every switch with the second it happened in.
        fn ticks(&mut self, n: u32, heartbeats: u64) -> Vec<(u32, Overlay)> {
            (0..n)
                .filter_map(|_| self.tick(heartbeats).switch.map(|o| (self.second, o)))
                .collect()
        }
    }

    #[test]
    fn heartbeats_keep_the_fast_path() {
        let mut r = Run::new();
        assert_eq!(r.ticks(30, 1), vec![]);
        assert_eq!(r.choice.overlay(), Overlay::Fastdp);
        assert!(r.choice.heard());
    }

    #[test]
    fn silence_from_the_start_moves_to_the_sleeve_after_lost_after() {
        let mut r = Run::new();
        let c = r.tick(0);
        assert_eq!(c.switch, None);
        assert_eq!(r.tick(0).switch, None);
        let c = r.tick(0);
        assert_eq!(c.switch, Some(Overlay::Sleeve), "3 s without a heartbeat");
        assert_eq!(c.report, Some(false), "the peer hears of it at once");
        assert_eq!(r.ticks(10, 0), vec![]);
    }

    #[test]
    fn a_gap_shorter_than_lost_after_changes_nothing() {
        let mut r = Run::new();
        r.ticks(5, 1);
        // Heartbeats and samples drift: two empty seconds, then two heartbeats at once.
        assert_eq!(r.tick(0).switch, None);
        assert_eq!(r.tick(0).switch, None);
        assert_eq!(r.tick(2).switch, None);
        assert_eq!(r.ticks(5, 1), vec![]);
    }

    #[test]
    fn a_blocked_path_falls_back_and_recovers_with_hysteresis() {
        let mut r = Run::new();
        r.ticks(5, 1);
        // Blocked at second 5: the sleeve at second 8.
        assert_eq!(r.ticks(10, 0), vec![(8, Overlay::Sleeve)]);
        assert!(!r.choice.heard());
        // Heartbeats again from second 16: heard after 2 s of them; the peer heard us all
        // along (it never said otherwise), so the fast path comes back.
        let c = r.tick(1);
        assert_eq!((c.switch, c.report), (None, None));
        assert_eq!(
            r.tick(1).switch,
            None,
            "one second of heartbeats is not enough"
        );
        let c = r.tick(1);
        assert_eq!(c.switch, Some(Overlay::Fastdp));
        assert_eq!(c.report, Some(true));
    }

    #[test]
    fn heartbeats_that_stop_again_before_stable_after_do_not_bring_it_back() {
        let mut r = Run::new();
        r.ticks(3, 0);
        assert_eq!(r.choice.overlay(), Overlay::Sleeve);
        // Lone heartbeats with silences between: never a run of STABLE_AFTER.
        let mut switches = Vec::new();
        for hb in [1, 0, 0, 0, 1, 0, 0, 0, 1, 0] {
            switches.extend(r.tick(hb).switch);
        }
        assert_eq!(switches, vec![]);
        assert_eq!(r.choice.overlay(), Overlay::Sleeve);
    }

    #[test]
    fn the_fast_path_needs_both_sides() {
        let mut r = Run::new();
        r.ticks(2, 1);
        // We hear the peer, but it does not hear us: the sleeve, at once.
        assert_eq!(r.choice.remote_report(false).switch, Some(Overlay::Sleeve));
        assert_eq!(
            r.ticks(10, 1),
            vec![],
            "hearing alone does not bring it back"
        );
        assert!(r.choice.heard());
        assert_eq!(r.choice.remote_report(true).switch, Some(Overlay::Fastdp));
        // It hears us, we stop hearing it.
        assert_eq!(r.ticks(3, 0), vec![(15, Overlay::Sleeve)]);
        assert_eq!(r.choice.remote_report(true).switch, None);
        // We hear it again, but it has stopped hearing us in the meantime.
        assert_eq!(r.choice.remote_report(false).switch, None);
        assert_eq!(r.ticks(5, 1), vec![]);
        assert!(r.choice.heard() && r.choice.remote_heard() == Some(false));
        assert_eq!(r.choice.remote_report(true).switch, Some(Overlay::Fastdp));
    }

    #[test]
    fn a_peer_that_never_reports_keeps_the_fast_path() {
        let mut choice = OverlayChoice::default();
        let t0 = Instant::now();
        for s in 0..10 {
            let c = choice.sample(t0 + S * s, 0);
            assert_eq!(c.switch, None);
        }
        assert!(!choice.heard());
        assert_eq!(choice.overlay(), Overlay::Fastdp);
        // Its first report counts at once.
        assert_eq!(choice.remote_report(true).switch, Some(Overlay::Sleeve));
    }

    #[test]
    fn a_silence_while_we_did_not_sample_is_no_loss() {
        let mut choice = OverlayChoice::default();
        let t0 = Instant::now();
        choice.sample(t0, 1);
        choice.remote_report(true);
        // Our own checks stalled for 20 s (no heartbeats of ours, so no echoes either).
        assert_eq!(choice.sample(t0 + S * 20, 1).switch, None);
        assert!(choice.heard());
        // Sampled on time again, the silence counts from there: lost after LOST_AFTER.
        assert_eq!(choice.sample(t0 + S * 21, 1).switch, None);
        assert_eq!(choice.sample(t0 + S * 22, 1).switch, None);
        assert_eq!(choice.sample(t0 + S * 23, 1).switch, Some(Overlay::Sleeve));
        // A late sample does not make a lost peer heard either.
        assert_eq!(choice.sample(t0 + S * 40, 1).switch, None);
        assert!(!choice.heard());
    }

    #[test]
    fn a_repeated_report_changes_nothing() {
        let mut r = Run::new();
        assert_eq!(r.choice.remote_report(true), Change::default());
        assert_eq!(r.choice.remote_report(false).switch, Some(Overlay::Sleeve));
        assert_eq!(r.choice.remote_report(false), Change::default());
    }

    #[test]
    fn the_report_is_repeated_every_report_every() {
        let mut r = Run::new();
        let reports: Vec<u32> = (0..12)
            .filter_map(|_| r.tick(1).report.map(|_| r.second))
            .collect();
        assert_eq!(reports, vec![5, 10]);
    }
}
