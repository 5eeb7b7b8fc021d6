//! Step 1 of the ServiceDatabase pipeline (async, reads the cluster): the
//! class, the existing Secrets (so passwords stay stable across reconciles
//! and operator restarts), the StatefulSet's readiness, and for shared
//! isolation the DatabaseServer, its admin credentials and whether it admits
//! this namespace.

mod server;
use server::*;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use kube::runtime::reflector::ObjectRef;

use super::apply::{Owner, belongs_to_another};
use super::cache::{self, Cache, Lookup, Stores};
use crate::api::{DatabaseClass, ServiceDatabase};
use crate::build::{LABEL_MANAGED_BY, MANAGED_BY, instance_label};
use crate::model::database::Invalid;
use crate::model::managed::{managed_admin_secret, managed_host};
use crate::model::naming::instance_name;
use crate::model::rotation::Recorded;
use crate::model::server::{DEFAULT_SCHEMA_DATABASE, ServerFacts};

/// What the cluster says about a ServiceDatabase's surroundings.
pub struct Dereferenced {
    pub class: DatabaseClass,
    /// The instance's administrator password (kept, or freshly generated).
    pub admin_password: String,
    /// What the credentials Secret records about the service's logins.
    pub recorded: Recorded,
    /// Ready replicas of the instance's StatefulSet (0 when it doesn't exist).
    pub ready_replicas: i32,
    /// The shared server named by `spec.serverRef`, when there is one.
    pub server: Option<ServerFacts>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind}: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The class is missing or ambiguous, or a Secret name is taken: the user
    /// must change something.
    #[error(transparent)]
    Invalid(Invalid),
    /// The shared server, its administrator credentials or its CA are not
    /// there or not usable (yet): objects this resource does not own and is
    /// not told about by a watch; waited for.
    #[error(transparent)]
    Unavailable(Invalid),
    /// The shared server does not admit the resource's namespace (any more).
    #[error(transparent)]
    NotAdmitted(Invalid),
}

/// The reason of the condition when the DatabaseServer does not admit the
/// ServiceDatabase's namespace (any more).
pub const NOT_ADMITTED: &str = "NamespaceNotAllowed";

/// Whether the DatabaseServer must admit the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// To place or keep a database there.
    Required,
    /// To disable or drop what the service already has there, once the
    /// namespace is no longer admitted.
    Ignored,
}

pub async fn dereference(client: &Client, sdb: &ServiceDatabase) -> Result<Dereferenced, Error> {
    dereference_with(client, None, sdb, Admission::Required).await
}

/// As [`dereference`], reading what the controller's stores hold from them
/// (see [`super::cache`]).
pub async fn dereference_cached(
    client: &Client,
    cache: &Cache,
    sdb: &ServiceDatabase,
) -> Result<Dereferenced, Error> {
    let stores = cache.stores().await;
    dereference_with(client, stores, sdb, Admission::Required).await
}

/// As [`dereference`], whether or not the server still admits the
/// namespace: for what must happen to the service's logins and data there
/// when it does not (disabled; dropped on `deletionPolicy: Delete`).
pub async fn dereference_ignoring_admission(
    client: &Client,
    sdb: &ServiceDatabase,
) -> Result<Dereferenced, Error> {
    dereference_with(client, None, sdb, Admission::Ignored).await
}

async fn dereference_with(
    client: &Client,
    stores: Option<&Stores>,
    sdb: &ServiceDatabase,
    admission: Admission,
) -> Result<Dereferenced, Error> {
    let namespace = sdb.namespace().unwrap_or_default();
    let name = sdb.name_any();
    let class = class(client, stores, sdb).await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret_name = sdb
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.secret_name.clone())
        .unwrap_or_else(|| instance_name(&name));
    let admin_name = format!("{}-admin", instance_name(&name));
    let uid = sdb.uid().unwrap_or_default();
    let owner = Owner {
        instance: &name,
        uid: &uid,
    };
    let app = owned_secret(
        &secrets,
        stores,
        &secret_name,
        owner,
        "spec.credentials.secretName",
    )
    .await?;
    let admin = owned_secret(&secrets, stores, &admin_name, owner, "metadata.name")
        .await?
        .and_then(|secret| text_data(&secret).remove("password"))
        .filter(|p| !p.is_empty());
    let recorded = app
        .map(|secret| Recorded::from_secret(&text_data(&secret), secret.annotations()))
        .unwrap_or_default();

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let cached = stores.map(|s| cache::get(&s.statefulsets, &namespace, &instance_name(&name)));
    let statefulset = match cached {
        Some(Some(found)) => Some(found),
        // A database on a shared server has no StatefulSet: one of that
        // name that servicedb does not label is none of its business.
        Some(None) if sdb.spec.server_ref.is_some() => None,
        _ => statefulsets
            .get_opt(&instance_name(&name))
            .await
            .map_err(|source| Error::Read {
                kind: "StatefulSet",
                source,
            })?,
    };
    if let Some(holder) = statefulset
        .as_ref()
        .and_then(|s| belongs_to_another(&s.metadata, owner))
    {
        return Err(child_conflict(
            "StatefulSet",
            &instance_name(&name),
            &holder,
            "metadata.name",
        ));
    }
    let ready_replicas = statefulset
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);

    let server = match &sdb.spec.server_ref {
        Some(server_ref) => Some(server(client, stores, sdb, server_ref, admission).await?),
        None => None,
    };

    Ok(Dereferenced {
        server,
        class,
        admin_password: admin.unwrap_or_else(crate::password::generate),
        recorded,
        ready_replicas,
    })
}

