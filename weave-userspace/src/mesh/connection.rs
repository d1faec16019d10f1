//! One control connection: handshake, then heartbeats and messages until it dies.
//!
//! Each connection is one tokio task. It tells the router what happens to it through
//! [`ConnEvent`]s and takes orders back through [`ConnCommand`]s; it never touches the data
//! path itself.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::peer_name::PeerName;
use super::protocol::{
    self, Hello, Message, ProtocolError, Versions, FRAME_HEADER_LEN, PREAMBLE_LEN,
};

/// Identifies a connection within one router.
pub type ConnId = u64;

/// The clocks of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// Time allowed for TCP connect plus handshake.
    pub handshake_timeout: Duration,
    /// How often a heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// Silence after which the remote end is taken for dead.
    pub dead_after: Duration,
    /// First redial delay; it grows by 1.5 each failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no message for {0:?}, peer presumed dead")]
    Silent(Duration),
    #[error("connection closed by the remote end")]
    Closed,
    #[error("the remote end closed the connection: {0}")]
    Goodbye(String),
    #[error("duplicate connection to {0}")]
    Duplicate(PeerName),
    #[error("{0}")]
    Refused(String),
    #[error("router shutting down")]
    Shutdown,
}

/// What a connection tells the router.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// The handshake succeeded; the router answers whether to go on.
    Handshaken {
        id: ConnId,
        outbound: bool,
        remote: SocketAddr,
        hello: Hello,
        commands: mpsc::UnboundedSender<ConnCommand>,
        reply: oneshot::Sender<Result<(), ConnectionError>>,
    },
    /// The remote end has installed us in its data path.
    RemoteReady { id: ConnId },
    /// The remote end sent topology records or a digest of them.
    Gossip { id: ConnId, message: Message },
    /// The connection is gone.
    Closed { id: ConnId, error: String },
}

/// What the router tells a connection.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    /// We have installed the remote end in our data path: tell it.
    SendReady,
    /// Send a frame encoded once for many connections (gossip).
    SendFrame(std::sync::Arc<[u8]>),
    /// Say goodbye with this reason and close.
    Close(ConnectionError),
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Message,
) -> Result<(), ConnectionError> {
    let frame = protocol::encode_frame(message)?;
    w.write_all(&frame).await?;
    protocol::SENT.count(&frame);
    Ok(())
}

/// Reads exactly one frame (not cancel-safe: use it where nothing races it).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ConnectionError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    read_exact(r, &mut header).await?;
    let len = protocol::frame_len(header)?;
    let mut body = vec![0u8; len];
    read_exact(r, &mut body).await?;
    Ok(protocol::decode_body(&body)?)
}

async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), ConnectionError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnectionError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Exchanges preambles and hellos; returns the remote side's hello once it passes our checks.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &Hello,
    timeout: Duration,
) -> Result<(u8, Hello), ConnectionError> {
    let exchange = async {
        stream.write_all(&Versions::OURS.encode()).await?;
        let mut preamble = [0u8; PREAMBLE_LEN];
        read_exact(stream, &mut preamble).await?;
        let theirs = Versions::decode(&preamble)?;
        let version = protocol::negotiate(Versions::OURS, theirs)?;
        write_message(stream, &Message::Hello(local.clone())).await?;
        match read_message(stream).await? {
            Message::Hello(hello) => {
                protocol::check_hello(local, &hello)?;
                Ok((version, hello))
            }
            Message::Goodbye(reason) => Err(ConnectionError::Goodbye(reason)),
            other => Err(ProtocolError::Unexpected {
                expected: "hello",
                received: other.kind(),
            }
            .into()),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ConnectionError::HandshakeTimeout(timeout))?
}

/// The end of a connection: who it was with (once known) and why it ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub peer: Option<PeerName>,
    /// Whether the router accepted it (it then counted as a connection).
    pub accepted: bool,
    pub error: ConnectionError,
}

