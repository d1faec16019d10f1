//! Readiness and liveness for a service manager (systemd's `Type=notify`): the `sd_notify`
//! protocol spoken directly. The manager names a unix datagram socket in `$NOTIFY_SOCKET` (a
//! path, or `@name` for an abstract one); the router sends `READY=1` once its API answers and
//! its data path is up, `STOPPING=1` when it begins to stop, and, when `$WATCHDOG_USEC` asks
//! for it, `WATCHDOG=1` at half that interval. Without `$NOTIFY_SOCKET` nothing is sent.
//!
//! Parsing the environment is pure ([`Notifier::from_env_values`], [`watchdog_interval`]);
//! [`Notifier::send`] is the one datagram.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The socket variable of the protocol.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog interval, in microseconds, when the unit sets `WatchdogSec=`.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for (absent: any).
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// A `$NOTIFY_SOCKET` the router cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifySocketError {
    #[error("{NOTIFY_SOCKET_ENV} is empty")]
    Empty,
    #[error("{NOTIFY_SOCKET_ENV} {0:?} is neither an absolute path nor @abstract-name")]
    NotAbsolute(String),
    #[error("{NOTIFY_SOCKET_ENV} {0:?} is longer than a unix socket address may be")]
    TooLong(String),
}

/// Where the service manager listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A socket file.
    Path(String),
    /// An abstract socket (`@name` in the variable; the name without the `@`).
    Abstract(Vec<u8>),
}

/// Sun path room of `sockaddr_un` (108 bytes, one kept for a file path's NUL).
const SUN_PATH_LEN: usize = 108;

impl NotifyTarget {
    /// Reads the value of `$NOTIFY_SOCKET`.
    pub fn parse(value: &str) -> Result<Self, NotifySocketError> {
        if value.is_empty() {
            return Err(NotifySocketError::Empty);
        }
        if let Some(name) = value.strip_prefix('@') {
            if name.len() + 1 > SUN_PATH_LEN {
                return Err(NotifySocketError::TooLong(value.into()));
            }
            return Ok(Self::Abstract(name.as_bytes().to_vec()));
        }
        if !value.starts_with('/') {
            return Err(NotifySocketError::NotAbsolute(value.into()));
        }
        if value.len() >= SUN_PATH_LEN {
            return Err(NotifySocketError::TooLong(value.into()));
        }
        Ok(Self::Path(value.into()))
    }

    fn address(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Path(p) => SocketAddr::from_pathname(p),
            Self::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

/// The watchdog interval asked for in `$WATCHDOG_USEC` (when `$WATCHDOG_PID`, if set, is
/// `pid`); `None` when there is none or the values are not numbers.
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The state messages the router sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The API answers and the data path is up.
    Ready,
    /// Taking the router down.
    Stopping,
    /// Still alive (for `WatchdogSec=`).
    Watchdog,
}

impl State {
    /// The datagram for this state (`status` becomes `STATUS=`, shown by `systemctl status`).
    pub fn message(self, status: &str) -> String {
        let key = match self {
            Self::Ready => "READY=1",
            Self::Stopping => "STOPPING=1",
            Self::Watchdog => "WATCHDOG=1",
        };
        if status.is_empty() {
            format!("{key}\n")
        } else {
            let status = status.replace('\n', " ");
            format!("{key}\nSTATUS={status}\n")
        }
    }
}

/// Sends state messages to the service manager, if there is one.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<NotifyTarget>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From this process's environment. A `$NOTIFY_SOCKET` that cannot be used is logged once
    /// and ignored (the router runs on; a `Type=notify` unit then times out, saying why in
    /// its log).
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok();
        let (notifier, problem) = Self::from_env_values(
            get(NOTIFY_SOCKET_ENV).as_deref(),
            get(WATCHDOG_USEC_ENV).as_deref(),
            get(WATCHDOG_PID_ENV).as_deref(),
            std::process::id(),
        );
        if let Some(e) = problem {
            tracing::warn!("{e}: not telling the service manager when the router is ready");
        }
        notifier
    }

    /// From the values of the protocol's variables (pure).
    pub fn from_env_values(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> (Self, Option<NotifySocketError>) {
        let (target, problem) = match socket.map(NotifyTarget::parse) {
            None => (None, None),
            Some(Ok(t)) => (Some(t), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let watchdog = target
            .as_ref()
            .and_then(|_| watchdog_interval(watchdog_usec, watchdog_pid, pid));
        (Self { target, watchdog }, problem)
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send [`State::Watchdog`]: half the manager's interval.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `state`; a failure is logged (the manager's business, not a reason to stop).
    pub fn send(&self, state: State, status: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send_to(target, &state.message(status)) {
            tracing::warn!("cannot notify the service manager ({NOTIFY_SOCKET_ENV}): {e}");
        }
    }

    /// Sends [`State::Watchdog`] every [`Self::watchdog_period`] until `stop` turns true.
    pub fn spawn_watchdog(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.watchdog_period()?;
        let notifier = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => notifier.send(State::Watchdog, ""),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }))
    }
}

