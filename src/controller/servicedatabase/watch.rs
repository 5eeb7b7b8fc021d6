//! The controller's watches: ServiceDatabases, their children (their own
//! writes filtered out), classes, servers, namespaces and backups, mapped
//! to the ServiceDatabases they concern; then the controller runs until
//! shutdown.

use super::*;

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    // Only what a user changed starts a pass (see [`trigger`]); requeues,
    // children and the other watches below still do.
    let (reader, writer) = reflector::store();
    let changes = watcher(
        Api::<ServiceDatabase>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(trigger::relevant, PredicateConfig::default());
    let controller = Controller::for_stream(changes, reader);
    let store = controller.store();
    let restoring = controller.store();
    let claims = controller.store();
    ctx.metrics.observe_databases(controller.store());
    if ctx.service_databases.set(controller.store()).is_err() {
        tracing::warn!(
            "the ServiceDatabase controller started twice; name claims use the first cache"
        );
    }
    let agent_jobs = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT} in ({},{},{})",
        crate::build::backup::component::BACKUP,
        crate::build::backup::component::VERIFY,
        crate::build::backup::component::RESTORE,
    ));
    let (statefulsets, statefulset_changes) = owned_changes::<StatefulSet>(&ctx, &owned);
    let (services, service_changes) = owned_changes::<Service>(&ctx, &owned);
    let (secrets, secret_changes) = owned_changes::<Secret>(&ctx, &owned);
    let (network_policies, network_policy_changes) = owned_changes::<NetworkPolicy>(&ctx, &owned);
    let (pdbs, pdb_changes) = owned_changes::<PodDisruptionBudget>(&ctx, &owned);
    let (cronjobs, cronjob_changes) = owned_changes::<CronJob>(&ctx, &owned);
    // Read only: their changes start no pass here.
    let (secret_names, secret_name_changes) = reflected(watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (servers, server_changes) = reflected(watcher(
        Api::<DatabaseServer>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (namespaces, namespace_changes) = reflected(watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    ));
    let (classes, class_changes) = reflected(watcher(
        Api::<DatabaseClass>::all(client.clone()),
        watcher::Config::default(),
    ));
    ctx.cache.set(cache::Stores {
        secrets,
        secret_names,
        statefulsets,
        services,
        pdbs,
        network_policies,
        cronjobs,
        classes,
        servers,
        namespaces,
    });
    controller
        .watches_stream(statefulset_changes, owner_of)
        .watches_stream(service_changes, owner_of)
        .watches_stream(secret_changes, owner_of)
        .watches_stream(network_policy_changes, owner_of)
        .watches_stream(pdb_changes, owner_of)
        .watches_stream(cronjob_changes, owner_of)
        .watches_stream(secret_name_changes, |_| None)
        .watches_stream(server_changes, |_| None)
        .watches_stream(namespace_changes, |_| None)
        // Scheduled backup Jobs are the CronJob's, not ours: found by label.
        .watches(Api::<Job>::all(client.clone()), agent_jobs, |job: Job| {
            let namespace = job.namespace()?;
            let name = crate::build::instance_label(job.labels())?.clone();
            Some(ObjectRef::<ServiceDatabase>::new(&name).within(&namespace))
        })
        // A backup's progress changes its database's status, and may let a
        // database that restores from it go on.
        .watches(
            Api::<DatabaseBackup>::all(client.clone()),
            watcher::Config::default(),
            move |backup: DatabaseBackup| {
                let namespace = backup.namespace().unwrap_or_default();
                let name = backup.name_any();
                let mut refs = vec![
                    ObjectRef::<ServiceDatabase>::new(&backup.spec.service_database_ref.name)
                        .within(&namespace),
                ];
                refs.extend(
                    restoring
                        .state()
                        .iter()
                        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                        .filter(|s| {
                            s.spec
                                .bootstrap
                                .as_ref()
                                .and_then(|b| b.from_backup.as_ref())
                                .is_some_and(|b| b.name == name)
                        })
                        .map(|s| ObjectRef::from_obj(s.as_ref())),
                );
                refs
            },
        )
        // A name on a shared server changes hands when its holder goes (or
        // moves): the other claimants look again at once.
        .watches(
            Api::<ServiceDatabase>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            move |changed: ServiceDatabase| {
                let all = claims.state();
                claim::rivals(&changed, all.iter().map(AsRef::as_ref))
                    .into_iter()
                    .map(ObjectRef::from_obj)
                    .collect::<Vec<_>>()
            },
        )
        .watches_stream(class_changes, move |class: DatabaseClass| {
            store
                .state()
                .iter()
                .filter(|s| s.spec.engine == class.spec.engine)
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move { crate::controller::report(CONTROLLER, result, &ctx).await }
        })
        .await;
}

/// A watch kept in a store; the stream must be polled (by the controller)
/// for the store to fill.
pub(super) fn reflected<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    (
        reader,
        events.default_backoff().reflect(writer).touched_objects(),
    )
}

/// The children of kind `K` in a store, and their changes less the
/// operator's own writes (a deletion is always a change).
pub(super) fn owned_changes<K>(
    ctx: &Arc<Context>,
    owned: &watcher::Config,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, changes) = reflected(watcher(Api::<K>::all(ctx.client.clone()), owned.clone()));
    let ctx = ctx.clone();
    (
        store,
        changes.try_filter(move |obj| std::future::ready(!ctx.cache.own_writes.is_own(obj))),
    )
}

/// The ServiceDatabase a child belongs to, by its owner reference.
pub(super) fn owner_of<K: Resource>(obj: K) -> Option<ObjectRef<ServiceDatabase>> {
    let namespace = obj.meta().namespace.clone()?;
    obj.owner_references()
        .iter()
        .find(|o| {
            o.kind == ServiceDatabase::kind(&())
                && o.api_version == ServiceDatabase::api_version(&())
        })
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
}
