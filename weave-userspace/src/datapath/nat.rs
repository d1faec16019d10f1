//! Masquerading for `expose`, both ways as Weave Net's `expose` did: what the weave network
//! sends from an exposed subnet to the outside leaves with the host's address, and what the
//! host routes into an exposed subnet from outside it (a port published with `portmap`, a
//! client on another machine) enters with the bridge's address in that subnet, the one
//! source the subnet isolation lets through. One nftables table, `ip weave-router`,
//! rewritten whole whenever the set of exposed subnets changes: one nfnetlink batch
//! (atomic, as `nft -f` would send) that makes sure the table exists, deletes it, and
//! creates it again with a NAT chain at postrouting and two rules per subnet:
//!
//! ```text
//! table ip weave-router {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr SUBNET ip daddr != SUBNET oifname != "weave" masquerade
//!         ip saddr != SUBNET ip daddr SUBNET oifname "weave" masquerade
//!     }
//! }
//! ```
//!
//! Spoken over netlink directly (no `nft` binary, so it works in the `FROM scratch` image).
//! [`batch`] builds the messages and [`acks`] reads the kernel's answers (both pure);
//! [`apply`] is the socket.

use std::time::Duration;

use super::DatapathError;
use crate::net::Ipv4Net;

/// The nftables table holding the router's NAT rules.
pub const NAT_TABLE: &str = "weave-router";
/// Its one chain.
pub const NAT_CHAIN: &str = "postrouting";

/// How long the kernel has to answer a batch.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

// Netlink and nfnetlink (linux/netlink.h, linux/netfilter/nfnetlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
/// `priority srcnat`.
const NF_IP_PRI_NAT_SRC: i32 = 100;
const NF_ACCEPT: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_OIFNAME: u32 = 7;
const IFNAMSIZ: usize = 16;
/// Offsets of the IPv4 source and destination in the network header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

/// One batch for the kernel: the bytes, and what each acknowledged message did (by sequence
/// number), to name the step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// `(seq, what)` of every message that asks for an acknowledgement.
    pub steps: Vec<(u32, String)>,
}

/// The batch that makes the table hold exactly the rules for `subnets` (an empty chain when
/// none). `first_seq` numbers the messages.
pub fn batch(subnets: &[Ipv4Net], bridge: &str, first_seq: u32) -> Batch {
    let mut b = Builder {
        bytes: Vec::new(),
        steps: Vec::new(),
        seq: first_seq,
    };
    b.message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        NFPROTO_UNSPEC,
        None,
        |_| {},
    );
    let table = |m: &mut Attrs<'_>| m.string(NFTA_TABLE_NAME, NAT_TABLE);
    // Creating the table first makes the delete succeed when there was none.
    b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, "create the table", table);
    b.nft(NFT_MSG_DELTABLE, 0, "delete the old table", table);
    b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, "create the table", table);
    b.nft(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        "create the NAT chain",
        |m| {
            m.string(NFTA_CHAIN_TABLE, NAT_TABLE);
            m.string(NFTA_CHAIN_NAME, NAT_CHAIN);
            m.nested(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
                h.be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC as u32);
            });
            m.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            m.string(NFTA_CHAIN_TYPE, "nat");
        },
    );
    for s in subnets {
        for way in [Way::Out, Way::In] {
            let what = format!("add the {} masquerade rule for {s}", way.name());
            b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &what, |m| {
                m.string(NFTA_RULE_TABLE, NAT_TABLE);
                m.string(NFTA_RULE_CHAIN, NAT_CHAIN);
                m.nested(NFTA_RULE_EXPRESSIONS, |e| {
                    masquerade_rule(e, *s, bridge, way)
                });
            });
        }
    }
    b.message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        NFPROTO_UNSPEC,
        None,
        |_| {},
    );
    Batch {
        bytes: b.bytes,
        steps: b.steps,
    }
}

/// Which traffic of an exposed subnet a masquerade rule rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// From the subnet to the outside, leaving through another interface than the bridge.
    Out,
    /// From outside the subnet into it, through the bridge.
    In,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Out => "outbound",
            Way::In => "inbound",
        }
    }

    /// The comparisons of the source address, the destination address and the output
    /// interface's name.
    fn ops(self) -> [u32; 3] {
        match self {
            Way::Out => [NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_NEQ],
            Way::In => [NFT_CMP_NEQ, NFT_CMP_EQ, NFT_CMP_EQ],
        }
    }
}

