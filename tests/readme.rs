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

/// The backticked words of the README (inline code, not blocks).
fn inline_code(text: &str) -> Vec<String> {
    let mut out = vec![];
    let prose: String = text.split("```").step_by(2).collect::<Vec<_>>().join("\n");
    for (i, part) in prose.split('`').enumerate() {
        if i % 2 == 1 && !part.contains(char::is_whitespace) {
            out.push(part.to_string());
        }
    }
    out
}

/// Whether `path` (dot-separated; `*` matches any key) leads somewhere in
/// a YAML document.
fn yaml_has(doc: &serde_yaml::Value, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let Some(map) = doc.as_mapping() else {
        return false;
    };
    if *first == "*" {
        return !map.is_empty();
    }
    map.get(*first).is_some_and(|v| yaml_has(v, rest))
}

/// Whether a CRD's schema has the field path (`spec.credentials.format`).
fn schema_has(schema: &serde_yaml::Value, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let props = &schema["properties"];
    let items = &schema["items"]["properties"];
    [props, items]
        .into_iter()
        .filter_map(|p| p.get(*first))
        .any(|field| schema_has(field, rest) || schema_has(&field["items"], rest))
}

fn crd_schemas() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(root().join("crds/servicedb.dev.yaml")).expect("crds");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a CRD"))
        .flat_map(|crd: serde_yaml::Value| {
            crd["spec"]["versions"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v["schema"]["openAPIV3Schema"].clone())
        })
        .collect()
}

#[test]
fn every_field_and_chart_value_the_readme_names_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/servicedb/values.yaml")).expect("values"),
    )
    .expect("values.yaml");
    let schemas = crd_schemas();
    let top_spec = |key: &str| schemas.iter().any(|s| schema_has(s, &["spec", key]));
    let mut checked = 0;
    for word in inline_code(&readme) {
        let word = word.trim_end_matches([',', '.']);
        if !word.contains('.')
            || !word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '*')
        {
            continue;
        }
        let path: Vec<&str> = word.split('.').collect();
        let ok = if values.get(path[0]).is_some() || word.ends_with(".*") {
            // A chart value: `image.repository`, `databaseClasses.*`.
            yaml_has(&values, &path)
        } else if matches!(path[0], "spec" | "status") {
            schemas.iter().any(|s| schema_has(s, &path))
        } else if top_spec(path[0]) {
            // A spec field named from its section: `credentials.format`.
            schemas
                .iter()
                .any(|s| schema_has(s, &[&["spec"], path.as_slice()].concat()))
        } else {
            continue; // a file name, a key, a collection
        };
        assert!(
            ok,
            "the README names `{word}`, which neither values.yaml nor a CRD has"
        );
        checked += 1;
    }
    assert!(
        checked >= 15,
        "the README names fields and values ({checked} checked)"
    );
}

#[test]
fn every_path_annotation_and_variable_the_readme_names_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut sources = String::new();
    let mut stack = vec![
        root().join("src"),
        root().join("hack"),
        root().join("charts"),
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                sources.push_str(&text);
            }
        }
    }
    sources.push_str(&std::fs::read_to_string(root().join("Makefile")).expect("Makefile"));
    let dirs = [
        "src/",
        "hack/",
        "examples/",
        "charts/",
        "tests/",
        "docs/",
        "contrib/",
        "crds/",
    ];
    let mut checked = 0;
    for word in inline_code(&readme) {
        if dirs.iter().any(|d| word.starts_with(d)) {
            assert!(
                root().join(&word).exists(),
                "the README names {word}, which does not exist"
            );
            checked += 1;
        } else if word.starts_with("servicedb.dev/") || word.starts_with("SERVICEDB_") {
            let name = word.split(['=', ':']).next().unwrap_or(&word);
            assert!(
                sources.contains(name),
                "the README names {name}, which nothing in src/, hack/ or charts/ uses"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "the README names paths and annotations ({checked} checked)"
    );
}
