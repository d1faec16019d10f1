//! Keeps connections to the targets (peers named on the command line or through the API):
//! dials, runs the connection, and redials with jittered exponential backoff.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::connection::{self, ConnId, ConnectionError, Timings};
use super::peer_name::PeerName;
use super::protocol::{Hello, ProtocolError};

/// The control port.
pub const DEFAULT_PORT: u16 = 6783;

/// A peer to keep a connection to: a host name or address, and a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer {0:?} is not a host or host:port (like 10.0.0.2 or host2:6783)")]
pub struct TargetError(pub String);

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TargetError(s.to_string());
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| err())?),
            None => (s, DEFAULT_PORT),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
        // Something that looks like a dotted address must be one (300.1.2.3 is no host name).
        let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !host_ok || port == 0 || (numeric && host.parse::<std::net::Ipv4Addr>().is_err()) {
            return Err(err());
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Redial delays: `initial`, then ×1.5 per failure up to `max`, each jittered by ±20 %.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; `jitter` in `[0, 1)` spreads it.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let base = self.next;
        self.next = self.max.min(base.mul_f64(1.5));
        self.max
            .min(base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Where a target stands, in Weave's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Dialling for the first time.
    Connecting,
    /// Dialling again after `0`.
    Retrying(String),
    /// Waiting to redial after `error`.
    Failed {
        error: String,
        retry_at: Option<SystemTime>,
    },
    /// A connection to it is up (`Some`), or the peer is reached through another connection.
    Connected(Option<ConnId>),
}

/// What the connection maker needs from the router.
pub(crate) trait MakerHost: Send + Sync + 'static {
    fn set_target_state(&self, target: &Target, state: TargetState);
    /// Whether the target is still wanted (`forget` takes it away).
    fn wants(&self, target: &Target) -> bool;
    /// A connection to the target was refused for a connection limit, ours or the peer's:
    /// whether to stop dialling it (the host lets a target that discovery found go for a
    /// while; one it was given is dialled again after the backoff).
    fn let_go_when_full(&self, target: &Target) -> bool;
    /// Whether an accepted connection to `peer` other than `except` is up.
    fn is_connected(&self, peer: PeerName, except: ConnId) -> bool;
    fn next_conn_id(&self) -> ConnId;
    /// Who we are now (the short ID can change after a clash).
    fn local_hello(&self) -> Hello;
    /// Our IP allocation now, sent in the handshake (none without IPAM).
    fn local_ipam(&self) -> Option<crate::ipam::identity::IpamIdentity>;
    /// The password's key, when one is set.
    fn password(&self) -> Option<Arc<crate::crypto::PresharedKey>>;
}

/// Everything one target's task runs with.
pub(crate) struct Maker<H> {
    pub host: Arc<H>,
    pub target: Target,
    pub timings: Timings,
    pub events: connection::EventSender,
    pub shutdown: watch::Receiver<bool>,
}

