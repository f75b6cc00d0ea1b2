//! A fault-injecting HTTP/1.1 reverse proxy for EC2's Query protocol, put between the
//! driver under test and moto: it answers chosen requests with EC2 errors, delays them, or
//! forwards one and never answers (a crash "between RunInstances and the store write").
//!
//! Requests are told apart by their `Action` (the form field of a `POST /` body, or the
//! query string's). Faults are set and cleared at run time; they apply to requests that
//! arrive afterwards. The proxy listens on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

/// A request's decoded parameters: the query string's, then the form body's (which win).
pub type Params = BTreeMap<String, String>;

/// The EC2 error the proxy answers with instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultError {
    /// HTTP status of the answer.
    pub status: u16,
    /// EC2 error code, e.g. `RequestLimitExceeded` (what `ProvideErrorMetadata::code` gives).
    pub code: &'static str,
    /// Human-readable message.
    pub message: &'static str,
}

impl FaultError {
    /// Throttling: 503 `RequestLimitExceeded` (the SDK's standard retry retries it).
    pub fn throttled() -> Self {
        FaultError {
            status: 503,
            code: "RequestLimitExceeded",
            message: "Request limit exceeded.",
        }
    }

    /// No capacity for the instance type: 500 `InsufficientInstanceCapacity`.
    pub fn capacity() -> Self {
        FaultError {
            status: 500,
            code: "InsufficientInstanceCapacity",
            message: "We currently do not have sufficient c5.large capacity in the Availability \
                      Zone you requested (us-east-1a). Our system will be working on provisioning \
                      additional capacity.",
        }
    }

    /// A transient server error: 500 `InternalError`.
    pub fn internal() -> Self {
        FaultError {
            status: 500,
            code: "InternalError",
            message: "An internal error has occurred.",
        }
    }

    /// The body EC2 answers an error with.
    fn xml(&self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
             <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            xml_escape(self.code),
            xml_escape(self.message),
            uuid::Uuid::new_v4()
        )
    }
}

/// Counts of one action's requests since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionStats {
    /// Requests that arrived.
    pub seen: usize,
    /// Requests the proxy answered with a [`FaultError`] itself.
    pub faulted: usize,
    /// Requests forwarded to the upstream that answered (held ones included).
    pub forwarded: usize,
}

/// A running proxy; dropping it stops it and drops every connection, held ones included.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, the endpoint to give the client under test.
    pub url: String,
    shared: Arc<Shared>,
    accept_loop: tokio::task::JoinHandle<()>,
}

/// What the accept loop and the request handlers share with the test.
struct Shared {
    upstream: String,
    http: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Faults in the order they were set; the first error-giving one that matches wins.
    rules: Vec<Rule>,
    stats: BTreeMap<String, ActionStats>,
}

type Predicate = Arc<dyn Fn(&Params) -> bool + Send + Sync>;

struct Rule {
    /// None: every action.
    action: Option<String>,
    when: Option<Predicate>,
    kind: RuleKind,
}

enum RuleKind {
    Fail {
        error: FaultError,
        remaining: usize,
    },
    Every {
        error: FaultError,
        nth: usize,
        matched: usize,
    },
    Delay {
        delay: Duration,
        remaining: usize,
    },
    /// Taken by the first matching request.
    Hold(Option<HeldRequest>),
}

impl Rule {
    fn matches(&self, action: &str, params: &Params) -> bool {
        self.action.as_deref().is_none_or(|wanted| wanted == action)
            && self.when.as_ref().is_none_or(|when| when(params))
    }

    fn exhausted(&self) -> bool {
        match &self.kind {
            RuleKind::Fail { remaining, .. } | RuleKind::Delay { remaining, .. } => *remaining == 0,
            RuleKind::Every { .. } => false,
            RuleKind::Hold(held) => held.is_none(),
        }
    }
}

/// The proxy's side of a [`HoldHandle`].
struct HeldRequest {
    forwarded: oneshot::Sender<String>,
    release: Arc<Notify>,
}

/// What to do with one request.
enum Decision {
    Fail(FaultError),
    Forward {
        delay: Duration,
        hold: Option<HeldRequest>,
    },
}

/// A request forwarded and then left unanswered (see [`FaultProxy::hold_after_forward`]).
pub struct HoldHandle {
    forwarded: Option<oneshot::Receiver<String>>,
    release: Arc<Notify>,
}

impl HoldHandle {
    /// Resolves once a matching request was forwarded and the upstream answered it, with
    /// the upstream's body (e.g. the `RunInstancesResponse` XML). Fails when the proxy was
    /// dropped or the hold cleared before any request matched, or on a second call.
    pub async fn forwarded(&mut self) -> Result<String> {
        let receiver = self
            .forwarded
            .take()
            .context("HoldHandle::forwarded already returned")?;
        receiver.await.context(
            "no request was held and answered: the proxy was dropped or its faults \
                 cleared first, or the upstream failed",
        )
    }

