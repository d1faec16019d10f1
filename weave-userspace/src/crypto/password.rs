//! The password, turned into the pre-shared key of the handshake.
//!
//! Argon2id (memory-hard: each guess costs 19 MiB and two passes, so a captured handshake
//! is expensive to attack offline) with a fixed salt. The salt is fixed because every router
//! of a mesh must derive the same key on its own before any message is exchanged: a random
//! salt would have to be sent in clear first and would stop nobody who can read it. Its value
//! is specific to this project, so tables computed for other systems do not apply.

/// The Argon2id salt: the same on every router, forever (changing it splits meshes).
pub const KDF_SALT: &[u8] = b"weave-router pre-shared key v1";
/// Argon2id memory cost in KiB (19 MiB), passes and lanes: the OWASP minimum for Argon2id.
pub const KDF_MEMORY_KIB: u32 = 19 * 1024;
pub const KDF_PASSES: u32 = 2;
pub const KDF_LANES: u32 = 1;
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is {0} bytes long; at most {MAX_PASSWORD_LEN} are accepted")]
    TooLong(usize),
    #[error("cannot derive a key from the password: {0}")]
    Kdf(String),
}

/// A password as given (never printed): not empty, not longer than [`MAX_PASSWORD_LEN`].
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Result<Self, PasswordError> {
        if bytes.is_empty() {
            return Err(PasswordError::Empty);
        }
        if bytes.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::TooLong(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The password in a file: its content less one trailing newline.
    pub fn from_file_content(mut bytes: Vec<u8>) -> Result<Self, PasswordError> {
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Self::new(bytes)
    }

    /// The key the handshake uses (tens of milliseconds).
    pub fn derive_key(&self) -> Result<PresharedKey, PasswordError> {
        PresharedKey::derive(&self.0)
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// 32 bytes derived from the password; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// Derives the key (tens of milliseconds: do it once, at start).
    pub fn derive(password: &[u8]) -> Result<Self, PasswordError> {
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::TooLong(password.len()));
        }
        let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES, Some(32))
            .map_err(|e| PasswordError::Kdf(e.to_string()))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        kdf.hash_password_into(password, KDF_SALT, &mut key)
            .map_err(|e| PasswordError::Kdf(e.to_string()))?;
        Ok(Self(key))
    }

    /// A key given as is (tests).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites secret bytes in a way the compiler keeps.
pub(crate) fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_password_gives_the_same_key_on_every_router() {
        let a = PresharedKey::derive(b"correct horse").unwrap();
        let b = PresharedKey::derive(b"correct horse").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, PresharedKey::derive(b"correct horsf").unwrap());
    }

    #[test]
    fn the_derivation_is_pinned() {
        // Routers of different builds must agree: salt and cost never change silently.
        let key = PresharedKey::derive(b"weave").unwrap();
        let hex: String = key.bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_KEY_OF_WEAVE);
    }

    /// Argon2id("weave", KDF_SALT, m=19456 KiB, t=2, p=1, 32 bytes), as the reference
    /// implementation (libargon2) computes it.
    const PINNED_KEY_OF_WEAVE: &str =
        "d9082441bfa0cf955e9301262dbd807891026d0b0eb993ba5e4e54a02a3a1c4d";

    #[test]
    fn empty_and_huge_passwords_are_refused() {
        assert_eq!(PresharedKey::derive(b""), Err(PasswordError::Empty));
        let huge = vec![b'x'; MAX_PASSWORD_LEN + 1];
        assert_eq!(
            PresharedKey::derive(&huge),
            Err(PasswordError::TooLong(MAX_PASSWORD_LEN + 1))
        );
    }

    #[test]
    fn a_file_s_trailing_newline_is_not_part_of_the_password() {
        let a = Password::from_file_content(b"secret\n".to_vec()).unwrap();
        let b = Password::from_file_content(b"secret\r\n".to_vec()).unwrap();
        let c = Password::new(b"secret".to_vec()).unwrap();
        assert!(a == c && b == c);
        assert_eq!(
            Password::from_file_content(b"\n".to_vec()),
            Err(PasswordError::Empty)
        );
        assert_eq!(
            Password::from_file_content(Vec::new()),
            Err(PasswordError::Empty)
        );
        assert_eq!(format!("{c:?}"), "Password(..)");
    }

    #[test]
    fn keys_are_not_printed() {
        let key = PresharedKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "PresharedKey(..)");
    }
}
