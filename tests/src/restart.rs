//! Measuring a router restart from the outside: a fast ping's losses and longest gap, and
//! what the kernel says of the pinned links (their IDs and the programs in them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, Background};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::router::BPFFS_ROOT;

/// Pings lost that a restart may cost at most (the acceptance bound of hitless restarts,
/// shared by the restart tests and `cargo xtask bench --restart`).
pub const MAX_LOST: u32 = 2;

/// A `ping -i <interval>` running in the background for a fixed number of echoes.
pub struct PingRun {
    bg: Background,
    interval: Duration,
    count: u32,
    what: String,
}

/// What a [`PingRun`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingLoss {
    pub sent: u32,
    pub received: u32,
    /// The longest run of unanswered echoes, as time (run length × interval).
    pub longest_gap: Duration,
    /// When the last answer before that gap came (Unix time, from `ping -D`), if any.
    pub gap_after: Option<f64>,
}

impl PingLoss {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }
}

impl std::fmt::Display for PingLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} lost, longest gap {} ms",
            self.lost(),
            self.sent,
            self.longest_gap.as_millis()
        )?;
        match self.gap_after {
            Some(at) if !self.longest_gap.is_zero() => {
                write!(f, " after the answer at {}", utc_time_of_day(at))
            }
            _ => Ok(()),
        }
    }
}

impl PingRun {
    /// Pings `addr` from `ns` every `interval` for about `lasting`.
    pub fn start(ns: &Netns, addr: &str, interval: Duration, lasting: Duration) -> Result<Self> {
        let count = (lasting.as_millis() / interval.as_millis().max(1)) as u32;
        let secs = format!("{:.3}", interval.as_secs_f64());
        let bg = ns.spawn(&[
            "ping",
            "-n",
            "-D",
            "-i",
            &secs,
            "-W",
            "1",
            "-c",
            &count.to_string(),
            addr,
        ])?;
        Ok(Self {
            bg,
            interval,
            count,
            what: format!("ping {addr} from {}", ns.name()),
        })
    }

    /// Waits for the last echo (bounded) and counts.
    pub fn finish(mut self) -> Result<PingLoss> {
        let budget = self.interval * self.count + Duration::from_secs(15);
        let bg = &mut self.bg;
        let _ = cmd::wait_for(&self.what, budget, || (!bg.running()).then_some(()));
        let out = self.bg.stop();
        Ok(ping_loss(&out.stdout, self.count, self.interval))
    }
}

/// `HH:MM:SS.mmm` (UTC) of Unix time `at`.
fn utc_time_of_day(at: f64) -> String {
    let ms = (at * 1000.0) as u64 % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Losses in `ping -n` output of `count` echoes sent every `interval`: received sequence
/// numbers (1-based), the longest run of missing ones (at the start, between, at the end),
/// and when the answer before it came (`ping -D` puts `[unix time]` before each line).
pub fn ping_loss(stdout: &str, count: u32, interval: Duration) -> PingLoss {
    let mut answers: Vec<(u32, Option<f64>)> = stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let rest = l.split("icmp_seq=").nth(1)?;
            let seq = rest.split_whitespace().next()?.parse().ok()?;
            let at = l
                .strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .and_then(|t| t.parse().ok());
            Some((seq, at))
        })
        .collect();
    answers.sort_by_key(|(seq, _)| *seq);
    answers.dedup_by_key(|(seq, _)| *seq);
    let mut longest = 0u32;
    let mut gap_after = None;
    let mut last = (0u32, None);
    for &answer in answers.iter().chain(std::iter::once(&(count + 1, None))) {
        let missing = answer.0.saturating_sub(last.0 + 1);
        if missing > longest {
            longest = missing;
            gap_after = last.1;
        }
        last = answer;
    }
    PingLoss {
        sent: count,
        received: answers.len() as u32,
        longest_gap: interval * longest,
        gap_after,
    }
}

/// The pin directory of the router named `name` (its peer name, in any spelling).
pub fn pin_dir(name: &str) -> Option<PathBuf> {
    let hex = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let want = hex(name);
    std::fs::read_dir(BPFFS_ROOT)
        .ok()?
        .flatten()
        .find(|e| hex(&e.file_name().to_string_lossy()) == want)
        .map(|e| e.path())
}

