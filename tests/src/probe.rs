//! What tests look at and poke with: metrics, neighbour tables, stray packets, transfers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cmd::{self, Background, Output};
use crate::error::{Error, Result};
use crate::netns::Netns;

/// One sample of Prometheus text: name, labels (as written, without braces), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// The samples in Prometheus text format (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, rest) = match l.find('}') {
                Some(i) => (&l[..=i], &l[i + 1..]),
                None => l.split_once(' ')?,
            };
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, lab)) => (n.to_string(), lab.trim_end_matches('}').to_string()),
                None => (series.to_string(), String::new()),
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// Sum of the samples for which `pick` is true.
pub fn metric_sum(text: &str, pick: impl Fn(&Sample) -> bool) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| pick(s))
        .map(|s| s.value)
        .sum()
}

/// A VXLAN packet (UDP payload): the 8-byte header with VNI `vni`, then an Ethernet frame
/// from `src` to `dst` carrying an IPv4 ICMP echo-like body (not meant to be valid).
pub fn vxlan_payload(vni: u32, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[0x08, 0x00]);
    // IPv4: version/IHL, TOS, length 28, id, flags, TTL 64, ICMP, checksum 0, 10.2.1.99 -> 10.2.1.1
    p.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 2, 1, 99, 10, 2, 1, 1,
    ]);
    p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    p
}

/// Sends `payload` `count` times from a UDP socket inside `ns` to `to`.
pub fn send_udp(ns: &Netns, to: SocketAddrV4, payload: &[u8], count: usize) -> Result<()> {
    ns.enter(|| -> std::io::Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..count {
            s.send_to(payload, to)?;
        }
        Ok(())
    })?
    .map_err(|e| Error::io(format!("send UDP to {to} from {}", ns.name()), e))
}

/// Two pings from inside `ns` to `addr` with `payload` bytes each (packets of `payload` +
/// 28 bytes) that may not be fragmented (`-M do`); a failed ping is not an error. A hop that
/// refuses them says so in the output ("Frag needed", "message too long, mtu=..."); a hop
/// that drops them silently leaves only the missing replies.
pub fn ping_unfragmented(ns: &Netns, addr: &str, payload: u32) -> Result<Output> {
    ns.run_timeout(
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.3",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            &payload.to_string(),
            addr,
        ],
        Duration::from_secs(10),
    )
}

/// What an iperf3 client reports (`-J`) of a TCP transfer: what the server received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub bytes: u64,
    pub bits_per_second: f64,
}

/// The port iperf3 listens on.
pub const IPERF3_PORT: u16 = 5201;

/// `iperf3 -s -1` (one test, then it exits) in the background inside `ns`, once its port
/// is open (its own output is buffered when it goes to a file).
pub fn iperf3_server(ns: &Netns) -> Result<Background> {
    let mut bg = ns.spawn(&["iperf3", "-s", "-1"])?;
    let filter = format!("sport = :{IPERF3_PORT}");
    cmd::wait_for(
        &format!("iperf3 to listen in {}", ns.name()),
        Duration::from_secs(10),
        || {
            let listening = || {
                ns.run(&["ss", "-Hltn", &filter])
                    .is_ok_and(|o| !o.stdout.trim().is_empty())
            };
            (!bg.running() || listening()).then_some(())
        },
    )?;
    if !bg.running() {
        let o = bg.stop();
        return Err(Error::Other(format!(
            "iperf3 -s in {} exited: {}{}",
            ns.name(),
            o.stdout.trim(),
            o.stderr.trim()
        )));
    }
    Ok(bg)
}

/// `iperf3 -c <server_ip> -t <secs> -J`: the arguments of a TCP transfer's client.
pub fn iperf3_client_argv(server_ip: &str, secs: u32) -> Vec<String> {
    ["iperf3", "-c", server_ip, "-t", &secs.to_string(), "-J"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The transfer an iperf3 client's JSON output (`-J`) reports, or the error it names.
pub fn parse_iperf3(json: &str) -> Result<Transfer> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::Other(format!(
            "iperf3 output is not JSON ({e}): {}",
            json.chars().take(300).collect::<String>()
        ))
    })?;
    if let Some(e) = v["error"].as_str() {
        return Err(Error::Other(format!("iperf3: {e}")));
    }
    let sum = &v["end"]["sum_received"];
    match (sum["bytes"].as_u64(), sum["bits_per_second"].as_f64()) {
        (Some(bytes), Some(bits_per_second)) => Ok(Transfer {
            bytes,
            bits_per_second,
        }),
        _ => Err(Error::Other(
            "iperf3 JSON has no end.sum_received.bytes / bits_per_second".into(),
        )),
    }
}

/// A TCP transfer of `secs` seconds from `client` to `server_ip` (an address of `server`),
/// both namespaces; the client may take `timeout` in all.
pub fn iperf3_tcp(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    secs: u32,
    timeout: Duration,
) -> Result<Transfer> {
    let _server = iperf3_server(server)?;
    let out = client.run_timeout(&iperf3_client_argv(server_ip, secs), timeout)?;
    parse_iperf3(&out.stdout)
}

