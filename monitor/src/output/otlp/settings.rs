//! Where and how to export: command-line flags, then the config file, then the standard
//! `OTEL_*` environment variables
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>).

use opentelemetry_semantic_conventions::attribute as semconv;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context};
use hyper::Uri;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/protobuf (`POST .../v1/logs`, `application/x-protobuf`).
    Http,
    /// gRPC (`LogsService/Export`).
    Grpc,
}

impl Protocol {
    /// Parses `http`, `http/protobuf` or `grpc` (the values of `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(text: &str) -> anyhow::Result<Protocol> {
        match text.trim() {
            "http" | "http/protobuf" => Ok(Protocol::Http),
            "grpc" => Ok(Protocol::Grpc),
            "http/json" => {
                bail!("OTLP protocol http/json is not supported: use http/protobuf or grpc")
            }
            other => bail!("unknown OTLP protocol {other:?}: use http/protobuf (or http) or grpc"),
        }
    }

    fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Http => "http://localhost:4318",
            Protocol::Grpc => "http://localhost:4317",
        }
    }
}

/// Where the spool is when neither a flag nor the config file says.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/monitor/spool";
/// The spool's size limit when neither a flag nor the config file says (64 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;

/// Flags of `monitor run` for the OTLP export (flatten into the command's arguments).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpArgs {
    /// Export alerts (OTLP logs) and the monitor's metrics to this OpenTelemetry collector.
    /// For HTTP the base URL: `/v1/logs` and `/v1/metrics` are appended. Also from
    /// OTEL_EXPORTER_OTLP_ENDPOINT or the config file.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport [default: http, or OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<Protocol>,
    /// Where alerts wait until the collector has accepted them
    /// [default: /var/lib/monitor/spool].
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Size limit of the spool; when full, the oldest alerts of the lowest severity go
    /// first [default: 67108864 (64 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
}

impl OtlpArgs {
    /// The spool's directory and size limit: the flags, then the config file, then
    /// [`DEFAULT_SPOOL_DIR`] and [`DEFAULT_SPOOL_MAX_BYTES`].
    pub fn spool(&self, file: Option<&OtlpFileSettings>) -> (PathBuf, u64) {
        let dir = self
            .spool_dir
            .clone()
            .or_else(|| file.and_then(|f| f.spool_dir.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        let max_bytes = self
            .spool_max_bytes
            .or_else(|| file.and_then(|f| f.spool_max_bytes))
            .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
        (dir, max_bytes)
    }
}

/// `outputs.otlp` of the config file, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpFileSettings {
    /// Base URL, as `--otlp-endpoint`.
    pub endpoint: Option<String>,
    /// `http`, `http/protobuf` or `grpc`.
    pub protocol: Option<String>,
    /// Extra request headers (e.g. an API key); override OTEL_EXPORTER_OTLP_HEADERS per name.
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA that signs the collector's certificate (https:// only), in addition
    /// to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `outputs.spool.dir`.
    pub spool_dir: Option<PathBuf>,
    /// `outputs.spool.max_bytes`.
    pub spool_max_bytes: Option<u64>,
}

/// Exponential back-off between retries of a failed export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure; doubled after each further one.
    pub initial: Duration,
    /// Largest delay (before jitter), also the cap on a server's Retry-After.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `initial * 2^attempt`, capped, then
    /// scaled by a random factor in [0.5, 1) so that many monitors do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        base.mul_f64(0.5 + 0.5 * random_unit())
    }
}

/// A random number in [0, 1).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    if n != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return f64::from(nanos % 1000) / 1000.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Everything the exporter needs, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    /// Where logs go: the full URL for HTTP (`.../v1/logs`), the server for gRPC.
    pub logs_endpoint: String,
    /// Where metrics go: the full URL for HTTP (`.../v1/metrics`), the server for gRPC.
    pub metrics_endpoint: String,
    pub protocol: Protocol,
    /// Request headers (gRPC metadata), names as given.
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
    /// Limit of one export request.
    pub timeout: Duration,
    /// Resource attributes: `service.name`, `service.version`, `host.name`, `host.id` and
    /// those of OTEL_RESOURCE_ATTRIBUTES.
    pub resource: Vec<(String, String)>,
    pub backoff: Backoff,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
    /// How often the heartbeat (a `monitor.heartbeat` log record and `monitor.up`) is sent.
    pub heartbeat_interval: Duration,
}

/// The `OTEL_*` variables of this process, for [`OtlpSettings::resolve`].
pub fn process_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("OTEL_"))
        .collect()
}

fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Decodes `%XX` escapes (W3C baggage octets, as OTEL_EXPORTER_OTLP_HEADERS and
/// OTEL_RESOURCE_ATTRIBUTES use them).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `key=value,key2=value2` with URL-encoded keys and values. Entries without `=` are
/// skipped with a warning naming `variable`.
pub fn parse_key_values(text: &str, variable: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .filter_map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Some((percent_decode(key.trim()), percent_decode(value.trim())))
            }
            _ => {
                tracing::warn!("ignoring {variable} entry {entry:?}: expected key=value");
                None
            }
        })
        .collect()
}

/// Checks an endpoint URL: http or https, with a host.
fn parse_endpoint(url: &str, source: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid OTLP endpoint {url:?} (from {source})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => bail!(
            "invalid OTLP endpoint {url:?} (from {source}): give a URL that starts with \
             http:// or https://, e.g. http://localhost:4318"
        ),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        bail!("invalid OTLP endpoint {url:?} (from {source}): the URL has no host");
    }
    Ok(uri)
}

/// The URL of one signal from a base URL: for HTTP the base path plus `/v1/<signal>` (a base
/// that already ends in `/v1/logs` or `/v1/metrics` has that replaced), for gRPC the server.
fn signal_url(
    base: &str,
    signal: &str,
    protocol: Protocol,
    source: &str,
) -> anyhow::Result<String> {
    let uri = parse_endpoint(base, source)?;
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().expect("checked")
    );
    Ok(match protocol {
        Protocol::Grpc => origin,
        Protocol::Http => {
            let mut path = uri.path().trim_end_matches('/');
            for known in ["/v1/logs", "/v1/metrics"] {
                if let Some(stripped) = path.strip_suffix(known) {
                    path = stripped;
                }
            }
            format!("{origin}{path}/v1/{signal}")
        }
    })
}

/// A signal URL taken as-is (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT and the like): for gRPC only
/// the server part is used.
fn exact_url(url: &str, protocol: Protocol, source: &str) -> anyhow::Result<String> {
    let uri = parse_endpoint(url, source)?;
    Ok(match protocol {
        Protocol::Grpc => format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().expect("checked")
        ),
        Protocol::Http => url.trim().to_string(),
    })
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

fn host_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// The resource attributes, detected ones first, then OTEL_RESOURCE_ATTRIBUTES (which may
/// override them), then OTEL_SERVICE_NAME.
fn resource(env: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut attributes: Vec<(String, String)> = vec![
        (semconv::SERVICE_NAME.into(), "monitor".into()),
        (
            semconv::SERVICE_VERSION.into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ];
    if let Some(name) = host_name() {
        attributes.push((semconv::HOST_NAME.into(), name));
    }
    if let Some(id) = host_id() {
        attributes.push((semconv::HOST_ID.into(), id));
    }
    let mut set = |key: String, value: String| {
        if let Some(slot) = attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            attributes.push((key, value));
        }
    };
    if let Some(text) = non_empty(env.get("OTEL_RESOURCE_ATTRIBUTES")) {
        for (key, value) in parse_key_values(text, "OTEL_RESOURCE_ATTRIBUTES") {
            set(key, value);
        }
    }
    if let Some(name) = non_empty(env.get("OTEL_SERVICE_NAME")) {
        set(semconv::SERVICE_NAME.into(), name.to_string());
    }
    attributes
}

fn env_timeout(env: &HashMap<String, String>) -> anyhow::Result<Option<Duration>> {
    for name in [
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ] {
        if let Some(text) = non_empty(env.get(name)) {
            let ms: u64 = text
                .parse()
                .with_context(|| format!("invalid {name} {text:?}: expected milliseconds"))?;
            return Ok(Some(Duration::from_millis(ms.max(1))));
        }
    }
    Ok(None)
}

