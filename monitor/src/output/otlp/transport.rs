//! Sending one export request, over HTTP/protobuf or gRPC, and telling what a failure means:
//! retry (connection errors, timeouts, the retryable statuses of the OTLP specification,
//! with the server's Retry-After or RetryInfo) or give up (any other rejection).
//! <https://opentelemetry.io/docs/specs/otlp/#failures>

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER},
    HeaderMap, Request, StatusCode, Uri,
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        logs_service_client::LogsServiceClient, ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    },
};
use prost::Message;
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::settings::{OtlpSettings, Protocol};

/// Why an export did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportError {
    /// Try again later (after `retry_after` when the server said so).
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The collector will never take this request: keep it aside (dead letters).
    Permanent {
        reason: String,
        /// The status the collector answered with, when it answered.
        status: Option<Status>,
    },
}

/// A collector's answer: an HTTP status or a gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Http(u16),
    Grpc(i32),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Retryable { reason, .. } | ExportError::Permanent { reason, .. } => {
                f.write_str(reason)
            }
        }
    }
}

/// A request the collector took, maybe in part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Records or data points it rejected (partial success).
    pub rejected: i64,
    pub message: String,
}

// google.rpc.Status and RetryInfo, the error details of gRPC and of OTLP/HTTP.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The RetryInfo delay among the details of a google.rpc.Status.
fn retry_info(status_details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_details).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .and_then(|any| RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .map(|d| {
            Duration::from_secs(d.seconds.max(0) as u64)
                + Duration::from_nanos(d.nanos.max(0) as u64)
        })
}

/// Sent as `User-Agent`, as the OTLP specification asks of exporters.
const USER_AGENT: &str = concat!("monitor-otlp/", env!("CARGO_PKG_VERSION"));

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends export requests. Cheap to clone; build it inside a tokio runtime.
#[derive(Clone)]
pub enum Transport {
    Http {
        client: HttpClient,
        logs: Uri,
        metrics: Uri,
        headers: HeaderMap,
        timeout: Duration,
    },
    Grpc {
        logs: LogsServiceClient<Channel>,
        metrics: MetricsServiceClient<Channel>,
        headers: MetadataMap,
        timeout: Duration,
    },
}

fn read_ca_file(settings: &OtlpSettings) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = &settings.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("failed to read the OTLP CA file {}", path.display()))?;
    Ok(Some(pem))
}

fn tls_config(ca_pem: Option<&[u8]>, ca_name: &str) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("while loading the system's CA certificates: {error}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.with_context(|| format!("failed to parse the CA file {ca_name}"))?;
            roots
                .add(cert)
                .with_context(|| format!("failed to use a certificate of {ca_name}"))?;
            added += 1;
        }
        if added == 0 {
            bail!("failed to use the CA file {ca_name}: it holds no PEM certificate");
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found on this system: https:// OTLP endpoints will fail unless \
             a CA file is configured (outputs.otlp.ca_file or OTEL_EXPORTER_OTLP_CERTIFICATE)"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("failed to set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn grpc_channel(
    url: &str,
    settings: &OtlpSettings,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid OTLP gRPC endpoint {url:?}"))?
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .user_agent(USER_AGENT)
        .context("failed to set the gRPC user agent")?;
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("failed to set up TLS for the OTLP gRPC endpoint")?;
    }
    // Lazy: a collector that is down at start-up is only a reason to retry later.
    Ok(endpoint.connect_lazy())
}

