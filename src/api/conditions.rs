//! Standard `Condition` handling: a condition keeps its `lastTransitionTime`
//! while its status does not change, so an unchanged world writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types of a `ServiceDatabase`.
pub mod types {
    /// Everything below is true.
    pub const READY: &str = "Ready";
    /// The database instance (or the placement on a server) serves connections.
    pub const INSTANCE_READY: &str = "InstanceReady";
    /// The service's credentials Secret exists and matches the database.
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
    /// A NetworkPolicy admits only the owner's pods; `Unknown` on a shared
    /// server, which no NetworkPolicy of the namespace can fence.
    pub const NETWORK_ISOLATED: &str = "NetworkIsolated";
    /// After a rotation: no pod of the owner runs on the previous password
    /// (observed only after a rotation; see `spec.credentials.restartOwners`).
    pub const CREDENTIALS_ROLLED_OUT: &str = "CredentialsRolledOut";
    /// The spec (with its class) is valid.
    pub const SPEC_VALID: &str = "SpecValid";
    /// The last backup run and the last verification succeeded, and the
    /// last success is recent (within twice the schedule's interval).
    pub const BACKUP_HEALTHY: &str = "BackupHealthy";
    /// `spec.bootstrap.fromBackup` was restored into the database.
    pub const RESTORED: &str = "Restored";
    /// The data volume has the size `spec.storage.size` asks for (dedicated
    /// instances, once the claim exists); `False` while it is expanded or
    /// when its StorageClass does not allow expansion.
    pub const STORAGE_RESIZED: &str = "StorageResized";
    /// How `spec.postgres.parameters` take effect: which are reloaded and
    /// which restart the instance when they change (PostgreSQL instances
    /// with parameters only).
    pub const PARAMETERS: &str = "Parameters";
    /// The final backup of `deletionPolicy: Snapshot` completed.
    pub const FINAL_BACKUP: &str = "FinalBackup";
    /// A `DatabaseBackup`'s archive is stored (its condition).
    pub const COMPLETED: &str = "Completed";
    /// kstatus ("abnormal-true", read by Flux and other kstatus readers):
    /// servicedb is still working towards `Ready` and expects to get there.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus ("abnormal-true"): servicedb cannot go on until something
    /// changes (an invalid spec, a name held by another, a failed restore or
    /// backup run).
    pub const STALLED: &str = "Stalled";
}

/// A condition as the controller computes it, before times are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    /// The status is `Unknown` (and `status` false): servicedb cannot know.
    pub unknown: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            unknown: false,
            reason,
            message: message.into(),
        }
    }

    /// A condition whose truth servicedb cannot know.
    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            unknown: true,
            reason,
            message: message.into(),
        }
    }
}

/// Merges observed conditions into the previous list: a condition whose
/// status is unchanged keeps its transition time. Conditions not observed now
/// are kept as they were.
pub fn merge(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !observed.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    for o in observed {
        let status = match (o.unknown, o.status) {
            (true, _) => "Unknown",
            (false, true) => "True",
            (false, false) => "False",
        }
        .to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == o.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        out.push(Condition {
            type_: o.type_.to_string(),
            status,
            reason: o.reason.to_string(),
            message: o.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The kstatus conditions of a resource whose `Ready` condition is `ready`:
/// `Stalled=True` (kstatus: Failed) when it cannot go on without a change,
/// else `Reconciling=True` (InProgress) until it is Ready; both `False` once
/// Ready (Current). The true one carries Ready's reason and message.
pub fn kstatus(ready: &Observed, stalled: bool) -> [Observed; 2] {
    let reconciling = !ready.status && !stalled;
    let condition = |type_, status: bool, otherwise: &'static str, message: &str| {
        if status {
            Observed::new(type_, true, ready.reason, ready.message.clone())
        } else {
            Observed::new(type_, false, otherwise, message)
        }
    };
    [
        condition(
            types::RECONCILING,
            reconciling,
            if stalled { "Stalled" } else { "Reconciled" },
            if stalled {
                "waiting for a change; see Stalled"
            } else {
                "nothing left to do"
            },
        ),
        condition(
            types::STALLED,
            stalled,
            "Progressing",
            "no change needed to go on",
        ),
    ]
}

/// The status of a condition type in a list, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let first = merge(
            &[],
            &[Observed::new("Ready", false, "Provisioning", "waiting")],
            Some(1),
            &t("2026-01-01T00:00:00Z"),
        );
        let again = merge(
            &first,
            &[Observed::new("Ready", false, "Provisioning", "waiting")],
            Some(1),
            &t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(first, again);
        let flipped = merge(
            &again,
            &[Observed::new("Ready", true, "Ready", "ok")],
            Some(2),
            &t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(flipped[0].last_transition_time, t("2026-01-03T00:00:00Z"));
        assert_eq!(flipped[0].observed_generation, Some(2));
    }

    #[test]
    fn kstatus_conditions_follow_ready() {
        let status = |o: &[Observed; 2]| (o[0].status, o[1].status);
        let waiting = Observed::new("Ready", false, "Provisioning", "waiting");
        let [reconciling, _] = kstatus(&waiting, false);
        assert_eq!(
            (reconciling.type_, reconciling.reason),
            ("Reconciling", "Provisioning")
        );
        assert_eq!(status(&kstatus(&waiting, false)), (true, false));
        let invalid = Observed::new("Ready", false, "NameConflict", "taken");
        let [_, stalled] = kstatus(&invalid, true);
        assert_eq!((stalled.type_, stalled.reason), ("Stalled", "NameConflict"));
        assert_eq!(status(&kstatus(&invalid, true)), (false, true));
        let ready = Observed::new("Ready", true, "Ready", "ok");
        assert_eq!(status(&kstatus(&ready, false)), (false, false));
    }
}
