//! `managed` DatabaseServers: servicedb runs the shared server itself, built
//! exactly as a dedicated instance is (the same dereference, validation,
//! builders and apply), under the name `<server>-server`: a StatefulSet
//! `<server>-server-db`, its Services, PDB, administrator Secret and a
//! NetworkPolicy that admits the namespaces of `spec.allowedNamespaces`
//! (instead of one service's pods) and the operator.
//!
//! The instance manager also keeps the instance's own service login
//! (`<server>_server`, Secret `<server>-server-db`); nothing uses it, the
//! databases placed on the server get logins of their own from the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Client, Resource, ResourceExt};

use super::validate::{Invalid, Target};
use crate::api::DatabaseServer;
use crate::api::database_class::ClassMonitoringSpec;
use crate::api::database_server::NamespacesFrom;
use crate::build::{Credentials, OperatorFacts};
use crate::controller::{apply, dereference};
use crate::engine::logins::Logins;
use crate::model::managed::{instance_of, managed_host};
use crate::model::{database as validate, rotation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(Invalid),
    #[error("reading the managed server's surroundings: {0}")]
    Dereference(dereference::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
}

/// Builds and applies the server's instance; the target to probe.
pub async fn ensure(
    client: &Client,
    server: &DatabaseServer,
    facts: &OperatorFacts,
) -> Result<Target, Error> {
    let Some(sdb) = instance_of(server) else {
        return Err(Error::Invalid(Invalid {
            field: "spec.managed",
            reason: "InvalidSpec",
            message: "spec.managed cannot be read as an instance".into(),
        }));
    };
    let found = match dereference::dereference(client, &sdb).await {
        Ok(found) => found,
        Err(
            dereference::Error::Invalid(e)
            | dereference::Error::Unavailable(e)
            | dereference::Error::NotAdmitted(e),
        ) => return Err(Error::Invalid(managed_field(e))),
        Err(e) => return Err(Error::Dereference(e)),
    };
    // The class's backups and monitoring are a service's; a managed server's
    // instance never took them (and backs up no single service's data). Its
    // monitoring is the server's own `managed.monitoring`, with the class's
    // exporter image.
    let mut class = found.class.clone();
    class.spec.backup = None;
    class.spec.monitoring = class.spec.monitoring.map(|m| ClassMonitoringSpec {
        exporter_image: m.exporter_image,
        ..Default::default()
    });
    let db =
        validate::validate(&sdb, &class, None).map_err(|e| Error::Invalid(managed_field(e)))?;
    let Some(owner) = server.controller_owner_ref(&()) else {
        return Err(Error::Invalid(Invalid {
            field: "metadata",
            reason: "NoUid",
            message: "object has no uid".into(),
        }));
    };
    // The instance's own login never rotates.
    let policy = rotation::Policy {
        owner: &db.username,
        same_user: false,
        rotate_every: None,
        grace: rotation::DEFAULT_GRACE,
        request: None,
    };
    let plan = rotation::plan(
        &found.recorded,
        &policy,
        k8s_openapi::jiff::Timestamp::now(),
        &mut crate::password::generate,
    );
    let credentials = Credentials {
        admin_password: found.admin_password.clone(),
        logins: Logins::single(plan.logins.current.clone()),
        annotations: plan.annotations(),
    };
    let mut children = crate::build::children(&db, &credentials, facts, &owner, None);
    if let Some(instance) = children.instance.as_mut() {
        admit_allowed_namespaces(&mut instance.network_policy, server);
    }
    // A managed server's status keeps no monitoring condition: always
    // looked at.
    let applied = apply::apply(client, None, &db.namespace, &db.name, children, true).await?;
    if applied.written > 0 || applied.deleted > 0 {
        tracing::info!(
            written = applied.written,
            deleted = applied.deleted,
            "managed server's instance updated"
        );
    }
    let namespace = server.namespace().unwrap_or_default();
    Ok(Target {
        engine: server.spec.engine,
        host: managed_host(&server.name_any(), &namespace),
        port: u16::try_from(db.engine_spec.port()).unwrap_or(0),
        tls: Default::default(),
        username: db.engine_spec.admin_username().to_string(),
        password: found.admin_password,
    })
}

/// A condition about the instance names the server's own field.
fn managed_field(mut e: Invalid) -> Invalid {
    e.message = format!("{}: {}", e.field, e.message);
    e.field = "spec.managed";
    e
}

/// The database port is open to the pods of the admitted namespaces (and,
/// as built, the operator), not to one service's pods.
pub fn admit_allowed_namespaces(policy: &mut NetworkPolicy, server: &DatabaseServer) {
    let namespace = server.namespace().unwrap_or_default();
    let peer = match server.spec.allowed_namespaces.from {
        NamespacesFrom::Same => NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    namespace,
                )])),
                ..Default::default()
            }),
            ..Default::default()
        },
        NamespacesFrom::All => NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        },
        NamespacesFrom::Selector => NetworkPolicyPeer {
            namespace_selector: server.spec.allowed_namespaces.selector.clone(),
            ..Default::default()
        },
    };
    if let Some(rule) = policy
        .spec
        .as_mut()
        .and_then(|s| s.ingress.as_mut())
        .and_then(|rules| rules.first_mut())
        && let Some(from) = rule.from.as_mut()
        && let Some(first) = from.first_mut()
    {
        // The first peer is the owner's pods; the operator's stays.
        *first = peer;
    }
}
