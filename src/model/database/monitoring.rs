//! Monitoring as validated: enabled by the ServiceDatabase, else by its
//! class (which may force it on), with the class's exporter image.

use super::*;

/// `spec.monitoring` over the class's, when it is on.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedMonitoring {
    /// The exporter's image with its pinned tag.
    pub exporter_image: String,
}

/// Whether the database is monitored: its own `enabled` wins over the
/// class's default, except that a class which requires monitoring refuses
/// `enabled: false`.
pub(super) fn effective_monitoring(
    own: Option<&crate::api::common::MonitoringSpec>,
    class: &DatabaseClass,
    class_name: &str,
) -> Result<Option<ValidatedMonitoring>, Invalid> {
    let defaults = class.spec.monitoring.clone().unwrap_or_default();
    let own = own.and_then(|m| m.enabled);
    if own == Some(false) && defaults.required {
        return Err(Invalid::new(
            "spec.monitoring.enabled",
            "MonitoringRequired",
            format!(
                "DatabaseClass {class_name} requires monitoring (monitoring.required); remove spec.monitoring.enabled: false"
            ),
        ));
    }
    let enabled = own.or(defaults.enabled).unwrap_or(false) || defaults.required;
    Ok(enabled.then(|| ValidatedMonitoring {
        exporter_image: crate::engine::exporter::exporter(class.spec.engine)
            .image(defaults.exporter_image.as_deref()),
    }))
}
