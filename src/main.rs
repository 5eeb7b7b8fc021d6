//! The `servicedb` binary: one executable for the operator, the in-pod
//! instance manager and the backup agent.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "servicedb",
    version,
    about = "A private database for every microservice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Operator(servicedb::run::OperatorArgs),
    /// Print every CustomResourceDefinition as a YAML stream.
    Crd,
    /// The in-pod instance manager: PID 1 of a database container.
    Instance(servicedb::instance::Args),
    /// Backup, restore, verify and delete, inside a Kubernetes Job.
    Agent(servicedb::agent::Args),
    /// The kubectl plugin (`kubectl servicedb`); see `servicedb kubectl --help`.
    Kubectl(servicedb::cli::Plugin),
    /// Copy this executable to a path (the init container of database pods).
    CopyBinary {
        /// Destination file.
        dest: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // kubectl runs a plugin by its file name: `kubectl servicedb` execs
    // `kubectl-servicedb`, a link to (or copy of) this binary.
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if invoked_as.as_deref() == Some(servicedb::cli::PLUGIN_BINARY) {
        use clap::Parser as _;
        std::process::exit(servicedb::cli::main(servicedb::cli::Plugin::parse()));
    }
    match Cli::parse().command {
        Command::Operator(args) => runtime()?.block_on(servicedb::run::run(args)),
        Command::Crd => {
            // Written, not print!ed: a closed pipe (`| head`) is an error,
            // not a panic.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for crd in servicedb::api::crds() {
                write!(out, "---\n{}", serde_yaml::to_string(&crd)?).context("writing the CRDs")?;
            }
            out.flush().context("writing the CRDs")
        }
        Command::Instance(args) => {
            servicedb::operator::init(servicedb::operator::LogFormat::Json)?;
            runtime()?.block_on(servicedb::instance::run(args))
        }
        Command::Agent(args) => std::process::exit(servicedb::agent::main(args)),
        Command::Kubectl(plugin) => std::process::exit(servicedb::cli::main(plugin)),
        Command::CopyBinary { dest } => copy_self(&dest),
    }
}

/// Worker threads' stacks. A reconcile is a deep chain of async state
/// machines; unoptimised (debug) builds give each poll a large frame, and the
/// default 2 MiB overflowed there.
const WORKER_STACK: usize = 8 << 20;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(WORKER_STACK)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn copy_self(dest: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().context("locating this executable")?;
    let tmp = dest.with_extension("tmp");
    std::fs::copy(&me, &tmp)
        .with_context(|| format!("copying {} to {}", me.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("moving into place at {}", dest.display()))?;
    Ok(())
}
