//! The Container Runtime Interface (containerd, CRI-O): gRPC over the unix socket, three unary
//! calls of `runtime.v1.RuntimeService` with tonic (already here for OTLP) and the few
//! messages written out with prost (field numbers from `k8s.io/cri-api`
//! `pkg/apis/runtime/v1/api.proto`; unknown fields are skipped by protobuf).
//!
//! - `Version`: the runtime's own name (`containerd`, `cri-o`) for `container.runtime`;
//! - `ListContainers` filtered by id: the container's name, image and labels (Kubernetes
//!   puts `io.kubernetes.pod.*` and `io.kubernetes.container.name` there) and its pod
//!   sandbox;
//! - `PodSandboxStatus`: the pod's name, uid, namespace and labels (the labels of the pod
//!   spec, which the container's labels do not carry).

use std::{collections::HashMap, path::Path};

use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;

use super::{split_image, ContainerMeta, LookupError};

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerFilter {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ContainerFilter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    #[prost(string, tag = "1")]
    pub image: String,
    #[prost(string, tag = "18")]
    pub user_specified_image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "4")]
    pub image: Option<ImageSpec>,
    #[prost(string, tag = "5")]
    pub image_ref: String,
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(map = "string, string", tag = "7")]
    pub labels: HashMap<String, String>,
}

const SERVICE: &str = "/runtime.v1.RuntimeService/";

