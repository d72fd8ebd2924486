//! Container and pod metadata from the container runtime's API: which container, image, pod,
//! namespace and node a process belongs to.
//!
//! The process table parses a container id from each cgroup path ([`crate::host::container`]).
//! The first process of a container that the table sees asks the [`Registry`] for the
//! container's [`MetadataSlot`], shared by every process of that container; a new slot sends
//! a lookup request to a background task, which asks the runtime's API (the
//! Docker-compatible API of Docker and Podman, the CRI of containerd and CRI-O) and fills the
//! slot once. Nothing on the event path waits for it: an alert raised before the answer
//! carries `container.id` and `container.runtime` only, the later ones the whole set. When a
//! slot fills, [`Registry::arrived`] wakes the daemon, which evaluates the profiles'
//! selectors again for the processes that are not governed yet (workload selector keys
//! cannot match before the metadata is known).
//!
//! A socket that is missing, refuses or does not answer within [`LOOKUP_TIMEOUT`] is warned
//! about once, then skipped quietly (a runtime started later is still used).

pub mod cri;
pub mod docker;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::host::container::ContainerRef;

/// How long one lookup on one socket may take before the socket counts as slow.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups waiting for the background task; past it requests are counted and dropped (the
/// container's processes keep `container.id`).
const REQUEST_QUEUE: usize = 1024;
/// Lookups in flight at once.
const CONCURRENT_LOOKUPS: usize = 8;
/// A container not found yet may be one the runtime has not registered yet: asked again
/// after these delays.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
];
/// Slots kept for containers no process refers to any more, before they are forgotten.
const MAX_IDLE_SLOTS: usize = 4096;

/// Docker-compatible API sockets tried when none is given: Podman's (rootful), Docker's.
pub const DEFAULT_DOCKER_SOCKETS: [&str; 2] = ["/run/podman/podman.sock", "/var/run/docker.sock"];
/// CRI sockets tried when none is given: containerd's, CRI-O's.
pub const DEFAULT_CRI_SOCKETS: [&str; 2] =
    ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];

