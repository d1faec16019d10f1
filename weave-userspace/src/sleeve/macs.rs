//! Where each remote MAC lives, as the sleeve learns it from received frames: bounded, so a
//! peer sending frames from ever new source MACs cannot grow the router's memory.

use std::collections::HashMap;

/// Most MACs learned (as many as the kernel's `REMOTE_MACS`).
pub const MAX_LEARNED_MACS: usize = weave_ebpf_common::maps::REMOTE_MACS_MAX_ENTRIES as usize;

/// What learning a source MAC did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Known behind this origin already.
    Known,
    /// New, or moved from another origin.
    Stored,
    /// New, and the table is full: not learned (frames to it are flooded as to any unknown
    /// MAC; counted).
    Refused,
    /// A group address: never a source to learn.
    Group,
}

/// MAC → the short ID of the peer whose frames it sends.
#[derive(Debug)]
pub struct MacTable {
    by_mac: HashMap<[u8; 6], u16>,
    limit: usize,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::with_limit(MAX_LEARNED_MACS)
    }
}

impl MacTable {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            by_mac: HashMap::new(),
            limit,
        }
    }

    pub fn get(&self, mac: &[u8; 6]) -> Option<u16> {
        self.by_mac.get(mac).copied()
    }

    /// What [`MacTable::learn`] would do, without changing anything (a read lock suffices).
    pub fn would_learn(&self, mac: [u8; 6], origin: u16) -> Learned {
        if mac[0] & 1 != 0 {
            return Learned::Group;
        }
        match self.by_mac.get(&mac) {
            Some(o) if *o == origin => Learned::Known,
            Some(_) => Learned::Stored,
            None if self.by_mac.len() >= self.limit => Learned::Refused,
            None => Learned::Stored,
        }
    }

    /// Learns that `mac` sends from behind `origin`: stored unless it is a group address, or
    /// new while the table is full.
    pub fn learn(&mut self, mac: [u8; 6], origin: u16) -> Learned {
        let verdict = self.would_learn(mac, origin);
        if verdict == Learned::Stored {
            self.by_mac.insert(mac, origin);
        }
        verdict
    }

    /// Forgets every MAC learned behind `origin`; returns them.
    pub fn forget_peer(&mut self, origin: u16) -> Vec<[u8; 6]> {
        let gone: Vec<[u8; 6]> = self
            .by_mac
            .iter()
            .filter(|(_, o)| **o == origin)
            .map(|(m, _)| *m)
            .collect();
        self.by_mac.retain(|_, o| *o != origin);
        gone
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> [u8; 6] {
        let b = n.to_be_bytes();
        [0x02, 0, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn a_full_table_refuses_new_macs_but_keeps_and_moves_known_ones() {
        let mut t = MacTable::with_limit(3);
        for n in 0..3 {
            assert_eq!(t.learn(mac(n), 1), Learned::Stored);
        }
        for n in 3..1000 {
            assert_eq!(t.learn(mac(n), 2), Learned::Refused);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.learn(mac(0), 1), Learned::Known);
        assert_eq!(t.learn(mac(0), 2), Learned::Stored, "a MAC that moved");
        assert_eq!(t.get(&mac(0)), Some(2));
        assert_eq!(t.get(&mac(500)), None);
        // Room again once a peer's MACs are forgotten.
        assert_eq!(t.forget_peer(1).len(), 2);
        assert_eq!(t.learn(mac(7), 2), Learned::Stored);
    }

    #[test]
    fn group_addresses_are_never_learned() {
        let mut t = MacTable::default();
        assert_eq!(t.learn([0xff; 6], 1), Learned::Group);
        assert_eq!(t.learn([0x01, 0, 0x5e, 0, 0, 1], 1), Learned::Group);
        assert!(t.is_empty());
    }
}
