//! How a run ends: one JSON line on stdout and the same JSON in the
//! termination log (Kubernetes shows it as the container's termination
//! message, which the controller reads), or a one-line reason on stderr and
//! `{"error": "…"}` in the termination log, with every secret scrubbed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::secret::Secret;

/// Where Kubernetes reads the termination message from by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// The kubelet keeps at most this much of the termination message.
pub const TERMINATION_LOG_LIMIT: usize = 4096;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReportArgs {
    /// Where to write the result as JSON for the controller. Default:
    /// /dev/termination-log if it exists and is writable (in a pod), else
    /// nowhere.
    #[arg(long, env = "SERVICEDB_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,
}

/// Writes outcomes; knows the secrets to scrub from them.
pub struct Reporter {
    termination_log: Option<PathBuf>,
    explicit: bool,
    secrets: Vec<Secret>,
}

impl Reporter {
    pub fn new(args: &ReportArgs, secrets: Vec<Secret>) -> Reporter {
        match &args.termination_log {
            Some(path) => Reporter {
                termination_log: Some(path.clone()),
                explicit: true,
                secrets,
            },
            None => Reporter {
                termination_log: Some(PathBuf::from(DEFAULT_TERMINATION_LOG)),
                explicit: false,
                secrets,
            },
        }
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |text, secret| secret.scrub(&text))
    }

    /// Prints `full` on stdout and writes `compact` (which must fit the
    /// termination log) to the termination log.
    pub fn success(&self, full: &serde_json::Value, compact: &serde_json::Value) {
        println!("{}", self.scrub(&full.to_string()));
        let _ = std::io::stdout().flush();
        self.write_termination_log(&self.scrub(&compact.to_string()));
    }

    /// The reason on stderr (one line) and in the termination log.
    pub fn failure(&self, error: &anyhow::Error) {
        let reason = one_line(&condense_s3_errors(&self.scrub(&chain(error))));
        eprintln!("error: {reason}");
        // Room for the JSON around it; the stderr line keeps the whole text.
        let short: String = truncate(&reason, TERMINATION_LOG_LIMIT - 64);
        self.write_termination_log(&json!({ "error": short }).to_string());
    }

    fn write_termination_log(&self, text: &str) {
        let Some(path) = &self.termination_log else {
            return;
        };
        match open(path, self.explicit) {
            Ok(mut file) => {
                if let Err(error) = file.write_all(text.as_bytes()) {
                    eprintln!(
                        "warning: could not write the termination log {}: {error}",
                        path.display()
                    );
                }
            }
            // The default path outside a pod: nothing to do.
            Err(_) if !self.explicit => {}
            Err(error) => eprintln!(
                "warning: could not open the termination log {}: {error}",
                path.display()
            ),
        }
    }
}

/// An explicit path is created; the default one only written if it exists
/// (never create files in /dev of a machine that is not a pod).
fn open(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(path)
}

/// The error and its causes, `: `-separated, leaving out a cause whose
/// text the message before it already holds (object_store's errors repeat
/// their sources in their own text).
fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// An S3 error document (`<?xml …><Error><Code>…</Code><Message>…`, with
/// the whole string-to-sign in hex for a signature error) shortened to its
/// code and message.
fn condense_s3_errors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<?xml") {
        out.push_str(&rest[..start]);
        let document = &rest[start..];
        let Some(end) = document.find("</Error>") else {
            out.push_str(document);
            return out;
        };
        let between = |open: &str, close: &str| {
            document[..end]
                .split_once(open)
                .and_then(|(_, after)| after.split_once(close))
                .map(|(value, _)| value.to_owned())
        };
        match (
            between("<Code>", "</Code>"),
            between("<Message>", "</Message>"),
        ) {
            (Some(code), Some(message)) => out.push_str(&format!("{code}: {message}")),
            (Some(code), None) => out.push_str(&code),
            _ => out.push_str("(an S3 error document)"),
        }
        rest = &document[end + "</Error>".len()..];
    }
    out.push_str(rest);
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_is_one_scrubbed_line_in_both_places() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("termination-log");
        let reporter = Reporter::new(
            &ReportArgs {
                termination_log: Some(log.clone()),
            },
            vec![Secret::new("s3cr3t"), Secret::new("")],
        );
        let error = anyhow::anyhow!("password s3cr3t rejected\nby server").context("connecting");
        reporter.failure(&error);
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&log).expect("read")).expect("json");
        assert_eq!(
            written,
            json!({ "error": "connecting: password *** rejected by server" })
        );
    }

    #[test]
    fn repeated_causes_and_s3_error_documents_are_shortened() {
        let inner = anyhow::anyhow!(
            "403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
             <Message>The signature does not match.</Message><StringToSign>AWS4 …</StringToSign>\
             </Error>"
        );
        let outer = anyhow::anyhow!("list request: {inner}");
        let error = anyhow::Error::from(std::io::Error::other(outer.to_string()))
            .context("checking the destination s3://b/x");
        assert_eq!(
            condense_s3_errors(&chain(&error)),
            "checking the destination s3://b/x: list request: 403 Forbidden: \
             SignatureDoesNotMatch: The signature does not match."
        );
    }

    #[test]
    fn long_reasons_fit_the_termination_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("termination-log");
        let reporter = Reporter::new(
            &ReportArgs {
                termination_log: Some(log.clone()),
            },
            vec![],
        );
        reporter.failure(&anyhow::anyhow!("é".repeat(10_000)));
        let written = std::fs::read_to_string(&log).expect("read");
        assert!(written.len() <= TERMINATION_LOG_LIMIT, "{}", written.len());
        serde_json::from_str::<serde_json::Value>(&written).expect("still JSON");
    }

    #[test]
    fn the_default_path_is_never_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("termination-log");
        assert!(open(&path, false).is_err());
        assert!(!path.exists());
    }
}
