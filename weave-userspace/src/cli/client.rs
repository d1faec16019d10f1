//! A small blocking HTTP/1.1 client for the router's API (one request per connection), over
//! TCP or the API's unix socket (see [`crate::api::access`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where the API is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAddr {
    /// TCP (read-only calls).
    Tcp(SocketAddr),
    /// An abstract unix socket, by name without the leading NUL (every call).
    Socket(String),
}

impl ApiAddr {
    /// The unix socket of the router whose TCP API is `http_addr`.
    pub fn socket_of(http_addr: SocketAddr) -> Self {
        ApiAddr::Socket(crate::api::access::socket_name(http_addr))
    }
}

impl From<SocketAddr> for ApiAddr {
    fn from(a: SocketAddr) -> Self {
        ApiAddr::Tcp(a)
    }
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddr::Tcp(a) => write!(f, "{a}"),
            ApiAddr::Socket(name) => write!(f, "@{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the weave-router API at {addr}: {error} (is the router running?)")]
    Unreachable {
        addr: ApiAddr,
        error: std::io::Error,
    },
    #[error("the weave-router API at {addr} failed: {error}")]
    Io {
        addr: ApiAddr,
        error: std::io::Error,
    },
    #[error("the weave-router API at {addr} sent a malformed answer: {reason}")]
    Malformed { addr: ApiAddr, reason: String },
    #[error("the process answering at {addr} runs as uid {uid}, neither root nor this user: not talking to it")]
    Impostor { addr: ApiAddr, uid: u32 },
}

/// An answer: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A connection to the API.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(addr: &ApiAddr, timeout: Duration) -> Result<Box<dyn Stream>, ClientError> {
    let io = |error| ClientError::Io {
        addr: addr.clone(),
        error,
    };
    let unreachable = |error| ClientError::Unreachable {
        addr: addr.clone(),
        error,
    };
    match addr {
        ApiAddr::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, Duration::from_secs(2)).map_err(unreachable)?;
            s.set_read_timeout(Some(timeout)).map_err(io)?;
            s.set_write_timeout(Some(timeout)).map_err(io)?;
            Ok(Box::new(s))
        }
        ApiAddr::Socket(name) => {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
            let ua = UnixAddr::from_abstract_name(name.as_bytes()).map_err(unreachable)?;
            let s = UnixStream::connect_addr(&ua).map_err(unreachable)?;
            let uid = peer_uid(&s).map_err(io)?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if uid != 0 && uid != me {
                return Err(ClientError::Impostor {
                    addr: addr.clone(),
                    uid,
                });
            }
            s.set_read_timeout(Some(timeout)).map_err(io)?;
            s.set_write_timeout(Some(timeout)).map_err(io)?;
            Ok(Box::new(s))
        }
    }
}

/// The uid of the process on the other end of a unix socket (`SO_PEERCRED`).
fn peer_uid(s: &std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Sends one request; `body` is sent as JSON.
pub fn request(
    addr: impl Into<ApiAddr>,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let addr = addr.into();
    let mut stream = connect(&addr, timeout)?;
    let io = |error| ClientError::Io {
        addr: addr.clone(),
        error,
    };
    let host = match &addr {
        ApiAddr::Tcp(a) => a.to_string(),
        ApiAddr::Socket(_) => "localhost".to_string(),
    };
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
    // The router may answer (a refusal) and close before it has read the whole request,
    // so that the write fails: its answer is still there to read, and says more.
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        sent.and(read).map_err(io)?;
    }
    parse_response(&raw).map_err(|reason| ClientError::Malformed {
        addr: addr.clone(),
        reason,
    })
}

/// Parses a whole HTTP/1.1 response (content-length, chunked, or up to the end).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(v.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk")?;
            let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err("truncated chunk".into());
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err("truncated body".into());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_bodies_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: "hello".into()
            }
        );
    }

    #[test]
    fn chunked_bodies_parse() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            r,
            Response {
                status: 404,
                body: "abcde".into()
            }
        );
    }

    #[test]
    fn an_answer_sent_before_the_request_was_read_is_still_the_answer() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
        let name = format!("weave-router-client-test-{}", std::process::id());
        let listener =
            UnixListener::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nrefused")
                .unwrap();
            // Closed unread: a request bigger than the socket's buffers cannot be written whole.
        });
        let big = "x".repeat(4 << 20);
        let r = request(
            ApiAddr::Socket(name),
            "POST",
            "/stop",
            Some(&big),
            Duration::from_secs(5),
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(
            r,
            Response {
                status: 403,
                body: "refused".into()
            }
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn an_unreachable_api_says_so() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = request(addr, "GET", "/status", None, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach the weave-router API at {addr}: ")),
            "{e}"
        );
    }
}