/// The socket `weave-router launch` waits on for its daemon (`@name`, as in
/// `$NOTIFY_SOCKET`): the daemon sends [`launcher_message`] there once it is ready.
pub const LAUNCHER_SOCKET_ENV: &str = "WEAVE_LAUNCHER_SOCKET";

/// What the daemon tells the command that launched it once ready: the protocol's
/// `READY=1` and its peer name.
pub fn launcher_message(peer: &str) -> String {
    format!("READY=1\nPEER={peer}\n")
}

/// The peer name of a [`launcher_message`]; `None` for any other datagram.
pub fn peer_of_launcher_message(message: &str) -> Option<&str> {
    let mut ready = false;
    let mut peer = None;
    for line in message.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => ready = true,
            Some(("PEER", name)) if !name.is_empty() => peer = Some(name),
            _ => {}
        }
    }
    peer.filter(|_| ready)
}

/// Tells the launching command (`$WEAVE_LAUNCHER_SOCKET`, when set) that the router named
/// `peer` is ready. Once, at readiness; a launcher gone meanwhile is logged.
pub fn tell_launcher(peer: &str) {
    let Ok(value) = std::env::var(LAUNCHER_SOCKET_ENV) else {
        return;
    };
    let sent = NotifyTarget::parse(&value)
        .map_err(std::io::Error::other)
        .and_then(|target| send_to(&target, &launcher_message(peer)));
    if let Err(e) = sent {
        tracing::warn!("cannot tell the launching command that the router is ready ({LAUNCHER_SOCKET_ENV}): {e}");
    }
}

fn send_to(target: &NotifyTarget, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &target.address()?)?;
    if sent != message.len() {
        return Err(std::io::Error::other("short send"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_hears_ready_and_the_peer_name() {
        let m = launcher_message("02:36:b7:67:00:30");
        assert_eq!(m, "READY=1\nPEER=02:36:b7:67:00:30\n");
        assert_eq!(peer_of_launcher_message(&m), Some("02:36:b7:67:00:30"));
        assert_eq!(peer_of_launcher_message("PEER=x\n"), None);
        assert_eq!(peer_of_launcher_message("READY=1\n"), None);
        assert_eq!(peer_of_launcher_message("READY=1\nPEER=\n"), None);
        assert_eq!(peer_of_launcher_message("STOPPING=1\nPEER=x\n"), None);
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(
            NotifyTarget::parse("/run/systemd/notify"),
            Ok(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifyTarget::parse("@/org/freedesktop/systemd1/notify/42"),
            Ok(NotifyTarget::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        assert_eq!(NotifyTarget::parse(""), Err(NotifySocketError::Empty));
        assert!(matches!(
            NotifyTarget::parse("run/notify"),
            Err(NotifySocketError::NotAbsolute(_))
        ));
        let long = format!("/{}", "x".repeat(120));
        assert!(matches!(
            NotifyTarget::parse(&long),
            Err(NotifySocketError::TooLong(_))
        ));
    }

    #[test]
    fn watchdog_only_for_this_process_and_a_positive_interval() {
        let w = |u, p| watchdog_interval(u, p, 77);
        assert_eq!(w(Some("3000000"), None), Some(Duration::from_secs(3)));
        assert_eq!(w(Some("3000000"), Some("77")), Some(Duration::from_secs(3)));
        assert_eq!(w(Some("3000000"), Some("78")), None);
        assert_eq!(w(Some("0"), None), None);
        assert_eq!(w(Some("soon"), None), None);
        assert_eq!(w(None, None), None);
    }

    #[test]
    fn no_socket_means_no_watchdog_and_a_bad_one_is_reported() {
        let (n, e) = Notifier::from_env_values(None, Some("1000000"), None, 1);
        assert!(!n.enabled() && n.watchdog_period().is_none() && e.is_none());
        let (n, e) = Notifier::from_env_values(Some("notify"), None, None, 1);
        assert!(!n.enabled());
        assert!(matches!(e, Some(NotifySocketError::NotAbsolute(_))));
        let (n, _) = Notifier::from_env_values(Some("@n"), Some("1000000"), None, 1);
        assert_eq!(n.watchdog_period(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn messages_are_newline_separated_assignments() {
        assert_eq!(State::Ready.message(""), "READY=1\n");
        assert_eq!(
            State::Stopping.message("stopping\nnow"),
            "STOPPING=1\nSTATUS=stopping now\n"
        );
        assert_eq!(State::Watchdog.message(""), "WATCHDOG=1\n");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("weave-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let (n, e) = Notifier::from_env_values(Some(&format!("@{name}")), None, None, 1);
        assert!(e.is_none());
        n.send(State::Ready, "up");
        let mut buf = [0u8; 128];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up\n");
    }
}