/// A CRI client on one socket.
struct Client {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Client {
    async fn connect(socket: &Path) -> Result<Client, LookupError> {
        let socket = socket.to_owned();
        // The URI is required by the API and unused: every connection goes to the socket.
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|err| LookupError::Unreachable(format!("failed to connect: {err}")))?;
        Ok(Client {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn call<Q, A>(&mut self, method: &'static str, request: Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        let path = PathAndQuery::try_from(format!("{SERVICE}{method}"))
            .map_err(|err| tonic::Status::internal(err.to_string()))?;
        let answer = self
            .grpc
            .unary(
                tonic::Request::new(request),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok(answer.into_inner())
    }
}

fn status_error(method: &str, status: tonic::Status) -> LookupError {
    match status.code() {
        tonic::Code::Unavailable => LookupError::Unreachable(format!("{method}: {status}")),
        tonic::Code::DeadlineExceeded => LookupError::Slow,
        _ => LookupError::Protocol(format!("{method}: {status}")),
    }
}

/// The container's and its pod's metadata, `Ok(None)` when this runtime does not know the id.
pub async fn inspect(socket: &Path, id: &str) -> Result<Option<ContainerMeta>, LookupError> {
    let mut client = Client::connect(socket).await?;
    let version: VersionResponse = client
        .call(
            "Version",
            VersionRequest {
                version: "v1".into(),
            },
        )
        .await
        .map_err(|status| status_error("Version", status))?;
    let list: ListContainersResponse = client
        .call(
            "ListContainers",
            ListContainersRequest {
                filter: Some(ContainerFilter { id: id.to_owned() }),
            },
        )
        .await
        .map_err(|status| status_error("ListContainers", status))?;
    let Some(container) = list.containers.into_iter().find(|c| c.id == id) else {
        return Ok(None);
    };
    let sandbox = if container.pod_sandbox_id.is_empty() {
        None
    } else {
        // A pod that is gone by now still leaves the container's own labels.
        client
            .call::<_, PodSandboxStatusResponse>(
                "PodSandboxStatus",
                PodSandboxStatusRequest {
                    pod_sandbox_id: container.pod_sandbox_id.clone(),
                    verbose: false,
                },
            )
            .await
            .ok()
            .and_then(|answer| answer.status)
    };
    Ok(Some(meta(&version, container, sandbox)))
}

/// What the three answers say, as [`ContainerMeta`].
pub fn meta(
    version: &VersionResponse,
    container: Container,
    sandbox: Option<PodSandboxStatus>,
) -> ContainerMeta {
    let mut meta = ContainerMeta {
        name: container
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .filter(|n| !n.is_empty()),
        runtime: Some(version.runtime_name.clone()).filter(|n| !n.is_empty()),
        ..ContainerMeta::default()
    };
    // The image as the pod spec named it when the runtime kept that, else as resolved.
    let reference = container
        .image
        .as_ref()
        .map(|i| {
            if i.user_specified_image.is_empty() {
                i.image.clone()
            } else {
                i.user_specified_image.clone()
            }
        })
        .filter(|r| !r.is_empty() && !r.starts_with("sha256:"));
    if let Some(reference) = reference {
        let (name, tag, _digest) = split_image(&reference);
        meta.image_name = Some(name);
        meta.image_tag = tag;
    }
    if !container.image_ref.is_empty() {
        // `image_ref` is the image id (`sha256:...`) or a repo digest (`name@sha256:...`).
        let id = match container.image_ref.split_once('@') {
            Some((_, digest)) => digest.to_owned(),
            None => container.image_ref.clone(),
        };
        meta.image_id = Some(id);
    }
    meta.labels.extend(container.labels);
    if let Some(sandbox) = sandbox {
        meta.labels.extend(sandbox.labels);
        if let Some(pod) = sandbox.metadata {
            meta.pod_name = Some(pod.name).filter(|v| !v.is_empty());
            meta.pod_uid = Some(pod.uid).filter(|v| !v.is_empty());
            meta.namespace = Some(pod.namespace).filter(|v| !v.is_empty());
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// A CRI runtime in the test: answers the three calls over a unix socket with tonic's
    /// server, so that the client's paths, codec and connector are what is tested.
    mod fake {
        use std::{convert::Infallible, marker::PhantomData, task::Poll};

        use tonic::{body::Body, codegen::http, server::UnaryService};

        use super::super::*;

        pub const ID: &str = "9c4d2b6e8f0a1c3e5d7f9b1a3c5e7d9f0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a";

        #[derive(Clone)]
        pub struct Runtime;

        struct Handler<Q, A>(fn(Q) -> A, PhantomData<fn(Q)>);

        impl<Q: Send + 'static, A: Send + 'static> UnaryService<Q> for Handler<Q, A> {
            type Response = A;
            type Future = std::future::Ready<Result<tonic::Response<A>, tonic::Status>>;
            fn call(&mut self, request: tonic::Request<Q>) -> Self::Future {
                std::future::ready(Ok(tonic::Response::new((self.0)(request.into_inner()))))
            }
        }

        async fn answer<Q, A>(
            handler: fn(Q) -> A,
            request: http::Request<Body>,
        ) -> http::Response<Body>
        where
            Q: prost::Message + Default + Send + 'static,
            A: prost::Message + Send + 'static,
        {
            tonic::server::Grpc::new(tonic_prost::ProstCodec::<A, Q>::default())
                .unary(Handler(handler, PhantomData), request)
                .await
        }

        impl tower::Service<http::Request<Body>> for Runtime {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
            >;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                Box::pin(async move {
                    Ok(match request.uri().path() {
                        "/runtime.v1.RuntimeService/Version" => {
                            answer(
                                |_: VersionRequest| VersionResponse {
                                    runtime_name: "containerd".into(),
                                    ..VersionResponse::default()
                                },
                                request,
                            )
                            .await
                        }
                        "/runtime.v1.RuntimeService/ListContainers" => {
                            answer(
                                |q: ListContainersRequest| ListContainersResponse {
                                    containers: q
                                        .filter
                                        .filter(|f| f.id == ID)
                                        .map(|_| Container {
                                            id: ID.into(),
                                            pod_sandbox_id: "sandbox-1".into(),
                                            metadata: Some(ContainerMetadata {
                                                name: "server".into(),
                                                attempt: 0,
                                            }),
                                            image: Some(ImageSpec {
                                                image: "registry.example.com/vllm:0.6".into(),
                                                user_specified_image: String::new(),
                                            }),
                                            image_ref: "sha256:5e5e".into(),
                                            labels: HashMap::from([(
                                                "io.kubernetes.container.name".into(),
                                                "server".into(),
                                            )]),
                                        })
                                        .into_iter()
                                        .collect(),
                                },
                                request,
                            )
                            .await
                        }
                        "/runtime.v1.RuntimeService/PodSandboxStatus" => {
                            answer(
                                |q: PodSandboxStatusRequest| PodSandboxStatusResponse {
                                    status: (q.pod_sandbox_id == "sandbox-1").then(|| {
                                        PodSandboxStatus {
                                            id: q.pod_sandbox_id,
                                            metadata: Some(PodSandboxMetadata {
                                                name: "vllm-0".into(),
                                                uid: "0a1b".into(),
                                                namespace: "inference".into(),
                                            }),
                                            labels: HashMap::from([("app".into(), "vllm".into())]),
                                        }
                                    }),
                                },
                                request,
                            )
                            .await
                        }
                        _ => tonic::Status::unimplemented("not in the fake").into_http(),
                    })
                })
            }
        }

        impl tonic::server::NamedService for Runtime {
            const NAME: &'static str = "runtime.v1.RuntimeService";
        }
    }

    #[tokio::test]
    async fn a_real_grpc_round_trip_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("monitor-cri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("cri.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(fake::Runtime)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let meta = inspect(&socket, fake::ID).await.unwrap().unwrap();
        assert_eq!(meta.runtime.as_deref(), Some("containerd"));
        assert_eq!(meta.name.as_deref(), Some("server"));
        assert_eq!(
            meta.image_name.as_deref(),
            Some("registry.example.com/vllm")
        );
        assert_eq!(meta.image_tag.as_deref(), Some("0.6"));
        assert_eq!(meta.image_id.as_deref(), Some("sha256:5e5e"));
        assert_eq!(meta.pod_name.as_deref(), Some("vllm-0"));
        assert_eq!(meta.namespace.as_deref(), Some("inference"));
        assert_eq!(meta.labels["app"], "vllm");
        // Another id: the runtime does not know it.
        assert_eq!(inspect(&socket, &"1".repeat(64)).await.unwrap(), None);
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn answers_of_a_kubernetes_container() {
        let version = VersionResponse {
            runtime_name: "containerd".into(),
            ..VersionResponse::default()
        };
        // Encoded and decoded with the wire format, as a runtime would send it.
        let container = Container {
            id: "4f1e".into(),
            pod_sandbox_id: "sandbox".into(),
            metadata: Some(ContainerMetadata {
                name: "server".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "sha256:77aa".into(),
                user_specified_image: "vllm/vllm-openai:v0.6.3".into(),
            }),
            image_ref: "docker.io/vllm/vllm-openai@sha256:77aa".into(),
            labels: HashMap::from([
                ("io.kubernetes.container.name".into(), "server".into()),
                ("io.kubernetes.pod.name".into(), "vllm-0".into()),
            ]),
        };
        let container = Container::decode(container.encode_to_vec().as_slice()).unwrap();
        let sandbox = PodSandboxStatus {
            id: "sandbox".into(),
            metadata: Some(PodSandboxMetadata {
                name: "vllm-0".into(),
                uid: "0a1b".into(),
                namespace: "inference".into(),
            }),
            labels: HashMap::from([("app".into(), "vllm".into())]),
        };
        let mut meta = meta(&version, container, Some(sandbox));
        meta.fill_from_labels();
        assert_eq!(meta.name.as_deref(), Some("server"));
        assert_eq!(meta.runtime.as_deref(), Some("containerd"));
        assert_eq!(meta.image_name.as_deref(), Some("vllm/vllm-openai"));
        assert_eq!(meta.image_tag.as_deref(), Some("v0.6.3"));
        assert_eq!(meta.image_id.as_deref(), Some("sha256:77aa"));
        assert_eq!(meta.pod_name.as_deref(), Some("vllm-0"));
        assert_eq!(meta.namespace.as_deref(), Some("inference"));
        assert_eq!(meta.pod_uid.as_deref(), Some("0a1b"));
        assert_eq!(meta.k8s_container_name.as_deref(), Some("server"));
        assert_eq!(meta.labels["app"], "vllm");
    }
}
