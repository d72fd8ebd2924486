//! The Docker-compatible API (Docker Engine, `podman system service`): `GET
//! /containers/{id}/json` over the unix socket, HTTP/1.1.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{split_image, ContainerMeta, LookupError};

/// The container's metadata, `Ok(None)` when this runtime does not know the id.
pub async fn inspect(socket: &Path, id: &str) -> Result<Option<ContainerMeta>, LookupError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|err| LookupError::Unreachable(format!("failed to connect: {err}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| LookupError::Unreachable(format!("failed to start HTTP: {err}")))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(format!("/containers/{id}/json"))
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|err| LookupError::Protocol(err.to_string()))?;
    let answer = sender.send_request(request).await;
    let result = async {
        let response =
            answer.map_err(|err| LookupError::Unreachable(format!("failed to ask: {err}")))?;
        let status = response.status();
        let podman = response.headers().contains_key("libpod-api-version");
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| LookupError::Unreachable(format!("failed to read the answer: {err}")))?
            .to_bytes();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(LookupError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|err| LookupError::Protocol(format!("not JSON: {err}")))?;
        Ok(Some(parse(&json, podman)))
    }
    .await;
    driver.abort();
    result
}

/// The fields of an inspect answer. `podman`: the answer came from Podman (its
/// `Libpod-Api-Version` header).
pub fn parse(json: &Value, podman: bool) -> ContainerMeta {
    let text = |value: &Value| value.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let mut meta = ContainerMeta {
        name: text(&json["Name"]).map(|name| name.trim_start_matches('/').to_owned()),
        runtime: Some(if podman { "podman" } else { "docker" }.to_owned()),
        ..ContainerMeta::default()
    };
    // `Config.Image` is the reference the container was created from; `Image` the id.
    if let Some(reference) = text(&json["Config"]["Image"]) {
        let (name, tag, _digest) = split_image(&reference);
        meta.image_name = Some(name);
        meta.image_tag = tag;
    }
    meta.image_id = text(&json["Image"]).map(|id| {
        if id.contains(':') {
            id
        } else {
            // Podman gives the bare hexadecimal digest.
            format!("sha256:{id}")
        }
    });
    if let Some(labels) = json["Config"]["Labels"].as_object() {
        for (key, value) in labels {
            if let Some(value) = value.as_str() {
                meta.labels.insert(key.clone(), value.to_owned());
            }
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_inspect_answer() {
        // The fields a `podman system service` answer has (trimmed).
        let json = serde_json::json!({
            "Id": "4f1e",
            "Name": "/vllm-server",
            "Image": "8a5b3c",
            "Config": {
                "Image": "localhost/monitor-test/vllm:0.6",
                "Labels": {"io.kubernetes.pod.name": "vllm-0", "app": "vllm"}
            }
        });
        let meta = parse(&json, true);
        assert_eq!(meta.name.as_deref(), Some("vllm-server"));
        assert_eq!(
            meta.image_name.as_deref(),
            Some("localhost/monitor-test/vllm")
        );
        assert_eq!(meta.image_tag.as_deref(), Some("0.6"));
        assert_eq!(meta.image_id.as_deref(), Some("sha256:8a5b3c"));
        assert_eq!(meta.runtime.as_deref(), Some("podman"));
        assert_eq!(meta.labels["app"], "vllm");
    }

    #[test]
    fn docker_inspect_answer() {
        let json = serde_json::json!({
            "Name": "/web",
            "Image": "sha256:0123",
            "Config": {"Image": "nginx", "Labels": null}
        });
        let meta = parse(&json, false);
        assert_eq!(meta.image_name.as_deref(), Some("nginx"));
        assert_eq!(meta.image_tag, None);
        assert_eq!(meta.image_id.as_deref(), Some("sha256:0123"));
        assert_eq!(meta.runtime.as_deref(), Some("docker"));
        assert!(meta.labels.is_empty());
    }
}
