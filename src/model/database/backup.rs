//! Backups as validated: the schedule, retention, destination and
//! verification (the ServiceDatabase's, else its class's), and what a
//! restore reads from.

use super::*;

/// `spec.backup`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedBackup {
    pub schedule: String,
    pub destination: BackupDestination,
    /// `s3://bucket/prefix` or `file:///backup/prefix`; an archive is
    /// `<url>/<backup-name>`.
    pub url: String,
    pub keep_last: Option<usize>,
    pub max_age: Option<std::time::Duration>,
    pub verify_schedule: Option<String>,
    /// Deleting a `DatabaseBackup` by hand keeps its archive.
    pub retain_archives_on_delete: bool,
}

/// `spec.backup` over the class's `backup`, field by field, before checks.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct EffectiveBackup {
    pub(super) schedule: String,
    pub(super) destination: BackupDestination,
    pub(super) retention: Option<crate::api::common::RetentionSpec>,
    pub(super) verify: Option<crate::api::common::VerifySpec>,
    pub(super) retain_archives_on_delete: bool,
}

/// The backups a ServiceDatabase gets: each field it sets wins over the
/// class's; `enabled: false` turns them off (unless the class requires
/// them); none when neither sets anything.
pub(super) fn effective_backup(
    own: Option<&crate::api::common::BackupSpec>,
    class: &DatabaseClass,
    class_name: &str,
) -> Result<Option<EffectiveBackup>, Invalid> {
    let defaults = class.spec.backup.clone().unwrap_or_default();
    let required = defaults.required;
    if own.and_then(|b| b.enabled) == Some(false) {
        if required {
            return Err(Invalid::new(
                "spec.backup.enabled",
                "BackupRequired",
                format!(
                    "DatabaseClass {class_name} requires backups (backup.required); remove spec.backup.enabled: false"
                ),
            ));
        }
        return Ok(None);
    }
    let own = own.cloned().unwrap_or_default();
    let schedule = own.schedule.or(defaults.schedule);
    let destination = own.destination.or(defaults.destination);
    let (schedule, destination) = match (schedule, destination) {
        (Some(schedule), Some(destination)) => (schedule, destination),
        (None, None)
            if !required
                && own.enabled.is_none()
                && own.retention.is_none()
                && own.verify.is_none()
                && own.retain_archives_on_delete.is_none() =>
        {
            return Ok(None);
        }
        (schedule, _) => {
            let (field, what) = if schedule.is_none() {
                ("spec.backup.schedule", "a schedule")
            } else {
                ("spec.backup.destination", "a destination")
            };
            let why = if required {
                format!("DatabaseClass {class_name} requires backups (backup.required)")
            } else {
                "backups are configured".to_string()
            };
            return Err(Invalid::new(
                field,
                if required {
                    "BackupRequired"
                } else {
                    "BackupIncomplete"
                },
                format!(
                    "{why}, and neither spec.backup nor DatabaseClass {class_name} sets {what}: set {field}"
                ),
            ));
        }
    };
    Ok(Some(EffectiveBackup {
        schedule,
        destination,
        retention: own.retention.or(defaults.retention),
        verify: own.verify.or(defaults.verify),
        retain_archives_on_delete: own
            .retain_archives_on_delete
            .or(defaults.retain_archives_on_delete)
            .unwrap_or(true),
    }))
}

/// Where the destination's volume is mounted in agent pods.
pub const BACKUP_MOUNT: &str = "/backup";

/// Where `spec.bootstrap` restores from.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreSource {
    /// A `DatabaseBackup` of this namespace (`fromBackup`).
    Backup(String),
    /// Backups in a store, with no object for them (`fromArchive`).
    Archive {
        destination: BackupDestination,
        /// The directory holding the backups' directories.
        dir: String,
        /// One backup's directory name; the latest completed when `None`.
        backup: Option<String>,
        /// With no `backup`: the latest completed before this time.
        before: Option<String>,
    },
}

impl RestoreSource {
    /// For people: `DatabaseBackup nightly`, `the latest backup under s3://…`.
    pub fn describe(&self) -> String {
        match self {
            RestoreSource::Backup(name) => format!("DatabaseBackup {name}"),
            RestoreSource::Archive {
                dir,
                backup: Some(backup),
                ..
            } => format!("backup {backup} under {dir}"),
            RestoreSource::Archive {
                dir, before: None, ..
            } => format!("the latest backup under {dir}"),
            RestoreSource::Archive {
                dir,
                before: Some(before),
                ..
            } => format!("the latest backup under {dir} completed before {before}"),
        }
    }
}

pub(super) fn restore_source(
    bootstrap: Option<&crate::api::service_database::BootstrapSpec>,
    namespace: &str,
    name: &str,
) -> Option<RestoreSource> {
    let bootstrap = bootstrap?;
    if let Some(backup) = &bootstrap.from_backup {
        return Some(RestoreSource::Backup(backup.name.clone()));
    }
    let archive = bootstrap.from_archive.as_ref()?;
    let (namespace, name) = archive
        .source
        .as_deref()
        .and_then(|source| source.split_once('/'))
        .unwrap_or((namespace, name));
    Some(RestoreSource::Archive {
        destination: archive.destination.clone(),
        dir: destination_url(&archive.destination, namespace, name),
        backup: archive.backup.clone(),
        before: archive.before.clone(),
    })
}

pub fn destination_url(destination: &BackupDestination, namespace: &str, name: &str) -> String {
    match (&destination.s3, &destination.volume) {
        (Some(s3), _) => {
            let prefix = s3
                .prefix
                .clone()
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                format!("s3://{}", s3.bucket)
            } else {
                format!("s3://{}/{prefix}", s3.bucket)
            }
        }
        _ => format!("file://{BACKUP_MOUNT}/{namespace}/{name}"),
    }
}

/// A Go duration (`720h`, `1h30m`, `90s`) as the CEL rule admits it.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

pub(super) fn check_cron(field: &'static str, schedule: &str) -> Result<(), Invalid> {
    croner::parser::CronParser::new()
        .parse(schedule)
        .map(|_| ())
        .map_err(|e| {
            Invalid::new(
                field,
                "InvalidSchedule",
                format!("{schedule:?} is not a valid cron schedule: {e}"),
            )
        })
}
