//! Prometheus metrics for the operator, in one `servicedb_`-prefixed registry.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `servicedb_reconcile_total` | counter | `controller` |
//! | `servicedb_reconcile_errors_total` | counter | `controller`, `category` |
//! | `servicedb_reconcile_duration_seconds` | histogram | `controller` |
//! | `servicedb_leader` | gauge | — |
//! | `servicedb_managed_objects` | gauge | `controller` |
//!
//! and the per-ServiceDatabase gauges of [`super::database_metrics`].
//!
//! Every label value of the metrics above is a `&'static str` — a controller name or an error
//! enum's `category()` — so the number of series is fixed by the code and no
//! object name or error message can blow up the time-series database.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile duration buckets, in seconds: a reconcile
/// that only reads its children is ~10 ms, one that waits on a database
/// engine can take tens of seconds.
const DURATION_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// The operator's metrics and the registry that exposes them.
///
/// Build one with `Metrics::default()`, share it as `Arc<Metrics>` with the
/// controllers, the leader elector and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: HistogramFamily,
    leader: Gauge,
    managed_objects: Family<ControllerLabels, Gauge>,
    databases: super::database_metrics::Databases,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("servicedb");

        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconcile", "Reconciliations started", reconciles.clone());

        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error category",
            errors.clone(),
        );

        let durations: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconciliation",
            Unit::Seconds,
            durations.clone(),
        );

        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );

        let managed_objects = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "managed_objects",
            "Custom resources currently managed by the controller",
            managed_objects.clone(),
        );

        let databases = super::database_metrics::Databases::default();
        registry.register_collector(Box::new(databases.clone()));

        Self {
            registry,
            reconciles,
            errors,
            durations,
            leader,
            managed_objects,
            databases,
        }
    }
}

impl Metrics {
    /// Counts a reconciliation of `controller` and times it until the
    /// returned timer is dropped; keep it alive for the whole reconcile.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.durations.get_or_create_owned(&labels),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconciliation. `category` must come from the error
    /// type's `category()`, never from its message.
    pub fn reconcile_failed(&self, controller: &'static str, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Records whether this replica currently leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records how many custom resources `controller` manages (typically the
    /// size of its reflector store).
    pub fn set_managed_objects(&self, controller: &'static str, count: i64) {
        self.managed_objects
            .get_or_create(&ControllerLabels { controller })
            .set(count);
    }

    /// Exports one set of `servicedb_database_*` gauges per ServiceDatabase
    /// of the controller's cache from now on.
    pub fn observe_databases(
        &self,
        store: kube::runtime::reflector::Store<crate::api::ServiceDatabase>,
    ) {
        self.databases.observe(store);
    }

    /// All metrics in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a bug in
        // prometheus-client, and a scrape with what was written beats a panic.
        if let Err(error) = encode(&mut out, &self.registry) {
            tracing::error!(%error, "failed to encode metrics");
        }
        out
    }
}

/// Observes the elapsed time into `servicedb_reconcile_duration_seconds`
/// when dropped, so early returns and `?` are timed too.
#[must_use = "the reconcile is timed until this value is dropped"]
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name plus labels, exactly as encoded).
    fn value_of(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn reconcile_counts_and_times_per_controller() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started("servicedatabase"));
        drop(metrics.reconcile_started("servicedatabase"));
        drop(metrics.reconcile_started("databaseserver"));

        let text = metrics.encode();
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_total{controller="servicedatabase"}"#
            )
            .as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_total{controller="databaseserver"}"#
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_duration_seconds_count{controller="servicedatabase"}"#
            )
            .as_deref(),
            Some("2"),
            "{text}"
        );
        // A reconcile that returns at once lands in the first bucket.
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_duration_seconds_bucket{le="0.01",controller="servicedatabase"}"#
            )
            .as_deref(),
            Some("2"),
            "{text}"
        );
        assert!(
            text.contains(r#"servicedb_reconcile_duration_seconds_bucket{le="30.0",controller="#),
            "{text}"
        );
        assert!(
            text.contains("# UNIT servicedb_reconcile_duration_seconds seconds"),
            "{text}"
        );
    }

    #[test]
    fn timer_observes_the_time_until_drop() {
        let metrics = Metrics::default();
        let timer = metrics.reconcile_started("servicedatabase");
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(timer);

        let text = metrics.encode();
        let series = r#"servicedb_reconcile_duration_seconds_bucket{le="0.01",controller="servicedatabase"}"#;
        assert_eq!(value_of(&text, series).as_deref(), Some("0"), "{text}");
        let series =
            r#"servicedb_reconcile_duration_seconds_bucket{le="1.0",controller="servicedatabase"}"#;
        assert_eq!(value_of(&text, series).as_deref(), Some("1"), "{text}");
    }

    #[test]
    fn errors_are_labelled_by_controller_and_category() {
        let metrics = Metrics::default();
        metrics.reconcile_failed("servicedatabase", "invalid_spec");
        metrics.reconcile_failed("servicedatabase", "invalid_spec");
        metrics.reconcile_failed("servicedatabase", "engine_unreachable");

        let text = metrics.encode();
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_errors_total{controller="servicedatabase",category="invalid_spec"}"#
            )
            .as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_reconcile_errors_total{controller="servicedatabase",category="engine_unreachable"}"#
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
    }

    #[test]
    fn leader_and_managed_objects_gauges() {
        let metrics = Metrics::default();
        assert_eq!(
            value_of(&metrics.encode(), "servicedb_leader").as_deref(),
            Some("0")
        );

        metrics.set_leader(true);
        metrics.set_managed_objects("servicedatabase", 7);
        let text = metrics.encode();
        assert_eq!(
            value_of(&text, "servicedb_leader").as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"servicedb_managed_objects{controller="servicedatabase"}"#
            )
            .as_deref(),
            Some("7"),
            "{text}"
        );

        metrics.set_leader(false);
        assert_eq!(
            value_of(&metrics.encode(), "servicedb_leader").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn encoding_is_openmetrics() {
        let metrics = Metrics::default();
        // Families without a series are left out, so create one of each.
        drop(metrics.reconcile_started("servicedatabase"));
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE servicedb_reconcile counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE servicedb_reconcile_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
