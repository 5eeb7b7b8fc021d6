//! One attempt at the Lease: read it, and take or renew it with an
//! optimistic update, as client-go's leader election does.

use super::*;

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// We hold the Lease now.
    Leading,
    /// Someone else does; `holder` names them for the logs.
    Standby { holder: String },
    /// Another write got in between our read and our write (409); the next
    /// try reads the new state.
    Raced,
}

/// One candidate's view of the Lease, as in client-go's `LeaderElector`.
pub(super) struct Elector {
    pub(super) api: Api<Lease>,
    pub(super) cfg: LeaseConfig,
    /// The Lease spec last read, and when it was first seen in that state.
    pub(super) observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    pub(super) fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// Reads the Lease and, if it is free, ours or expired, writes ourselves
    /// in as holder. A lost race is [`Attempt::Raced`], not an error.
    pub(super) async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_error("read", e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(&LeaseSpec::default(), &self.cfg, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Attempt::Raced),
                Err(e) => Err(self.api_error("create", e)),
            };
        };

        let spec = lease.spec.take().unwrap_or_default();
        let unchanged_for = self.observe(spec.clone());
        if let Some(holder) = holder_blocking(&spec, &self.cfg, unchanged_for) {
            return Ok(Attempt::Standby { holder });
        }

        lease.spec = Some(claim(&spec, &self.cfg, now));
        // `lease.metadata.resourceVersion` is the one just read: if anyone
        // wrote in between, this fails with 409 instead of overwriting them.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.unwrap_or_default());
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Attempt::Raced),
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    /// Records `spec` and returns how long it has been seen unchanged.
    pub(super) fn observe(&mut self, spec: LeaseSpec) -> Duration {
        match &self.observed {
            Some((seen, since)) if *seen == spec => since.elapsed(),
            _ => {
                self.observed = Some((spec, Instant::now()));
                Duration::ZERO
            }
        }
    }

    pub(super) fn api_error(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            action,
            lease: format!("{}/{}", self.cfg.namespace, self.cfg.name),
            source: Box::new(source),
        }
    }
}

/// The holder that keeps us from taking the Lease, if any: someone other
/// than us, whose claim we have not seen go stale for its lease duration.
pub(super) fn holder_blocking(
    spec: &LeaseSpec,
    cfg: &LeaseConfig,
    unchanged_for: Duration,
) -> Option<String> {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == cfg.identity {
        return None;
    }
    // The holder's own promise counts; ours is the fallback.
    let lease_duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(cfg.lease_duration, Duration::from_secs);
    (unchanged_for < lease_duration).then(|| holder.to_owned())
}

/// `current` with us as holder, renewed at `now`; a change of holder sets
/// `acquireTime` and counts a transition.
pub(super) fn claim(current: &LeaseSpec, cfg: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let already_ours = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let transitions = current.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration_seconds()),
        acquire_time: if already_ours {
            current.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match (already_ours, &current.holder_identity) {
            (true, _) => transitions,
            // A brand-new Lease starts at 0, as in client-go.
            (false, None) if current.renew_time.is_none() => 0,
            (false, _) => transitions.saturating_add(1),
        }),
        ..current.clone()
    }
}
