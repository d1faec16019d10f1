//! Adopting what an earlier run of the same router left pinned (a `kill -9`, a
//! `stop --keep-datapath`, a SIGTERM): the pure decisions. Whether the pinned maps fit the
//! programs about to be loaded ([`judge_pins`]), and, once the mesh and the endpoints have
//! had time to come back ([`ADOPTION_BOUND`]), which adopted entries nobody placed again
//! ([`Adoption::stale`]). The I/O is in `loader` (pins, links) and `mod.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Bumped when the meaning of a map entry changes while its size stays: pins of another
/// layout are never adopted.
pub(super) const LAYOUT_VERSION: u32 = 1;

/// Name of the marker pinned beside the maps: a one-entry array holding
/// [`layout_fingerprint`] of the maps it was pinned with.
pub(super) const LAYOUT_MARKER: &str = "LAYOUT";

/// How long adopted peer entries may wait for the mesh to place them again before they are
/// removed (a peer that went away while we were down), and adopted links and endpoint
/// entries for an endpoint to be restored.
pub(super) const ADOPTION_BOUND: Duration = Duration::from_secs(30);

/// The shape of a map as the kernel tells it (`bpf_obj_get_info_by_fd`) and as the object
/// declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// What is pinned under one map's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PinnedMap {
    Absent,
    Present(MapShape),
    /// Pinned, but not a map we can read (another kind of object, a permission problem).
    Unreadable(String),
}

/// What to do with the pins of an earlier run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PinVerdict {
    /// Nothing pinned: load afresh.
    Fresh,
    /// Every map pinned with the shape the object declares, and the layout marker matches:
    /// the maps are re-used, the programs replaced in the pinned links.
    Adopt,
    /// Something pinned that does not fit (the reason, naming the map): remove it all and
    /// load afresh.
    Recreate(String),
}

/// A fingerprint of the layout: [`LAYOUT_VERSION`] and every map's name and shape
/// (FNV-1a, stable across builds).
pub(super) fn layout_fingerprint(expected: &[(&str, MapShape)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&LAYOUT_VERSION.to_le_bytes());
    for (name, s) in expected {
        eat(name.as_bytes());
        for v in [s.map_type, s.key_size, s.value_size, s.max_entries] {
            eat(&v.to_le_bytes());
        }
    }
    h
}

/// Judges the pins of an earlier run against the maps the object declares (`expected`):
/// `pinned` has what lies under each expected name, `marker` the layout marker's value
/// (`None` when absent or unreadable).
pub(super) fn judge_pins(
    expected: &[(&str, MapShape)],
    pinned: &[(&str, PinnedMap)],
    marker: Option<u64>,
) -> PinVerdict {
    let present = pinned
        .iter()
        .filter(|(_, p)| *p != PinnedMap::Absent)
        .count();
    if present == 0 && marker.is_none() {
        return PinVerdict::Fresh;
    }
    for (name, want) in expected {
        match pinned.iter().find(|(n, _)| n == name).map(|(_, p)| p) {
            None | Some(PinnedMap::Absent) => {
                return PinVerdict::Recreate(format!("map {name} is not pinned"))
            }
            Some(PinnedMap::Unreadable(why)) => {
                return PinVerdict::Recreate(format!("pinned map {name} cannot be read: {why}"))
            }
            Some(PinnedMap::Present(got)) if got != want => {
                return PinVerdict::Recreate(format!(
                    "pinned map {name} has type {} key {} value {} entries {}, the programs want type {} key {} value {} entries {}",
                    got.map_type,
                    got.key_size,
                    got.value_size,
                    got.max_entries,
                    want.map_type,
                    want.key_size,
                    want.value_size,
                    want.max_entries
                ))
            }
            Some(PinnedMap::Present(_)) => {}
        }
    }
    let want = layout_fingerprint(expected);
    match marker {
        None => PinVerdict::Recreate(format!(
            "no layout marker {LAYOUT_MARKER} (pinned by another version)"
        )),
        Some(m) if m != want => PinVerdict::Recreate(format!(
            "layout marker {LAYOUT_MARKER} is {m:#x}, this version's is {want:#x}"
        )),
        Some(_) => PinVerdict::Adopt,
    }
}

/// What was adopted and still waits for the mesh or an endpoint to claim it.
#[derive(Debug)]
pub(super) struct Adoption {
    /// Short IDs with an entry in the adopted `PEERS`.
    peers: BTreeSet<u16>,
    /// When the programs were loaded over the adopted maps.
    since: Instant,
    done: bool,
}

/// What an adoption leaves to remove once [`ADOPTION_BOUND`] has passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Stale {
    /// Adopted peers the mesh did not place again.
    pub peers: Vec<u16>,
}

impl Adoption {
    pub(super) fn new(peers: impl IntoIterator<Item = u16>, since: Instant) -> Self {
        Self {
            peers: peers.into_iter().collect(),
            since,
            done: false,
        }
    }

    /// Once, when [`ADOPTION_BOUND`] has passed since the adoption: the adopted peers not
    /// among `placed` (those the mesh added, admitted or handed to the sleeve in this run).
    pub(super) fn stale(&mut self, now: Instant, placed: &BTreeSet<u16>) -> Option<Stale> {
        if self.done || now.duration_since(self.since) < ADOPTION_BOUND {
            return None;
        }
        self.done = true;
        Some(Stale {
            peers: self.peers.difference(placed).copied().collect(),
        })
    }
}

