//! Kubernetes quantities, read as numbers.

/// A Kubernetes quantity in bytes (`10Gi`, `500M`, `1.5Ti`, `1e9`); `None`
/// when it is not one.
pub fn bytes(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn quantities_compare_as_the_api_server_does() {
        assert_eq!(bytes("1Gi"), Some(1073741824.0));
        assert_eq!(bytes("1024Mi"), bytes("1Gi"));
        assert!(bytes("2G").unwrap() < bytes("2Gi").unwrap());
        assert_eq!(bytes("1.5Ki"), Some(1536.0));
        assert_eq!(bytes("1e3"), Some(1000.0));
        assert_eq!(bytes("500"), Some(500.0));
        assert_eq!(bytes("lots"), None);
        assert_eq!(bytes("1Xi"), None);
    }
}
