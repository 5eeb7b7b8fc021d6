//! TLS towards servers reached over the network (external DatabaseServers):
//! one rustls client configuration per server, shared by the Postgres,
//! Redis and MongoDB connections, the probe and the login checks.
//!
//! `Require` encrypts without checking the certificate (libpq's
//! `sslmode=require`); `VerifyFull` checks the chain against the CA the
//! DatabaseServer names (or the system's roots) and the host name. Over TLS,
//! PostgreSQL logins require SCRAM with channel binding
//! (`channel_binding=require`), so even under `Require` an impostor never
//! receives a PostgreSQL password.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

pub use crate::api::database_server::TlsMode;

/// How to talk to one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// PEM certificates that verify the server (`ca.crt` of the CA Secret).
    pub ca_pem: Option<String>,
}

/// A configuration that cannot be used; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Disable
    }

    /// The rustls configuration, `None` for plain TCP.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?;
        let config = match self.mode {
            TlsMode::Disable => return Ok(None),
            TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
            TlsMode::VerifyFull => builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth(),
        };
        Ok(Some(config))
    }

    /// The CA's certificates, or the system's roots when none is given.
    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                let certs = ca_certificates(pem)?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError(format!("the CA certificate is not usable: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsError(
                        "no CA certificate given and none found on the system".into(),
                    ));
                }
            }
        }
        Ok(roots)
    }
}

/// Parses PEM certificates; at least one must be there.
pub fn ca_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("ca.crt is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("ca.crt holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// How long a Postgres connection may take, TCP, TLS and login together,
/// when the config names no `connect_timeout` (which tokio-postgres applies
/// to the TCP connect alone: a server that accepts and never answers would
/// hold the connection forever).
pub const POSTGRES_CONNECT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A Postgres connection, plain or TLS (the server must then accept TLS:
/// `sslmode=require` semantics, no fallback to plain text). The whole
/// handshake ends within the config's `connect_timeout`
/// ([`POSTGRES_CONNECT_DEADLINE`] without one).
pub async fn postgres(
    config: &mut tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<tokio_postgres::Client, PostgresConnectError> {
    let deadline = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(POSTGRES_CONNECT_DEADLINE);
    let connect = async {
        match tls.client_config().map_err(PostgresConnectError::Tls)? {
            None => spawned(config.connect(tokio_postgres::NoTls).await),
            Some(rustls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                // SCRAM bound to this TLS channel, nothing else: a server
                // that asks for the password in clear text or as MD5, or
                // that cannot bind (an impostor relaying to the real server
                // under another certificate), gets no password, whatever
                // `Require` accepted as a certificate.
                config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
                spawned(config.connect(connector).await)
            }
        }
        .map_err(PostgresConnectError::Postgres)
    };
    tokio::time::timeout(deadline, connect)
        .await
        .map_err(|_| PostgresConnectError::Timeout(deadline))?
}

/// Server-side limits for the operator's own sessions: a statement that
/// runs longer than `statement` or waits for a lock longer than `lock` is
/// cancelled by the server (`statement_timeout`, `lock_timeout`), so a
/// neighbour's long transaction cannot hold a reconcile.
pub fn bound_statements(
    config: &mut tokio_postgres::Config,
    statement: std::time::Duration,
    lock: std::time::Duration,
) {
    let options = format!(
        "-c statement_timeout={} -c lock_timeout={}",
        statement.as_millis(),
        lock.as_millis()
    );
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {options}"),
        _ => options,
    };
    config.options(&options);
}

/// The client of a new connection, whose connection task runs until the
/// client is dropped.
fn spawned<S, T>(
    connected: Result<
        (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
        tokio_postgres::Error,
    >,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected?;
    tokio::spawn(connection);
    Ok(client)
}

#[derive(Debug, thiserror::Error)]
pub enum PostgresConnectError {
    #[error(transparent)]
    Tls(TlsError),
    #[error("{}", crate::engine::postgres_users::describe(.0))]
    Postgres(tokio_postgres::Error),
    /// No complete handshake (TCP, TLS, login) within the deadline.
    #[error("no answer within {}s (connect, TLS and login)", .0.as_secs())]
    Timeout(std::time::Duration),
}

/// A Redis connection logged in as `username`, plain or TLS.
pub async fn redis(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    tls: &TlsSettings,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let login = redis::RedisConnectionInfo::default()
        .set_username(username)
        .set_password(password);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    redis_client(host, port, login, tls)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A Redis client for `host:port` with `settings` (login, database), plain
/// or TLS.
pub fn redis_client(
    host: &str,
    port: u16,
    settings: redis::RedisConnectionInfo,
    tls: &TlsSettings,
) -> redis::RedisResult<redis::Client> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let addr = match tls.mode {
        TlsMode::Disable => ConnectionAddr::Tcp(host.to_string(), port),
        mode => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: mode == TlsMode::Require,
            tls_params: None,
        },
    };
    let info = addr.into_connection_info()?.set_redis_settings(settings);
    match (&tls.mode, &tls.ca_pem) {
        (TlsMode::VerifyFull, Some(ca)) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone().into_bytes()),
            },
        ),
        _ => redis::Client::open(info),
    }
}

