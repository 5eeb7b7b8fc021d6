//! Leader election against a real API server.
//!
//! Needs `KUBECONFIG` pointing at a cluster where we may create Leases in
//! `default`; `hack/testenv/up.sh DIR` starts one and prints the path:
//!
//! ```sh
//! KUBECONFIG=$(hack/testenv/up.sh /tmp/testenv) cargo test --test leader_election
//! ```
//!
//! Without a reachable API server every test fails, saying so: a skipped
//! test would look like a passed one.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use servicedb::operator::{LeaderGuard, LeaseConfig, Metrics, leader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const NAMESPACE: &str = "default";

/// Short timings so a takeover by expiry happens within seconds.
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(300);
/// Longest pause between two polls of a standby (retry plus 1.2x jitter),
/// plus a request.
const POLL: Duration = Duration::from_millis(300 * 22 / 10 + 300);

async fn config() -> kube::Config {
    match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) => {
            panic!("no API server configured ({e}); run with KUBECONFIG=$(hack/testenv/up.sh DIR)")
        }
    }
}

async fn connect(config: kube::Config) -> Client {
    let url = config.cluster_url.clone();
    let client =
        Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client for {url}: {e}"));
    if let Err(e) = client.apiserver_version().await {
        panic!("API server {url} does not answer ({e}); is the testenv up?");
    }
    client
}

async fn client() -> Client {
    connect(config().await).await
}

/// A Lease name no other test or earlier run uses.
fn unique_lease(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("le-{test}-{}-{nanos}", std::process::id())
}

fn lease_config(lease: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        ..LeaseConfig::new(NAMESPACE, lease, identity)
    }
}

struct Candidate {
    metrics: Arc<Metrics>,
    task: JoinHandle<LeaderGuard>,
}

fn candidate(client: &Client, lease: &str, identity: &str) -> Candidate {
    let metrics = Arc::new(Metrics::default());
    let acquire = leader::acquire(
        client.clone(),
        lease_config(lease, identity),
        metrics.clone(),
    );
    Candidate {
        metrics,
        task: tokio::spawn(async move {
            match acquire.await {
                Ok(guard) => guard,
                Err(e) => panic!("acquire failed: {e}"),
            }
        }),
    }
}

fn leads(metrics: &Metrics) -> bool {
    metrics.encode().lines().any(|l| l == "servicedb_leader 1")
}

async fn lease_spec(client: &Client, lease: &str) -> (Option<String>, Option<i32>) {
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(lease)
        .await
        .unwrap();
    let spec = lease.spec.unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions)
}

async fn delete_lease(client: &Client, lease: &str) {
    let _ = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .delete(lease, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn one_of_two_candidates_leads_and_release_hands_over_at_once() {
    let client = client().await;
    let lease = unique_lease("release");
    let mut a = candidate(&client, &lease, "candidate-a");
    let mut b = candidate(&client, &lease, "candidate-b");

    // Both race to create the Lease; exactly one may win.
    let (winner, mut loser, winner_id, loser_id) = tokio::select! {
        guard = &mut a.task => (guard.unwrap(), b, "candidate-a", "candidate-b"),
        guard = &mut b.task => (guard.unwrap(), a, "candidate-b", "candidate-a"),
    };
    assert_eq!(winner.identity(), winner_id);
    assert_eq!(
        lease_spec(&client, &lease).await,
        (Some(winner_id.to_owned()), Some(0))
    );

    // The leader keeps renewing, so the other stays a standby well past the
    // lease duration.
    tokio::time::sleep(LEASE_DURATION * 2).await;
    assert!(
        !loser.task.is_finished(),
        "{loser_id} acquired a lease held by {winner_id}"
    );
    assert!(!leads(&loser.metrics));
    assert!(!winner.is_lost());
    assert_eq!(
        lease_spec(&client, &lease).await.0.as_deref(),
        Some(winner_id)
    );

    // Released, the Lease goes to the standby at its next poll, long before
    // it would have expired.
    let released = Instant::now();
    winner.release().await.unwrap();
    let successor = timeout(POLL * 2, &mut loser.task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{loser_id} did not take over within {:?} of the release",
                POLL * 2
            )
        })
        .unwrap();
    assert!(
        released.elapsed() < LEASE_DURATION,
        "took {:?}",
        released.elapsed()
    );
    assert_eq!(successor.identity(), loser_id);
    assert!(leads(&loser.metrics));
    assert_eq!(
        lease_spec(&client, &lease).await,
        (Some(loser_id.to_owned()), Some(1))
    );

    successor.release().await.unwrap();
    assert_eq!(lease_spec(&client, &lease).await.0, None);
    delete_lease(&client, &lease).await;
}

#[tokio::test]
async fn of_many_candidates_racing_for_a_free_lease_exactly_one_wins() {
    let client = client().await;
    let lease = unique_lease("race");
    // A released Lease: every candidate may take it at its first look, so
    // only the resourceVersion check keeps them from all winning.
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(lease.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: None,
                    lease_duration_seconds: Some(1),
                    lease_transitions: Some(3),
                    renew_time: Some(MicroTime(Timestamp::now())),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .unwrap();

    let candidates: Vec<Candidate> = (0..6)
        .map(|i| candidate(&client, &lease, &format!("candidate-{i}")))
        .collect();
    tokio::time::sleep(POLL * 3).await;

    let leading: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].task.is_finished())
        .collect();
    assert_eq!(
        leading.len(),
        1,
        "candidates {leading:?} all acquired the lease"
    );
    let winner = format!("candidate-{}", leading[0]);
    assert_eq!(lease_spec(&client, &lease).await, (Some(winner), Some(4)));
    for candidate in &candidates {
        candidate.task.abort();
    }
    delete_lease(&client, &lease).await;
}

