//! Does a stored SCRAM-SHA-256 credential (as `usersInfo` shows it with
//! `showCredentials`) belong to a password? Decided client side so that an
//! unchanged password costs no `updateUser`: `StoredKey` is
//! `H(HMAC(PBKDF2(SASLprep(password), salt, i), "Client Key"))` (RFC 5802,
//! RFC 7677), recomputed here and compared.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use mongodb::bson::{Bson, Document};
use sha2::{Digest, Sha256};

/// A stored key with more PBKDF2 rounds than this (set by hand) is not
/// checked client side; the password is set again, with the server's default.
const MAX_CHECKED_ITERATIONS: u32 = 1_000_000;

/// The part of a SCRAM-SHA-256 credential that decides whether a password
/// is right: `StoredKey = H(HMAC(PBKDF2(password, salt, i), "Client Key"))`.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct StoredKey {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    pub(super) fn from_document(credential: &Document) -> Option<StoredKey> {
        let iterations = match credential.get("iterationCount")? {
            Bson::Int32(n) => u32::try_from(*n).ok()?,
            Bson::Int64(n) => u32::try_from(*n).ok()?,
            _ => return None,
        };
        Some(StoredKey {
            iterations,
            salt: BASE64.decode(credential.get_str("salt").ok()?).ok()?,
            stored_key: BASE64.decode(credential.get_str("storedKey").ok()?).ok()?,
        })
    }

    pub(super) fn matches(&self, password: &str) -> Option<bool> {
        // SASLprep (which the server applies before PBKDF2) leaves printable
        // ASCII as it is; anything else is not worth reimplementing it for.
        let printable_ascii = password.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if !printable_ascii
            || self.iterations == 0
            || self.iterations > MAX_CHECKED_ITERATIONS
            || self.salt.is_empty()
        {
            return None;
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            password.as_bytes(),
            &self.salt,
            self.iterations,
            &mut salted,
        );
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&salted).ok()?;
        mac.update(b"Client Key");
        let client_key = mac.finalize().into_bytes();
        // Compared locally with our own computation: no timing oracle here.
        Some(Sha256::digest(client_key).as_slice() == self.stored_key.as_slice())
    }
}

/// A credential as mongod stores it, computed independently of
/// [`StoredKey::matches`] (RFC 5802 with SHA-256, RFC 7677).
#[cfg(test)]
pub(super) fn credential(password: &str, salt: &[u8], iterations: u32) -> Document {
    let salted: [u8; 32] =
        pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
    let hmac = |key: &[u8], message: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let server_key = hmac(&salted, b"Server Key");
    mongodb::bson::doc! {
        "iterationCount": i32::try_from(iterations).expect("fits"),
        "salt": BASE64.encode(salt),
        "storedKey": BASE64.encode(Sha256::digest(client_key)),
        "serverKey": BASE64.encode(server_key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector: user "user", password "pencil", 4096 rounds.
    #[test]
    fn stored_key_check_agrees_with_rfc_7677() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
        let key = StoredKey {
            iterations: 4096,
            salt,
            stored_key: BASE64
                .decode("WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=")
                .expect("base64"),
        };
        assert_eq!(key.matches("pencil"), Some(true));
        assert_eq!(key.matches("pencil "), Some(false));
    }

    #[test]
    fn unusable_stored_keys_are_unknown() {
        let mut entry = credential("pw", b"salt", 4096);
        entry.insert("iterationCount", 0);
        assert_eq!(
            StoredKey::from_document(&entry).and_then(|k| k.matches("pw")),
            None
        );
        entry.insert("iterationCount", 2_000_000);
        assert_eq!(
            StoredKey::from_document(&entry).and_then(|k| k.matches("pw")),
            None
        );
        entry.insert("iterationCount", -1);
        assert!(StoredKey::from_document(&entry).is_none());
        entry.insert("iterationCount", 4096_i64);
        entry.insert("salt", "not base64!");
        assert!(StoredKey::from_document(&entry).is_none());
    }
}