    /// Drops the held client connection without answering. Dropping the handle instead
    /// keeps the connection hanging until the proxy is dropped.
    pub fn release(self) {
        self.release.notify_one();
    }
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream_url`
    /// (e.g. [`crate::moto::Moto::url`]). Needs a tokio runtime.
    pub async fn start(upstream_url: &str) -> Result<FaultProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("bind the fault proxy")?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: upstream_url.trim_end_matches('/').to_string(),
            // Never an environment proxy: only 127.0.0.1 is talked to.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()?,
            state: Mutex::new(State::default()),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultProxy {
            url,
            shared,
            accept_loop,
        })
    }

    /// The next `times` requests of `action` are answered with `error`.
    pub fn fail(&self, action: &str, error: FaultError, times: usize) {
        self.add(
            Some(action),
            None,
            RuleKind::Fail {
                error,
                remaining: times,
            },
        );
    }

    /// Every `nth` request of `action` (of every action with None) is answered with `error`,
    /// until [`FaultProxy::clear`]. The count includes requests another fault answered.
    pub fn fail_every(&self, action: Option<&str>, nth: usize, error: FaultError) {
        assert!(nth >= 1, "fail_every needs nth >= 1");
        self.add(
            action,
            None,
            RuleKind::Every {
                error,
                nth,
                matched: 0,
            },
        );
    }

    /// The next `times` requests of `action` whose decoded parameters satisfy `predicate`
    /// are answered with `error`; other requests of the action pass.
    pub fn fail_when(
        &self,
        action: &str,
        predicate: impl Fn(&Params) -> bool + Send + Sync + 'static,
        error: FaultError,
        times: usize,
    ) {
        self.add(
            Some(action),
            Some(Arc::new(predicate)),
            RuleKind::Fail {
                error,
                remaining: times,
            },
        );
    }

    /// The next `times` forwarded requests of `action` are held `delay` before forwarding.
    pub fn delay(&self, action: &str, delay: Duration, times: usize) {
        self.add(
            Some(action),
            None,
            RuleKind::Delay {
                delay,
                remaining: times,
            },
        );
    }

    /// The next request of `action` is forwarded (the upstream acts on it) and then never
    /// answered: its connection hangs until [`HoldHandle::release`] or the proxy's drop.
    pub fn hold_after_forward(&self, action: &str) -> HoldHandle {
        let (sender, receiver) = oneshot::channel();
        let release = Arc::new(Notify::new());
        self.add(
            Some(action),
            None,
            RuleKind::Hold(Some(HeldRequest {
                forwarded: sender,
                release: Arc::clone(&release),
            })),
        );
        HoldHandle {
            forwarded: Some(receiver),
            release,
        }
    }

    /// Removes every fault not yet used up (a request already held stays held).
    pub fn clear(&self) {
        self.shared.state.lock().expect("proxy state").rules.clear();
    }

    /// Per-action counts since the start.
    pub fn stats(&self) -> BTreeMap<String, ActionStats> {
        self.shared.state.lock().expect("proxy state").stats.clone()
    }

    /// One action's counts since the start (zero when it was never seen).
    pub fn action_stats(&self, action: &str) -> ActionStats {
        self.stats().get(action).copied().unwrap_or_default()
    }

    fn add(&self, action: Option<&str>, when: Option<Predicate>, kind: RuleKind) {
        self.shared
            .state
            .lock()
            .expect("proxy state")
            .rules
            .push(Rule {
                action: action.map(str::to_string),
                when,
                kind,
            });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept loop owns every connection task: aborting it drops them all.
        self.accept_loop.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    eprintln!("fault proxy: accept: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one client connection (keep-alive) until it closes or a held request is released.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let drop_connection = Arc::new(Notify::new());
    let service = {
        let drop_connection = Arc::clone(&drop_connection);
        hyper::service::service_fn(move |request| {
            handle(request, Arc::clone(&shared), Arc::clone(&drop_connection))
        })
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                if !error.is_incomplete_message() {
                    eprintln!("fault proxy: connection: {error}");
                }
            }
        }
        // Dropping the connection future closes the socket without an answer.
        () = drop_connection.notified() => {}
    }
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    drop_connection: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return Ok(plain(StatusCode::BAD_REQUEST, format!("body: {error}"))),
    };
    let params = request_params(parts.uri.query(), &parts.headers, &body);
    let action = params.get("Action").cloned().unwrap_or_default();

    let decision = shared.decide(&action, &params);
    let (delay, hold) = match decision {
        Decision::Fail(error) => return Ok(fault_response(&error)),
        Decision::Forward { delay, hold } => (delay, hold),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let upstream_request = shared
        .http
        .request(
            parts.method.clone(),
            format!("{}{path_and_query}", shared.upstream),
        )
        .headers(forwardable(&parts.headers))
        .body(body);
    let (forwarded, release) = match hold {
        Some(hold) => (Some(hold.forwarded), Some(hold.release)),
        None => (None, None),
    };
    // On its own task: a request once forwarded is carried through even when the client
    // gives up meanwhile (a timeout), as EC2 would, and a hold still learns the answer.
    let upstream = tokio::spawn(forward(
        Arc::clone(&shared),
        upstream_request,
        action,
        forwarded,
    ));
    let (status, headers, body) = match upstream.await {
        Ok(Ok(answer)) => answer,
        Ok(Err(message)) => return Ok(plain(StatusCode::BAD_GATEWAY, message)),
        Err(error) => return Ok(plain(StatusCode::BAD_GATEWAY, format!("forward: {error}"))),
    };

    if let Some(release) = release {
        release.notified().await;
        drop_connection.notify_one();
        // The connection task drops this future with the connection.
        std::future::pending::<()>().await;
    }

    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Sends one request upstream and reads the whole answer; counts it as forwarded and tells
/// a hold waiting for it the body.
async fn forward(
    shared: Arc<Shared>,
    request: reqwest::RequestBuilder,
    action: String,
    hold: Option<oneshot::Sender<String>>,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let upstream = request
        .send()
        .await
        .map_err(|error| format!("upstream: {error}"))?;
    let status = upstream.status();
    let headers = forwardable(upstream.headers());
    let body = upstream
        .bytes()
        .await
        .map_err(|error| format!("upstream: {error}"))?;
    shared
        .state
        .lock()
        .expect("proxy state")
        .stats
        .entry(action)
        .or_default()
        .forwarded += 1;
    if let Some(hold) = hold {
        let _ = hold.send(String::from_utf8_lossy(&body).into_owned());
    }
    Ok((status, headers, body))
}

impl Shared {
    /// Counts the request and picks its fate: the first error-giving fault that matches
    /// (every `fail_every` counter still counts it), else forward after the matching delays
    /// and maybe hold.
    fn decide(&self, action: &str, params: &Params) -> Decision {
        let mut state = self.state.lock().expect("proxy state");
        let State { rules, stats } = &mut *state;
        let stats = stats.entry(action.to_string()).or_default();
        stats.seen += 1;

        let mut fault = None;
        for rule in rules.iter_mut() {
            if !rule.matches(action, params) {
                continue;
            }
            match &mut rule.kind {
                RuleKind::Every {
                    error,
                    nth,
                    matched,
                } => {
                    *matched += 1;
                    if fault.is_none() && *matched % *nth == 0 {
                        fault = Some(*error);
                    }
                }
                RuleKind::Fail { error, remaining } if fault.is_none() && *remaining > 0 => {
                    *remaining -= 1;
                    fault = Some(*error);
                }
                _ => {}
            }
        }
        let decision = match fault {
            Some(error) => {
                stats.faulted += 1;
                Decision::Fail(error)
            }
            None => {
                let mut delay = Duration::ZERO;
                let mut hold = None;
                for rule in rules.iter_mut() {
                    if !rule.matches(action, params) {
                        continue;
                    }
                    match &mut rule.kind {
                        RuleKind::Delay {
                            delay: extra,
                            remaining,
                        } if *remaining > 0 => {
                            *remaining -= 1;
                            delay += *extra;
                        }
                        RuleKind::Hold(held) if hold.is_none() => hold = held.take(),
                        _ => {}
                    }
                }
                Decision::Forward { delay, hold }
            }
        };
        rules.retain(|rule| !rule.exhausted());
        decision
    }
}

/// The query string's parameters, then the form body's.
fn request_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Params {
    let mut params: Params = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(form_urlencoded::parse(body).into_owned());
    }
    params
}

/// `headers` less the hop-by-hop ones and those the forwarding recomputes (length, host).
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    const DROPPED: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || DROPPED.contains(&name.as_str()) {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

fn fault_response(error: &FaultError) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(error.xml())));
    *response.status_mut() =
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    eprintln!("fault proxy: {message}");
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("text/plain"),
    );
    response
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_come_from_the_query_and_a_form_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let params = request_params(
            Some("Action=DescribeInstances&Version=1"),
            &headers,
            b"Action=RunInstances&InstanceType=c5.large&TagSpecification.1.Tag.1.Value=a%20b",
        );
        assert_eq!(params["Action"], "RunInstances");
        assert_eq!(params["Version"], "1");
        assert_eq!(params["InstanceType"], "c5.large");
        assert_eq!(params["TagSpecification.1.Tag.1.Value"], "a b");

        let params = request_params(None, &HeaderMap::new(), b"Action=RunInstances");
        assert!(params.is_empty(), "a body that is not a form is not parsed");
    }

    #[test]
    fn error_xml_is_what_ec2_sends() {
        let xml = FaultError::throttled().xml();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>"));
        assert!(xml.contains(
            "<Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.\
             </Message></Error></Errors><RequestID>"
        ));
    }
}
