//! Connections: a direct client (TLS as the server asks), `hello`, a
//! command run with its error scrubbed, the replica set's initiation.

use super::*;

/// Whom to log in as: a user and the database it is defined on.
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub source: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

/// A client for one server, connected to directly (no replica set
/// discovery), logging in with SCRAM-SHA-256 if `login` is given. Connects
/// lazily: the first command tells whether the server and the login work.
pub fn direct_client(
    host: &str,
    port: u16,
    login: Option<Login<'_>>,
    timeout: Duration,
) -> Result<Client, UserError> {
    direct_client_tls(host, port, login, timeout, None)
}

/// [`direct_client`] with the driver's TLS options (external servers).
pub fn direct_client_tls(
    host: &str,
    port: u16,
    login: Option<Login<'_>>,
    timeout: Duration,
    tls: Option<mongodb::options::Tls>,
) -> Result<Client, UserError> {
    let credential = login.map(|login| {
        Credential::builder()
            .username(login.user.to_owned())
            .password(login.password.to_owned())
            .source(login.source.to_owned())
            .mechanism(AuthMechanism::ScramSha256)
            .build()
    });
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: host.to_owned(),
            port: Some(port),
        }])
        .direct_connection(true)
        .credential(credential)
        .connect_timeout(timeout)
        .server_selection_timeout(timeout)
        .app_name("servicedb".to_owned())
        .tls(tls)
        .build();
    let secret = login.map_or("", |login| login.password);
    Client::with_options(options).map_err(|error| UserError::from_driver("connect", &error, secret))
}

/// `hello` on `admin`: allowed without logging in, so it tells whether the
/// server is up and what its replica set state is.
pub async fn hello(client: &Client) -> Result<Document, UserError> {
    run(client, ADMIN_DATABASE, "hello", doc! { "hello": 1 }, "").await
}

pub(super) async fn run(
    client: &Client,
    db: &str,
    action: &'static str,
    command: Document,
    secret: &str,
) -> Result<Document, UserError> {
    client
        .database(db)
        .run_command(command)
        .await
        .map_err(|error| UserError::from_driver(action, &error, secret))
}

/// `replSetInitiate`; `false` if the replica set was already initiated.
pub async fn initiate_replica_set(client: &Client, host: &str) -> Result<bool, UserError> {
    match run(
        client,
        ADMIN_DATABASE,
        "replSetInitiate",
        repl_set_initiate_command(host),
        "",
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(ALREADY_INITIALIZED) => Ok(false),
        Err(error) => Err(error),
    }
}
