//! The DatabaseServer a ServiceDatabase names: it exists, runs the same
//! engine, admits the namespace, and has usable administrator credentials
//! (and CA).

use super::*;

/// The DatabaseServer a ServiceDatabase names, if it exists, admits the
/// ServiceDatabase's namespace and has usable admin credentials.
pub(super) async fn server(
    client: &Client,
    stores: Option<&Stores>,
    sdb: &ServiceDatabase,
    server_ref: &crate::api::common::ObjectRef,
    admission: Admission,
) -> Result<ServerFacts, Error> {
    use crate::api::DatabaseServer;
    use k8s_openapi::api::core::v1::Namespace;
    let own_namespace = sdb.namespace().unwrap_or_default();
    let namespace = server_ref
        .namespace
        .clone()
        .unwrap_or_else(|| own_namespace.clone());
    let field = "spec.serverRef";
    let servers: Api<DatabaseServer> = Api::namespaced(client.clone(), &namespace);
    let cached = stores.and_then(|s| cache::get(&s.servers, &namespace, &server_ref.name));
    let server = match cached {
        Some(server) => Some(server),
        None => servers
            .get_opt(&server_ref.name)
            .await
            .map_err(|source| Error::Read {
                kind: "DatabaseServer",
                source,
            })?,
    };
    let server = server.ok_or_else(|| {
        unavailable(
            field,
            "ServerNotFound",
            format!(
                "DatabaseServer {namespace}/{} does not exist",
                server_ref.name
            ),
        )
    })?;
    let name = server.name_any();
    if server.spec.engine != sdb.spec.engine {
        return Err(invalid(
            field,
            "ServerEngineMismatch",
            format!(
                "DatabaseServer {namespace}/{name} runs {}, not {}",
                server.spec.engine, sdb.spec.engine
            ),
        ));
    }
    // Only its labels matter: the metadata watch holds them.
    let cached = stores.and_then(|s| {
        s.namespaces
            .get(&ObjectRef::new(&own_namespace))
            .map(|meta| Namespace {
                metadata: meta.metadata.clone(),
                ..Default::default()
            })
    });
    let mut candidate = match cached {
        Some(found) => found,
        None => Api::<Namespace>::all(client.clone())
            .get_opt(&own_namespace)
            .await
            .map_err(|source| Error::Read {
                kind: "Namespace",
                source,
            })?
            .unwrap_or_default(),
    };
    candidate
        .metadata
        .name
        .get_or_insert_with(|| own_namespace.clone());
    if admission == Admission::Required
        && !crate::model::admission::admits(&server.spec.allowed_namespaces, &namespace, &candidate)
    {
        return Err(not_admitted(
            field,
            NOT_ADMITTED,
            format!(
                "DatabaseServer {namespace}/{name} does not admit namespace {own_namespace} (see its spec.allowedNamespaces)"
            ),
        ));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let schema_database = server
        .spec
        .schema_database
        .clone()
        .unwrap_or_else(|| DEFAULT_SCHEMA_DATABASE.to_string());
    let Some(external) = &server.spec.external else {
        // servicedb runs the server: reached at its instance's Service with
        // the administrator Secret it made.
        let spec = crate::engine::for_engine(server.spec.engine);
        let admin = secrets
            .get_opt(&managed_admin_secret(&name))
            .await
            .map_err(|source| Error::Read {
                kind: "Secret",
                source,
            })?
            .and_then(|s| text_data(&s).remove("password"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                unavailable(
                    field,
                    "ServerCredentialsMissing",
                    format!(
                        "DatabaseServer {namespace}/{name} is managed and its instance has no administrator Secret yet"
                    ),
                )
            })?;
        return Ok(ServerFacts {
            host: managed_host(&name, &namespace),
            port: spec.port(),
            admin_username: spec.admin_username().to_string(),
            admin_password: admin,
            schema_database,
            tls: Default::default(),
            engine: server.spec.engine,
            name,
            namespace,
        });
    };
    let admin = secrets
        .get_opt(&external.admin_secret_ref.name)
        .await
        .map_err(|source| Error::Read {
            kind: "Secret",
            source,
        })?;
    let key = |k: &str| {
        admin
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    let (Some(admin_username), Some(admin_password)) = (key("username"), key("password")) else {
        return Err(unavailable(
            field,
            "ServerCredentialsMissing",
            format!(
                "DatabaseServer {namespace}/{name}: its admin Secret {} is missing or lacks username/password",
                external.admin_secret_ref.name
            ),
        ));
    };
    let ca_secret = match external.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        Some(ca) => secrets
            .get_opt(&ca.name)
            .await
            .map_err(|source| Error::Read {
                kind: "Secret",
                source,
            })?
            .map(|s| s.data.unwrap_or_default()),
        None => None,
    };
    let tls =
        crate::model::server::tls_settings(external.tls.as_ref(), &ca_secret).map_err(|e| {
            unavailable(
                field,
                "ServerTlsInvalid",
                format!("DatabaseServer {namespace}/{name}: {e}"),
            )
        })?;
    Ok(ServerFacts {
        tls,
        name,
        namespace,
        engine: server.spec.engine,
        host: external.host.clone(),
        port: external.port,
        admin_username,
        admin_password,
        schema_database,
    })
}
