//! `servicedb instance`: the in-pod instance manager, PID 1 of a dedicated
//! database container (the pattern CloudNativePG uses).
//!
//! It initialises the data directory on first start, writes the server's
//! configuration, starts and supervises the server, creates the
//! administrator's and the service's users from the mounted Secrets and keeps
//! them in step when the Secrets change, answers the kubelet's probes, and
//! shuts the server down cleanly on SIGTERM. The pipeline for one engine:
//!
//! prepare data directory → start server → (sync users every interval)
//! → wait for: a signal (clean shutdown, exit 0) or the server's death (exit
//! non-zero, so that the kubelet restarts the container).
//!
//! `supervise` is that pipeline for every engine; an engine's folder brings
//! what differs (its `InstanceManager`): its checks, files and command line,
//! its stop signals, and its user sync (`sync::UserSync`).
//!
//! Contract with the pod:
//! - `<admin-secret-dir>/{username,password}`: the administrator; an
//!   optional `previous-password` is tried when `password` is rejected (a
//!   rotation that happened while the instance was down).
//! - `<app-secret-dir>/{username,password,database}`: the service.
//! - Secret files are re-read every `--sync-interval`; a trailing newline is
//!   ignored.
//! - `<data-dir>/pgdata` is the data directory, `<data-dir>/run` the socket
//!   directory.
//! - `GET :<status-port>/healthz` and `/readyz` for the probes.

mod files;
mod mongodb;
mod postgres;
mod process;
mod redis;
mod secrets;
mod signals;
mod status;
mod sync;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use process::{Server, Stop, describe};
use secrets::AdminCredentials;
use signals::Signals;
use status::Health;

/// Database engines the instance manager can run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Postgres,
    Redis,
    #[value(name = "mongodb")]
    MongoDB,
}

/// `servicedb instance`: run and supervise a database server in this container.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Database engine to run.
    #[arg(long, value_enum)]
    pub engine: EngineKind,
    /// Persistent directory (the volume): holds the data directory and the
    /// server's socket directory.
    #[arg(long, default_value = "/var/lib/servicedb")]
    pub data_dir: PathBuf,
    /// Mounted Secret with the administrator's `username` and `password`.
    #[arg(long, default_value = "/etc/servicedb/admin")]
    pub admin_secret_dir: PathBuf,
    /// Mounted Secret with the service's `username`, `password` and `database`.
    #[arg(long, default_value = "/etc/servicedb/app")]
    pub app_secret_dir: PathBuf,
    /// The service's owner identity (Postgres role, MongoDB user); its
    /// rotation twin is `<owner>_b`. Defaults to the app Secret's `username`.
    #[arg(long)]
    pub service_owner: Option<String>,
    /// TCP port the database server listens on.
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Addresses the database server listens on (`*` for all).
    #[arg(long, default_value = "*")]
    pub listen_address: String,
    /// Port of the HTTP server answering /healthz and /readyz.
    #[arg(long, default_value_t = 8000)]
    pub status_port: u16,
    /// Directory holding the engine's binaries (for PostgreSQL: `postgres`
    /// and `initdb`); by default searched in PATH, then in the newest
    /// /usr/lib/postgresql/*/bin.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Redis: the service user may run Lua scripts and functions (EVAL,
    /// FCALL, SCRIPT LOAD, FUNCTION LOAD…), still on its own keys only.
    #[arg(long)]
    pub redis_scripting: bool,
    /// How often the Secret files are re-read and the server's health is checked
    /// (`5s`, `500ms`, `1m`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sync_interval: Duration,
}

/// Runs the instance manager until a signal stops it (`Ok`) or the server
/// dies (`Err`).
///
/// Call it on the thread that owns the runtime (`Runtime::block_on`), not
/// in a spawned task: the server is started with a parent-death signal,
/// which Linux ties to the thread that forked it.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.redis_scripting && args.engine != EngineKind::Redis {
        bail!("--redis-scripting is for --engine redis only");
    }
    match args.engine {
        EngineKind::Postgres => supervise::<postgres::Postgres>(&args).await,
        EngineKind::Redis => supervise::<redis::Redis>(&args).await,
        EngineKind::MongoDB => supervise::<mongodb::MongoDB>(&args).await,
    }
}