impl OtlpSettings {
    /// Resolves the settings from the flags, then the config file, then `env` (the `OTEL_*`
    /// variables: pass [`process_env`], or a map in tests). `None` when OTLP export is not
    /// asked for: no endpoint anywhere, and no protocol in the flags or the file.
    pub fn resolve(
        args: &OtlpArgs,
        file: Option<&OtlpFileSettings>,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Option<OtlpSettings>> {
        let file_endpoint = file.and_then(|f| non_empty(f.endpoint.as_ref()));
        let file_protocol = file.and_then(|f| non_empty(f.protocol.as_ref()));
        let env_base = non_empty(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let env_logs = non_empty(env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"));
        let env_metrics = non_empty(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"));
        let wanted = args.otlp_endpoint.is_some()
            || args.otlp_protocol.is_some()
            || file_endpoint.is_some()
            || file_protocol.is_some()
            || env_base.is_some()
            || env_logs.is_some();
        if !wanted {
            return Ok(None);
        }

        let protocol = if let Some(protocol) = args.otlp_protocol {
            protocol
        } else if let Some(text) = file_protocol {
            Protocol::parse(text).context("in outputs.otlp.protocol of the config file")?
        } else if let Some((name, text)) = [
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .iter()
        .find_map(|name| non_empty(env.get(*name)).map(|text| (name, text)))
        {
            Protocol::parse(text).with_context(|| format!("in {name}"))?
        } else {
            Protocol::Http
        };

        let (logs_endpoint, metrics_endpoint) = if let Some(base) = args.otlp_endpoint.as_deref() {
            (
                signal_url(base, "logs", protocol, "--otlp-endpoint")?,
                signal_url(base, "metrics", protocol, "--otlp-endpoint")?,
            )
        } else if let Some(base) = file_endpoint {
            let source = "outputs.otlp.endpoint of the config file";
            (
                signal_url(base, "logs", protocol, source)?,
                signal_url(base, "metrics", protocol, source)?,
            )
        } else {
            let base = env_base.unwrap_or(protocol.default_endpoint());
            let base_source = if env_base.is_some() {
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            } else {
                "the default endpoint"
            };
            let logs = match env_logs {
                Some(url) => exact_url(url, protocol, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")?,
                None => signal_url(base, "logs", protocol, base_source)?,
            };
            let metrics = match env_metrics {
                Some(url) => exact_url(url, protocol, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")?,
                None => signal_url(base, "metrics", protocol, base_source)?,
            };
            (logs, metrics)
        };

        let mut headers: Vec<(String, String)> = Vec::new();
        let mut add = |key: String, value: String| {
            if let Some(slot) = headers
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(&key))
            {
                slot.1 = value;
            } else {
                headers.push((key, value));
            }
        };
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        ] {
            if let Some(text) = non_empty(env.get(name)) {
                for (key, value) in parse_key_values(text, name) {
                    add(key, value);
                }
            }
        }
        if let Some(file) = file {
            for (key, value) in &file.headers {
                add(key.clone(), value.clone());
            }
        }

        let ca_file = file.and_then(|f| f.ca_file.clone()).or_else(|| {
            [
                "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ]
            .iter()
            .find_map(|name| non_empty(env.get(*name)).map(PathBuf::from))
        });

        Ok(Some(OtlpSettings {
            logs_endpoint,
            metrics_endpoint,
            protocol,
            headers,
            ca_file,
            timeout: env_timeout(env)?.unwrap_or(Duration::from_secs(10)),
            resource: resource(env),
            backoff: Backoff::default(),
            metrics_interval: Duration::from_secs(10),
            heartbeat_interval: crate::config::DEFAULT_HEARTBEAT,
        }))
    }

    /// [`OtlpSettings::resolve`] with this process's environment.
    pub fn resolve_from_process_env(
        args: &OtlpArgs,
        file: Option<&OtlpFileSettings>,
    ) -> anyhow::Result<Option<OtlpSettings>> {
        Self::resolve(args, file, &process_env())
    }

    /// Settings for `endpoint` with nothing from the environment: for tests and tools.
    pub fn for_endpoint(endpoint: &str, protocol: Protocol) -> anyhow::Result<OtlpSettings> {
        let args = OtlpArgs {
            otlp_endpoint: Some(endpoint.to_string()),
            otlp_protocol: Some(protocol),
            ..OtlpArgs::default()
        };
        Ok(Self::resolve(&args, None, &HashMap::new())?.expect("an endpoint was given"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(
        args: &OtlpArgs,
        file: Option<&OtlpFileSettings>,
        pairs: &[(&str, &str)],
    ) -> anyhow::Result<Option<OtlpSettings>> {
        OtlpSettings::resolve(args, file, &env(pairs))
    }

    fn attr<'a>(settings: &'a OtlpSettings, key: &str) -> Option<&'a str> {
        settings
            .resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert!(resolve(&OtlpArgs::default(), None, &[]).unwrap().is_none());
        // A protocol in the environment alone does not turn export on.
        let only_protocol = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert!(resolve(&OtlpArgs::default(), None, &only_protocol)
            .unwrap()
            .is_none());
    }

    #[test]
    fn env_base_gets_signal_paths_for_http() {
        let s = resolve(
            &OtlpArgs::default(),
            None,
            &[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318/prefix/",
            )],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Http);
        assert_eq!(s.logs_endpoint, "http://collector:4318/prefix/v1/logs");
        assert_eq!(
            s.metrics_endpoint,
            "http://collector:4318/prefix/v1/metrics"
        );
        assert_eq!(s.timeout, Duration::from_secs(10));
    }

    #[test]
    fn env_signal_endpoint_is_used_as_is() {
        let s = resolve(
            &OtlpArgs::default(),
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "https://logs.example/ingest",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.logs_endpoint, "https://logs.example/ingest");
        assert_eq!(s.metrics_endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(s.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn grpc_defaults_and_drops_paths() {
        let args = OtlpArgs {
            otlp_protocol: Some(Protocol::Grpc),
            ..OtlpArgs::default()
        };
        let s = resolve(&args, None, &[]).unwrap().unwrap();
        assert_eq!(s.logs_endpoint, "http://localhost:4317");
        assert_eq!(s.metrics_endpoint, "http://localhost:4317");
        let s = resolve(
            &OtlpArgs::default(),
            None,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector:4317/ignored",
                ),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.logs_endpoint, "https://collector:4317");
        let args = OtlpArgs {
            otlp_endpoint: Some("http://127.0.0.1:9999".into()),
            ..OtlpArgs::default()
        };
        let http = resolve(&args, None, &[]).unwrap().unwrap();
        assert_eq!(http.logs_endpoint, "http://127.0.0.1:9999/v1/logs");
    }

    #[test]
    fn flags_beat_file_beat_env() {
        let file = OtlpFileSettings {
            endpoint: Some("http://from-file:4318".into()),
            protocol: Some("grpc".into()),
            headers: [("x-api-key".to_string(), "file".to_string())].into(),
            ca_file: Some("/etc/monitor/ca.pem".into()),
            spool_dir: Some("/srv/spool".into()),
            spool_max_bytes: None,
        };
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "X-Api-Key=env,tenant=a%20b"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
        ];
        let from_file = resolve(&OtlpArgs::default(), Some(&file), &env)
            .unwrap()
            .unwrap();
        assert_eq!(from_file.protocol, Protocol::Grpc);
        assert_eq!(from_file.logs_endpoint, "http://from-file:4318");
        assert_eq!(
            from_file.headers,
            vec![
                ("X-Api-Key".to_string(), "file".to_string()),
                ("tenant".to_string(), "a b".to_string())
            ]
        );
        assert_eq!(
            from_file.ca_file,
            Some(PathBuf::from("/etc/monitor/ca.pem"))
        );
        let args = OtlpArgs {
            otlp_endpoint: Some("http://from-flag:4318/v1/logs".into()),
            otlp_protocol: Some(Protocol::Http),
            ..OtlpArgs::default()
        };
        let from_flags = resolve(&args, Some(&file), &env).unwrap().unwrap();
        assert_eq!(from_flags.protocol, Protocol::Http);
        assert_eq!(from_flags.logs_endpoint, "http://from-flag:4318/v1/logs");
        assert_eq!(
            from_flags.metrics_endpoint,
            "http://from-flag:4318/v1/metrics"
        );
        assert_eq!(
            OtlpArgs::default().spool(Some(&file)),
            (PathBuf::from("/srv/spool"), DEFAULT_SPOOL_MAX_BYTES)
        );
        let spool_flags = OtlpArgs {
            spool_dir: Some("/flag".into()),
            spool_max_bytes: Some(4096),
            ..OtlpArgs::default()
        };
        assert_eq!(
            spool_flags.spool(Some(&file)),
            (PathBuf::from("/flag"), 4096)
        );
        assert_eq!(
            OtlpArgs::default().spool(None),
            (PathBuf::from(DEFAULT_SPOOL_DIR), DEFAULT_SPOOL_MAX_BYTES)
        );
        let from_env = resolve(&OtlpArgs::default(), None, &env).unwrap().unwrap();
        assert_eq!(from_env.protocol, Protocol::Http);
        assert_eq!(from_env.logs_endpoint, "http://from-env:4318/v1/logs");
        assert_eq!(from_env.ca_file, Some(PathBuf::from("/env/ca.pem")));
    }

    #[test]
    fn bad_values_are_explained() {
        let args = OtlpArgs {
            otlp_endpoint: Some("collector:4318".into()),
            ..OtlpArgs::default()
        };
        let err = format!("{:#}", resolve(&args, None, &[]).unwrap_err());
        assert!(
            err.contains("--otlp-endpoint") && err.contains("http://"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            resolve(
                &OtlpArgs::default(),
                None,
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
                ]
            )
            .unwrap_err()
        );
        assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
    }

    #[test]
    fn resource_from_env() {
        let s = resolve(
            &OtlpArgs::default(),
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=prod,service.name=ignored,team=ml%2Finfra",
                ),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(attr(&s, "service.name"), Some("ignored"));
        assert_eq!(attr(&s, "service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(attr(&s, "deployment.environment.name"), Some("prod"));
        assert_eq!(attr(&s, "team"), Some("ml/infra"));
        assert_eq!(attr(&s, "host.name"), host_name().as_deref());
        assert_eq!(attr(&s, "host.id"), host_id().as_deref());
        let s = resolve(
            &OtlpArgs::default(),
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
                ("OTEL_SERVICE_NAME", "guard"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(attr(&s, "service.name"), Some("guard"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(
            parse_key_values(" k = v , bad ,x=%20y", "TEST"),
            vec![("k".into(), "v".into()), ("x".into(), " y".into())]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let delay = backoff.delay(attempt);
            let base = Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(1));
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
        }
    }
}
