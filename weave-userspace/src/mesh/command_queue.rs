//! The bounded queue from the router to one connection's task.
//!
//! The event loop never waits on a connection: it puts a command in the queue or, when the
//! queue is full (more than [`QUEUED_FRAMES`] commands or [`QUEUED_BYTES`] of frames not yet
//! written), gives up on the connection — a peer that does not read what we send is a slow
//! peer, and gossip cannot be dropped for it without its view going stale, so it is closed
//! and redials (its digest exchange then sends it what it missed). The memory a connection
//! holds is so bounded by the queue, the kernel's send buffer and one frame being written.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::connection::ConnCommand;

/// Most commands waiting for one connection.
pub const QUEUED_FRAMES: usize = 1024;
/// Most bytes of frames waiting for one connection (a frame shared by many connections is
/// counted for each of them).
pub const QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// What the queues of one connection share.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of frames queued and not yet written.
    bytes: AtomicUsize,
    /// Set once the queue overflowed: the connection is closing.
    overrun: AtomicBool,
    /// Wakes the connection's writer when it overran.
    wake: Notify,
}

/// The router's end: never blocks.
#[derive(Clone, Debug)]
pub(crate) struct CommandQueue {
    tx: mpsc::Sender<ConnCommand>,
    shared: Arc<Shared>,
    byte_limit: usize,
}

/// The connection's end.
#[derive(Debug)]
pub(crate) struct CommandInbox {
    rx: mpsc::Receiver<ConnCommand>,
    shared: Arc<Shared>,
}

/// Why a command was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue overflowed now (the first time: log and count it) or before.
    Overrun { first: bool },
    /// The connection's task is gone.
    Gone,
}

/// A queue for one connection, bounded by [`QUEUED_FRAMES`] and [`QUEUED_BYTES`].
pub(crate) fn command_queue() -> (CommandQueue, CommandInbox) {
    bounded(QUEUED_FRAMES, QUEUED_BYTES)
}

fn bounded(frames: usize, bytes: usize) -> (CommandQueue, CommandInbox) {
    let (tx, rx) = mpsc::channel(frames);
    let shared = Arc::new(Shared::default());
    (
        CommandQueue {
            tx,
            shared: shared.clone(),
            byte_limit: bytes,
        },
        CommandInbox { rx, shared },
    )
}

fn frame_len(command: &ConnCommand) -> usize {
    match command {
        ConnCommand::SendFrame(f) => f.len(),
        _ => 0,
    }
}

impl CommandQueue {
    /// Queues `command`, or refuses it when the queue is full (the connection is then told
    /// to close as a slow peer) or gone.
    pub fn send(&self, command: ConnCommand) -> Result<(), Refused> {
        if self.shared.overrun.load(Ordering::Relaxed) {
            return Err(Refused::Overrun { first: false });
        }
        let len = frame_len(&command);
        let queued = self.shared.bytes.fetch_add(len, Ordering::Relaxed) + len;
        let full = queued > self.byte_limit && len > 0;
        let sent = if full {
            Err(mpsc::error::TrySendError::Full(command))
        } else {
            self.tx.try_send(command)
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Closed(_) => Err(Refused::Gone),
                    mpsc::error::TrySendError::Full(_) => {
                        let first = !self.shared.overrun.swap(true, Ordering::Relaxed);
                        self.shared.wake.notify_one();
                        Err(Refused::Overrun { first })
                    }
                }
            }
        }
    }

    /// Bytes of frames queued and not yet written.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

/// What the connection's writer takes next.
#[derive(Debug)]
pub(crate) enum Next {
    Command(ConnCommand),
    /// The queue overflowed: close as a slow peer.
    Overrun,
    /// The router dropped its end.
    Closed,
}

impl CommandInbox {
    /// The next command, or word that the queue overflowed (which comes first).
    pub async fn next(&mut self) -> Next {
        if self.shared.overrun.load(Ordering::Relaxed) {
            return Next::Overrun;
        }
        tokio::select! {
            biased;
            _ = self.shared.wake.notified() => Next::Overrun,
            command = self.rx.recv() => match command {
                Some(c) => Next::Command(c),
                None => Next::Closed,
            },
        }
    }

    /// Marks the `bytes` of a frame taken by [`CommandInbox::next`] as written (or given up).
    pub fn written(&self, bytes: usize) {
        self.shared.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> ConnCommand {
        ConnCommand::SendFrame(vec![0u8; len].into())
    }

    #[tokio::test]
    async fn a_full_queue_refuses_once_as_an_overrun_and_tells_the_writer_first() {
        let (queue, mut inbox) = bounded(2, 1 << 20);
        queue.send(frame(10)).unwrap();
        queue.send(ConnCommand::SendReady).unwrap();
        assert_eq!(queue.queued_bytes(), 10);
        assert_eq!(queue.send(frame(10)), Err(Refused::Overrun { first: true }));
        assert_eq!(
            queue.send(ConnCommand::SendReady),
            Err(Refused::Overrun { first: false }),
            "once overrun, nothing more is queued"
        );
        assert_eq!(queue.queued_bytes(), 10, "the refused frame is not counted");
        assert!(matches!(inbox.next().await, Next::Overrun));
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_too_and_written_frames_free_them() {
        let (queue, mut inbox) = bounded(100, 25);
        queue.send(frame(10)).unwrap();
        queue.send(frame(10)).unwrap();
        let Next::Command(ConnCommand::SendFrame(f)) = inbox.next().await else {
            panic!("a frame")
        };
        inbox.written(f.len());
        assert_eq!(queue.queued_bytes(), 10);
        queue.send(frame(10)).unwrap();
        assert_eq!(queue.queued_bytes(), 20);
        assert_eq!(queue.send(frame(10)), Err(Refused::Overrun { first: true }));
    }

    #[tokio::test]
    async fn a_gone_connection_is_not_an_overrun() {
        let (queue, inbox) = bounded(2, 100);
        drop(inbox);
        assert_eq!(queue.send(frame(1)), Err(Refused::Gone));
        assert_eq!(queue.queued_bytes(), 0);
    }
}
