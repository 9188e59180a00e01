//! Signaling's link to Redis (cluster mode): room placement, rpc to remote dataplanes, liveness.
//!
//! Two threads keep Redis off the event loop: a **worker** (placement lookups, publishes, a
//! signaling beacon every 500 ms) and a **subscriber** (this instance's reply channel and the
//! health channel). Results come back to the loop over a channel plus its `mio::Waker`, so a slow
//! or dead Redis never stalls other sessions; every Redis call has a timeout and fails fast with
//! `unavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::{Beacon, BeaconKind, FromDataplane, RpcEnvelope, ToDataplane};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::Waker;
use registry::link::{LinkThreads, Outbox, SubscriberEvents, run_subscriber};
use registry::{Placement, RedisConn, RedisRegistry, RedisSettings, Registry, RegistryError};
use tracing::{debug, info, warn};

const BEACON_INTERVAL: Duration = Duration::from_millis(500);

/// Work for the cluster worker thread.
#[derive(Debug)]
pub enum Job {
    /// Look up (or make) the placement of `room`; answered by [`ClusterEvent::Placed`].
    Place {
        ticket: u64,
        room: String,
        exclude: Vec<String>,
    },
    /// Send a control message to a node's rpc channel.
    Rpc { node: String, msg: ToDataplane },
    /// Tell the registry a node failed.
    MarkDead { node: String },
    /// Tell every instance that the local dataplane `node` is gone (its socket closed and
    /// nothing listens there).
    NodeDown { node: String },
    /// Ask the registry whether `node` still heartbeats; answered by [`ClusterEvent::Alive`].
    CheckAlive { node: String },
}

/// What the cluster threads report to the event loop.
#[derive(Debug)]
pub enum ClusterEvent {
    Placed {
        ticket: u64,
        result: Result<Placement, RegistryError>,
    },
    /// A response or event from a remote dataplane.
    Reply(FromDataplane),
    Beacon(Beacon),
    /// The subscription is up or down (liveness of nodes can only be judged while it is up).
    Subscribed(bool),
    /// An rpc publish failed (Redis down): the request will not be answered.
    RpcFailed {
        node: String,
        msg: ToDataplane,
    },
    /// Whether `node`'s registry heartbeat is fresh (within the registry's dead-after).
    Alive {
        node: String,
        alive: bool,
    },
}

/// The event loop's handle on the cluster threads.
pub struct Cluster {
    pub signaling_id: String,
    pub settings: RedisSettings,
    tx: Sender<Job>,
    pub rx: Receiver<ClusterEvent>,
    threads: LinkThreads,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("signaling_id", &self.signaling_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn start(
        settings: RedisSettings,
        signaling_id: String,
        waker: Arc<Waker>,
    ) -> anyhow::Result<Self> {
        let registry = RedisRegistry::new(settings.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let publisher = RedisConn::new(&settings).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (tx, jobs) = crossbeam_channel::unbounded();
        let (out, rx) = Outbox::new(move || {
            let _ = waker.wake();
        });
        let mut threads = LinkThreads::new();
        {
            let (settings, id, out) = (settings.clone(), signaling_id.clone(), out.clone());
            threads.spawn("cluster", move |stop| {
                worker(&settings, &id, registry, publisher, &jobs, &out, stop)
            })?;
        }
        {
            let (settings, id) = (settings.clone(), signaling_id.clone());
            threads.spawn("subscriber", move |stop| {
                let events = SubscriberEvents {
                    subscribed: ClusterEvent::Subscribed,
                    beacon: ClusterEvent::Beacon,
                    message: |payload: &[u8]| match control::decode::<FromDataplane>(payload) {
                        Ok(m) => Some(ClusterEvent::Reply(m)),
                        Err(e) => {
                            warn!(error = %e, "bad reply from a dataplane");
                            None
                        }
                    },
                };
                run_subscriber(&settings, &settings.reply_channel(&id), stop, &out, events)
            })?;
        }
        info!(%signaling_id, prefix = %settings.prefix, sentinels = settings.sentinels.len(), "cluster mode");
        Ok(Self {
            signaling_id,
            settings,
            tx,
            rx,
            threads,
        })
    }

    pub fn send(&self, job: Job) {
        let _ = self.tx.send(job);
    }

    pub fn stop(mut self) {
        self.threads.stop();
    }
}

fn worker(
    settings: &RedisSettings,
    signaling_id: &str,
    mut registry: RedisRegistry,
    mut publisher: RedisConn,
    jobs: &Receiver<Job>,
    out: &Outbox<ClusterEvent>,
    stop: &AtomicBool,
) {
    let emit = |e: ClusterEvent| out.emit(e);
    let mut next_beacon = Instant::now();
    let beacon = control::encode(&Beacon {
        kind: BeaconKind::Signaling,
        id: signaling_id.to_string(),
        draining: None,
        incarnation: None,
    });
    while !stop.load(Ordering::Relaxed) {
        let wait = next_beacon.saturating_duration_since(Instant::now());
        match jobs.recv_timeout(wait.min(Duration::from_millis(250))) {
            Ok(Job::Place {
                ticket,
                room,
                exclude,
            }) => {
                let result = registry.place_room(&room, &exclude);
                emit(ClusterEvent::Placed { ticket, result });
            }
            Ok(Job::Rpc { node, msg }) => {
                let env = RpcEnvelope {
                    from: signaling_id.to_string(),
                    msg,
                };
                if let Err(e) =
                    publisher.publish(&settings.rpc_channel(&node), &control::encode(&env))
                {
                    debug!(%node, error = %e, "rpc publish failed");
                    emit(ClusterEvent::RpcFailed { node, msg: env.msg });
                }
            }
            Ok(Job::MarkDead { node }) => {
                if let Err(e) = registry.mark_dead(&node) {
                    debug!(%node, error = %e, "mark_dead failed");
                }
            }
            Ok(Job::NodeDown { node }) => {
                let notice = control::encode(&Beacon {
                    kind: BeaconKind::NodeDown,
                    id: node,
                    draining: None,
                    incarnation: None,
                });
                let _ = publisher.publish(&settings.health_channel(), &notice);
            }
            Ok(Job::CheckAlive { node }) => {
                // Unreachable Redis proves nothing: no answer then.
                if let Ok(nodes) = registry.nodes() {
                    let alive = nodes.iter().any(|n| n.node_id == node);
                    emit(ClusterEvent::Alive { node, alive });
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_beacon {
            next_beacon = Instant::now() + BEACON_INTERVAL;
            let _ = publisher.publish(&settings.health_channel(), &beacon);
        }
    }
}
