//! The Docker API proxy of `eval $(weave-router env)`: a unix socket that forwards every
//! request to the daemon, except that
//!
//! - `POST /containers/create` is checked and completed first: an invalid `WEAVE_CIDR` is
//!   refused with one line (nothing is created); otherwise the container gets the
//!   [`CIDR_LABEL`] label (its `WEAVE_CIDR`, `net:default` when absent, unless `none`) and,
//!   when it sets none itself, weaveDNS as its resolver;
//! - `POST /containers/{id}/start` is answered only once the container is attached, so
//!   `docker run -d` returns with `ethwe` up, its address allocated and its name registered.
//!   When the attach fails the container is killed and the start answers the error.
//!
//! Upgraded connections (`docker attach`, `docker exec`, `docker run` without `-d`) are
//! passed through as they are.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::cidr::WeaveCidr;
use super::client::CIDR_LABEL;
use super::DockerService;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Docker proxy socket {path}: {error}")]
    Bind {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Listens on `path` (replacing a stale socket) and serves until the task is aborted.
pub async fn serve(service: Arc<DockerService>, path: PathBuf) -> Result<(), ProxyError> {
    let bind = |error| ProxyError::Bind {
        path: path.clone(),
        error,
    };
    let listener = super::bind_unix_socket(&path).map_err(bind)?;
    tracing::info!("Docker proxy on unix://{}", path.display());
    let upstream = super::client::socket_path(&service.settings().host)
        .map_err(|e| bind(std::io::Error::other(e.to_string())))?;
    let upstream = Arc::new(upstream);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("Docker proxy: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| {
                handle(service.clone(), upstream.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("Docker proxy connection: {e}");
            }
        });
    }
}

/// The largest container config `create` reads (Docker's own are a few KiB).
pub const MAX_CREATE_BODY: usize = 1 << 20;

/// What a request is, for the proxy.
#[derive(Debug, PartialEq, Eq)]
enum Call<'a> {
    Create,
    Start(&'a str),
    Other,
}

/// `/v1.41/containers/create` or `/containers/create`, `.../containers/{id}/start`.
fn classify<'a>(method: &Method, path: &'a str) -> Call<'a> {
    if method != Method::POST {
        return Call::Other;
    }
    let path = match path.strip_prefix("/v") {
        Some(rest) => match rest.find('/') {
            Some(i) if rest[..i].bytes().all(|b| b.is_ascii_digit() || b == b'.') => &rest[i..],
            _ => path,
        },
        None => path,
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["containers", "create"] => Call::Create,
        ["containers", id, "start"] => Call::Start(id),
        _ => Call::Other,
    }
}

async fn handle(
    service: Arc<DockerService>,
    upstream: Arc<PathBuf>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let answer = match classify(req.method(), &path) {
        Call::Create => create(&service, &upstream, req).await,
        Call::Start(id) => {
            let id = id.to_string();
            start(&service, &upstream, req, &id).await
        }
        Call::Other => forward(&upstream, req.map(BodyExt::boxed)).await,
    };
    Ok(answer.unwrap_or_else(|(code, message)| error(code, &message)))
}

type Failure = (StatusCode, String);

/// An error as the Docker API gives one (the CLI prints `message`).
fn error(code: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn create(
    service: &DockerService,
    upstream: &Path,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let (mut parts, body) = req.into_parts();
    let bytes = read_create_body(&parts.headers, body).await?;
    let mut config: Value = serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("bad container config: {e}"),
        )
    })?;
    let dns = service
        .node
        .dns()
        .map(|d| d.info())
        .map(|i| (i.listen, i.domain));
    complete_create(
        &mut config,
        dns.as_ref().map(|(l, d)| (l.as_str(), d.as_str())),
    )
    .map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    let body = serde_json::to_vec(&config).expect("serialisable");
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(body.len()),
    );
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    forward(upstream, Request::from_parts(parts, full(body))).await
}

