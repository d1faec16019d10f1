//! A budget of log lines a second for refusals a peer can cause at will (garbage
//! connections, gossip it should not send): at most [`LOG_BURST`] a second are logged, and
//! the next line logged says how many were left out. The refusals are counted all the same
//! (`/metrics`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most refusal lines logged per second.
pub const LOG_BURST: u32 = 20;

/// How many log lines a second may take: pure, so it is tested with made-up clocks.
#[derive(Debug)]
pub struct LogBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; `suppressed` lines went unlogged in the window before.
    Log {
        suppressed: u64,
    },
    Suppress,
}

impl LogBudget {
    pub const fn new() -> Self {
        Self {
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> LogVerdict {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            LogVerdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            LogVerdict::Suppress
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs `line` as a warning if `budget` admits it now, saying how many lines it left out
/// before.
pub fn warn_within(budget: &Mutex<LogBudget>, line: std::fmt::Arguments<'_>) {
    let verdict = budget
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(Instant::now());
    match verdict {
        LogVerdict::Log { suppressed: 0 } => tracing::warn!("{line}"),
        LogVerdict::Log { suppressed } => {
            tracing::warn!("{line} ({suppressed} more refusals not logged in the last second)")
        }
        LogVerdict::Suppress => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_a_second_and_says_how_much_it_left_out() {
        let mut budget = LogBudget::new();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(budget.admit(t0), LogVerdict::Log { suppressed: 0 });
        }
        for _ in 0..500 {
            assert_eq!(
                budget.admit(t0 + Duration::from_millis(500)),
                LogVerdict::Suppress
            );
        }
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(1)),
            LogVerdict::Log { suppressed: 500 }
        );
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(1)),
            LogVerdict::Log { suppressed: 0 }
        );
    }
}
