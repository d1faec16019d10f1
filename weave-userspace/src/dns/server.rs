//! The DNS server: answers names in the weave domain from the record store (A, PTR,
//! NXDOMAIN), forwards every other query to the upstream servers of resolv.conf.
//!
//! Messages are parsed and built with hickory-proto. UDP is served by one blocking thread
//! per CPU, each on its own `SO_REUSEPORT` socket (the kernel spreads queries over them,
//! no async wake-ups on the answer path); TCP and forwarding run on the tokio runtime.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::records::Records;

/// Largest UDP answer we send when the query has EDNS (the query's own limit if smaller).
pub const MAX_UDP_PAYLOAD: u16 = 4096;
/// Largest query read over UDP; anything larger is cut and answered FORMERR.
const UDP_BUFFER: usize = 4096;
/// Forwarded queries in flight at once; more are answered SERVFAIL.
const MAX_FORWARDS: usize = 1024;
/// TCP connections served at once; more are closed.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often the UDP threads look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for DNS on {addr} ({proto}): {error}")]
    Listen {
        addr: SocketAddr,
        proto: &'static str,
        error: std::io::Error,
    },
}

/// Query counters (for status and metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: ask upstream.
    Forward,
    /// Not a query at all (or a response): say nothing.
    Drop,
}

/// How the query came: UDP answers are limited in size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Answers queries from the record store (pure: bytes in, bytes out).
#[derive(Debug)]
pub struct Resolver {
    records: Arc<Records>,
    domain: Name,
    /// The domain in lower-case wire format.
    domain_wire: Box<[u8]>,
    ttl: u32,
}

/// A header-only error answer for a query whose header is readable.
fn header_error(query: &[u8], rcode: ResponseCode) -> Outcome {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    let mut out = vec![0u8; 12];
    out[0..2].copy_from_slice(&query[0..2]);
    // QR, the query's opcode and RD; RA; the response code.
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
    Outcome::Reply(out)
}

/// An error answer (SERVFAIL when upstream failed) echoing the query's question.
pub fn error_reply(query: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    match Message::from_vec(query) {
        Ok(q) => {
            let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, rcode);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_queries(q.queries);
            r.to_vec().ok()
        }
        Err(_) => match header_error(query, rcode) {
            Outcome::Reply(b) => Some(b),
            _ => None,
        },
    }
}

