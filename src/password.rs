//! Passwords from the operating system's CSPRNG.

use rand::RngExt;
use rand::distr::Alphanumeric;

/// Length of generated passwords: 32 alphanumerics ≈ 190 bits, safe in URIs
/// and shells without quoting.
pub const LENGTH: usize = 32;

/// A fresh random password.
pub fn generate() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(LENGTH)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_long_alphanumeric_and_distinct() {
        let a = super::generate();
        let b = super::generate();
        assert_eq!(a.len(), super::LENGTH);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