/// What an engine brings to [`supervise`]; the rest is shared.
trait InstanceManager: Sized {
    /// The server process, as the log names it.
    const SERVER: &'static str;
    /// Why the engine must not run as root.
    const NOT_AS_ROOT: &'static str;
    /// Sent by the kernel should the instance manager die without stopping
    /// the server (SIGKILL, a crash).
    const ON_PARENT_DEATH: Signal;
    /// The clean stop; SIGKILL follows the last step's grace. Keep the pod's
    /// terminationGracePeriodSeconds above the sum plus a few seconds.
    const STOP: &'static [Stop];
    /// What an unclean stop means for the next start.
    const AFTER_UNCLEAN_STOP: &'static str;

    /// Finds the server's binaries and checks the flags and the admin's
    /// credentials: quick checks, done before the status port is bound.
    async fn new(args: &Args, admin: AdminCredentials) -> anyhow::Result<Self>;
    /// Writes what the server needs (data directory, configuration); a
    /// signal interrupts it.
    async fn prepare(&self) -> anyhow::Result<()>;
    /// The server's command line.
    fn command(&self) -> tokio::process::Command;
    /// The user sync, spawned once the server runs.
    fn sync(&self, args: &Args, health: Arc<Health>) -> impl Future<Output = ()> + Send + 'static;
}

async fn supervise<E: InstanceManager>(args: &Args) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        bail!(
            "refusing to run as root: {}; run the container as a non-root user \
             (securityContext.runAsUser, e.g. 999)",
            E::NOT_AS_ROOT
        );
    }
    if args.listen_address.chars().any(char::is_control) {
        bail!("--listen-address must not contain control characters");
    }
    let mut signals = Signals::new()?;
    // Every engine needs the admin to start: initdb's superuser, the ACL
    // file, the keyfile.
    let admin = secrets::read_admin(&args.admin_secret_dir)
        .await
        .context("cannot read the admin Secret")?;
    let engine = E::new(args, admin).await?;

    let health = Arc::new(Health::default());
    let listener = status::bind(args.status_port)
        .await
        .with_context(|| format!("cannot listen on status port {}", args.status_port))?;
    let mut status_server = tokio::spawn(status::serve(listener, health.clone()));

    tokio::select! {
        prepared = engine.prepare() => prepared?,
        received = signals.recv() => {
            info!(signal = received, "stopped before the server was started");
            return Ok(());
        }
    }
    let mut server = Server::spawn(E::SERVER, engine.command(), E::ON_PARENT_DEATH)?;
    health.set_running(true);
    let sync = tokio::spawn(engine.sync(args, health.clone()));

    let outcome = tokio::select! {
        exited = server.wait() => {
            health.set_running(false);
            sync.abort();
            let status = exited.with_context(|| format!("cannot wait for {}", E::SERVER))?;
            let status = describe(status);
            error!(%status, "{} exited unexpectedly", E::SERVER);
            return Err(anyhow!("{} exited unexpectedly ({status})", E::SERVER));
        }
        received = signals.recv() => {
            info!(signal = received, "shutting down");
            Ok(())
        }
        served = &mut status_server => {
            let reason = match served {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            error!(%reason, "status server failed; shutting down");
            Err(anyhow!("status server failed: {reason}"))
        }
    };

    sync.abort();
    health.set_running(false);
    let status = server
        .stop(E::STOP)
        .await
        .with_context(|| format!("cannot stop {}", E::SERVER))?;
    if status.success() {
        info!("{} stopped", E::SERVER);
    } else {
        let status = describe(status);
        warn!(%status, "{} did not stop cleanly; {}", E::SERVER, E::AFTER_UNCLEAN_STOP);
    }
    status_server.abort();
    outcome
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 5s or 500ms"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if duration.is_zero() {
        return Err("the interval must be positive".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "0s", "5 s", "-1s", "1d", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_match_the_pod_contract() {
        let args = Cli::try_parse_from(["x", "--engine", "postgres"])
            .expect("parses")
            .args;
        assert_eq!(args.engine, EngineKind::Postgres);
        assert_eq!(args.data_dir, PathBuf::from("/var/lib/servicedb"));
        assert_eq!(args.admin_secret_dir, PathBuf::from("/etc/servicedb/admin"));
        assert_eq!(args.app_secret_dir, PathBuf::from("/etc/servicedb/app"));
        assert_eq!(args.port, 5432);
        assert_eq!(args.listen_address, "*");
        assert_eq!(args.status_port, 8000);
        assert_eq!(args.bin_dir, None);
        assert_eq!(args.sync_interval, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["x", "--engine", "oracle"]).is_err());
        assert!(Cli::try_parse_from(["x"]).is_err());
    }
}