impl Transport {
    /// Checks the settings and builds the client. For gRPC it must run inside a tokio runtime.
    pub fn new(settings: &OtlpSettings) -> anyhow::Result<Transport> {
        let ca_pem = read_ca_file(settings)?;
        let ca_name = settings
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match settings.protocol {
            Protocol::Http => {
                let mut headers = HeaderMap::new();
                for (name, value) in &settings.headers {
                    let header = HeaderName::from_bytes(name.as_bytes())
                        .with_context(|| format!("invalid OTLP header name {name:?}"))?;
                    let value = HeaderValue::from_str(value)
                        .with_context(|| format!("invalid value of OTLP header {name:?}"))?;
                    headers.append(header, value);
                }
                let parse = |url: &str| -> anyhow::Result<Uri> {
                    url.parse()
                        .with_context(|| format!("invalid OTLP endpoint {url:?}"))
                };
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(settings.timeout));
                http.set_nodelay(true);
                let needs_tls = [&settings.logs_endpoint, &settings.metrics_endpoint]
                    .iter()
                    .any(|u| u.starts_with("https://"));
                let config = if needs_tls {
                    tls_config(ca_pem.as_deref(), &ca_name)?
                } else {
                    // Never used for plain http://, but the connector wants one.
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .context("failed to set up TLS")?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
                };
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector);
                Ok(Transport::Http {
                    client,
                    logs: parse(&settings.logs_endpoint)?,
                    metrics: parse(&settings.metrics_endpoint)?,
                    headers,
                    timeout: settings.timeout,
                })
            }
            Protocol::Grpc => {
                let mut headers = MetadataMap::new();
                for (name, value) in &settings.headers {
                    let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .with_context(|| format!("invalid OTLP header name {name:?}"))?;
                    let value = MetadataValue::try_from(value.as_str())
                        .with_context(|| format!("invalid value of OTLP header {name:?}"))?;
                    headers.append(key, value);
                }
                let logs = grpc_channel(&settings.logs_endpoint, settings, ca_pem.as_deref())?;
                let metrics = if settings.metrics_endpoint == settings.logs_endpoint {
                    logs.clone()
                } else {
                    grpc_channel(&settings.metrics_endpoint, settings, ca_pem.as_deref())?
                };
                Ok(Transport::Grpc {
                    logs: LogsServiceClient::new(logs),
                    metrics: MetricsServiceClient::new(metrics),
                    headers,
                    timeout: settings.timeout,
                })
            }
        }
    }

    /// Sends logs; `Accepted.rejected` counts the log records the collector refused.
    pub async fn export_logs(
        &mut self,
        request: ExportLogsServiceRequest,
    ) -> Result<Accepted, ExportError> {
        match self {
            Transport::Http {
                client,
                logs,
                headers,
                timeout,
                ..
            } => {
                let body = post(client, logs, headers, *timeout, request.encode_to_vec()).await?;
                let response = ExportLogsServiceResponse::decode(body).unwrap_or_default();
                Ok(response
                    .partial_success
                    .map(|p| Accepted {
                        rejected: p.rejected_log_records,
                        message: p.error_message,
                    })
                    .unwrap_or_default())
            }
            Transport::Grpc {
                logs,
                headers,
                timeout,
                ..
            } => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = headers.clone();
                request.set_timeout(*timeout);
                let response = logs.export(request).await.map_err(grpc_error)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| Accepted {
                        rejected: p.rejected_log_records,
                        message: p.error_message,
                    })
                    .unwrap_or_default())
            }
        }
    }

    /// Sends metrics; `Accepted.rejected` counts the data points the collector refused.
    pub async fn export_metrics(
        &mut self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Accepted, ExportError> {
        match self {
            Transport::Http {
                client,
                metrics,
                headers,
                timeout,
                ..
            } => {
                let body =
                    post(client, metrics, headers, *timeout, request.encode_to_vec()).await?;
                let response = ExportMetricsServiceResponse::decode(body).unwrap_or_default();
                Ok(response
                    .partial_success
                    .map(|p| Accepted {
                        rejected: p.rejected_data_points,
                        message: p.error_message,
                    })
                    .unwrap_or_default())
            }
            Transport::Grpc {
                metrics,
                headers,
                timeout,
                ..
            } => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = headers.clone();
                request.set_timeout(*timeout);
                let response = metrics.export(request).await.map_err(grpc_error)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| Accepted {
                        rejected: p.rejected_data_points,
                        message: p.error_message,
                    })
                    .unwrap_or_default())
            }
        }
    }
}

