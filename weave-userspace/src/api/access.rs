//! Who may call what on the API.
//!
//! The API is served twice from one set of routes:
//! - on TCP (`--http-addr`, 127.0.0.1:6784): read-only calls (`GET`, `HEAD`: the status, the
//!   report, `/metrics` for Prometheus) for anyone who can reach it, but nothing that looks
//!   like it comes from a web browser — a `Host` that is a name other than `localhost` (DNS
//!   rebinding), an `Origin` other than the API's own, a cross-site `Sec-Fetch-Site` — and no
//!   mutating call at all (a page could send a "simple" cross-origin `POST` with
//!   `Content-Type: text/plain` without any preflight);
//! - on an abstract unix socket named after the TCP address ([`socket_name`]:
//!   `@weave-router/127.0.0.1:6784`). Abstract sockets belong to the network namespace, as the
//!   TCP address does, so the CLI finds the router by `--http-addr` alone and a crash leaves no
//!   file behind. They have no file mode: the kernel tells the peer's uid (`SO_PEERCRED`, which
//!   a client cannot forge), and a mutating call is served only to uid 0 or the router's own
//!   user. The CLI checks the server's uid the same way, so a process that took the name first
//!   cannot pose as the router.
//!
//! The decisions ([`tcp_refusal`], [`socket_refusal`]) are pure; the middleware around them
//! only reads the request and the connection.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The abstract unix socket (without its leading NUL) that serves the whole API for the
/// router whose TCP API is `http_addr`.
pub fn socket_name(http_addr: SocketAddr) -> String {
    format!("weave-router/{http_addr}")
}

/// Binds the abstract unix socket `name`.
pub fn bind_socket(name: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    std_listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std_listener)
}

/// What the TCP guard looks at in a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestShape<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
}

/// Why a request on TCP is refused (the one line of a 403), or `None` to serve it. `port` is
/// the port the API listens on; `socket` the name of its unix socket.
pub fn tcp_refusal(r: &RequestShape<'_>, port: u16, socket: &str) -> Option<String> {
    let host_ok = r.host.is_none_or(|h| host_is_local(h, port));
    if !host_ok {
        return Some(format!(
            "refused: Host {:?} is not this API's address (only an IP address or localhost, port {port}; a name could be a DNS-rebinding web page)",
            r.host.unwrap_or_default()
        ));
    }
    if let Some(origin) = r.origin {
        let own = r.host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !own {
            return Some(format!(
                "refused: a request from the web page {origin:?} (cross-origin requests are not served)"
            ));
        }
    }
    if let Some(site) = r.sec_fetch_site {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "refused: a {site} request from a web page (cross-origin requests are not served)"
            ));
        }
    }
    let read_only = matches!(r.method, "GET" | "HEAD");
    if !read_only {
        return Some(format!(
            "refused: {} {} changes the router and is served only on its unix socket @{socket} to root or the router's user: use the weave-router CLI (or curl --abstract-unix-socket {socket})",
            r.method, r.path
        ));
    }
    None
}

/// An IP address or `localhost`, with no port or our own.
fn host_is_local(host: &str, port: u16) -> bool {
    let (name, given_port) = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    let name_ok = name.is_none_or(|n| {
        n.eq_ignore_ascii_case("localhost") || n.parse::<std::net::Ipv4Addr>().is_ok()
    });
    let port_ok = given_port.is_none_or(|p| p.parse::<u16>() == Ok(port));
    name_ok && port_ok
}

/// Why a request on the unix socket is refused, or `None` to serve it: mutating calls need
/// uid 0 or `router_uid`. `peer_uid` is `None` when the kernel did not tell.
pub fn socket_refusal(
    method: &str,
    path: &str,
    peer_uid: Option<u32>,
    router_uid: u32,
) -> Option<String> {
    if matches!(method, "GET" | "HEAD") {
        return None;
    }
    match peer_uid {
        Some(uid) if uid == 0 || uid == router_uid => None,
        Some(uid) => Some(format!(
            "refused: {method} {path} needs the privilege of the router's user (uid {router_uid}) or root; this request came from uid {uid}"
        )),
        None => Some(format!(
            "refused: {method} {path}: the caller's uid is unknown"
        )),
    }
}

/// The uid of the process on the other end of a unix-socket connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(pub Option<u32>);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for PeerUid
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

fn forbidden(line: String) -> Response {
    tracing::warn!("API: {line}");
    ApiError(StatusCode::FORBIDDEN, line).into_response()
}

fn header_str(req: &Request, name: header::HeaderName) -> Option<&str> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("(not text)"))
}