/// What the runtime says about a container. Every field is optional: runtimes differ in
/// what they know (a plain Podman container has no pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// `container.name`: the runtime's name (Kubernetes: the container's name in the pod).
    pub name: Option<String>,
    /// `container.image.name`: the image reference without tag or digest.
    pub image_name: Option<String>,
    /// `container.image.tag`.
    pub image_tag: Option<String>,
    /// `container.image.id`: the runtime's image id (`sha256:...`).
    pub image_id: Option<String>,
    /// `container.runtime` as the API names itself (`podman`, `docker`, `containerd`,
    /// `cri-o`); the cgroup path's guess otherwise.
    pub runtime: Option<String>,
    /// The container's labels, and under the CRI the pod's labels over them.
    pub labels: BTreeMap<String, String>,
    /// `k8s.pod.name` (label `io.kubernetes.pod.name`, or the CRI pod sandbox).
    pub pod_name: Option<String>,
    /// `k8s.pod.uid`.
    pub pod_uid: Option<String>,
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.container.name` (label `io.kubernetes.container.name`).
    pub k8s_container_name: Option<String>,
}

/// Kubernetes' labels on the containers it creates (kubelet `pkg/kubelet/types/labels.go`).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

impl ContainerMeta {
    /// Fills the Kubernetes fields that are still empty from the well-known labels.
    pub fn fill_from_labels(&mut self) {
        let label = |key: &str| self.labels.get(key).filter(|v| !v.is_empty()).cloned();
        let (pod, namespace, uid, container) = (
            label(LABEL_POD_NAME),
            label(LABEL_POD_NAMESPACE),
            label(LABEL_POD_UID),
            label(LABEL_CONTAINER_NAME),
        );
        self.pod_name = self.pod_name.take().or(pod);
        self.namespace = self.namespace.take().or(namespace);
        self.pod_uid = self.pod_uid.take().or(uid);
        self.k8s_container_name = self.k8s_container_name.take().or(container);
    }

    /// The image reference as selectors see it besides the name: `name:tag`.
    pub fn image_reference(&self) -> Option<String> {
        let name = self.image_name.as_deref()?;
        Some(match &self.image_tag {
            Some(tag) => format!("{name}:{tag}"),
            None => name.to_owned(),
        })
    }

    /// The semantic-convention keys (`container.*`, `k8s.*`) it knows.
    pub fn insert_keys(&self, map: &mut Map<String, Value>) {
        let pairs = [
            ("container.name", &self.name),
            ("container.image.name", &self.image_name),
            ("container.image.tag", &self.image_tag),
            ("container.image.id", &self.image_id),
            ("container.runtime", &self.runtime),
            ("k8s.pod.name", &self.pod_name),
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.container.name", &self.k8s_container_name),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                map.insert(key.into(), json!(value));
            }
        }
    }
}

/// Splits an image reference (`registry:5000/ns/name:tag@sha256:...`) into its name, its
/// tag and its digest. The tag is what follows the last `:` after the last `/`.
pub fn split_image(reference: &str) -> (String, Option<String>, Option<String>) {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest.to_owned())),
        None => (reference, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(colon) => {
            let colon = slash + colon;
            (
                rest[..colon].to_owned(),
                Some(rest[colon + 1..].to_owned()),
                digest,
            )
        }
        None => (rest.to_owned(), None, digest),
    }
}

/// The metadata of one container, shared by its processes; empty until the lookup answers.
/// Compares equal to any other slot and hashes to nothing: it describes the container id
/// next to it, it is not part of its identity.
#[derive(Clone, Default)]
pub struct MetadataSlot(Arc<OnceLock<Arc<ContainerMeta>>>);

impl MetadataSlot {
    /// What is known, if the lookup answered.
    pub fn get(&self) -> Option<&ContainerMeta> {
        self.0.get().map(Arc::as_ref)
    }

    /// Fills the slot; a second fill is ignored (a container's metadata does not change).
    pub fn fill(&self, meta: ContainerMeta) -> bool {
        self.0.set(Arc::new(meta)).is_ok()
    }

    fn shared_with(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl std::fmt::Debug for MetadataSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl PartialEq for MetadataSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MetadataSlot {}

impl std::hash::Hash for MetadataSlot {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// Where to ask, and what to add to every record.
#[derive(Clone, Debug, Default)]
pub struct WorkloadOptions {
    /// Docker-compatible API sockets (Docker, Podman); [`DEFAULT_DOCKER_SOCKETS`] when empty.
    pub docker_sockets: Vec<PathBuf>,
    /// CRI sockets (containerd, CRI-O); [`DEFAULT_CRI_SOCKETS`] when empty.
    pub cri_sockets: Vec<PathBuf>,
    /// `k8s.node.name`.
    pub node_name: Option<String>,
    /// No lookups at all (the keys from the cgroup path stay).
    pub disabled: bool,
}

/// Command-line options of the lookups (`monitor run`, `trace`, `learn`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WorkloadArgs {
    /// Kubernetes node name for `k8s.node.name` (default: the K8S_NODE_NAME environment
    /// variable, as a DaemonSet sets it from `spec.nodeName`).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Docker-compatible API socket to ask for container metadata (Docker, Podman;
    /// repeatable; default: /run/podman/podman.sock, /var/run/docker.sock where present).
    #[arg(long = "docker-socket", value_name = "PATH")]
    pub docker_sockets: Vec<PathBuf>,
    /// CRI socket to ask for container and pod metadata (containerd, CRI-O; repeatable;
    /// default: /run/containerd/containerd.sock, /var/run/crio/crio.sock where present).
    #[arg(long = "cri-socket", value_name = "PATH")]
    pub cri_sockets: Vec<PathBuf>,
    /// Do not ask the container runtime for metadata (alerts keep `container.id`).
    #[arg(long)]
    pub no_container_metadata: bool,
}

impl WorkloadArgs {
    pub fn options(&self) -> WorkloadOptions {
        WorkloadOptions {
            docker_sockets: self.docker_sockets.clone(),
            cri_sockets: self.cri_sockets.clone(),
            node_name: self
                .node_name
                .clone()
                .or_else(|| std::env::var("K8S_NODE_NAME").ok())
                .filter(|name| !name.is_empty()),
            disabled: self.no_container_metadata,
        }
    }
}

/// One lookup to do.
struct Request {
    id: String,
    runtime: &'static str,
    slot: MetadataSlot,
}

/// The containers known and the queue to the background lookups. See the module
/// documentation.
#[derive(Debug)]
pub struct Registry {
    slots: Mutex<HashMap<String, MetadataSlot>>,
    requests: Option<mpsc::Sender<Request>>,
    node_name: Option<String>,
    /// Woken when a container's metadata arrived.
    pub arrived: Notify,
    /// Lookups not made because the queue was full.
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({})", self.id)
    }
}

impl Registry {
    /// A registry that looks nothing up (tests, `--no-container-metadata`).
    pub fn offline(node_name: Option<String>) -> Arc<Registry> {
        Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            requests: None,
            node_name,
            arrived: Notify::new(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Starts the background lookups (inside a tokio runtime).
    pub fn start(options: &WorkloadOptions) -> Arc<Registry> {
        if options.disabled {
            return Registry::offline(options.node_name.clone());
        }
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let registry = Arc::new(Registry {
            slots: Mutex::new(HashMap::new()),
            requests: Some(tx),
            node_name: options.node_name.clone(),
            arrived: Notify::new(),
            dropped: AtomicU64::new(0),
        });
        let resolver = Resolver::new(options);
        info!(
            docker = %resolver.docker.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(","),
            cri = %resolver.cri.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(","),
            "container metadata from the runtime sockets"
        );
        tokio::spawn(resolve(resolver, rx, Arc::downgrade(&registry)));
        registry
    }

    /// `k8s.node.name`, if known.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Gives `container` the slot of its id, shared with the container's other processes;
    /// the first time an id is seen, its lookup is queued (never waits).
    pub fn attach(&self, container: &mut ContainerRef) {
        let mut slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = slots.get(&container.id) {
            container.metadata = slot.clone();
            return;
        }
        if slots.len() >= MAX_IDLE_SLOTS {
            // Containers whose processes are all gone: only the registry holds their slot.
            slots.retain(|_, slot| slot.shared_with() > 1);
        }
        let slot = MetadataSlot::default();
        slots.insert(container.id.clone(), slot.clone());
        container.metadata = slot.clone();
        if let Some(requests) = &self.requests {
            let request = Request {
                id: container.id.clone(),
                runtime: container.runtime,
                slot,
            };
            if requests.try_send(request).is_err() {
                // Asked again when the container is seen next after its slot is dropped.
                slots.remove(&container.id);
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        "failed to queue a container metadata lookup: {REQUEST_QUEUE} wait \
                         already (a slow runtime socket, or a burst of new containers); the \
                         container is reported with container.id only until it is seen again; \
                         counted, not warned again"
                    );
                }
            }
        }
    }

    /// The slot of a container id, if any process of it was seen.
    pub fn get(&self, id: &str) -> Option<MetadataSlot> {
        let slots = match self.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.get(id).cloned()
    }
}

/// The API a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Docker,
    Cri,
}

#[derive(Clone, Debug)]
struct Socket {
    path: PathBuf,
    api: Api,
    /// Given on the command line: a missing one is warned about.
    explicit: bool,
}

/// Why a lookup on one socket failed.
#[derive(Debug)]
pub enum LookupError {
    /// The socket is not there, refuses, or broke the connection.
    Unreachable(String),
    /// It did not answer within [`LOOKUP_TIMEOUT`].
    Slow,
    /// It answered something this does not understand.
    Protocol(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Unreachable(err) => write!(f, "{err}"),
            LookupError::Slow => write!(f, "no answer within {}s", LOOKUP_TIMEOUT.as_secs()),
            LookupError::Protocol(err) => write!(f, "unexpected answer: {err}"),
        }
    }
}

struct Resolver {
    docker: Vec<Socket>,
    cri: Vec<Socket>,
    /// Sockets already warned about (once each).
    warned: Mutex<HashSet<PathBuf>>,
    /// Runtimes for which no socket exists, already warned about.
    warned_runtimes: Mutex<HashSet<&'static str>>,
}

impl Resolver {
    fn new(options: &WorkloadOptions) -> Resolver {
        let sockets = |given: &[PathBuf], defaults: &[&str], api: Api| -> Vec<Socket> {
            if given.is_empty() {
                defaults
                    .iter()
                    .map(|path| Socket {
                        path: PathBuf::from(path),
                        api,
                        explicit: false,
                    })
                    .collect()
            } else {
                given
                    .iter()
                    .map(|path| Socket {
                        path: path.clone(),
                        api,
                        explicit: true,
                    })
                    .collect()
            }
        };
        Resolver {
            docker: sockets(
                &options.docker_sockets,
                &DEFAULT_DOCKER_SOCKETS,
                Api::Docker,
            ),
            cri: sockets(&options.cri_sockets, &DEFAULT_CRI_SOCKETS, Api::Cri),
            warned: Mutex::new(HashSet::new()),
            warned_runtimes: Mutex::new(HashSet::new()),
        }
    }

    /// The sockets that may know a container of `runtime` (as the cgroup path says), the
    /// likeliest first.
    fn candidates(&self, runtime: &str) -> Vec<Socket> {
        let prefer = |sockets: &[Socket], word: &str| {
            let mut sorted = sockets.to_vec();
            sorted.sort_by_key(|s| !s.path.to_string_lossy().contains(word));
            sorted
        };
        match runtime {
            "podman" => prefer(&self.docker, "podman"),
            "docker" => prefer(&self.docker, "docker"),
            "containerd" => prefer(&self.cri, "containerd"),
            "cri-o" => prefer(&self.cri, "crio"),
            _ => self.cri.iter().chain(&self.docker).cloned().collect(),
        }
    }

    fn warn_once(&self, socket: &Path, message: impl FnOnce() -> String) {
        let mut warned = match self.warned.lock() {
            Ok(warned) => warned,
            Err(poisoned) => poisoned.into_inner(),
        };
        if warned.insert(socket.to_owned()) {
            warn!("{}", message());
        }
    }

    /// Asks each candidate socket in turn; `Ok(None)`: no socket knows the container.
    async fn lookup(&self, id: &str, runtime: &'static str) -> Option<ContainerMeta> {
        let mut present = false;
        for socket in self.candidates(runtime) {
            if !socket.explicit && !socket.path.exists() {
                continue;
            }
            present = true;
            let answer = match socket.api {
                Api::Docker => {
                    tokio::time::timeout(LOOKUP_TIMEOUT, docker::inspect(&socket.path, id)).await
                }
                Api::Cri => {
                    tokio::time::timeout(LOOKUP_TIMEOUT, cri::inspect(&socket.path, id)).await
                }
            };
            let answer = answer.unwrap_or(Err(LookupError::Slow));
            match answer {
                Ok(Some(mut meta)) => {
                    if meta.runtime.is_none() && runtime != "unknown" {
                        meta.runtime = Some(runtime.to_owned());
                    }
                    meta.fill_from_labels();
                    return Some(meta);
                }
                Ok(None) => {}
                Err(err) => self.warn_once(&socket.path, || {
                    format!(
                        "failed to ask {} for container metadata: {err}; containers it runs \
                         are reported with container.id only (give the right socket with \
                         --{}-socket, mount it into the monitor's container, or turn lookups \
                         off with --no-container-metadata); not warned again",
                        socket.path.display(),
                        match socket.api {
                            Api::Docker => "docker",
                            Api::Cri => "cri",
                        }
                    )
                }),
            }
        }
        if !present {
            let mut warned = match self.warned_runtimes.lock() {
                Ok(warned) => warned,
                Err(poisoned) => poisoned.into_inner(),
            };
            if warned.insert(runtime) {
                let tried: Vec<String> = self
                    .candidates(runtime)
                    .iter()
                    .map(|s| s.path.display().to_string())
                    .collect();
                warn!(
                    "failed to find an API socket for {runtime} containers (tried {}): they are \
                     reported with container.id only; give one with --docker-socket or \
                     --cri-socket",
                    tried.join(", ")
                );
            }
        }
        None
    }
}

/// The background task: one lookup per request, a few at once, retried while the runtime
/// may not know the container yet.
async fn resolve(
    resolver: Resolver,
    mut requests: mpsc::Receiver<Request>,
    registry: std::sync::Weak<Registry>,
) {
    let resolver = Arc::new(resolver);
    let permits = Arc::new(Semaphore::new(CONCURRENT_LOOKUPS));
    while let Some(request) = requests.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let resolver = resolver.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut delays = RETRY_DELAYS.iter();
            loop {
                if let Some(meta) = resolver.lookup(&request.id, request.runtime).await {
                    debug!(id = %request.id, ?meta, "container metadata");
                    request.slot.fill(meta);
                    if let Some(registry) = registry.upgrade() {
                        registry.arrived.notify_one();
                    }
                    return;
                }
                match delays.next() {
                    Some(delay) => tokio::time::sleep(*delay).await,
                    None => {
                        debug!(id = %request.id, "no runtime knows this container");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split() {
        let cases = [
            (
                "vllm/vllm-openai:v0.6.3",
                ("vllm/vllm-openai", Some("v0.6.3"), None),
            ),
            (
                "registry.example.com:5000/ml/server:1.2",
                ("registry.example.com:5000/ml/server", Some("1.2"), None),
            ),
            (
                "registry.example.com:5000/ml/server",
                ("registry.example.com:5000/ml/server", None, None),
            ),
            (
                "ghcr.io/x/y:2@sha256:abcd",
                ("ghcr.io/x/y", Some("2"), Some("sha256:abcd")),
            ),
            (
                "ghcr.io/x/y@sha256:abcd",
                ("ghcr.io/x/y", None, Some("sha256:abcd")),
            ),
            ("busybox", ("busybox", None, None)),
        ];
        for (reference, (name, tag, digest)) in cases {
            let found = split_image(reference);
            assert_eq!(
                found,
                (
                    name.to_owned(),
                    tag.map(str::to_owned),
                    digest.map(str::to_owned)
                ),
                "{reference}"
            );
        }
    }

    #[test]
    fn kubernetes_labels_fill_the_pod_keys() {
        let mut meta = ContainerMeta {
            name: Some("k8s_server_vllm-0_inference_uid_0".into()),
            ..ContainerMeta::default()
        };
        for (key, value) in [
            (LABEL_POD_NAME, "vllm-0"),
            (LABEL_POD_NAMESPACE, "inference"),
            (LABEL_POD_UID, "0a1b"),
            (LABEL_CONTAINER_NAME, "server"),
        ] {
            meta.labels.insert(key.into(), value.into());
        }
        meta.fill_from_labels();
        let mut map = Map::new();
        meta.insert_keys(&mut map);
        assert_eq!(map["k8s.pod.name"], "vllm-0");
        assert_eq!(map["k8s.namespace.name"], "inference");
        assert_eq!(map["k8s.pod.uid"], "0a1b");
        assert_eq!(map["k8s.container.name"], "server");
        assert_eq!(map["container.name"], "k8s_server_vllm-0_inference_uid_0");
        assert!(!map.contains_key("container.image.name"));
    }

    #[test]
    fn one_slot_per_container_and_one_request() {
        let (tx, mut rx) = mpsc::channel(4);
        let registry = Registry {
            slots: Mutex::new(HashMap::new()),
            requests: Some(tx),
            node_name: None,
            arrived: Notify::new(),
            dropped: AtomicU64::new(0),
        };
        let id = "4f1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        let path = format!("/machine.slice/libpod-{id}.scope");
        let mut first = crate::host::container::container_id(&path).unwrap();
        let mut second = crate::host::container::container_id(&path).unwrap();
        registry.attach(&mut first);
        registry.attach(&mut second);
        let request = rx.try_recv().unwrap();
        assert_eq!((request.id.as_str(), request.runtime), (id, "podman"));
        assert!(rx.try_recv().is_err(), "one lookup per container");
        // Filled once, seen through every process's reference.
        assert!(request.slot.fill(ContainerMeta {
            name: Some("server".into()),
            ..ContainerMeta::default()
        }));
        assert_eq!(
            second.metadata.get().and_then(|m| m.name.as_deref()),
            Some("server")
        );
        assert_eq!(
            first.metadata.get().and_then(|m| m.name.as_deref()),
            Some("server")
        );
        assert!(!request.slot.fill(ContainerMeta::default()));
    }

    #[test]
    fn a_full_queue_is_counted_and_asked_again_later() {
        let (tx, mut rx) = mpsc::channel(1);
        let registry = Registry {
            slots: Mutex::new(HashMap::new()),
            requests: Some(tx),
            node_name: None,
            arrived: Notify::new(),
            dropped: AtomicU64::new(0),
        };
        let ids = ["1".repeat(64), "2".repeat(64)];
        let mut refs: Vec<ContainerRef> = ids
            .iter()
            .map(|id| crate::host::container::container_id(&format!("/docker/{id}")).unwrap())
            .collect();
        for container in &mut refs {
            registry.attach(container);
        }
        assert_eq!(registry.dropped.load(Ordering::Relaxed), 1);
        assert!(registry.get(&ids[1]).is_none());
        rx.try_recv().unwrap();
        registry.attach(&mut refs[1]);
        assert_eq!(rx.try_recv().unwrap().id, ids[1]);
    }

    /// What the daemon does when a container's metadata arrives (`Registry::arrived`): the
    /// selectors are evaluated again, and the container's ungoverned processes (and their
    /// children) come under the profile that now matches.
    #[test]
    fn selection_is_evaluated_again_when_metadata_arrives() {
        let dir = std::env::temp_dir().join(format!("monitor-workload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        let text = "builtin_profiles: false\nprofiles: [p.yaml]\n";
        std::fs::write(
            dir.join("p.yaml"),
            "name: pods\nselector: {images: ['*/vllm*'], pod_labels: {app: vllm}}\n",
        )
        .unwrap();
        let config = crate::config::parse_config(&file, text).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut engine = crate::rules::Engine::new(Arc::new(config));
        let mut table = crate::host::process::ProcessTable::new();
        let registry = Registry::offline(None);
        table.containers = Some(registry.clone());
        let id = "5".repeat(64);
        let exec = |tgid: u32, start: u64, exe: &str| crate::event::ExecInfo {
            tgid,
            start_time_ns: start,
            ppid: 1,
            parent_start_time_ns: 1,
            exe: exe.into(),
            args: vec![exe.into()],
            uid: 0,
            cgroup_id: 7,
            cgroup_path: Some(format!("/machine.slice/libpod-{id}.scope")),
            ..crate::event::ExecInfo::default()
        };
        table.on_exec(exec(100, 1_000, "/usr/bin/python3"));
        table.on_fork(101, 2_000, 100, 1_000);
        table.on_exec(exec(200, 3_000, "/usr/bin/other"));
        // Nothing known yet: no profile matches.
        assert!(engine.seed(&table).is_empty());
        let mut meta = ContainerMeta {
            image_name: Some("docker.io/vllm/vllm-openai".into()),
            ..ContainerMeta::default()
        };
        meta.labels.insert("app".into(), "vllm".into());
        assert!(registry.get(&id).unwrap().fill(meta));
        let governed: Vec<u32> = engine.seed(&table).into_iter().map(|(t, _)| t).collect();
        assert_eq!(governed, [100, 101, 200]);
        // Every process of the container sees it, through the one shared slot.
        let name = table
            .get_by_tgid(101)
            .and_then(|p| p.container.as_ref())
            .and_then(|c| c.metadata.get())
            .and_then(|m| m.image_name.clone());
        assert_eq!(name.as_deref(), Some("docker.io/vllm/vllm-openai"));
    }

    #[tokio::test]
    async fn a_missing_socket_is_no_stall() {
        let options = WorkloadOptions {
            docker_sockets: vec![PathBuf::from("/nonexistent/docker.sock")],
            cri_sockets: vec![PathBuf::from("/nonexistent/cri.sock")],
            ..WorkloadOptions::default()
        };
        let resolver = Resolver::new(&options);
        let started = std::time::Instant::now();
        assert_eq!(resolver.lookup(&"3".repeat(64), "unknown").await, None);
        assert!(started.elapsed() < LOOKUP_TIMEOUT);
        // Warned once per socket.
        assert_eq!(resolver.warned.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_is_slow_not_a_stall() {
        let dir = std::env::temp_dir().join(format!("monitor-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("docker.sock");
        let _ = std::fs::remove_file(&path);
        // Accepts connections (the kernel's backlog) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let options = WorkloadOptions {
            docker_sockets: vec![path.clone()],
            cri_sockets: vec![],
            ..WorkloadOptions::default()
        };
        let mut resolver = Resolver::new(&options);
        resolver.cri.clear();
        let started = std::time::Instant::now();
        assert_eq!(resolver.lookup(&"4".repeat(64), "docker").await, None);
        let took = started.elapsed();
        assert!(
            took >= LOOKUP_TIMEOUT && took < LOOKUP_TIMEOUT * 2,
            "{took:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
