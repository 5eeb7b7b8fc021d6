//! How servicedb names what it makes: instances, shared databases and
//! logins, final backups. Pure (managed servers' names: [`super::managed`]).

use kube::ResourceExt;

use super::database::ValidatedDatabase;
use crate::api::ServiceDatabase;

/// `orders` → `orders-db`: children are suffixed so they never clash with the
/// service's own Deployment and Service, which usually share its name.
pub fn instance_name(name: &str) -> String {
    format!("{name}-db")
}

/// `shop` + `orders` → `shop_orders`; names too long for an identifier (63
/// bytes, less the `_b` of the rotation twin) keep a readable start and a
/// hash of the whole.
pub fn shared_identifier(namespace: &str, name: &str) -> String {
    crate::engine::fit_name(&format!("{namespace}_{name}").replace('-', "_"), 61)
}

/// `orders` with uid `3f2a…` → `orders-final-3f2a9c1d`: one per incarnation.
pub fn final_backup_name(sdb: &ServiceDatabase) -> String {
    let uid = sdb.uid().unwrap_or_default();
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{}-final-{short}", sdb.name_any())
}

/// Most characters of a Kubernetes object name servicedb derives: names
/// are also label values (`batch.kubernetes.io/job-name`, `servicedb.dev/
/// backup`) and Service names, both DNS labels of at most 63.
pub const MAX_NAME: usize = 63;
/// Most characters of a CronJob name: the CronJob controller appends `-`
/// and the scheduled minute to name its Jobs, and the API server reserves 11
/// characters for that.
pub const MAX_CRONJOB_NAME: usize = MAX_NAME - 11;

/// `name` if it has at most `max` characters, else its start, `-` and 8 hex
/// digits of a hash of the whole: readable, and two long names that share
/// their start still differ. Kubernetes names have no `_`, so the only one
/// [`crate::engine::fit_name`] puts in is its separator.
pub fn fit_object_name(name: &str, max: usize) -> String {
    crate::engine::fit_name(name, max).replace('_', "-")
}

/// `orders` → `orders-db-backup` (at most 50 characters for the longest
/// name a ServiceDatabase may have, within a CronJob's 52).
pub fn backup_cronjob_name(db: &ValidatedDatabase) -> String {
    fit_object_name(&format!("{}-backup", db.instance_name()), MAX_CRONJOB_NAME)
}

/// `orders` → `orders-db-verify`.
pub fn verify_cronjob_name(db: &ValidatedDatabase) -> String {
    fit_object_name(&format!("{}-verify", db.instance_name()), MAX_CRONJOB_NAME)
}

/// `orders` → `orders-db-restore`.
pub fn restore_job_name(name: &str) -> String {
    fit_object_name(&format!("{}-restore", instance_name(name)), MAX_NAME)
}

/// The Job of a `DatabaseBackup` created by hand (or the final one):
/// `<backup>-backup`, shortened with a hash when that is too long.
pub fn backup_job_name(backup: &str) -> String {
    fit_object_name(&format!("{backup}-backup"), MAX_NAME)
}

/// The Job that deletes a `DatabaseBackup`'s archive: `<backup>-delete`,
/// shortened with a hash when that is too long (a scheduled backup is named
/// after its Job and may already have 63 characters).
pub fn delete_job_name(backup: &str) -> String {
    fit_object_name(&format!("{backup}-delete"), MAX_NAME)
}

/// Where a verification restores: `<database>_verify` on a dedicated
/// instance (its administrator makes it afresh), the scratch database the
/// operator keeps for the service on a shared PostgreSQL server
/// (`<login>-verify`), or for Redis the logical database 1 (the service's
/// data lives in 0).
pub fn scratch_database(db: &ValidatedDatabase) -> String {
    match (db.engine, &db.server) {
        (crate::api::Engine::Redis, _) => "1".into(),
        (_, Some(_)) => crate::engine::postgres_users::scratch_name(&db.username),
        _ => format!("{}_verify", db.database),
    }
}