/// The routes as served on TCP at `http_addr`.
pub fn tcp_app(routes: axum::Router, http_addr: SocketAddr) -> axum::Router {
    let socket = socket_name(http_addr);
    routes.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let socket = socket.clone();
            async move {
                let shape = RequestShape {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                    host: header_str(&req, header::HOST),
                    origin: header_str(&req, header::ORIGIN),
                    sec_fetch_site: header_str(
                        &req,
                        header::HeaderName::from_static("sec-fetch-site"),
                    ),
                };
                if let Some(line) = tcp_refusal(&shape, http_addr.port(), &socket) {
                    return forbidden(line);
                }
                next.run(req).await
            }
        },
    ))
}

/// The routes as served on the unix socket (serve with
/// `into_make_service_with_connect_info::<PeerUid>()`).
pub fn socket_app(routes: axum::Router) -> axum::Router {
    // SAFETY: geteuid has no preconditions.
    let router_uid = unsafe { libc::geteuid() };
    routes.layer(axum::middleware::from_fn(
        move |ConnectInfo(PeerUid(uid)): ConnectInfo<PeerUid>, req: Request, next: Next| async move {
            if let Some(line) =
                socket_refusal(req.method().as_str(), req.uri().path(), uid, router_uid)
            {
                return forbidden(line);
            }
            next.run(req).await
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET: &str = "weave-router/127.0.0.1:6784";

    fn shape<'a>(
        method: &'a str,
        host: Option<&'a str>,
        origin: Option<&'a str>,
    ) -> RequestShape<'a> {
        RequestShape {
            method,
            path: "/stop",
            host,
            origin,
            sec_fetch_site: None,
        }
    }

    #[test]
    fn reads_from_local_tools_are_served_on_tcp() {
        for host in [
            None,
            Some("127.0.0.1:6784"),
            Some("127.0.0.1"),
            Some("localhost:6784"),
            Some("LOCALHOST"),
            Some("[::1]:6784"),
            Some("10.0.0.1:6784"),
        ] {
            assert_eq!(
                tcp_refusal(&shape("GET", host, None), 6784, SOCKET),
                None,
                "{host:?}"
            );
        }
        let own_origin = shape("GET", Some("127.0.0.1:6784"), Some("http://127.0.0.1:6784"));
        assert_eq!(tcp_refusal(&own_origin, 6784, SOCKET), None);
    }

    #[test]
    fn browser_shaped_requests_are_refused_on_tcp() {
        let rebound = tcp_refusal(&shape("GET", Some("evil.example:6784"), None), 6784, SOCKET);
        assert!(rebound.unwrap().contains("DNS-rebinding"));
        let other_port = tcp_refusal(&shape("GET", Some("127.0.0.1:80"), None), 6784, SOCKET);
        assert!(other_port.is_some());
        assert!(tcp_refusal(&shape("GET", Some("[zz]:6784"), None), 6784, SOCKET).is_some());
        let cross = tcp_refusal(
            &shape("POST", Some("127.0.0.1:6784"), Some("http://evil.example")),
            6784,
            SOCKET,
        )
        .unwrap();
        assert_eq!(
            cross,
            "refused: a request from the web page \"http://evil.example\" (cross-origin requests are not served)"
        );
        let null = tcp_refusal(
            &shape("GET", Some("127.0.0.1:6784"), Some("null")),
            6784,
            SOCKET,
        );
        assert!(null.is_some());
        let fetch = RequestShape {
            sec_fetch_site: Some("cross-site"),
            ..shape("GET", Some("127.0.0.1:6784"), None)
        };
        assert!(tcp_refusal(&fetch, 6784, SOCKET).is_some());
    }

    #[test]
    fn mutating_calls_are_refused_on_tcp_and_point_at_the_socket() {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let line =
                tcp_refusal(&shape(method, Some("127.0.0.1:6784"), None), 6784, SOCKET).unwrap();
            assert!(line.contains("@weave-router/127.0.0.1:6784"), "{line}");
        }
    }

    #[test]
    fn mutating_calls_on_the_socket_need_root_or_the_routers_user() {
        assert_eq!(socket_refusal("POST", "/stop", Some(0), 0), None);
        assert_eq!(socket_refusal("POST", "/stop", Some(1000), 1000), None);
        assert_eq!(socket_refusal("POST", "/stop", Some(0), 1000), None);
        assert_eq!(socket_refusal("GET", "/status", Some(65534), 0), None);
        assert_eq!(
            socket_refusal("POST", "/stop", Some(65534), 0).unwrap(),
            "refused: POST /stop needs the privilege of the router's user (uid 0) or root; this request came from uid 65534"
        );
        assert!(socket_refusal("DELETE", "/ip/x", None, 0).is_some());
    }

    #[test]
    fn socket_names_follow_the_tcp_address() {
        assert_eq!(socket_name("127.0.0.1:6784".parse().unwrap()), SOCKET);
    }
}
