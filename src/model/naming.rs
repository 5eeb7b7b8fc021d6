//! How servicedb names what it makes: instances, shared databases and
//! logins, managed servers' instances. Pure.

/// `orders` → `orders-db`: children are suffixed so they never clash with the
/// service's own Deployment and Service, which usually share its name.
pub fn instance_name(name: &str) -> String {
    format!("{name}-db")
}

/// `shop` + `orders` → `shop_orders`; names too long for an identifier (63
/// bytes, less the `_b` of the rotation twin) keep a readable start and a
/// hash of the whole.
pub fn shared_identifier(namespace: &str, name: &str) -> String {
    crate::engine::fit_name(&format!("{namespace}_{name}").replace('-', "_"), 61)
}

/// The name the server's instance is built under.
pub fn managed_instance(server: &str) -> String {
    format!("{server}-server")
}

/// Where clients reach a managed server, inside the cluster.
pub fn managed_host(server: &str, namespace: &str) -> String {
    format!(
        "{}.{namespace}.svc",
        instance_name(&managed_instance(server))
    )
}

/// The Secret with the managed server's administrator login.
pub fn managed_admin_secret(server: &str) -> String {
    format!("{}-admin", instance_name(&managed_instance(server)))
}