/// Runs a connection from a connected socket to its end.
pub(crate) async fn run(
    mut stream: TcpStream,
    id: ConnId,
    outbound: bool,
    local: Hello,
    timings: Timings,
    events: mpsc::UnboundedSender<ConnEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    let remote = match stream.peer_addr() {
        Ok(a) => a,
        Err(e) => {
            return Outcome {
                peer: None,
                accepted: false,
                error: e.into(),
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let hello = tokio::select! {
        r = handshake(&mut stream, &local, timings.handshake_timeout) => match r {
            Ok((_, hello)) => hello,
            Err(error) => return Outcome { peer: None, accepted: false, error },
        },
        _ = stopped(&mut shutdown) => return Outcome { peer: None, accepted: false, error: ConnectionError::Shutdown },
    };
    let peer = Some(hello.name);
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let event = ConnEvent::Handshaken {
        id,
        outbound,
        remote,
        hello,
        commands: commands_tx,
        reply: reply_tx,
    };
    if events.send(event).is_err() {
        return Outcome {
            peer,
            accepted: false,
            error: ConnectionError::Shutdown,
        };
    }
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let _ = write_message(&mut stream, &Message::Goodbye(error.to_string())).await;
            return Outcome {
                peer,
                accepted: false,
                error,
            };
        }
        Err(_) => {
            return Outcome {
                peer,
                accepted: false,
                error: ConnectionError::Shutdown,
            }
        }
    }
    let error = converse(stream, id, &timings, &events, &mut commands, &mut shutdown).await;
    let _ = events.send(ConnEvent::Closed {
        id,
        error: error.to_string(),
    });
    Outcome {
        peer,
        accepted: true,
        error,
    }
}

/// The life of an accepted connection; returns why it ended. Reading and writing run side
/// by side: a large frame being written never stops us from reading (two routers writing
/// big frames to each other at once would otherwise both wait for the other to read).
async fn converse(
    stream: TcpStream,
    id: ConnId,
    timings: &Timings,
    events: &mpsc::UnboundedSender<ConnEvent>,
    commands: &mut mpsc::UnboundedReceiver<ConnCommand>,
    shutdown: &mut watch::Receiver<bool>,
) -> ConnectionError {
    let (rd, wr) = stream.into_split();
    tokio::select! {
        error = read_messages(rd, id, timings, events) => error,
        error = write_messages(wr, timings, commands, shutdown) => error,
    }
}

/// Reads frames and hands them to the router until the connection fails, the peer says
/// goodbye or stays silent for `dead_after`.
async fn read_messages(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    id: ConnId,
    timings: &Timings,
    events: &mpsc::UnboundedSender<ConnEvent>,
) -> ConnectionError {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let n = match tokio::time::timeout(timings.dead_after, rd.read(&mut chunk)).await {
            Err(_) => return ConnectionError::Silent(timings.dead_after),
            Ok(Ok(0)) => return ConnectionError::Closed,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return e.into(),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        loop {
            match protocol::decode_frame(&buf[consumed..]) {
                Ok(None) => break,
                Ok(Some((message, used))) => {
                    protocol::RECEIVED.count(&buf[consumed..consumed + used]);
                    consumed += used;
                    match message {
                        Message::Heartbeat => {}
                        Message::Ready => {
                            let _ = events.send(ConnEvent::RemoteReady { id });
                        }
                        Message::Goodbye(reason) => return ConnectionError::Goodbye(reason),
                        message @ (Message::Gossip(_)
                        | Message::Digest(_)
                        | Message::Delta(_)
                        | Message::Channel(_)) => {
                            let _ = events.send(ConnEvent::Gossip { id, message });
                        }
                        Message::Hello(_) => {
                            return ProtocolError::Unexpected {
                                expected: "heartbeat",
                                received: "hello",
                            }
                            .into()
                        }
                    }
                }
                Err(e) => return e.into(),
            }
        }
        buf.drain(..consumed);
        if buf.is_empty() && buf.capacity() > 256 * 1024 {
            // A large frame has passed: give its memory back.
            buf = Vec::new();
        }
    }
}

/// Writes heartbeats and what the router asks for, until told to close or the router stops.
async fn write_messages(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    timings: &Timings,
    commands: &mut mpsc::UnboundedReceiver<ConnCommand>,
    shutdown: &mut watch::Receiver<bool>,
) -> ConnectionError {
    let mut heartbeat = tokio::time::interval(timings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = write_message(&mut wr, &Message::Heartbeat).await {
                    return e;
                }
            }
            command = commands.recv() => match command {
                Some(ConnCommand::SendReady) => {
                    if let Err(e) = write_message(&mut wr, &Message::Ready).await {
                        return e;
                    }
                }
                Some(ConnCommand::SendFrame(frame)) => {
                    if let Err(e) = wr.write_all(&frame).await {
                        return e.into();
                    }
                    protocol::SENT.count(&frame);
                }
                Some(ConnCommand::Close(reason)) => {
                    let _ = write_message(&mut wr, &Message::Goodbye(reason.to_string())).await;
                    return reason;
                }
                None => return ConnectionError::Shutdown,
            },
            _ = stopped(shutdown) => {
                let _ = write_message(&mut wr, &Message::Goodbye("router shutting down".into())).await;
                return ConnectionError::Shutdown;
            }
        }
    }
}

/// Resolves once the router shuts down (or is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::peer_name::ShortId;

    fn hello(n: u8) -> Hello {
        Hello {
            name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, n]),
            nickname: format!("host{n}"),
            short_id: ShortId::new(n as u16).unwrap(),
            uid: n as u64,
            underlay: [10, 0, 0, n].into(),
            data_port: 6784,
        }
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn both_sides_learn_each_other() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (h1, h2) = (hello(1), hello(2));
        let (ra, rb) = tokio::join!(handshake(&mut a, &h1, T), handshake(&mut b, &h2, T));
        assert_eq!(ra.unwrap(), (1, hello(2)));
        assert_eq!(rb.unwrap(), (1, hello(1)));
        // Framing goes on after the handshake.
        write_message(&mut a, &Message::Ready).await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap(), Message::Ready);
    }

    #[tokio::test]
    async fn both_sides_refuse_a_self_connection() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let h1 = hello(1);
        let (ra, rb) = tokio::join!(handshake(&mut a, &h1, T), handshake(&mut b, &h1, T));
        for r in [ra, rb] {
            assert!(
                matches!(
                    r,
                    Err(ConnectionError::Protocol(ProtocolError::SelfConnection))
                ),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_remote_times_out() {
        let (mut a, _b) = tokio::io::duplex(4096);
        let r = handshake(&mut a, &hello(1), Duration::from_millis(100)).await;
        assert_eq!(
            r.unwrap_err().to_string(),
            "handshake timed out after 100ms"
        );
    }

    #[tokio::test]
    async fn a_remote_that_hangs_up_is_closed() {
        let (mut a, b) = tokio::io::duplex(4096);
        drop(b);
        let r = handshake(&mut a, &hello(1), T).await;
        assert!(
            matches!(r, Err(ConnectionError::Closed | ConnectionError::Io(_))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r = read_message(&mut a).await;
        assert!(
            matches!(
                r,
                Err(ConnectionError::Protocol(ProtocolError::FrameTooLarge(_)))
            ),
            "{r:?}"
        );
    }
}
