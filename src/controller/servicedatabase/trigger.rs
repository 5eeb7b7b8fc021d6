//! What makes a ServiceDatabase pass run, and what lets it skip work: one
//! provisioning pass per change.
//!
//! - [`relevant`]: the watch of ServiceDatabases only lets through what a
//!   user changed — the spec (its generation), the annotations (a rotation
//!   request), the deletion mark. The operator's own status writes and its
//!   finalizer do not start another pass.
//! - [`OwnWrites`](crate::controller::own_writes::OwnWrites): a child the
//!   operator just wrote comes back through its
//!   watch with the resource version the write returned; that event is not
//!   news. Anyone else's change, and any deletion, still is.
//! - [`Provisioned`]: a pass whose inputs on the shared server are those of
//!   the last successful one, a moment ago, makes no round trip to the
//!   server. The periodic re-check still does.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::api::ServiceDatabase;
use crate::engine::logins::Logins;
use crate::model::server::ServerFacts;

/// The hash of what a user can change on a ServiceDatabase that a pass
/// reacts to; the same hash means the event is the operator's own write
/// (status, finalizer) or another field nobody reads.
pub fn relevant(sdb: &ServiceDatabase) -> Option<u64> {
    let mut h = DefaultHasher::new();
    sdb.metadata.generation.hash(&mut h);
    sdb.annotations().hash(&mut h);
    sdb.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// What the last successful provisioning of each ServiceDatabase (by UID)
/// was given, and when.
#[derive(Default)]
pub struct Provisioned(Mutex<HashMap<String, (u64, Instant)>>);

impl Provisioned {
    /// Whether the server already has what `inputs` ask for: the same
    /// inputs succeeded less than `fresh` ago.
    pub fn is_current(&self, uid: &str, inputs: u64, fresh: Duration) -> bool {
        self.lock()
            .get(uid)
            .is_some_and(|(done, at)| *done == inputs && at.elapsed() < fresh)
    }

    pub fn done(&self, uid: &str, inputs: u64) {
        self.lock()
            .insert(uid.to_string(), (inputs, Instant::now()));
    }

    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hash of everything a provisioning on a shared server is given: the
/// resource as the user last changed it, the server and its credentials,
/// the logins (passwords included: it never leaves the process), and
/// whether a restore still needs the restore login.
pub fn provision_inputs(
    sdb: &ServiceDatabase,
    server: &ServerFacts,
    logins: &Logins,
    restoring: bool,
    adopt_unmarked: bool,
) -> u64 {
    let mut h = DefaultHasher::new();
    relevant(sdb).hash(&mut h);
    sdb.uid().hash(&mut h);
    (&server.namespace, &server.name, &server.host, server.port).hash(&mut h);
    (&server.admin_username, &server.admin_password).hash(&mut h);
    (&server.schema_database, server.tls.ca_pem.as_deref()).hash(&mut h);
    format!("{:?}", server.tls.mode).hash(&mut h);
    for login in [
        Some(&logins.current),
        logins.next.as_ref(),
        logins.previous.as_ref(),
    ] {
        login.map(|l| (&l.username, &l.password)).hash(&mut h);
    }
    (restoring, adopt_unmarked).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::logins::Login;
    use serde_json::json;

    fn sdb() -> ServiceDatabase {
        serde_json::from_value(json!({
            "apiVersion": "servicedb.dev/v1alpha1", "kind": "ServiceDatabase",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u1", "generation": 1,
                         "resourceVersion": "10"},
            "spec": {"engine": "Postgres", "isolation": "Database", "serverRef": {"name": "pg"},
                     "owner": {"podSelector": {"matchLabels": {"app": "orders"}}}}
        }))
        .expect("sdb")
    }

    #[test]
    fn status_and_finalizer_writes_are_not_news() {
        let before = sdb();
        let mut after = before.clone();
        after.metadata.resource_version = Some("11".into());
        after.metadata.finalizers = Some(vec![super::super::FINALIZER.into()]);
        after.status = Some(Default::default());
        assert_eq!(relevant(&before), relevant(&after));
    }

    #[test]
    fn spec_changes_rotation_requests_and_deletion_are_news() {
        let before = sdb();
        let mut spec = before.clone();
        spec.metadata.generation = Some(2);
        let mut rotate = before.clone();
        rotate.annotations_mut().insert(
            crate::model::rotation::ROTATE_ANNOTATION.into(),
            "now".into(),
        );
        let mut deleting = before.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        for changed in [spec, rotate, deleting] {
            assert_ne!(relevant(&before), relevant(&changed));
        }
    }

    #[test]
    fn provisioning_is_skipped_only_for_the_same_inputs_while_fresh() {
        let server = ServerFacts::example();
        let logins = Logins::single(Login::new("shop_orders", "pw1"));
        let inputs = provision_inputs(&sdb(), &server, &logins, false, false);
        let done = Provisioned::default();
        assert!(!done.is_current("u1", inputs, Duration::from_secs(60)));
        done.done("u1", inputs);
        assert!(done.is_current("u1", inputs, Duration::from_secs(60)));
        assert!(
            !done.is_current("u1", inputs, Duration::ZERO),
            "the periodic re-check goes to the server"
        );
        let rotated = Logins::single(Login::new("shop_orders", "pw2"));
        assert_ne!(
            inputs,
            provision_inputs(&sdb(), &server, &rotated, false, false)
        );
        let mut moved = server.clone();
        moved.port = 5433;
        assert_ne!(
            inputs,
            provision_inputs(&sdb(), &moved, &logins, false, false)
        );
        assert_ne!(
            inputs,
            provision_inputs(&sdb(), &server, &logins, true, false)
        );
        done.forget("u1");
        assert!(!done.is_current("u1", inputs, Duration::from_secs(60)));
    }
}