/// `ip saddr S ip daddr != S oifname != BRIDGE masquerade` ([`Way::Out`]) or
/// `ip saddr != S ip daddr S oifname BRIDGE masquerade` ([`Way::In`]), as `nft` would
/// encode it.
fn masquerade_rule(e: &mut Attrs<'_>, subnet: Ipv4Net, bridge: &str, way: Way) {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(subnet.prefix_len()))
        .unwrap_or(0)
        .to_be_bytes();
    let network = subnet.network().octets();
    let [saddr_op, daddr_op, oifname_op] = way.ops();
    for (offset, op) in [(IPV4_SADDR, saddr_op), (IPV4_DADDR, daddr_op)] {
        expression(e, "payload", |d| {
            d.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            d.be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
            d.be32(NFTA_PAYLOAD_OFFSET, offset);
            d.be32(NFTA_PAYLOAD_LEN, 4);
        });
        if subnet.prefix_len() < 32 {
            expression(e, "bitwise", |d| {
                d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
                d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
                d.be32(NFTA_BITWISE_LEN, 4);
                d.nested(NFTA_BITWISE_MASK, |v| v.bytes(NFTA_DATA_VALUE, &mask));
                d.nested(NFTA_BITWISE_XOR, |v| v.bytes(NFTA_DATA_VALUE, &[0; 4]));
            });
        }
        expression(e, "cmp", |d| {
            d.be32(NFTA_CMP_SREG, NFT_REG_1);
            d.be32(NFTA_CMP_OP, op);
            d.nested(NFTA_CMP_DATA, |v| v.bytes(NFTA_DATA_VALUE, &network));
        });
    }
    expression(e, "meta", |d| {
        d.be32(NFTA_META_DREG, NFT_REG_1);
        d.be32(NFTA_META_KEY, NFT_META_OIFNAME);
    });
    let mut name = [0u8; IFNAMSIZ];
    let len = bridge.len().min(IFNAMSIZ - 1);
    name[..len].copy_from_slice(&bridge.as_bytes()[..len]);
    expression(e, "cmp", |d| {
        d.be32(NFTA_CMP_SREG, NFT_REG_1);
        d.be32(NFTA_CMP_OP, oifname_op);
        d.nested(NFTA_CMP_DATA, |v| v.bytes(NFTA_DATA_VALUE, &name));
    });
    expression(e, "masq", |_| {});
}

fn expression(list: &mut Attrs<'_>, name: &str, data: impl FnOnce(&mut Attrs<'_>)) {
    list.nested(NFTA_LIST_ELEM, |el| {
        el.string(NFTA_EXPR_NAME, name);
        let start = el.buf.len();
        el.nested(NFTA_EXPR_DATA, data);
        // An expression without attributes (masq) sends no data attribute.
        if el.buf.len() == start + 4 {
            el.buf.truncate(start);
        }
    });
}

struct Builder {
    bytes: Vec<u8>,
    steps: Vec<(u32, String)>,
    seq: u32,
}

impl Builder {
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: Option<u16>,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; NLMSG_HDRLEN]);
        // nfgenmsg: family, version 0, resource id (big-endian; the subsystem for a batch).
        let res_id = res_id.unwrap_or(if kind == NFNL_MSG_BATCH_BEGIN {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        });
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs {
            buf: &mut self.bytes,
        });
        let len = (self.bytes.len() - start) as u32;
        let header = &mut self.bytes[start..start + NLMSG_HDRLEN];
        header[0..4].copy_from_slice(&len.to_ne_bytes());
        header[4..6].copy_from_slice(&kind.to_ne_bytes());
        header[6..8].copy_from_slice(&flags.to_ne_bytes());
        header[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // pid 0: the kernel.
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft(&mut self, msg: u16, flags: u16, what: &str, attrs: impl FnOnce(&mut Attrs<'_>)) {
        self.steps.push((self.seq, what.to_string()));
        self.message(
            NFNL_SUBSYS_NFTABLES << 8 | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            Some(0),
            attrs,
        );
    }
}

/// Netlink attributes appended to a message.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.bytes(kind, &v);
    }

    fn be32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        inner(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// The acknowledgements in one datagram from the kernel: `(seq, errno)`, errno 0 for
/// success. Malformed trailing bytes are ignored.
pub fn acks(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while datagram.len() >= at + NLMSG_HDRLEN {
        let h = &datagram[at..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            break;
        }
        let kind = u16::from_ne_bytes([h[4], h[5]]);
        let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let code = i32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            out.push((seq, -code));
        }
        at += (len + 3) & !3;
    }
    out
}

