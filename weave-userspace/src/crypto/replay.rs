//! A sliding window of counters already accepted (RFC 6479, as WireGuard keeps it): 2048
//! bits in a ring of 64-bit words, of which 1984 counters behind the highest are tracked.

const WORDS: usize = 32;
const WORD_BITS: u64 = 64;
/// Counters this far or further behind the highest accepted one are refused as too old.
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("counter {0} was already received")]
    Duplicate(u64),
    #[error("counter {counter} is older than the window (highest {highest})")]
    TooOld { counter: u64, highest: u64 },
}

/// Which counters were received.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// The highest counter accepted, if any.
    highest: Option<u64>,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            highest: None,
            bitmap: [0; WORDS],
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / WORD_BITS) % WORDS as u64) as usize,
            1u64 << (counter % WORD_BITS),
        )
    }

    /// Whether `counter` could be accepted (cheap: done before authenticating a packet).
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld { counter, highest });
        }
        let (word, bit) = Self::slot(counter);
        if self.bitmap[word] & bit != 0 {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Records `counter` as received (only once the packet is authentic); refuses it when
    /// it is a duplicate or too old.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                // Clear the words the window slides over.
                let (old_block, new_block) = (highest / WORD_BITS, counter / WORD_BITS);
                let slid = (new_block - old_block).min(WORDS as u64);
                for i in 1..=slid {
                    self.bitmap[((old_block + i) % WORDS as u64) as usize] = 0;
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_counters_pass_once() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            assert_eq!(w.accept(c), Ok(()));
            assert_eq!(w.accept(c), Err(ReplayError::Duplicate(c)));
        }
    }

    #[test]
    fn out_of_order_within_the_window_passes() {
        let mut w = ReplayWindow::new();
        w.accept(100).unwrap();
        w.accept(98).unwrap();
        w.accept(99).unwrap();
        w.accept(101).unwrap();
        w.accept(0).unwrap();
        assert_eq!(w.accept(99), Err(ReplayError::Duplicate(99)));
        w.accept(100 + WINDOW - 1).unwrap();
        // 100 is now exactly WINDOW - 1 behind: still tracked, and seen.
        assert_eq!(w.accept(100), Err(ReplayError::Duplicate(100)));
        // 97 was never received, but it is WINDOW + 2 behind the highest now.
        assert!(matches!(w.accept(97), Err(ReplayError::TooOld { .. })));
    }

    #[test]
    fn too_old_counters_are_refused() {
        let mut w = ReplayWindow::new();
        w.accept(10_000).unwrap();
        assert_eq!(
            w.accept(10_000 - WINDOW),
            Err(ReplayError::TooOld {
                counter: 10_000 - WINDOW,
                highest: 10_000
            })
        );
        w.accept(10_000 - WINDOW + 1).unwrap();
    }

    #[test]
    fn a_big_jump_forgets_everything_behind_the_window() {
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            w.accept(c).unwrap();
        }
        w.accept(1_000_000).unwrap();
        // The counters just behind the new highest were never seen.
        for c in (1_000_000 - WINDOW + 1)..1_000_000 {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        w.accept(u64::MAX).unwrap();
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::Duplicate(u64::MAX)));
    }

    #[test]
    fn check_does_not_record() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5), Ok(()));
        assert_eq!(w.check(5), Ok(()));
        w.accept(5).unwrap();
        assert_eq!(w.check(5), Err(ReplayError::Duplicate(5)));
    }

    proptest! {
        /// Against a model that remembers everything: within the window the answers agree,
        /// and nothing is ever accepted twice.
        #[test]
        fn agrees_with_a_set(counters in proptest::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let r = w.accept(c);
                let too_old = highest.is_some_and(|h| c <= h && h - c >= WINDOW);
                if seen.contains(&c) {
                    prop_assert!(r.is_err());
                } else if too_old {
                    let refused_as_old = matches!(r, Err(ReplayError::TooOld { .. }));
                    prop_assert!(refused_as_old);
                } else {
                    prop_assert_eq!(r, Ok(()));
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
