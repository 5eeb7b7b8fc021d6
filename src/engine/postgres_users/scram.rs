//! Does a stored SCRAM-SHA-256 verifier match a password? Decided client
//! side so that an unchanged password costs no `ALTER ROLE`.
//!
//! The check plays the server's half of a SCRAM exchange against
//! `postgres_protocol`'s client: the client does the expensive, subtle part
//! (SASLprep, PBKDF2) exactly as a real login would, and we verify its proof
//! and the server signature it expects, just as PostgreSQL does with the
//! stored verifier.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sha2::{Digest, Sha256};

const SERVER_NONCE: &str = "servicedb-verifier-check";

/// Whether `verifier` (as stored in `pg_authid.rolpassword`) accepts
/// `password`. Anything unparsable, or not SCRAM (md5, empty), is `false`,
/// which makes the caller set the password again.
pub(super) fn verifier_matches(verifier: &str, password: &str) -> bool {
    let Some(stored) = StoredVerifier::parse(verifier) else {
        return false;
    };
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let Ok(client_first) = std::str::from_utf8(client.message()).map(str::to_owned) else {
        return false;
    };
    // "n,,n=,r=<client nonce>": GS2 header (no channel binding), then the
    // bare message.
    let Some(client_first_bare) = client_first.strip_prefix("n,,") else {
        return false;
    };
    let Some(client_nonce) = client_first_bare.strip_prefix("n=,r=") else {
        return false;
    };
    let server_first = format!(
        "r={client_nonce}{SERVER_NONCE},s={},i={}",
        stored.salt, stored.iterations
    );
    // Fails for iteration counts above the client's cap: treated as a
    // mismatch, so the password is re-set with the default count.
    if client.update(server_first.as_bytes()).is_err() {
        return false;
    }
    let Ok(client_final) = std::str::from_utf8(client.message()).map(str::to_owned) else {
        return false;
    };
    let Some((client_final_without_proof, proof)) = client_final.rsplit_once(",p=") else {
        return false;
    };
    let Some(proof) = decode_key(proof) else {
        return false;
    };
    let auth_message = format!("{client_first_bare},{server_first},{client_final_without_proof}");

    // Server side: ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and
    // the password is right iff H(ClientKey) == StoredKey.
    let Some(signature) = hmac_sha256(&stored.stored_key, auth_message.as_bytes()) else {
        return false;
    };
    let mut client_key = proof;
    for (byte, sig) in client_key.iter_mut().zip(signature) {
        *byte ^= sig;
    }
    let hashed: [u8; 32] = Sha256::digest(client_key).into();
    if !constant_time_eq(&hashed, &stored.stored_key) {
        return false;
    }
    // A login would also fail if the server key did not belong to the same
    // password: the client checks the server's signature.
    let Some(server_signature) = hmac_sha256(&stored.server_key, auth_message.as_bytes()) else {
        return false;
    };
    let server_final = format!("v={}", BASE64.encode(server_signature));
    client.finish(server_final.as_bytes()).is_ok()
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
struct StoredVerifier<'a> {
    iterations: u32,
    /// Still base64, as the SCRAM server-first message carries it.
    salt: &'a str,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl<'a> StoredVerifier<'a> {
    fn parse(verifier: &'a str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 || BASE64.decode(salt).ok()?.is_empty() {
            return None;
        }
        Some(StoredVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Option<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(message);
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_verifiers_made_by_postgres_protocol() {
        for password in ["pencil", "p'a\"ss wörd $1\\", "ⅨⅨ non-ascii"] {
            let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            assert!(verifier_matches(&verifier, password), "{password}");
            assert!(!verifier_matches(&verifier, "pencil2"));
            assert!(!verifier_matches(&verifier, ""));
        }
    }

    #[test]
    fn matches_verifiers_made_by_postgresql() {
        // `CREATE ROLE x PASSWORD '...'` on PostgreSQL 15 (password_encryption
        // scram-sha-256), read back from pg_authid.
        let pencil = "SCRAM-SHA-256$4096:odwlafVMqREBRWrO4xDpQQ==$pr7Bhbpwonxx488hK7ayL/p9PxBlCmR5J1vTAZN4Wto=:1s3Fcz865Kb03Y1q/A8MHkU4bi2SH0ieuDdBcdm2y5g=";
        assert!(verifier_matches(pencil, "pencil"));
        assert!(!verifier_matches(pencil, "Pencil"));
        let quoted = "SCRAM-SHA-256$4096:qP0n+Av6xayoa1PuiG5tpw==$h1EgqQaClmkT5RysCtbNe5JQWuyEMkQvvAfYa/02Y8w=:WGUIp4elfSFXeVHnn2Of6hZ4jIP7TcWn8hD12DR7uLY=";
        assert!(verifier_matches(quoted, "p'a\"ss wörd"));
        assert!(!verifier_matches(quoted, "pencil"));
    }

    #[test]
    fn a_verifier_with_a_foreign_server_key_does_not_match() {
        let good = postgres_protocol::password::scram_sha_256(b"pencil");
        let other = postgres_protocol::password::scram_sha_256(b"other");
        let (head, _) = good.rsplit_once(':').expect("verifier has keys");
        let (_, foreign_server_key) = other.rsplit_once(':').expect("verifier has keys");
        assert!(!verifier_matches(
            &format!("{head}:{foreign_server_key}"),
            "pencil"
        ));
    }

    #[test]
    fn unparsable_or_non_scram_verifiers_do_not_match() {
        for verifier in [
            "",
            "md5a3556571e93b0d20722ba62be61e8c2d",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:$AAAA:AAAA",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            // Above the client's iteration cap.
            "SCRAM-SHA-256$1000000:odwlafVMqREBRWrO4xDpQQ==$pr7Bhbpwonxx488hK7ayL/p9PxBlCmR5J1vTAZN4Wto=:1s3Fcz865Kb03Y1q/A8MHkU4bi2SH0ieuDdBcdm2y5g=",
        ] {
            assert!(!verifier_matches(verifier, "pencil"), "{verifier}");
        }
    }
}