/// Installs the rules for `subnets` and lets the host forward.
pub fn apply(subnets: &[Ipv4Net], bridge: &str) -> Result<(), DatapathError> {
    let system = |what: &str, e| DatapathError::system(format!("nftables: {what}"), e);
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| system("cannot open a netfilter netlink socket", e))?;
    socket
        .bind_auto()
        .map_err(|e| system("cannot bind a netfilter netlink socket", e))?;
    socket2::SockRef::from(&socket)
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| system("cannot set a timeout on the netlink socket", e))?;
    let batch = batch(subnets, bridge, rand::random::<u32>() >> 1);
    socket
        .send_to(&batch.bytes, &netlink_sys::SocketAddr::new(0, 0), 0)
        .map_err(|e| system("cannot send the masquerading rules", e))?;
    let mut pending: Vec<u32> = batch.steps.iter().map(|(seq, _)| *seq).collect();
    let mut failures = Vec::new();
    while !pending.is_empty() {
        let (datagram, _) = socket
            .recv_from_full()
            .map_err(|e| system("no answer from the kernel to the masquerading rules", e))?;
        for (seq, errno) in acks(&datagram) {
            pending.retain(|s| *s != seq);
            if errno != 0 {
                let what = batch
                    .steps
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map_or("(an unknown step)", |(_, w)| w.as_str());
                failures.push(format!(
                    "{what}: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
        }
        if !failures.is_empty() {
            // The batch is void as a whole: the first refusal says why.
            break;
        }
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(DatapathError::NatRefused(first));
    }
    if !subnets.is_empty() {
        enable_forwarding();
    }
    Ok(())
}

/// Lets the host forward IPv4, unless it does already. Where /proc/sys is read-only (a
/// container that is not `--privileged`) that is one warning, not a failed `expose`: the
/// host's own traffic from an exposed address is masqueraded all the same.
fn enable_forwarding() {
    const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(FORWARD).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(FORWARD, "1") {
        tracing::warn!(
            "cannot enable IPv4 forwarding ({FORWARD}: {e}): exposed subnets are masqueraded, but this host does not forward for them; set net.ipv4.ip_forward=1 (or run the router's container --privileged)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of a batch: `(type, flags, seq, payload after the nfgenmsg)`.
    fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let h = &bytes[at..];
            let len = u32::from_ne_bytes(h[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            out.push((
                u16::from_ne_bytes(h[4..6].try_into().unwrap()),
                u16::from_ne_bytes(h[6..8].try_into().unwrap()),
                u32::from_ne_bytes(h[8..12].try_into().unwrap()),
                h[NLMSG_HDRLEN + 4..len].to_vec(),
            ));
            at += len;
        }
        assert_eq!(at, bytes.len());
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn one_atomic_batch_replaces_the_table() {
        let b = batch(&["10.2.1.0/24".parse().unwrap()], "weave", 100);
        let m = messages(&b.bytes);
        let kinds: Vec<u16> = m.iter().map(|x| x.0).collect();
        let nft = |k| NFNL_SUBSYS_NFTABLES << 8 | k;
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END,
            ]
        );
        let seqs: Vec<u32> = m.iter().map(|x| x.2).collect();
        assert_eq!(seqs, (100..108).collect::<Vec<_>>());
        // Every step but the batch markers is acknowledged and named.
        assert_eq!(b.steps.len(), 6);
        assert!(m[1..7].iter().all(|x| x.1 & NLM_F_ACK != 0));
        assert_eq!(
            b.steps[4..],
            [
                (
                    105,
                    "add the outbound masquerade rule for 10.2.1.0/24".into()
                ),
                (
                    106,
                    "add the inbound masquerade rule for 10.2.1.0/24".into()
                ),
            ]
        );
        assert!(contains(&m[1].3, b"weave-router\0"));
    }

    #[test]
    fn the_rule_matches_the_subnet_both_ways_and_not_the_bridge() {
        let b = batch(&["10.2.1.0/24".parse().unwrap()], "weave", 1);
        let rule = &messages(&b.bytes)[5].3;
        // Mask and network of 10.2.1.0/24, the padded interface name, the masquerade.
        assert!(contains(rule, &[255, 255, 255, 0]));
        assert!(contains(rule, &[10, 2, 1, 0]));
        assert!(contains(rule, b"weave\0\0\0\0\0\0\0\0\0\0\0"));
        for name in ["payload\0", "bitwise\0", "cmp\0", "meta\0", "masq\0"] {
            assert!(contains(rule, name.as_bytes()), "{name}");
        }
        // A /32 needs no mask.
        let host = batch(&["10.2.1.7/32".parse().unwrap()], "weave", 1);
        assert!(!contains(&messages(&host.bytes)[5].3, b"bitwise\0"));
    }

    #[test]
    fn the_inbound_rule_turns_every_comparison_round() {
        let b = batch(&["10.2.1.0/24".parse().unwrap()], "weave", 1);
        let m = messages(&b.bytes);
        let (out, inbound) = (&m[5].3, &m[6].3);
        assert_eq!(out.len(), inbound.len());
        // The two rules differ in the last byte of each comparison's operator only:
        // source, destination, output interface.
        let differ: Vec<(u8, u8)> = out
            .iter()
            .zip(inbound.iter())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        let (eq, neq) = (NFT_CMP_EQ as u8, NFT_CMP_NEQ as u8);
        assert_eq!(differ, vec![(eq, neq), (neq, eq), (neq, eq)]);
    }

    #[test]
    fn no_subnets_leave_an_empty_chain() {
        let b = batch(&[], "weave", 1);
        let kinds: Vec<u16> = messages(&b.bytes).iter().map(|x| x.0 & 0xff).collect();
        assert!(!kinds.contains(&NFT_MSG_NEWRULE));
        assert!(kinds.contains(&NFT_MSG_NEWCHAIN));
    }

    #[test]
    fn acknowledgements_carry_the_sequence_and_errno() {
        let mut d = Vec::new();
        for (seq, code) in [(7u32, 0i32), (8, -2)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&code.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        d.extend_from_slice(&[1, 2, 3]);
        assert_eq!(acks(&d), vec![(7, 0), (8, 2)]);
    }
}