/// The named class, or the engine's single default class.
async fn class(
    client: &Client,
    stores: Option<&Stores>,
    sdb: &ServiceDatabase,
) -> Result<DatabaseClass, Error> {
    let classes: Api<DatabaseClass> = Api::all(client.clone());
    if let Some(stores) = stores {
        // What the store cannot settle (no such class, no single default:
        // maybe one made a moment ago) is asked of the API server.
        let cached = match &sdb.spec.class_name {
            Some(name) => stores
                .classes
                .get(&ObjectRef::new(name))
                .map(|c| (*c).clone()),
            None => {
                let mut defaults: Vec<DatabaseClass> = stores
                    .classes
                    .state()
                    .iter()
                    .filter(|c| c.spec.engine == sdb.spec.engine && c.spec.default)
                    .map(|c| (**c).clone())
                    .collect();
                (defaults.len() == 1).then(|| defaults.remove(0))
            }
        };
        if let Some(class) = cached {
            return Ok(class);
        }
    }
    if let Some(name) = &sdb.spec.class_name {
        return classes
            .get_opt(name)
            .await
            .map_err(|source| Error::Read {
                kind: "DatabaseClass",
                source,
            })?
            .ok_or_else(|| {
                Error::Invalid(Invalid {
                    field: "spec.className",
                    reason: "ClassNotFound",
                    message: format!("DatabaseClass {name} does not exist"),
                })
            });
    }
    let all = classes
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            kind: "DatabaseClass",
            source,
        })?;
    let mut defaults: Vec<DatabaseClass> = all
        .items
        .into_iter()
        .filter(|c| c.spec.engine == sdb.spec.engine && c.spec.default)
        .collect();
    match defaults.len() {
        1 => Ok(defaults.remove(0)),
        0 => Err(Error::Invalid(Invalid {
            field: "spec.className",
            reason: "NoDefaultClass",
            message: format!(
                "no default DatabaseClass for engine {}: name one in spec.className, or ask the platform team to mark one default",
                sdb.spec.engine
            ),
        })),
        _ => Err(Error::Invalid(Invalid {
            field: "spec.className",
            reason: "AmbiguousDefaultClass",
            message: format!(
                "several default DatabaseClasses for engine {} ({}): name one in spec.className",
                sdb.spec.engine,
                defaults
                    .iter()
                    .map(|c| c.name_any())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })),
    }
}

/// A Secret's data as text (keys that are not UTF-8 are left out).
fn text_data(secret: &Secret) -> std::collections::BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// A Secret this ServiceDatabase owns, if it exists. A Secret of that name
/// that servicedb does not manage for this resource, or that another
/// resource controls, is never taken over.
async fn owned_secret(
    secrets: &Api<Secret>,
    stores: Option<&Stores>,
    secret: &str,
    owner: Owner<'_>,
    field: &'static str,
) -> Result<Option<Secret>, Error> {
    let namespace = secrets.namespace().unwrap_or_default();
    let cached = match stores.map(|s| cache::secret(s, namespace, secret)) {
        Some(Lookup::Found(found)) => Some(found),
        Some(Lookup::Absent) => return Ok(None),
        Some(Lookup::Unknown) | None => None,
    };
    let found = match cached {
        Some(found) => found,
        None => {
            let Some(found) = secrets
                .get_opt(secret)
                .await
                .map_err(|source| Error::Read {
                    kind: "Secret",
                    source,
                })?
            else {
                return Ok(None);
            };
            found
        }
    };
    let labels = found.labels();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY)
        || instance_label(labels).map(String::as_str) != Some(owner.instance)
    {
        return Err(Error::Invalid(Invalid {
            field,
            reason: "SecretConflict",
            message: format!(
                "Secret {secret} exists and is not managed by servicedb for {}; choose another name or remove it",
                owner.instance
            ),
        }));
    }
    if let Some(holder) = belongs_to_another(&found.metadata, owner) {
        return Err(child_conflict("Secret", secret, &holder, field));
    }
    Ok(Some(found))
}

/// A child this resource would build is another resource's (a managed
/// DatabaseServer `x` builds its instance under the name `x-server`).
fn child_conflict(kind: &str, name: &str, holder: &str, field: &'static str) -> Error {
    invalid(
        field,
        "ChildConflict",
        format!(
            "{kind} {name} is {holder}: this resource's objects would have its name; rename this resource"
        ),
    )
}

fn invalid(field: &'static str, reason: &'static str, message: String) -> Error {
    Error::Invalid(Invalid {
        field,
        reason,
        message,
    })
}

fn not_admitted(field: &'static str, reason: &'static str, message: String) -> Error {
    Error::NotAdmitted(Invalid {
        field,
        reason,
        message,
    })
}

fn unavailable(field: &'static str, reason: &'static str, message: String) -> Error {
    Error::Unavailable(Invalid {
        field,
        reason,
        message,
    })
}