/// The address of an `in-addr.arpa.` name (all four octets), if it is one.
fn arpa_v4(name: &Name) -> Option<Ipv4Addr> {
    if name.num_labels() != 6 {
        return None;
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    if !labels[4].eq_ignore_ascii_case(b"in-addr") || !labels[5].eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, label) in labels[..4].iter().enumerate() {
        let text = std::str::from_utf8(label).ok()?;
        if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        octets[3 - i] = text.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

impl Resolver {
    pub fn new(records: Arc<Records>, domain: Name, ttl: u32) -> Self {
        Self {
            records,
            domain_wire: super::records::wire_lower(&domain),
            domain,
            ttl,
        }
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// Answers one query.
    pub fn answer(&self, query: &[u8], transport: Transport) -> Outcome {
        if let Some(reply) = self.fast_answer(query, transport) {
            return Outcome::Reply(reply);
        }
        self.answer_parsed(query, transport)
    }

    /// The common case without a parse into a hickory message: one standard A/IN question
    /// (with at most an EDNS OPT record) for a name we hold. `None` leaves the query to
    /// [`Resolver::answer_parsed`], which handles everything (and gives the same answer).
    fn fast_answer(&self, q: &[u8], transport: Transport) -> Option<Vec<u8>> {
        // Header: a query, opcode QUERY, not truncated, one question, no answers or authority.
        if q.len() < 17 || q[2] & 0xfa != 0 || q[4..10] != [0, 1, 0, 0, 0, 0] {
            return None;
        }
        let additional = u16::from_be_bytes([q[10], q[11]]);
        let mut wire = [0u8; 256];
        let mut i = 12;
        let mut n = 0;
        loop {
            let len = *q.get(i)? as usize;
            if len & 0xc0 != 0 || n + len + 1 > wire.len() {
                return None;
            }
            wire[n] = len as u8;
            let label = q.get(i + 1..i + 1 + len)?;
            for (d, b) in wire[n + 1..n + 1 + len].iter_mut().zip(label) {
                *d = b.to_ascii_lowercase();
            }
            n += len + 1;
            i += len + 1;
            if len == 0 {
                break;
            }
        }
        let question_end = i + 4;
        if q.get(i..question_end)? != [0, 1, 0, 1] {
            return None;
        }
        let limit = match additional {
            0 if q.len() == question_end => None,
            // One OPT record: root name, type 41, payload size, version 0, no options.
            1 if q.len() == question_end + 11
                && q[question_end..question_end + 3] == [0, 0, 41]
                && q[question_end + 6] == 0
                && q[question_end + 9..] == [0, 0] =>
            {
                Some(u16::from_be_bytes([
                    q[question_end + 3],
                    q[question_end + 4],
                ]))
            }
            _ => return None,
        };
        let name = &wire[..n];
        if name.len() <= self.domain_wire.len() || !name.ends_with(&self.domain_wire) {
            return None;
        }
        let index = self.records.index();
        let addrs = index.addresses_wire(name)?;
        let mut shuffled: Vec<Ipv4Addr> = addrs.to_vec();
        shuffled.shuffle(&mut rand::thread_rng());
        let size = question_end + 16 * shuffled.len() + if limit.is_some() { 11 } else { 0 };
        let max = limit.map_or(512, |l| l.clamp(512, MAX_UDP_PAYLOAD)) as usize;
        if transport == Transport::Udp && size > max {
            return None;
        }
        let mut r = Vec::with_capacity(size);
        r.extend_from_slice(&q[..question_end]);
        // QR, AA, the query's RD; RA, NOERROR.
        r[2] = 0x84 | (q[2] & 0x01);
        r[3] = 0x80;
        r[6..8].copy_from_slice(&(shuffled.len() as u16).to_be_bytes());
        r[10..12].copy_from_slice(&u16::from(limit.is_some()).to_be_bytes());
        let ttl = self.ttl.to_be_bytes();
        for a in &shuffled {
            // A pointer to the question's name, type A, class IN, TTL, 4 bytes of address.
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl);
            r.extend_from_slice(&[0, 4]);
            r.extend_from_slice(&a.octets());
        }
        if limit.is_some() {
            let p = MAX_UDP_PAYLOAD.to_be_bytes();
            r.extend_from_slice(&[0, 0, 41, p[0], p[1], 0, 0, 0, 0, 0, 0]);
        }
        Some(r)
    }

    /// Answers one query, parsed with hickory-proto.
    pub fn answer_parsed(&self, query: &[u8], transport: Transport) -> Outcome {
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => return header_error(query, ResponseCode::FormErr),
        };
        let meta = &request.metadata;
        if meta.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        if meta.op_code != OpCode::Query {
            return header_error(query, ResponseCode::NotImp);
        }
        let [question] = request.queries.as_slice() else {
            return header_error(query, ResponseCode::FormErr);
        };
        let qname = question.name();
        let qtype = question.query_type();
        if question.query_class() != DNSClass::IN {
            return Outcome::Forward;
        }
        let index = self.records.index();
        let mut answers = Vec::new();
        let rcode;
        if self.domain.zone_of(qname) {
            match index.addresses(qname) {
                Some(addrs) => {
                    rcode = ResponseCode::NoError;
                    if matches!(qtype, RecordType::A | RecordType::ANY) {
                        let mut shuffled: Vec<Ipv4Addr> = addrs.to_vec();
                        shuffled.shuffle(&mut rand::thread_rng());
                        answers = shuffled
                            .into_iter()
                            .map(|a| Record::from_rdata(qname.clone(), self.ttl, RData::A(A(a))))
                            .collect();
                    }
                }
                None => rcode = ResponseCode::NXDomain,
            }
        } else if let Some(addr) = (qtype == RecordType::PTR).then(|| arpa_v4(qname)).flatten() {
            let Some(names) = index.names(addr) else {
                return Outcome::Forward;
            };
            rcode = ResponseCode::NoError;
            answers = names
                .iter()
                .map(|n| Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(n.clone()))))
                .collect();
        } else {
            return Outcome::Forward;
        }
        let mut response = Message::response(meta.id, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = meta.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.response_code = rcode;
        response.add_query(question.clone());
        response.insert_answers(answers);
        let limit = match &request.edns {
            Some(e) => {
                let mut edns = Edns::new();
                edns.set_max_payload(MAX_UDP_PAYLOAD);
                response.set_edns(edns);
                e.max_payload().clamp(512, MAX_UDP_PAYLOAD) as usize
            }
            None => 512,
        };
        let Ok(bytes) = response.to_vec() else {
            return header_error(query, ResponseCode::ServFail);
        };
        if transport == Transport::Udp && bytes.len() > limit {
            return match response.truncate().to_vec() {
                Ok(b) => Outcome::Reply(b),
                Err(_) => header_error(query, ResponseCode::ServFail),
            };
        }
        Outcome::Reply(bytes)
    }
}

/// The upstream servers queries outside the domain go to.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

/// `nameserver` addresses of a resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|w| w.split('%').next())
                .and_then(|w| w.parse().ok())
        })
        .collect()
}

impl Upstreams {
    /// The upstreams of a resolv.conf text, never `ourselves` (our own listen address).
    pub fn from_resolv_conf(text: &str, ourselves: SocketAddr, timeout: Duration) -> Self {
        let servers = parse_resolv_conf(text)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .filter(|s| *s != ourselves && s.ip() != ourselves.ip())
            .collect();
        Self { servers, timeout }
    }

