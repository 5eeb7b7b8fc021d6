//! The `servicedb` binary: one executable for the operator, the in-pod
//! instance manager and the backup agent.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "servicedb", version, about = "A private database for every microservice")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as a YAML stream.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            for crd in servicedb::api::crds() {
                print!("---\n{}", serde_yaml::to_string(&crd)?);
            }
            Ok(())
        }
    }
}