impl<H: MakerHost> Maker<H> {
    /// Keeps a connection to the target until the router shuts down.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.timings.backoff_initial, self.timings.backoff_max);
        let mut last_error: Option<String> = None;
        loop {
            if *self.shutdown.borrow() || !self.host.wants(&self.target) {
                return;
            }
            self.set(match &last_error {
                None => TargetState::Connecting,
                Some(e) => TargetState::Retrying(e.clone()),
            });
            let error = match self.dial().await {
                Err(e) => e,
                Ok(stream) => {
                    let id = self.host.next_conn_id();
                    self.set(TargetState::Connected(Some(id)));
                    let started = tokio::time::Instant::now();
                    let outcome = connection::run(
                        stream,
                        id,
                        true,
                        self.host.local_hello(),
                        self.host.local_ipam(),
                        self.host.password(),
                        self.timings,
                        self.events.clone(),
                        self.shutdown.clone(),
                        None,
                    )
                    .await;
                    match outcome.error {
                        ConnectionError::Shutdown => return,
                        ConnectionError::Protocol(ProtocolError::SelfConnection) => {
                            tracing::warn!("not connecting to {}: it is ourself", self.target);
                            self.set(TargetState::Failed {
                                error: "cannot connect to ourself".into(),
                                retry_at: None,
                            });
                            return;
                        }
                        _ => {}
                    }
                    if let Some(peer) = outcome.peer {
                        if self.host.is_connected(peer, id) {
                            // Reached through another connection (the tie-break kept that one).
                            self.set(TargetState::Connected(None));
                            if !self.wait_while_connected(peer, id).await {
                                return;
                            }
                            backoff.reset();
                            last_error = None;
                            continue;
                        }
                    }
                    if outcome.accepted && started.elapsed() > self.timings.dead_after * 2 {
                        backoff.reset();
                    }
                    outcome.error
                }
            };
            let message = error.to_string();
            if error.is_connection_limit() && self.host.let_go_when_full(&self.target) {
                tracing::info!(
                    "connection to {} refused: {message}; not dialling it for a while",
                    self.target
                );
                return;
            }
            if matches!(error, ConnectionError::Protocol(_)) {
                tracing::warn!("connection to {} refused: {message}", self.target);
            } else {
                tracing::info!("connection to {} failed: {message}", self.target);
            }
            let delay = backoff.next_delay(rand::random());
            self.set(TargetState::Failed {
                error: message.clone(),
                retry_at: Some(SystemTime::now() + delay),
            });
            last_error = Some(message);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = connection::stopped(&mut self.shutdown) => return,
            }
        }
    }

    fn set(&self, state: TargetState) {
        self.host.set_target_state(&self.target, state);
    }

    async fn dial(&self) -> Result<TcpStream, ConnectionError> {
        let timeout = self.timings.handshake_timeout;
        let connect = async {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
                    .await
                    .map_err(|e| {
                        ConnectionError::Refused(format!(
                            "cannot resolve {}: {e}",
                            self.target.host
                        ))
                    })?
                    .filter(|a| a.is_ipv4())
                    .collect();
            let addr = addrs.first().ok_or_else(|| {
                ConnectionError::Refused(format!("{} has no IPv4 address", self.target.host))
            })?;
            // From our underlay address, so the peer sees us where VXLAN comes from.
            let socket = tokio::net::TcpSocket::new_v4()?;
            let underlay = self.host.local_hello().underlay;
            if let Err(e) = socket.bind(SocketAddr::new(underlay.into(), 0)) {
                tracing::debug!(
                    "dialling {} from any address: cannot bind {}: {e}",
                    self.target,
                    underlay
                );
                return Ok(TcpStream::connect(addr).await?);
            }
            Ok::<_, ConnectionError>(socket.connect(*addr).await?)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectionError::ConnectTimeout(timeout))?
    }

    /// Waits until `peer` is no longer connected; false when the router shuts down first.
    async fn wait_while_connected(&mut self, peer: PeerName, except: ConnId) -> bool {
        let poll = self
            .timings
            .heartbeat_interval
            .min(Duration::from_millis(500));
        while self.host.is_connected(peer, except) {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = connection::stopped(&mut self.shutdown) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_port() {
        assert_eq!(
            "10.0.0.2".parse(),
            Ok(Target {
                host: "10.0.0.2".into(),
                port: 6783
            })
        );
        assert_eq!(
            "host2:7000".parse(),
            Ok(Target {
                host: "host2".into(),
                port: 7000
            })
        );
        assert_eq!(
            "10.0.0.2:6783".parse::<Target>().unwrap().to_string(),
            "10.0.0.2:6783"
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        for bad in [
            "",
            ":6783",
            "host:",
            "host:0",
            "host:70000",
            "ho st",
            "host:x",
            "a/b",
            "300.1.2.3",
            "10.0.0",
            "1.2.3.4.5:6783",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_by_half_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        let delays: Vec<u64> = (0..10)
            .map(|_| b.next_delay(0.5).as_millis() as u64)
            .collect();
        assert_eq!(&delays[..4], &[2000, 3000, 4500, 6750]);
        assert_eq!(*delays.last().unwrap(), 30000);
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_secs(2));
    }

    #[test]
    fn backoff_jitter_stays_within_a_fifth() {
        let mut lo = Backoff::new(Duration::from_secs(10), Duration::from_secs(30));
        let mut hi = lo.clone();
        assert_eq!(lo.next_delay(0.0), Duration::from_secs(8));
        assert_eq!(hi.next_delay(1.0), Duration::from_secs(12));
    }
}
