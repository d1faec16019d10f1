//! What can go wrong in the data path.
//!
//! An error that wraps a kernel or library error keeps it as its source (for callers that
//! look at the errno or the kind), and its own text already says that cause on one line
//! (aya's verifier logs cut to their first and last lines): it reads whole in a log line or
//! an HTTP answer without the chain of causes.

use std::path::PathBuf;

/// An error of the data path.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A netlink request failed: `what` says which.
    #[error("netlink: {what}: {}", netlink_text(source))]
    NetlinkRequest {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Netlink plumbing could not go on, with no error of the kernel's to show (an
    /// interface vanished, no veth name free).
    #[error("netlink: {0}")]
    Netlink(String),
    /// A system call or helper program of the plumbing failed (a socket, a thread, `nft`,
    /// a sysctl).
    #[error("{what}: {source}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the masquerading rules: the step and its reason.
    #[error("nftables refused the masquerading rules: {0}")]
    NatRefused(String),
    /// The embedded object could not be loaded (maps created, relocations, BTF).
    #[error("BPF: loading the programs: {}", one_line(.0))]
    Load(#[source] aya::EbpfError),
    /// A program could not be loaded, attached or looked at.
    #[error("BPF: {what}: {}", one_line(source))]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// An attachment is not the kind of link that can be pinned.
    #[error("BPF: {what}: {}", one_line(source))]
    Link {
        what: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A link could not be pinned.
    #[error("BPF: {what}: {}", one_line(source))]
    Pin {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    /// A map could not be taken, read or written.
    #[error("BPF: {what}: {}", one_line(source))]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    /// bpffs or the pin directory in it could not be set up.
    #[error("BPF: {what}: {source}")]
    BpfFs {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A program or map the router needs is not in the embedded object.
    #[error("BPF: {kind} {name} missing from the object")]
    NotInObject { kind: &'static str, name: String },
    /// The router runs without kernel programs ([`super::DatapathSettings::programs`]).
    #[error("BPF: the kernel programs are not loaded")]
    ProgramsNotLoaded,
    #[error("BPF: {0}")]
    Bpf(String),
    #[error("network namespace {path}: {reason}")]
    Netns {
        path: PathBuf,
        #[source]
        reason: NetnsProblem,
    },
    #[error("no endpoint is attached in network namespace {0}")]
    NoSuchEndpoint(PathBuf),
    #[error("network namespace {0} is attached already")]
    AlreadyAttached(PathBuf),
    #[error("interface {0} not found")]
    NoSuchInterface(String),
    #[error("{count} addresses for one interface; at most {max} are supported")]
    TooManyAddresses { count: usize, max: usize },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why work in a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsProblem {
    /// The path could not be opened.
    #[error("{0}")]
    Open(#[source] std::io::Error),
    /// The path is a file, but no network namespace.
    #[error("not a network namespace")]
    NotANetworkNamespace,
    /// `setns` failed for another reason.
    #[error("cannot enter: {0}")]
    Enter(#[source] std::io::Error),
    /// The thread doing the work inside it ended without an answer.
    #[error("the namespace worker thread died")]
    WorkerDied,
}

impl DatapathError {
    /// A failed netlink request, `what` saying which.
    pub fn netlink(what: impl std::fmt::Display, source: rtnetlink::Error) -> Self {
        Self::NetlinkRequest {
            what: what.to_string(),
            source,
        }
    }

    /// A failed system call or helper program.
    pub fn system(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::System {
            what: what.to_string(),
            source,
        }
    }

    /// A failed map operation.
    pub fn map(what: impl std::fmt::Display, source: aya::maps::MapError) -> Self {
        Self::Map {
            what: what.to_string(),
            source,
        }
    }

    /// A failed program operation.
    pub fn program(what: impl std::fmt::Display, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            what: what.to_string(),
            source,
        }
    }
}

/// A netlink error as the kernel says it (`File exists (os error 17)`), others as they are.
pub(crate) fn netlink_text(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// One line of an error's text: verifier logs are long; the first line says what failed
/// and a rejection ends in the reason, so the last meaningful line is kept too.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or("").trim().to_string();
    match s.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) if s.lines().count() > 1 => format!("{first} … {}", last.trim()),
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn one_line_keeps_the_first_and_last_lines_of_a_verifier_log() {
        assert_eq!(one_line(&"invalid argument"), "invalid argument");
        let log = "load failed\n0: r1 = 0\n1: exit\nR0 !read_ok\n\n";
        assert_eq!(one_line(&log), "load failed … R0 !read_ok");
    }

    #[test]
    fn a_wrapped_error_says_its_cause_and_keeps_it_as_the_source() {
        let e = DatapathError::system(
            "cannot run nft for masquerading",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "cannot run nft for masquerading: No such file or directory (os error 2)"
        );
        let source = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(source.and_then(|s| s.raw_os_error()), Some(libc::ENOENT));
    }

    #[test]
    fn a_namespace_error_names_the_namespace_and_the_problem() {
        let e = DatapathError::Netns {
            path: "/run/netns/gone".into(),
            reason: NetnsProblem::Open(std::io::Error::from_raw_os_error(libc::ENOENT)),
        };
        assert_eq!(
            e.to_string(),
            "network namespace /run/netns/gone: No such file or directory (os error 2)"
        );
        assert!(e.source().is_some_and(|s| s.is::<NetnsProblem>()));
        let e = DatapathError::Netns {
            path: "/etc/hostname".into(),
            reason: NetnsProblem::NotANetworkNamespace,
        };
        assert_eq!(
            e.to_string(),
            "network namespace /etc/hostname: not a network namespace"
        );
    }

    #[test]
    fn texts_without_a_cause_are_unchanged() {
        assert_eq!(
            DatapathError::ProgramsNotLoaded.to_string(),
            "BPF: the kernel programs are not loaded"
        );
        assert_eq!(
            DatapathError::NotInObject {
                kind: "map",
                name: "PEERS".into()
            }
            .to_string(),
            "BPF: map PEERS missing from the object"
        );
        assert_eq!(
            DatapathError::Netlink("veth vethwe1 vanished".into()).to_string(),
            "netlink: veth vethwe1 vanished"
        );
    }
}
