//! Encryption with a password, as pure state machines over bytes (no I/O).
//!
//! - [`password`]: the password becomes a 32-byte pre-shared key through Argon2id.
//! - [`handshake`]: a Noise `NNpsk0` handshake plus a key confirmation gives both ends a
//!   [`handshake::SessionKeys`]: one ChaCha20-Poly1305 key per direction.
//! - [`aead`]: sealing and opening with 64-bit counter nonces, in order (control stream) or
//!   through a [`replay::ReplayWindow`] (datagrams).
//!
//! The control connection and the sleeve data path are the I/O shells around these.

pub mod aead;
pub mod handshake;
pub mod password;
pub mod replay;

pub use aead::{CryptoError, DatagramOpener, NonceDomain, Sealer, StreamOpener, TAG_LEN};
pub use handshake::{HandshakeError, Initiator, Responder, SessionKeys};
pub use password::{Password, PasswordError, PresharedKey};