/// The MongoDB driver's TLS options. The driver reads a CA from a file, so
/// the PEM is written to a private file named after its content.
pub fn mongodb(tls: &TlsSettings) -> Result<Option<mongodb::options::Tls>, TlsError> {
    use mongodb::options::{Tls, TlsOptions};
    let options = match tls.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => TlsOptions::builder()
            .allow_invalid_certificates(true)
            .build(),
        TlsMode::VerifyFull => {
            let ca_file_path = match &tls.ca_pem {
                Some(pem) => {
                    ca_certificates(pem)?;
                    Some(write_ca_file(pem)?)
                }
                None => None,
            };
            TlsOptions::builder().ca_file_path(ca_file_path).build()
        }
    };
    Ok(Some(Tls::Enabled(options)))
}

fn write_ca_file(pem: &str) -> Result<std::path::PathBuf, TlsError> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hash = Sha256::digest(pem.as_bytes());
    let name: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join("servicedb-ca");
    std::fs::create_dir_all(&dir).map_err(|e| TlsError(format!("CA file: {e}")))?;
    let path = dir.join(format!("{name}.pem"));
    if !path.exists() {
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| TlsError(format!("CA file: {e}")))?;
        file.write_all(pem.as_bytes())
            .map_err(|e| TlsError(format!("CA file: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| TlsError(format!("CA file: {e}")))?;
    }
    Ok(path)
}

/// `Require`: the channel is encrypted and the handshake signatures are
/// checked, but the certificate itself is not (no CA to check it against).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_is_named() {
        let bad = TlsSettings {
            mode: TlsMode::VerifyFull,
            ca_pem: Some("not a certificate".into()),
        };
        let err = bad.client_config().expect_err("no PEM");
        assert!(err.0.contains("ca.crt"), "{err}");
        assert!(
            TlsSettings::default()
                .client_config()
                .expect("plain")
                .is_none()
        );
        let require = TlsSettings {
            mode: TlsMode::Require,
            ca_pem: None,
        };
        assert!(require.client_config().expect("require").is_some());
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password("never-sent")
            .connect_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = postgres(&mut config, &TlsSettings::default())
            .await
            .expect_err("no answer");
        assert!(matches!(err, PostgresConnectError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn statements_are_bounded_by_the_server() {
        let mut config = tokio_postgres::Config::new();
        config.options("-c search_path=app");
        bound_statements(&mut config, Duration::from_secs(20), Duration::from_secs(5));
        assert_eq!(
            config.get_options(),
            Some("-c search_path=app -c statement_timeout=20000 -c lock_timeout=5000")
        );
    }
}