/// The OTLP/gRPC reading of a status: which codes to retry.
fn grpc_error(status: tonic::Status) -> ExportError {
    use tonic::Code;
    let reason = format!("gRPC status {:?}: {}", status.code(), status.message());
    let retry_after = retry_info(status.details());
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        // A collector out of memory or over its quota will take the alerts later; the spec
        // retries it only with RetryInfo, but giving up loses them: back off instead.
        | Code::ResourceExhausted
        // A collector that failed inside may recover.
        | Code::Internal
        | Code::Unknown => true,
        _ => false,
    };
    if retryable {
        ExportError::Retryable {
            reason,
            retry_after,
        }
    } else {
        ExportError::Permanent {
            reason,
            status: Some(Status::Grpc(status.code() as i32)),
        }
    }
}

/// Retry-After as delay-seconds (an HTTP date is not honoured: back-off applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What an error response says: the message of a google.rpc.Status, or the start of a text.
fn error_text(content_type: Option<&HeaderValue>, body: &[u8]) -> String {
    let is_protobuf = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("protobuf"));
    if is_protobuf {
        if let Ok(status) = RpcStatus::decode(body) {
            return status.message;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

async fn post(
    client: &HttpClient,
    uri: &Uri,
    headers: &HeaderMap,
    timeout: Duration,
    body: Vec<u8>,
) -> Result<Bytes, ExportError> {
    let mut request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/x-protobuf")
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ExportError::Permanent {
            reason: format!("failed to build the request: {e}"),
            status: None,
        })?;
    for (name, value) in headers {
        request.headers_mut().append(name, value.clone());
    }
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            use std::error::Error;
            let mut reason = format!("failed to send to {uri}: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                reason.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            ExportError::Retryable {
                reason,
                retry_after: None,
            }
        })?;
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let retry_after = retry_after(response.headers());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ExportError::Retryable {
                reason: format!("failed to read the response of {uri}: {e}"),
                retry_after: None,
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let reason = format!(
            "{uri} answered {status}: {}",
            error_text(content_type.as_ref(), &body)
        );
        // Every 5xx is the server's trouble, not the request's: retry it (the spec retries
        // only 502-504, and a collector answering 500 while it restarts would lose alerts).
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(ExportError::Retryable {
                reason,
                retry_after,
            })
        } else {
            Err(ExportError::Permanent {
                reason,
                status: Some(Status::Http(status.as_u16())),
            })
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ExportError::Retryable {
            reason: format!("no answer from {uri} within {timeout:?}"),
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_retry_info(seconds: i64) -> Vec<u8> {
        RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration { seconds, nanos: 0 }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn grpc_codes_follow_the_spec() {
        let retryable =
            |status: tonic::Status| matches!(grpc_error(status), ExportError::Retryable { .. });
        assert!(retryable(tonic::Status::unavailable("down")));
        assert!(retryable(tonic::Status::deadline_exceeded("slow")));
        assert!(!retryable(tonic::Status::invalid_argument("bad")));
        assert!(!retryable(tonic::Status::unauthenticated("who")));
        assert!(retryable(tonic::Status::resource_exhausted("full")));
        assert!(retryable(tonic::Status::internal("oops")));
        assert_eq!(
            grpc_error(tonic::Status::invalid_argument("bad")),
            ExportError::Permanent {
                reason: "gRPC status InvalidArgument: bad".into(),
                status: Some(Status::Grpc(3)),
            }
        );
        let with_info = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "full",
            Bytes::from(status_with_retry_info(3)),
        );
        assert_eq!(
            grpc_error(with_info),
            ExportError::Retryable {
                reason: "gRPC status ResourceExhausted: full".into(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
    }

    #[test]
    fn http_error_bodies_are_readable() {
        let protobuf = HeaderValue::from_static("application/x-protobuf");
        assert_eq!(
            error_text(Some(&protobuf), &status_with_retry_info(1)),
            "slow down"
        );
        assert_eq!(error_text(None, b" plain text \n"), "plain text");
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
