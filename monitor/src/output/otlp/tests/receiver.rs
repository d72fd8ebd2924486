//! In-process OTLP receivers for the tests: a tonic gRPC server (LogsService and
//! MetricsService) and a hyper HTTP/1.1 server (`/v1/logs`, `/v1/metrics`). Both record what
//! they get and answer logs requests from a script (then accept everything).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            logs_service_server::{LogsService, LogsServiceServer},
            ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        },
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
    },
    common::v1::any_value,
    logs::v1::LogRecord,
};
use prost::Message;
use tokio::{net::TcpListener, task::JoinSet};

/// How to answer one logs request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Accept, rejecting `rejected` records (partial success) when not zero.
    Accept { rejected: i64 },
    /// Fail with this HTTP status or gRPC code; `retry_after` as Retry-After seconds.
    Fail {
        http: u16,
        grpc: tonic::Code,
        retry_after: Option<u64>,
    },
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received<T> {
    /// Header names lower-cased (gRPC metadata included).
    pub headers: Vec<(String, String)>,
    pub path: String,
    pub request: T,
    /// Whether the request was answered with success.
    pub accepted: bool,
}

impl<T> Received<T> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct Captured {
    pub logs: Vec<Received<ExportLogsServiceRequest>>,
    pub metrics: Vec<Received<ExportMetricsServiceRequest>>,
}

#[derive(Default)]
struct State {
    captured: Mutex<Captured>,
    replies: Mutex<VecDeque<Reply>>,
}

impl State {
    fn next_reply(&self) -> Reply {
        self.replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Accept { rejected: 0 })
    }
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: JoinSet<()>,
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM.
pub struct TestCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCertificates {
    pub fn new() -> TestCertificates {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "monitor test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCertificates {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for a receiver started later).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn bind(addr: SocketAddr) -> TcpListener {
    // The port of a receiver that is "down" may still be in TIME_WAIT: retry a moment.
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("failed to bind the test receiver to {addr}");
}

impl Receiver {
    pub async fn http(addr: SocketAddr) -> Receiver {
        Self::http_with(addr, None).await
    }

    /// HTTPS with the server certificate of `certs`.
    pub async fn https(addr: SocketAddr, certs: &TestCertificates) -> Receiver {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Self::http_with(
            addr,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn http_with(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let server_state = state.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = server_state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle_http(state.clone(), request));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => {
                            // A client that does not trust us hangs up here.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                    };
                });
            }
        });
        Receiver { addr, state, tasks }
    }

    pub async fn grpc(addr: SocketAddr) -> Receiver {
        Self::grpc_with(addr, None).await
    }

    /// gRPC over TLS with the server certificate of `certs`.
    pub async fn grpcs(addr: SocketAddr, certs: &TestCertificates) -> Receiver {
        let identity = tonic::transport::Identity::from_pem(&certs.cert_pem, &certs.key_pem);
        Self::grpc_with(
            addr,
            Some(tonic::transport::ServerTlsConfig::new().identity(identity)),
        )
        .await
    }

    async fn grpc_with(
        addr: SocketAddr,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Receiver {
        let listener = bind(addr).await;
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let service = GrpcService(state.clone());
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        tasks.spawn(async move {
            let _ = server
                .add_service(LogsServiceServer::new(service.clone()))
                .add_service(MetricsServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Receiver { addr, state, tasks }
    }

    /// Answers the next logs requests with these replies, in turn.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.replies.lock().unwrap().extend(replies);
    }

    pub fn with<R>(&self, f: impl FnOnce(&Captured) -> R) -> R {
        f(&self.state.captured.lock().unwrap())
    }

    /// Every log record of the accepted requests.
    pub fn records(&self) -> Vec<LogRecord> {
        self.with(|c| {
            c.logs
                .iter()
                .filter(|r| r.accepted)
                .flat_map(|r| &r.request.resource_logs)
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| s.log_records.clone())
                .collect()
        })
    }

    /// `log.record.uid` of every accepted record.
    pub fn uids(&self) -> Vec<String> {
        self.records().iter().filter_map(uid).collect()
    }

    /// Waits until `pred` holds; panics with `what` after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Receiver) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(self) {
            if tokio::time::Instant::now() > deadline {
                let requests = self.with(|c| c.logs.len());
                panic!(
                    "the receiver did not get {what} within {timeout:?} ({requests} logs \
                     requests, uids {:?})",
                    self.uids()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The `log.record.uid` attribute of a record.
pub fn uid(record: &LogRecord) -> Option<String> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == "log.record.uid")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

async fn handle_http(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = request.into_body().collect().await?.to_bytes();
    let ok = |body: Vec<u8>| {
        Response::builder()
            .status(200)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if path.ends_with("/v1/metrics") {
        let request = ExportMetricsServiceRequest::decode(body).expect("a metrics request");
        state.captured.lock().unwrap().metrics.push(Received {
            headers,
            path,
            request,
            accepted: true,
        });
        return Ok(ok(ExportMetricsServiceResponse::default().encode_to_vec()));
    }
    if !path.ends_with("/v1/logs") {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"no such path")))
            .unwrap());
    }
    let request = ExportLogsServiceRequest::decode(body).expect("a logs request");
    let reply = state.next_reply();
    state.captured.lock().unwrap().logs.push(Received {
        headers,
        path,
        request,
        accepted: matches!(reply, Reply::Accept { .. }),
    });
    Ok(match reply {
        Reply::Accept { rejected } => ok(logs_response(rejected).encode_to_vec()),
        Reply::Fail {
            http, retry_after, ..
        } => {
            let mut response = Response::builder().status(http);
            if let Some(seconds) = retry_after {
                response = response.header("retry-after", seconds.to_string());
            }
            response
                .body(Full::new(Bytes::from_static(b"scripted failure")))
                .unwrap()
        }
    })
}

fn logs_response(rejected: i64) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: "scripted partial success".into(),
        }),
    }
}

#[derive(Clone)]
struct GrpcService(Arc<State>);

fn metadata(map: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    map.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

#[tonic::async_trait]
impl LogsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let headers = metadata(request.metadata());
        let reply = self.0.next_reply();
        self.0.captured.lock().unwrap().logs.push(Received {
            headers,
            path: "/opentelemetry.proto.collector.logs.v1.LogsService/Export".into(),
            request: request.into_inner(),
            accepted: matches!(reply, Reply::Accept { .. }),
        });
        match reply {
            Reply::Accept { rejected } => Ok(tonic::Response::new(logs_response(rejected))),
            Reply::Fail { grpc, .. } => Err(tonic::Status::new(grpc, "scripted failure")),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = metadata(request.metadata());
        self.0.captured.lock().unwrap().metrics.push(Received {
            headers,
            path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export".into(),
            request: request.into_inner(),
            accepted: true,
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}
