//! Logging: a `tracing` subscriber filtered by `RUST_LOG`, writing text for
//! people or JSON for log pipelines.
//!
//! In JSON every line carries the fields of the span it was logged in under
//! `"span"`, so the controller's per-reconcile span makes each line findable
//! by object. Name those fields `namespace` and `object`, not `name`: the
//! JSON writer also puts the span's own name under `"name"`, and a field of
//! that name would collide with it.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The filter used when `RUST_LOG` is not set: our own info logs, and only
/// warnings from kube's chatty watchers.
pub const DEFAULT_FILTER: &str = "info,kube=warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, with the current span's fields.
    Json,
    /// Human-readable lines.
    #[default]
    Text,
}

/// Installs the global subscriber, writing to stdout.
///
/// The filter comes from `RUST_LOG` (e.g. `debug,kube=info`), else
/// [`DEFAULT_FILTER`]. Fails if `RUST_LOG` does not parse — a typo there
/// should not silently hide logs — or if a subscriber is already installed.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) => EnvFilter::try_new(&directives)
            .map_err(|e| anyhow::anyhow!("invalid RUST_LOG {directives:?}: {e}"))?,
        Err(_) => EnvFilter::new(DEFAULT_FILTER),
    };
    // Colours help at a terminal and litter `kubectl logs`.
    let stdout_is_terminal = std::io::stdout().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(format, std::io::stdout, stdout_is_terminal))
        .try_init()?;
    Ok(())
}

fn fmt_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn log_in_reconcile_span(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(DEFAULT_FILTER))
            .with(fmt_layer(format, buffer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", namespace = "team-a", object = "orders");
            let _entered = span.enter();
            tracing::info!(generation = 3, "applied children");
            tracing::debug!("filtered out by the default filter");
        });
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn json_lines_carry_the_reconcile_span_fields() {
        let out = log_in_reconcile_span(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "debug line must be filtered out: {out}");

        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "applied children");
        assert_eq!(line["generation"], 3);
        assert_eq!(line["span"]["name"], "reconcile");
        assert_eq!(line["span"]["namespace"], "team-a");
        assert_eq!(line["span"]["object"], "orders");
    }

    #[test]
    fn text_lines_name_the_span_and_its_fields() {
        let out = log_in_reconcile_span(LogFormat::Text);
        assert!(out.contains("applied children"), "{out}");
        assert!(
            out.contains("reconcile{namespace=\"team-a\" object=\"orders\"}"),
            "{out}"
        );
        assert!(!out.contains("filtered out"), "{out}");
    }

    #[test]
    fn default_filter_parses() {
        assert!(EnvFilter::try_new(DEFAULT_FILTER).is_ok());
    }
}