/// One pinned link as the kernel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    pub pin: String,
    pub link_id: u64,
    pub prog_id: u64,
    /// Length of the program in the link as the verifier left it (`bytes_xlated`): the
    /// same object loaded with other read-only globals can differ here.
    pub prog_xlated: u64,
}

/// Every link pinned under `<pin_dir>/links`, by pin name (`bpftool link show pinned`).
pub fn pinned_links(pin_dir: &Path) -> Result<Vec<PinnedLink>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(pin_dir.join("links"))
        .map_err(|e| Error::io(format!("read {}/links", pin_dir.display()), e))?;
    for e in rd.flatten() {
        let path = e.path();
        let json = cmd::check(&[
            "bpftool",
            "-j",
            "link",
            "show",
            "pinned",
            &path.to_string_lossy(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(&json)
            .map_err(|err| Error::Other(format!("bpftool link show: {err}: {json}")))?;
        let prog_id = v["prog_id"].as_u64().unwrap_or_default();
        let prog = cmd::check(&["bpftool", "-j", "prog", "show", "id", &prog_id.to_string()])?;
        let p: serde_json::Value = serde_json::from_str(&prog)
            .map_err(|err| Error::Other(format!("bpftool prog show: {err}: {prog}")))?;
        out.push(PinnedLink {
            pin: e.file_name().to_string_lossy().into_owned(),
            link_id: v["id"].as_u64().unwrap_or_default(),
            prog_id,
            prog_xlated: p["bytes_xlated"].as_u64().unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.pin.cmp(&b.pin));
    Ok(out)
}

/// The keys of the map pinned at `path` as bpftool prints them (hex byte strings).
pub fn pinned_map_keys(path: &Path) -> Result<Vec<String>> {
    let json = cmd::check(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &path.to_string_lossy(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|err| Error::Other(format!("bpftool map dump: {err}: {json}")))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["key"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str())
                .map(|b| b.trim_start_matches("0x").to_string())
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect())
}

/// (type, key size, value size, max entries) of the map pinned at `path`.
pub fn pinned_map_shape(path: &Path) -> Result<(String, u64, u64, u64)> {
    let json = cmd::check(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        &path.to_string_lossy(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|err| Error::Other(format!("bpftool map show: {err}: {json}")))?;
    Ok((
        v["type"].as_str().unwrap_or_default().to_string(),
        v["bytes_key"].as_u64().unwrap_or_default(),
        v["bytes_value"].as_u64().unwrap_or_default(),
        v["max_entries"].as_u64().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_count_missing_sequence_numbers_and_the_longest_run() {
        let out = "PING 10.2.1.2 (10.2.1.2) 56(84) bytes of data.\n\
            64 bytes from 10.2.1.2: icmp_seq=1 ttl=64 time=0.1 ms\n\
            64 bytes from 10.2.1.2: icmp_seq=2 ttl=64 time=0.1 ms\n\
            64 bytes from 10.2.1.2: icmp_seq=6 ttl=64 time=0.1 ms\n\
            64 bytes from 10.2.1.2: icmp_seq=8 ttl=64 time=0.1 ms\n";
        let l = ping_loss(out, 10, Duration::from_millis(20));
        assert_eq!((l.sent, l.received, l.lost()), (10, 4, 6));
        assert_eq!(l.longest_gap, Duration::from_millis(60), "3 to 5");
        let l = ping_loss(out, 8, Duration::from_millis(20));
        assert_eq!(l.lost(), 4);
    }

    #[test]
    fn the_gap_is_placed_after_the_answer_before_it() {
        let out = "[1796564000.100000] 64 bytes from 10.2.1.2: icmp_seq=1 ttl=64 time=0.1 ms\n\
            [1796564000.120000] 64 bytes from 10.2.1.2: icmp_seq=2 ttl=64 time=0.1 ms\n\
            [1796564000.200000] 64 bytes from 10.2.1.2: icmp_seq=6 ttl=64 time=0.1 ms\n";
        let l = ping_loss(out, 6, Duration::from_millis(20));
        assert_eq!(l.longest_gap, Duration::from_millis(60));
        assert_eq!(l.gap_after, Some(1796564000.12));
        assert!(l.to_string().ends_with("after the answer at 13:33:20.120"), "{l}");
    }
}
