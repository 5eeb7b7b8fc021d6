//! The replica set's keyfile, derived from the admin password instead of
//! kept in a Secret of its own.
//!
//! Why that is acceptable: the keyfile only authenticates replica set
//! members to one another (internal authentication as `__system`), and
//! servicedb runs a single member, so no other member ever presents it.
//! mongod insists on one as soon as there is a replica set with access
//! control. Whoever can read it (it sits, 0400, beside the data files on the
//! volume) can read the data files anyway; whoever knows the admin password
//! is root already. SHA-256 does not let the password be recovered from it.
//! A rotated admin password gives a new keyfile at the next start, which a
//! single member does not notice. A multi-member set would need every
//! member to hold the same key through a rotation: give it a Secret then.

use std::path::Path;

use anyhow::bail;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use crate::instance::files::{set_mode, write_file};

/// Versioned, so that a future derivation can never collide with this one.
const LABEL: &[u8] = b"servicedb mongodb keyfile v1\0";
/// mongod's bounds on a keyfile's length.
const MIN_LEN: usize = 6;
const MAX_LEN: usize = 1024;

/// base64(SHA-256(label ‖ admin password)): 44 characters of the base64
/// alphabet, which is exactly what mongod accepts in a keyfile.
pub(super) fn derive(admin_password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(LABEL);
    hasher.update(admin_password.as_bytes());
    BASE64.encode(hasher.finalize())
}

/// Writes `key` to `path`, mode 0400 (mongod refuses a keyfile readable by
/// group or others), through a new file and a rename: a crash must not leave
/// half a key, and the old file is read-only even to us.
pub(super) fn write(path: &Path, key: &str) -> anyhow::Result<()> {
    let base64_alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
    if !(MIN_LEN..=MAX_LEN).contains(&key.len()) || !key.bytes().all(base64_alphabet) {
        bail!("a keyfile must be {MIN_LEN} to {MAX_LEN} characters of the base64 alphabet");
    }
    write_file(path, key)?;
    set_mode(path, 0o400)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn derivation_is_stable_and_fits_mongod() {
        let key = derive("correct horse");
        assert_eq!(key, derive("correct horse"));
        assert_ne!(key, derive("correct horse "));
        assert_ne!(key, derive(""));
        // Pinned: a change would give every instance a new keyfile.
        assert_eq!(
            key,
            BASE64.encode(Sha256::digest(
                b"servicedb mongodb keyfile v1\0correct horse"
            ))
        );
        assert_eq!(key.len(), 44);
        assert!((MIN_LEN..=MAX_LEN).contains(&key.len()));
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        );
        assert!(!key.contains("correct"));
        // Any password gives a valid key, however long or odd.
        for password in ["x", &"y".repeat(10_000), "päss\u{0} word"] {
            let key = derive(password);
            assert!((MIN_LEN..=MAX_LEN).contains(&key.len()));
            assert_eq!(BASE64.decode(&key).map(|raw| raw.len()).ok(), Some(32));
        }
    }

    #[test]
    fn written_read_only_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyfile");
        write(&path, &derive("one")).expect("first write");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        // Rotated admin password: the read-only file is replaced.
        write(&path, &derive("two")).expect("second write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), derive("two"));
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        write(&path, &derive("three")).expect("third write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            derive("three")
        );
        // mongod would refuse these; so do we, before starting it.
        for bad in [
            "short",
            &"k".repeat(1025),
            "has space and 20 more characters",
        ] {
            assert!(write(&path, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            derive("three")
        );
    }
}
