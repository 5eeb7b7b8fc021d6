//! The README is the front door: every YAML example in it is a file under
//! `examples/` (which the e2e tests apply to a real API server), every
//! `make` target it names exists, and every `servicedb` command line in a
//! shell block is accepted by the binary's own parser.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.split(fence.as_str())
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect()
}

#[test]
fn every_yaml_block_in_the_readme_is_an_example_file() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut examples = vec![];
    files(&root().join("examples"), &mut examples);
    let contents: Vec<String> = examples
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("example"))
        .collect();
    let yaml = blocks(&readme, "yaml");
    assert!(!yaml.is_empty(), "the README shows examples");
    for block in yaml {
        assert!(
            contents.iter().any(|c| c == block),
            "this README block is not a file under examples/:\n{block}"
        );
    }
}

#[test]
fn every_make_target_the_readme_names_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let makefile = std::fs::read_to_string(root().join("Makefile")).expect("Makefile");
    let targets: Vec<&str> = makefile
        .lines()
        .filter(|l| !l.starts_with(['\t', '#', '.', ' ']))
        .filter_map(|l| l.split_once(':').map(|(t, _)| t.trim()))
        .collect();
    // `make x` in prose, and `make x` lines in shell blocks.
    let mut named: Vec<String> = readme
        .split("`make ")
        .skip(1)
        .filter_map(|p| p.split('`').next())
        .map(String::from)
        .collect();
    for block in blocks(&readme, "sh") {
        named.extend(
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("make "))
                .map(String::from),
        );
    }
    assert!(named.len() >= 5, "the README names its make targets");
    for command in named {
        for target in command.split_whitespace() {
            assert!(
                targets.contains(&target),
                "the README names `make {target}`, which the Makefile lacks (has {targets:?})"
            );
        }
    }
}

#[test]
fn every_kubectl_servicedb_command_in_the_readme_parses() {
    use clap::Parser;
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut checked = 0;
    for block in blocks(&readme, "sh") {
        for line in block.lines() {
            let Some(command) = line.trim().strip_prefix("kubectl servicedb ") else {
                continue;
            };
            let command = command.split('#').next().unwrap_or_default();
            let argv: Vec<&str> = std::iter::once("kubectl-servicedb")
                .chain(command.split_whitespace())
                .collect();
            if argv.contains(&"--help") {
                continue;
            }
            if let Err(e) = servicedb::cli::Plugin::try_parse_from(&argv) {
                panic!("README: {line}\n{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "the README shows every plugin command");
}

#[test]
fn every_servicedb_command_in_the_readme_parses() {
    use clap::Parser;
    /// The subcommands of src/main.rs that take flags.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        Operator(servicedb::run::OperatorArgs),
        Instance(servicedb::instance::Args),
        Agent(servicedb::agent::Args),
    }
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut checked = 0;
    for block in blocks(&readme, "sh") {
        for line in block.replace("\\\n", " ").lines() {
            let Some(command) = line.trim().strip_prefix("servicedb ") else {
                continue;
            };
            let command = command.split('#').next().unwrap_or_default();
            // `[--flag value]` is optional: given here, so it is checked too.
            let argv: Vec<String> = std::iter::once("servicedb".to_owned())
                .chain(
                    command
                        .split_whitespace()
                        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned()),
                )
                .filter(|w| !w.is_empty())
                .collect();
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("README: {line}\n{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "the README shows the agent's commands");
}
