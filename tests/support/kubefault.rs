//! Fault injection between a kube `Client` and the real apiserver: a tower service wrapped
//! around the client's HTTP stack, so `KubeStore` sees exactly what a bad network or a
//! struggling apiserver gives it — latency, dropped connections (before the request is sent,
//! or after it took effect with the response lost), 5xx, 409 storms, a full partition of this
//! one client (calls hang, open watch streams are cut). An apiserver restart is the harness's
//! own (`Harness::kill` / `start_again`, see tests/kube_restart.rs).
#![allow(dead_code)] // each test binary uses part of the support code

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt, stream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::{Body, ClientBuilder};
use tokio::sync::watch;
use tower::{BoxError, Service, ServiceExt};

type DynBody = Box<kube::client::DynBody>;
/// kube's default HTTP stack (`kube_client::client::builder::GenericService`, not exported).
type Inner = tower::util::BoxService<Request<Body>, Response<DynBody>, BoxError>;

/// A fault for the next matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 409 Conflict on the next update (PUT), without reaching the server.
    Conflict,
    /// 503 on the next request of any kind, without reaching the server.
    Unavailable,
    /// The next write (POST or PUT) reaches the server and takes effect; the connection drops
    /// before the response arrives.
    ResetAfterWrite,
    /// The next request of any kind fails with a connection reset before it is sent.
    ResetBefore,
}

impl Fault {
    fn matches(self, method: &Method) -> bool {
        match self {
            Fault::Conflict => method == Method::PUT,
            Fault::ResetAfterWrite => method == Method::PUT || method == Method::POST,
            Fault::Unavailable | Fault::ResetBefore => true,
        }
    }
}

#[derive(Default)]
struct State {
    partitioned: bool,
    latency: Duration,
    queued: VecDeque<Fault>,
}

/// The switchboard of one client's faults. Cheap to clone.
#[derive(Clone)]
pub struct KubeFaults {
    state: Arc<Mutex<State>>,
    /// Bumped to cut every open response body (watch streams) now.
    cut: Arc<watch::Sender<u64>>,
}

impl Default for KubeFaults {
    fn default() -> Self {
        KubeFaults {
            state: Arc::default(),
            cut: Arc::new(watch::channel(0).0),
        }
    }
}

impl KubeFaults {
    /// Every request hangs and open watch streams are cut: this client is partitioned away.
    pub fn partition(&self) {
        self.state.lock().unwrap().partitioned = true;
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().partitioned = false;
    }

    /// Delays each request before it is sent and each response before it is returned.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Drops the injected faults that have not happened yet.
    pub fn clear(&self) {
        self.state.lock().unwrap().queued.clear();
    }

    /// Queues a fault for the next request it applies to.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().queued.push_back(fault);
    }

    /// Cuts the open watch streams (a dropped connection); new ones work.
    pub fn drop_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// A kube client for the harness user `kubeconfig`, with these faults in its HTTP stack.
    pub async fn client(&self, kubeconfig: &Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let faults = self.clone();
        let layer = tower::layer::layer_fn(move |inner: Inner| {
            let inner = Arc::new(tokio::sync::Mutex::new(inner));
            let faults = faults.clone();
            tower::service_fn(move |req: Request<Body>| {
                let (inner, faults) = (inner.clone(), faults.clone());
                async move { faults.call(inner, req).await }
            })
        });
        ClientBuilder::try_from(config)
            .unwrap()
            .with_layer(&layer)
            .build()
    }

    async fn call(
        &self,
        inner: Arc<tokio::sync::Mutex<Inner>>,
        req: Request<Body>,
    ) -> Result<Response<DynBody>, BoxError> {
        let (partitioned, latency, fault) = {
            let mut s = self.state.lock().unwrap();
            let pos = s.queued.iter().position(|f| f.matches(req.method()));
            let fault = pos.and_then(|p| s.queued.remove(p));
            (s.partitioned, s.latency, fault)
        };
        if partitioned {
            // Nothing comes back; the caller's timeout decides.
            return futures::future::pending().await;
        }
        tokio::time::sleep(latency).await;
        match fault {
            Some(Fault::Conflict) => return Ok(status(StatusCode::CONFLICT, "Conflict")),
            Some(Fault::Unavailable) => {
                return Ok(status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                ));
            }
            Some(Fault::ResetBefore) => return Err("injected: connection reset".into()),
            _ => {}
        }
        let generation = *self.cut.borrow();
        let fut = {
            let mut svc = inner.lock().await;
            svc.ready().await?;
            svc.call(req)
        };
        let response = fut.await?;
        if fault == Some(Fault::ResetAfterWrite) {
            return Err("injected: connection reset after the request was sent".into());
        }
        tokio::time::sleep(latency).await;
        if self.state.lock().unwrap().partitioned {
            return futures::future::pending().await;
        }
        Ok(self.cuttable(response, generation))
    }

    /// The response with its body cut (an error mid-stream) when `drop_watches` or `partition`
    /// is called.
    fn cuttable(&self, response: Response<DynBody>, generation: u64) -> Response<DynBody> {
        let mut cut = self.cut.subscribe();
        let cut = async move {
            let _ = cut.wait_for(|g| *g != generation).await;
        };
        enum Ev {
            Data(Result<Bytes, BoxError>),
            End,
            Cut,
        }
        response.map(|body| {
            let data = body
                .into_data_stream()
                .map(Ev::Data)
                .chain(stream::once(async { Ev::End }))
                .boxed();
            let cut = cut.into_stream().map(|()| Ev::Cut).boxed();
            let frames = stream::select(data, cut).scan(false, |done, ev| {
                let out = if *done {
                    None
                } else {
                    match ev {
                        Ev::Data(r) => Some(r.map(http_body::Frame::data)),
                        Ev::End => {
                            *done = true;
                            None
                        }
                        Ev::Cut => {
                            *done = true;
                            Some(Err::<_, BoxError>("injected: connection cut".into()))
                        }
                    }
                };
                futures::future::ready(out)
            });
            Box::new(StreamBody::new(frames.boxed())) as DynBody
        })
    }
}

/// A `Status` response as the apiserver sends it.
fn status(code: StatusCode, reason: &str) -> Response<DynBody> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("injected {reason}"),
        "reason": reason,
        "code": code.as_u16(),
    });
    let body = Full::new(Bytes::from(body.to_string())).map_err(|e| -> BoxError { match e {} });
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Box::new(body) as DynBody)
        .unwrap()
}