    /// Asks each upstream in turn over UDP; the first answer with the query's ID wins.
    pub async fn forward_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.connect(server).await.is_err() || sock.send(query).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65535];
            let exchange = async {
                loop {
                    let n = sock.recv(&mut buf).await?;
                    if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                        return Ok::<usize, std::io::Error>(n);
                    }
                }
            };
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Ok(Err(e)) => tracing::debug!("upstream {server}: {e}"),
                Err(_) => tracing::debug!("upstream {server} did not answer in time"),
            }
        }
        None
    }

    /// Asks each upstream in turn over TCP.
    pub async fn forward_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            let exchange = async {
                let mut s = tokio::net::TcpStream::connect(server).await?;
                let mut framed = (query.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(query);
                s.write_all(&framed).await?;
                let len = s.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await?;
                Ok::<Vec<u8>, std::io::Error>(buf)
            };
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(b)) if b.len() >= 12 && b[..2] == query[..2] => return Some(b),
                Ok(Ok(_)) => tracing::debug!("upstream {server} answered another query"),
                Ok(Err(e)) => tracing::debug!("upstream {server}: {e}"),
                Err(_) => tracing::debug!("upstream {server} did not answer in time"),
            }
        }
        None
    }
}

/// A running DNS server.
pub struct DnsServer {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tcp: tokio::task::JoinHandle<()>,
    pub counters: Arc<Counters>,
}

struct Shared {
    resolver: Resolver,
    upstreams: Upstreams,
    counters: Arc<Counters>,
    forwards: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

fn reuseport_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, ty, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if ty == socket2::Type::DGRAM {
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    s.bind(&addr.into())?;
    Ok(s)
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` and serves until [`DnsServer::stop`]. Call from
    /// within the tokio runtime.
    pub fn start(
        listen: SocketAddr,
        resolver: Resolver,
        upstreams: Upstreams,
    ) -> Result<Self, ServerError> {
        let udp_err = |error| ServerError::Listen {
            addr: listen,
            proto: "UDP",
            error,
        };
        let tcp_err = |error| ServerError::Listen {
            addr: listen,
            proto: "TCP",
            error,
        };
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let mut sockets = Vec::new();
        for _ in 0..workers {
            let s = reuseport_socket(listen, socket2::Type::DGRAM).map_err(udp_err)?;
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(STOP_POLL)).map_err(udp_err)?;
            sockets.push(Arc::new(s));
        }
        let tcp = reuseport_socket(listen, socket2::Type::STREAM).map_err(tcp_err)?;
        tcp.listen(128).map_err(tcp_err)?;
        tcp.set_nonblocking(true).map_err(tcp_err)?;
        let tcp = tokio::net::TcpListener::from_std(tcp.into()).map_err(tcp_err)?;

        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            resolver,
            upstreams,
            counters: counters.clone(),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            runtime: tokio::runtime::Handle::current(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let (shared, stop) = (shared.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(sock, shared, stop))
                .map_err(udp_err)?;
            threads.push(t);
        }
        let tcp = tokio::spawn(serve_tcp(tcp, shared));
        Ok(Self {
            listen,
            stop,
            threads,
            tcp,
            counters,
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Stops serving and waits for the UDP threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tcp.abort();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; UDP_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("DNS receive: {e}");
                continue;
            }
        };
        let query = &buf[..n];
        match shared.resolver.answer(query, Transport::Udp) {
            Outcome::Reply(answer) => {
                shared.counters.answered.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&answer, from);
            }
            Outcome::Drop => {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Forward => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(b) = error_reply(query, ResponseCode::ServFail) {
                        let _ = sock.send_to(&b, from);
                    }
                    continue;
                };
                let query = query.to_vec();
                let (sock, task_shared) = (sock.clone(), shared.clone());
                shared.runtime.spawn(async move {
                    let answer = forward(&task_shared, &query, Transport::Udp).await;
                    if let Some(a) = answer {
                        let _ = sock.send_to(&a, from);
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Forwards a query upstream: its answer, or SERVFAIL when none came in time.
async fn forward(shared: &Shared, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let answer = match transport {
        Transport::Udp => shared.upstreams.forward_udp(query).await,
        Transport::Tcp => shared.upstreams.forward_tcp(query).await,
    };
    match answer {
        Some(a) => {
            shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            Some(a)
        }
        None => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            error_reply(query, ResponseCode::ServFail)
        }
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = serve_tcp_connection(stream, &shared).await;
            drop(permit);
        });
    }
}

async fn serve_tcp_connection(
    mut stream: tokio::net::TcpStream,
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        let mut query = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))??;
        let answer = match shared.resolver.answer(&query, Transport::Tcp) {
            Outcome::Reply(a) => {
                shared.counters.answered.fetch_add(1, Ordering::Relaxed);
                Some(a)
            }
            Outcome::Drop => {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Outcome::Forward => forward(shared, &query, Transport::Tcp).await,
        };
        let Some(answer) = answer else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests;