#[tokio::test]
async fn a_leader_that_stops_renewing_is_replaced_after_the_lease_duration() {
    let client = client().await;
    let lease = unique_lease("expiry");
    let a = candidate(&client, &lease, "candidate-a");
    let a_metrics = a.metrics.clone();
    let leader = timeout(POLL * 3, a.task).await.unwrap().unwrap();
    assert!(leads(&a_metrics));
    let mut b = candidate(&client, &lease, "candidate-b");
    tokio::time::sleep(POLL).await;
    assert!(!b.task.is_finished());

    // Dropping the guard stops renewal without releasing, as a crash would.
    drop(leader);
    let stopped = Instant::now();
    assert!(!leads(&a_metrics));

    let successor = timeout(LEASE_DURATION + POLL * 3, &mut b.task)
        .await
        .expect("candidate-b did not take over an expired lease")
        .unwrap();
    let waited = stopped.elapsed();
    // a's last renewal was at most one retry period before it stopped; b must
    // have waited out the lease duration from then.
    assert!(
        waited >= LEASE_DURATION - RETRY_PERIOD - Duration::from_millis(100),
        "candidate-b took over after only {waited:?}"
    );
    assert_eq!(successor.identity(), "candidate-b");
    assert_eq!(
        lease_spec(&client, &lease).await,
        (Some("candidate-b".to_owned()), Some(1))
    );

    successor.release().await.unwrap();
    delete_lease(&client, &lease).await;
}

#[tokio::test]
async fn lost_resolves_when_another_holder_is_written_in() {
    let client = client().await;
    let lease = unique_lease("stolen");
    let a = candidate(&client, &lease, "candidate-a");
    let metrics = a.metrics.clone();
    let leader = timeout(POLL * 3, a.task).await.unwrap().unwrap();

    // Someone (an admin, or a candidate with a clock gone wrong) overwrites
    // the holder; the leader must notice at its next renewal.
    let api = Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    let mut current = api.get(&lease).await.unwrap();
    if let Some(spec) = current.spec.as_mut() {
        spec.holder_identity = Some("intruder".to_owned());
    }
    api.replace(&lease, &PostParams::default(), &current)
        .await
        .unwrap();

    timeout(POLL * 2, leader.lost())
        .await
        .expect("lost() did not resolve after the lease was taken");
    assert!(leader.is_lost());
    assert!(!leads(&metrics));

    // Releasing a Lease held by someone else leaves it alone.
    leader.release().await.unwrap();
    assert_eq!(
        lease_spec(&client, &lease).await.0.as_deref(),
        Some("intruder")
    );
    delete_lease(&client, &lease).await;
}

/// A TCP forwarder to the API server that can be cut, to make the leader's
/// renewals fail the way a network partition would.
struct Partition {
    task: JoinHandle<()>,
}

impl Partition {
    async fn start(config: &mut kube::Config) -> Self {
        let host = config.cluster_url.host().unwrap().to_owned();
        let port = config.cluster_url.port_u16().unwrap_or(443);
        let upstream = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind((upstream.ip(), 0)).await.unwrap();
        let local_port = listener.local_addr().unwrap().port();
        // Same host name, so the serving certificate still matches.
        config.cluster_url = format!("https://{host}:{local_port}").parse().unwrap();

        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { task }
    }

    /// Closes the listener and every forwarded connection.
    fn cut(self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_gives_up_before_it_can_be_replaced() {
    let direct = client().await;
    let lease = unique_lease("partition");
    let mut config = config().await;
    let partition = Partition::start(&mut config).await;
    let through_partition = connect(config).await;

    let a = candidate(&through_partition, &lease, "candidate-a");
    let leader = timeout(POLL * 3, a.task).await.unwrap().unwrap();
    let mut b = candidate(&direct, &lease, "candidate-b");
    tokio::time::sleep(POLL).await;
    assert!(!b.task.is_finished());

    partition.cut();
    let cut = Instant::now();
    timeout(RENEW_DEADLINE + POLL, leader.lost())
        .await
        .expect("lost() did not resolve after renewals failed for renew_deadline");
    let gave_up = cut.elapsed();
    assert!(
        !b.task.is_finished(),
        "candidate-b took over before the old leader gave up"
    );

    let successor = timeout(LEASE_DURATION + POLL * 3, &mut b.task)
        .await
        .expect("candidate-b did not take over")
        .unwrap();
    let replaced = cut.elapsed();
    assert!(
        gave_up < replaced,
        "gave up after {gave_up:?}, replaced after {replaced:?}"
    );
    assert_eq!(successor.identity(), "candidate-b");

    drop(leader);
    successor.release().await.unwrap();
    delete_lease(&direct, &lease).await;
}
