//! Does a stored SCRAM-SHA-256 verifier match a password? Decided client
//! side so that an unchanged password costs no `ALTER ROLE`.
//!
//! The check plays the server's half of a SCRAM exchange against
//! `postgres_protocol`'s client: the client does the expensive, subtle part
//! (SASLprep, PBKDF2) exactly as a real login would, and we verify its proof
//! and check the server signature it expects, just as PostgreSQL does with
//! the stored verifier. The server half needs only SHA-256 and HMAC, which
//! are small enough to carry here rather than add crates (`sha2`, `hmac`
//! and `base64` are already in the dependency tree via postgres-protocol,
//! and can replace this module's primitives if they become direct
//! dependencies).

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

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
    let Some(proof) = base64_decode(proof).and_then(|p| <[u8; 32]>::try_from(p).ok()) else {
        return false;
    };
    let auth_message = format!("{client_first_bare},{server_first},{client_final_without_proof}");

    // Server side: ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and
    // the password is right iff H(ClientKey) == StoredKey.
    let signature = hmac_sha256(&stored.stored_key, auth_message.as_bytes());
    let mut client_key = proof;
    for (byte, sig) in client_key.iter_mut().zip(signature) {
        *byte ^= sig;
    }
    if !constant_time_eq(&sha256(&client_key), &stored.stored_key) {
        return false;
    }
    // A login would also fail if the server key did not belong to the same
    // password: the client checks the server's signature.
    let server_signature = hmac_sha256(&stored.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", base64_encode(&server_signature));
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
        if iterations == 0 || base64_decode(salt)?.is_empty() {
            return None;
        }
        Some(StoredVerifier {
            iterations,
            salt,
            stored_key: base64_decode(stored_key)?.try_into().ok()?,
            server_key: base64_decode(server_key)?.try_into().ok()?,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard alphabet, padding required (what PostgreSQL writes).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.len() / 4;
    for (index, chunk) in bytes.chunks_exact(4).enumerate() {
        let last = index + 1 == chunks;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut value: u32 = 0;
        for &c in &chunk[..4 - padding] {
            let sextet = BASE64.iter().position(|&b| b == c)?;
            value = (value << 6) | sextet as u32;
        }
        value <<= 6 * padding as u32;
        let decoded = value.to_be_bytes();
        out.extend_from_slice(&decoded[1..4 - padding]);
    }
    Some(out)
}

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut buf = [0u8; 3];
        buf[..chunk.len()].copy_from_slice(chunk);
        let value = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (value >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(BASE64[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&sha256(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Vec::with_capacity(BLOCK + message.len());
    inner.extend(block_key.iter().map(|b| b ^ 0x36));
    inner.extend_from_slice(message);
    let mut outer = Vec::with_capacity(BLOCK + 32);
    outer.extend(block_key.iter().map(|b| b ^ 0x5c));
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

/// FIPS 180-4 SHA-256.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_be_bytes());

    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for (k, word) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(word);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (value, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *value = value.wrapping_add(add);
        }
    }
    let mut out = [0u8; 32];
    for (bytes, value) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&value.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&sha256(&[b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn hmac_rfc4231() {
        // Test case 1.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block size is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn base64_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let encoded = base64_encode(&bytes);
            assert_eq!(base64_decode(&encoded), Some(bytes), "{encoded}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8="), Some(b"fo".to_vec()));
        for bad in ["Zm8", "Zm=8", "Z===", "Zm8=Zm8=", "Zm!="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

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
