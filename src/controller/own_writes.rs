//! Which writes are the operator's own: a child the operator just wrote
//! comes back through its watch with the resource version the write
//! returned; that event is not news. Anyone else's change, and any deletion,
//! still is.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::{Resource, ResourceExt};

/// Resource versions of the children the operator wrote last, by kind,
/// namespace and name.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<(&'static str, String, String), String>>);

impl OwnWrites {
    /// Remembers that the operator's write left `obj` at its resource version.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let (Some(namespace), Some(version)) = (obj.namespace(), obj.resource_version()) else {
            return;
        };
        self.lock().insert(
            (K::kind(&()).into_static(), namespace, obj.name_any()),
            version,
        );
    }

    /// Whether a watch event shows `obj` as the operator's last write left
    /// it. Any other version (someone's change, a deletion) is news, and is
    /// forgotten once seen.
    pub fn is_own<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let key = (
            K::kind(&()).into_static(),
            obj.namespace().unwrap_or_default(),
            obj.name_any(),
        );
        let mut map = self.lock();
        match (map.get(&key), obj.resource_version()) {
            (Some(ours), Some(seen)) if *ours == seen => true,
            (Some(_), _) => {
                map.remove(&key);
                false
            }
            (None, _) => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String, String), String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `Cow<'static, str>` kinds of the typed resources are always borrowed.
trait IntoStatic {
    fn into_static(self) -> &'static str;
}

impl IntoStatic for std::borrow::Cow<'static, str> {
    fn into_static(self) -> &'static str {
        match self {
            std::borrow::Cow::Borrowed(s) => s,
            std::borrow::Cow::Owned(s) => Box::leak(s.into_boxed_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;

    fn secret(version: &str) -> Secret {
        serde_json::from_value(
            json!({"metadata": {"name": "orders-db", "namespace": "shop",
            "resourceVersion": version}}),
        )
        .expect("secret")
    }

    #[test]
    fn only_the_version_the_operator_wrote_is_its_own() {
        let writes = OwnWrites::default();
        assert!(!writes.is_own(&secret("5")), "nothing written yet");
        writes.wrote(&secret("5"));
        assert!(writes.is_own(&secret("5")));
        assert!(writes.is_own(&secret("5")), "seen again (a relist)");
        assert!(!writes.is_own(&secret("6")), "someone else's change");
        assert!(!writes.is_own(&secret("5")), "forgotten once changed");
    }

    #[test]
    fn another_kind_of_the_same_name_is_not_the_operators_write() {
        let writes = OwnWrites::default();
        writes.wrote(&secret("5"));
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            json!({"metadata": {"name": "orders-db", "namespace": "shop", "resourceVersion": "5"}}),
        )
        .expect("service");
        assert!(!writes.is_own(&service));
    }
}