/// MACs in the adopted `ENDPOINTS` (or `ENDPOINT_ADDRESSES`) that no endpoint of this run
/// has: containers gone while the router was down, whose entries go.
pub(super) fn unclaimed_macs(pinned: &[[u8; 6]], endpoints: &[[u8; 6]]) -> Vec<[u8; 6]> {
    pinned
        .iter()
        .filter(|m| !endpoints.contains(m))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARRAY: u32 = 2;
    const HASH: u32 = 1;

    fn shape(map_type: u32, key: u32, value: u32, entries: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: key,
            value_size: value,
            max_entries: entries,
        }
    }

    fn expected() -> Vec<(&'static str, MapShape)> {
        vec![
            ("PEERS", shape(ARRAY, 4, 16, 4096)),
            ("ENDPOINTS", shape(HASH, 8, 8, 1024)),
        ]
    }

    fn pinned_as(expected: &[(&'static str, MapShape)]) -> Vec<(&'static str, PinnedMap)> {
        expected
            .iter()
            .map(|(n, s)| (*n, PinnedMap::Present(*s)))
            .collect()
    }

    #[test]
    fn nothing_pinned_loads_afresh() {
        let pinned = vec![
            ("PEERS", PinnedMap::Absent),
            ("ENDPOINTS", PinnedMap::Absent),
        ];
        assert_eq!(judge_pins(&expected(), &pinned, None), PinVerdict::Fresh);
    }

    #[test]
    fn maps_of_the_same_shape_with_the_same_marker_are_adopted() {
        let e = expected();
        let marker = layout_fingerprint(&e);
        assert_eq!(
            judge_pins(&e, &pinned_as(&e), Some(marker)),
            PinVerdict::Adopt
        );
    }

    #[test]
    fn a_map_of_another_shape_is_recreated_and_named() {
        let e = expected();
        let mut pinned = pinned_as(&e);
        pinned[1].1 = PinnedMap::Present(shape(HASH, 8, 12, 1024));
        let verdict = judge_pins(&e, &pinned, Some(layout_fingerprint(&e)));
        let PinVerdict::Recreate(why) = verdict else {
            panic!("adopted a map of the wrong shape: {verdict:?}");
        };
        assert!(
            why.contains("ENDPOINTS") && why.contains("value 12"),
            "{why}"
        );
    }

    #[test]
    fn a_missing_or_unreadable_map_or_marker_means_recreate() {
        let e = expected();
        let marker = Some(layout_fingerprint(&e));
        let mut missing = pinned_as(&e);
        missing[0].1 = PinnedMap::Absent;
        assert!(matches!(
            judge_pins(&e, &missing, marker),
            PinVerdict::Recreate(w) if w.contains("PEERS is not pinned")
        ));
        let mut unreadable = pinned_as(&e);
        unreadable[0].1 = PinnedMap::Unreadable("not a map".into());
        assert!(matches!(
            judge_pins(&e, &unreadable, marker),
            PinVerdict::Recreate(w) if w.contains("not a map")
        ));
        assert!(matches!(
            judge_pins(&e, &pinned_as(&e), None),
            PinVerdict::Recreate(w) if w.contains("another version")
        ));
        assert!(matches!(
            judge_pins(&e, &pinned_as(&e), Some(7)),
            PinVerdict::Recreate(w) if w.contains("layout marker")
        ));
    }

    #[test]
    fn a_marker_alone_is_a_leftover_to_recreate() {
        let pinned = vec![
            ("PEERS", PinnedMap::Absent),
            ("ENDPOINTS", PinnedMap::Absent),
        ];
        assert!(matches!(
            judge_pins(&expected(), &pinned, Some(1)),
            PinVerdict::Recreate(_)
        ));
    }

    #[test]
    fn the_fingerprint_follows_every_shape_and_name() {
        let e = expected();
        let base = layout_fingerprint(&e);
        assert_eq!(base, layout_fingerprint(&expected()), "stable");
        let mut bigger = expected();
        bigger[0].1.max_entries += 1;
        assert_ne!(base, layout_fingerprint(&bigger));
        let mut renamed = expected();
        renamed[0].0 = "PEERZ";
        assert_ne!(base, layout_fingerprint(&renamed));
    }

    #[test]
    fn adopted_peers_not_placed_again_within_the_bound_are_stale_once() {
        let t0 = Instant::now();
        let mut a = Adoption::new([1, 2, 3], t0);
        let placed: BTreeSet<u16> = [2, 9].into();
        assert_eq!(a.stale(t0 + Duration::from_secs(29), &placed), None);
        assert_eq!(
            a.stale(t0 + ADOPTION_BOUND, &placed),
            Some(Stale { peers: vec![1, 3] })
        );
        assert_eq!(
            a.stale(t0 + ADOPTION_BOUND * 2, &BTreeSet::new()),
            None,
            "only once"
        );
    }

    #[test]
    fn endpoint_macs_nobody_claims_are_the_ones_removed() {
        let a = [2, 0, 0, 0, 0, 1];
        let b = [2, 0, 0, 0, 0, 2];
        assert_eq!(unclaimed_macs(&[a, b], &[a]), vec![b]);
        assert!(unclaimed_macs(&[a], &[a, b]).is_empty());
    }
}