/// A create request's body, at most [`MAX_CREATE_BODY`] bytes (else 413, before reading
/// more than that).
async fn read_create_body<B>(headers: &hyper::HeaderMap, body: B) -> Result<Bytes, Failure>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("container config larger than {MAX_CREATE_BODY} bytes"),
        )
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CREATE_BODY as u64) {
        return Err(too_large());
    }
    let collected = http_body_util::Limited::new(body, MAX_CREATE_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the request: {e}"))
            }
        })?;
    Ok(collected.to_bytes())
}

/// The environment of a container config (`Env`'s strings; anything else left out).
pub fn container_env(config: &Value) -> Vec<String> {
    config["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks `WEAVE_CIDR` and fills in the label and resolver settings. `dns`: the weaveDNS
/// listen address (IP:PORT) and domain, when DNS runs.
pub fn complete_create(config: &mut Value, dns: Option<(&str, &str)>) -> Result<(), String> {
    let env = container_env(config);
    let wants = WeaveCidr::from_env(&env).map_err(|e| e.to_string())?;
    if wants == WeaveCidr::Detached {
        return Ok(());
    }
    let Some(obj) = config.as_object_mut() else {
        return Err("bad container config: not an object".into());
    };
    // Checked before anything changes: a refused body is forwarded nowhere, unchanged.
    if dns.is_some()
        && !obj
            .get("HostConfig")
            .is_none_or(|h| h.is_object() || h.is_null())
    {
        return Err("bad container config: HostConfig is not an object".into());
    }
    let labels = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    labels[CIDR_LABEL] = Value::String(wants.to_text());
    if let Some((listen, domain)) = dns {
        let ip = listen.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(listen);
        let host = obj
            .entry("HostConfig")
            .or_insert_with(|| Value::Object(Default::default()));
        let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
        if empty(&host["Dns"]) {
            host["Dns"] = serde_json::json!([ip]);
            if empty(&host["DnsSearch"]) {
                host["DnsSearch"] = serde_json::json!([domain]);
            }
        }
    }
    Ok(())
}

async fn start(
    service: &DockerService,
    upstream: &Path,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, Failure> {
    let answer = forward(upstream, req.map(BodyExt::boxed)).await?;
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let failed = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let client = service
        .connected()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let facts = client
        .inspect(id)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if let Err(e) = service.attach(&facts, None).await {
        let message = format!("weave-router could not attach {}: {e}", facts.name);
        tracing::warn!("{message}; killing it");
        let _ = client.kill(&facts.id).await;
        return Err(failed(message));
    }
    Ok(answer)
}

/// Sends the request to the daemon over a connection of its own; an upgraded connection
/// (101) is spliced through.
async fn forward(upstream: &Path, mut req: Request<Body>) -> Result<Response<Body>, Failure> {
    let unavailable = |e: String| {
        (
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot reach the Docker daemon at {}: {e}",
                upstream.display()
            ),
        )
    };
    let stream = tokio::net::UnixStream::connect(upstream)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("Docker proxy upstream connection: {e}");
        }
    });
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut answer = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        let daemon_upgrade = hyper::upgrade::on(&mut answer);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, daemon_upgrade) {
                Ok((client, daemon)) => {
                    let mut client = TokioIo::new(client);
                    let mut daemon = TokioIo::new(daemon);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                }
                Err(e) => tracing::debug!("Docker proxy upgrade: {e}"),
            }
        });
    }
    Ok(answer.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_start_are_recognised_with_or_without_a_version() {
        assert_eq!(
            classify(&Method::POST, "/v1.41/containers/create"),
            Call::Create
        );
        assert_eq!(classify(&Method::POST, "/containers/create"), Call::Create);
        assert_eq!(
            classify(&Method::POST, "/v1.41/containers/abc/start"),
            Call::Start("abc")
        );
        assert_eq!(classify(&Method::GET, "/containers/create"), Call::Other);
        assert_eq!(
            classify(&Method::POST, "/v1.41/containers/abc/stop"),
            Call::Other
        );
    }

    #[test]
    fn create_gets_the_label_and_the_resolver() {
        let mut c = serde_json::json!({"Image": "busybox", "Env": ["WEAVE_CIDR=net:10.2.2.0/24"]});
        complete_create(&mut c, Some(("169.254.53.53:53", "weave.local."))).unwrap();
        assert_eq!(c["Labels"][CIDR_LABEL], "net:10.2.2.0/24");
        assert_eq!(c["HostConfig"]["Dns"], serde_json::json!(["169.254.53.53"]));
        assert_eq!(
            c["HostConfig"]["DnsSearch"],
            serde_json::json!(["weave.local."])
        );
        let mut c = serde_json::json!({"Image": "busybox", "Labels": null});
        complete_create(&mut c, None).unwrap();
        assert_eq!(c["Labels"][CIDR_LABEL], "net:default");
        let mut c =
            serde_json::json!({"Env": ["WEAVE_CIDR=none"], "HostConfig": {"Dns": ["1.1.1.1"]}});
        let before = c.clone();
        complete_create(&mut c, Some(("169.254.53.53:53", "weave.local."))).unwrap();
        assert_eq!(c, before);
    }

    #[test]
    fn a_host_config_that_is_not_an_object_is_refused() {
        for host in [
            serde_json::json!(1),
            serde_json::json!("x"),
            serde_json::json!([1]),
        ] {
            let mut c = serde_json::json!({"Image": "busybox", "HostConfig": host});
            let e =
                complete_create(&mut c, Some(("169.254.53.53:53", "weave.local."))).unwrap_err();
            assert_eq!(e, "bad container config: HostConfig is not an object");
        }
        let mut c = serde_json::json!({"Image": "busybox", "HostConfig": null});
        complete_create(&mut c, Some(("169.254.53.53:53", "weave.local."))).unwrap();
        assert_eq!(c["HostConfig"]["Dns"], serde_json::json!(["169.254.53.53"]));
    }

    #[tokio::test]
    async fn create_bodies_over_the_limit_are_refused_with_413() {
        let headers = hyper::HeaderMap::new();
        let small = Full::new(Bytes::from(vec![b' '; 1000]));
        assert_eq!(read_create_body(&headers, small).await.unwrap().len(), 1000);
        let big = Full::new(Bytes::from(vec![b' '; MAX_CREATE_BODY + 1]));
        let (code, message) = read_create_body(&headers, big).await.unwrap_err();
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(message, "container config larger than 1048576 bytes");
        let mut declared = hyper::HeaderMap::new();
        declared.insert(hyper::header::CONTENT_LENGTH, (1u64 << 40).into());
        let tiny = Full::new(Bytes::from_static(b"{}"));
        let (code, _) = read_create_body(&declared, tiny).await.unwrap_err();
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn a_host_config_that_is_not_an_object_is_refused_unchanged() {
        for host in [
            serde_json::json!("x"),
            serde_json::json!([1]),
            serde_json::json!(7),
        ] {
            let mut c = serde_json::json!({"Env": [], "HostConfig": host});
            let before = c.clone();
            let e =
                complete_create(&mut c, Some(("169.254.53.53:53", "weave.local."))).unwrap_err();
            assert_eq!(e, "bad container config: HostConfig is not an object");
            assert_eq!(c, before);
        }
        // Without weaveDNS the proxy does not look at it.
        let mut c = serde_json::json!({"HostConfig": "x"});
        complete_create(&mut c, None).unwrap();
        assert_eq!(c["HostConfig"], "x");
    }

    #[test]
    fn an_invalid_weave_cidr_is_refused_in_one_line() {
        let mut c = serde_json::json!({"Env": ["WEAVE_CIDR=net:10.2.2.0/99"]});
        let e = complete_create(&mut c, None).unwrap_err();
        assert!(
            e.starts_with("invalid WEAVE_CIDR \"net:10.2.2.0/99\""),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