/// Sends `bytes` over one TCP connection from inside `client` to `server_ip`:`port`, where a
/// listener inside `server` reads them to the end of the stream; all within `timeout`. How
/// long it took, or an error saying how much arrived.
pub fn tcp_send(
    client: &Netns,
    server: &Netns,
    server_ip: Ipv4Addr,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let to = SocketAddrV4::new(server_ip, port);
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {to}"), e);
    let listener = server
        .enter(|| TcpListener::bind(to))?
        .map_err(|e| io("listen on", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io("listen on", e))?;
    let gave_up = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| -> std::io::Result<u64> {
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline || gave_up.load(Ordering::Relaxed) {
                            return Err(std::io::ErrorKind::TimedOut.into());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            };
            conn.set_nonblocking(false)?;
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0u64;
            loop {
                conn.set_read_timeout(Some(left()))?;
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return Ok(got),
                    Ok(n) => got += n as u64,
                }
            }
        });
        let sent = (|| -> Result<()> {
            let mut conn = client
                .enter(|| TcpStream::connect_timeout(&to.into(), left()))?
                .map_err(|e| io("connect to", e))?;
            let chunk = vec![0x5au8; 1 << 16];
            let mut sent = 0u64;
            while sent < bytes {
                if Instant::now() >= deadline {
                    return Err(Error::Other(format!(
                        "{sent} bytes written when the time was up"
                    )));
                }
                let n = chunk.len().min((bytes - sent) as usize);
                match conn
                    .set_write_timeout(Some(left()))
                    .and_then(|()| conn.write(&chunk[..n]))
                {
                    Ok(n) => sent += n as u64,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(io(&format!("after {sent} bytes, sending to"), e)),
                }
            }
            conn.shutdown(Shutdown::Write)
                .map_err(|e| io("shut down the stream to", e))
        })();
        gave_up.store(sent.is_err(), Ordering::Relaxed);
        let got = reader
            .join()
            .map_err(|_| Error::Other("the TCP reader panicked".into()))?;
        match (sent, got) {
            (Ok(()), Ok(got)) if got == bytes => Ok(start.elapsed()),
            (sent, got) => Err(Error::Other(format!(
                "{bytes} bytes to {to}: {} of them arrived in {:.1?}{}",
                got.map_or_else(|e| format!("none ({e})"), |g| g.to_string()),
                start.elapsed(),
                sent.err().map(|e| format!("; {e}")).unwrap_or_default()
            ))),
        }
    })
}

/// The MAC address of `dev` inside `ns`.
pub fn link_mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&format!("-o link show dev {dev}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| Error::Other(format!("no MAC for {dev} in {}: {out}", ns.name())))
}

/// The MTU of `dev` inside `ns`.
pub fn link_mtu(ns: &Netns, dev: &str) -> Result<u32> {
    let out = ns.ip(&format!("-o link show dev {dev}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::Other(format!("no MTU for {dev} in {}: {out}", ns.name())))
}

/// Names of the links inside `ns`.
pub fn links(ns: &Netns) -> Result<Vec<String>> {
    Ok(ns
        .ip("-o link show")?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

/// The neighbour entry for `addr` inside `ns` (`ip neigh show <addr>`), if any.
pub fn neighbour(ns: &Netns, addr: &str) -> Result<Option<String>> {
    let out = ns.ip(&format!("neigh show {addr}"))?;
    Ok(out
        .lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty()))
}

/// The short ID a router stored in its state dir (`peer.json`), if readable.
pub fn stored_short_id(state_dir: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(state_dir.join("peer.json")).ok()?;
    let i = text.find("\"short_id\"")?;
    let rest = text[i + "\"short_id\"".len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.try_into().ok()
}

/// The addresses that answered, from the output of `ping` (its "... from ADDR: ..." lines).
pub fn answered_by(ping_stdout: &str) -> std::collections::BTreeSet<String> {
    ping_stdout
        .lines()
        .filter_map(|l| l.split(" from ").nth(1))
        .filter_map(|r| r.split(':').next())
        .map(str::to_string)
        .collect()
}

/// `promtool check metrics` on `text`: `Err(what promtool said)` unless it passes. The one
/// lint problem allowed is Weave's own name `weave_ipam_unreachable_count` (a gauge ending
/// in `_count`), kept so that Weave's dashboards and alerts find it.
pub fn promtool_check_metrics(text: &str) -> std::result::Result<(), String> {
    promtool(&["check", "metrics"], text.as_bytes()).and_then(|(code, said)| {
        let only_weaves_name = code == Some(3)
            && said.lines().all(|l| {
                l.starts_with("weave_ipam_unreachable_count ") && l.contains("\"_count\" suffix")
            });
        if code == Some(0) || only_weaves_name {
            Ok(())
        } else {
            Err(said)
        }
    })
}

/// Runs `promtool args` with `stdin`: (exit code, stdout and stderr).
pub fn promtool(args: &[&str], stdin: &[u8]) -> std::result::Result<(Option<i32>, String), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (cargo xtask setup installs it): {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| format!("promtool stdin: {e}"))?;
    }
    let o = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let mut said = String::from_utf8_lossy(&o.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&o.stderr));
    Ok((o.status.code(), said))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let t = "# HELP x y\n# TYPE a counter\na 1\nb{reason=\"bad peer\",x=\"1\"} 2.5\nc{} 3 1700000000\n";
        let s = parse_metrics(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, "b");
        assert_eq!(s[1].labels, "reason=\"bad peer\",x=\"1\"");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(metric_sum(t, |s| s.name != "a"), 5.5);
    }

    #[test]
    fn builds_vxlan_header() {
        let p = vxlan_payload(0x123456, [0xff; 6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&p[20..22], &[0x08, 0x00]);
    }

    #[test]
    fn reads_macs() {
        assert_eq!(parse_mac("02:0a:ff:00:01:02"), Some([2, 10, 255, 0, 1, 2]));
        assert_eq!(parse_mac("02:0a"), None);
    }
}
