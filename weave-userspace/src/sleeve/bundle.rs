//! Small frames to one peer sealed together, as pure functions over bytes.
//!
//! A *bundle* is one datagram (kinds 5 and 6, to peers speaking protocol version 7) whose
//! payload holds several frames one after another, each behind its length (two bytes, big
//! endian):
//!
//! ```text
//! | header (16) | len | vnet header + frame | len | vnet header + frame | ... [| tag]
//! ```
//!
//! The send thread gathers the frames it reads from the TAP in one batch
//! ([`super::batch::BATCH_BUDGET`]) into one bundle per peer, and seals the bundle once, with
//! one counter, when the next frame would not fit one underlay packet, before a frame to that
//! peer that is not bundled (so its frames keep their order), or when the batch leaves. A
//! bundle of one frame leaves as an ordinary datagram. One seal for a dozen 64-byte frames
//! instead of a dozen seals, one replay-window slot, one datagram through both UDP stacks.
//! A bundle is opened whole or not at all: a replayed or forged one gives no frame.

use super::packet::DropReason;

/// Bytes before each frame of a bundle: its length.
pub const LENGTH_LEN: usize = 2;

/// Frames waiting to leave for one peer in one datagram.
#[derive(Debug, Default)]
pub struct Bundle {
    /// The bundle's payload so far: length, frame, length, frame...
    body: Vec<u8>,
    /// How many frames it holds (a bundle of one leaves as an ordinary datagram).
    frames: usize,
}

impl Bundle {
    /// Whether a frame of `len` bytes goes into a bundle at all: with its length it fits a
    /// payload of `capacity` bytes (what one datagram carries, the tag left out).
    pub fn takes(len: usize, capacity: usize) -> bool {
        len > 0 && LENGTH_LEN + len <= capacity && len <= usize::from(u16::MAX)
    }

    /// Whether a frame of `len` bytes still fits this bundle.
    pub fn has_room(&self, len: usize, capacity: usize) -> bool {
        self.body.len() + LENGTH_LEN + len <= capacity
    }

    /// Adds a frame (one [`Bundle::takes`]).
    pub fn push(&mut self, frame: &[u8]) {
        debug_assert!(frame.len() <= usize::from(u16::MAX));
        self.body
            .extend_from_slice(&(frame.len() as u16).to_be_bytes());
        self.body.extend_from_slice(frame);
        self.frames += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// What leaves: the payload of a bundle, or the one frame alone.
    pub fn contents(&self) -> Contents<'_> {
        if self.frames == 1 {
            Contents::Single(&self.body[LENGTH_LEN..])
        } else {
            Contents::Bundle(&self.body)
        }
    }

    /// Empties it for the next frames (the buffer stays).
    pub fn clear(&mut self) {
        self.body.clear();
        self.frames = 0;
    }
}

/// What a closed bundle sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents<'a> {
    /// One frame: an ordinary datagram.
    Single(&'a [u8]),
    /// The payload of a bundle datagram.
    Bundle(&'a [u8]),
}

/// The frames of a bundle's (opened) payload, in order. A length running past the end, an
/// empty frame or an empty bundle is malformed: the frames before it are still given, then
/// the error, then nothing.
pub fn frames(body: &[u8]) -> Frames<'_> {
    Frames {
        rest: body,
        failed: body.is_empty(),
        reported: false,
    }
}

pub struct Frames<'a> {
    rest: &'a [u8],
    failed: bool,
    reported: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            if self.reported {
                return None;
            }
            self.reported = true;
            return Some(Err(DropReason::Malformed));
        }
        if self.rest.is_empty() {
            return None;
        }
        let parsed = self
            .rest
            .split_first_chunk::<LENGTH_LEN>()
            .and_then(|(len, rest)| {
                let len = usize::from(u16::from_be_bytes(*len));
                (len > 0 && len <= rest.len()).then(|| rest.split_at(len))
            });
        match parsed {
            Some((frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            None => {
                self.failed = true;
                self.next()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(body: &[u8]) -> Vec<Result<Vec<u8>, DropReason>> {
        frames(body).map(|f| f.map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn frames_come_out_in_the_order_they_went_in() {
        let mut b = Bundle::default();
        let sent: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 60 + i as usize]).collect();
        for f in &sent {
            assert!(b.has_room(f.len(), 1400));
            b.push(f);
        }
        assert_eq!(b.frames(), 5);
        let Contents::Bundle(body) = b.contents() else {
            panic!("five frames make a bundle");
        };
        let got: Vec<_> = all(body).into_iter().map(Result::unwrap).collect();
        assert_eq!(got, sent);
    }

    #[test]
    fn a_bundle_of_one_frame_is_the_frame_alone() {
        let mut b = Bundle::default();
        b.push(b"only frame");
        assert_eq!(b.contents(), Contents::Single(b"only frame"));
        b.clear();
        assert!(b.is_empty());
        b.push(b"a");
        b.push(b"b");
        assert_eq!(b.contents(), Contents::Bundle(&[0, 1, b'a', 0, 1, b'b']));
    }

    #[test]
    fn room_counts_each_frame_with_its_length() {
        let mut b = Bundle::default();
        b.push(&[0; 98]); // 100 bytes with its length
        assert!(b.has_room(98, 200));
        assert!(!b.has_room(99, 200));
        assert!(Bundle::takes(198, 200));
        assert!(!Bundle::takes(199, 200));
        assert!(!Bundle::takes(0, 200));
    }

    #[test]
    fn a_length_past_the_end_gives_the_frames_before_it_then_one_error() {
        let mut body = vec![0, 2, b'o', b'k'];
        body.extend_from_slice(&[0, 9, 1, 2]);
        assert_eq!(
            all(&body),
            vec![Ok(b"ok".to_vec()), Err(DropReason::Malformed)]
        );
        assert_eq!(all(&[0, 0, 1]), vec![Err(DropReason::Malformed)]);
        assert_eq!(all(&[7]), vec![Err(DropReason::Malformed)]);
        assert_eq!(all(&[]), vec![Err(DropReason::Malformed)]);
    }
}
