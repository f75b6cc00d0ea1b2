//! A typed client for fleetformd's HTTP API, used by the provider, the agent and tests.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

use crate::agent::{SyncRequest, SyncResponse};
use crate::model::*;
use crate::ErrorBody;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status}: {}{}", body.error.message, body.error.field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        status: StatusCode,
        body: ErrorBody,
        /// `Retry-After` in seconds, when the server sent one (placement with no capacity).
        retry_after_secs: Option<u64>,
    },
    /// The server could not be reached or the body could not be read.
    #[error("request to fleetformd failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered something that is not the documented body.
    #[error("unexpected answer from fleetformd ({status}): {text}")]
    Unexpected { status: StatusCode, text: String },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(err) => err.status(),
        }
    }

    /// True for a 404: the resource does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The offending field, when the server named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => body.error.field.as_deref(),
            _ => None,
        }
    }
}

/// Result of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Client of one fleetformd endpoint with one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:7400`) sending `token` as bearer.
    pub fn new(endpoint: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // No proxy: fleetformd is usually on loopback, and a stray HTTP_PROXY must not
            // route admin tokens elsewhere.
            .no_proxy()
            .build()?;
        Ok(Client {
            http,
            base: endpoint.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// Sends a request with an optional JSON body and decodes a JSON answer.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let response = self.send(method, path, body, timeout).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .timeout(timeout.unwrap_or(Duration::from_secs(60)));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after_secs = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let bytes = response.bytes().await?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status,
                body,
                retry_after_secs,
            }),
            Err(_) => Err(ClientError::Unexpected {
                status,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::GET, path, None, None).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.send::<()>(Method::DELETE, path, None, None).await?;
        Ok(())
    }

    // -- builds --------------------------------------------------------------------------

    pub async fn create_build(&self, spec: &BuildSpec) -> Result<Build> {
        self.call(Method::POST, "/v1/builds", Some(spec), None)
            .await
    }
    pub async fn get_build(&self, id: &str) -> Result<Build> {
        self.get(&format!("/v1/builds/{}", encode(id))).await
    }
    pub async fn update_build(&self, id: &str, spec: &BuildSpec) -> Result<Build> {
        let path = format!("/v1/builds/{}", encode(id));
        self.call(Method::PUT, &path, Some(spec), None).await
    }
    pub async fn delete_build(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/builds/{}", encode(id))).await
    }

    // -- fleets --------------------------------------------------------------------------

    pub async fn create_fleet(&self, spec: &FleetSpec) -> Result<Fleet> {
        self.call(Method::POST, "/v1/fleets", Some(spec), None)
            .await
    }
    /// A fleet by id or by name.
    pub async fn get_fleet(&self, id_or_name: &str) -> Result<Fleet> {
        self.get(&format!("/v1/fleets/{}", encode(id_or_name)))
            .await
    }
    pub async fn update_fleet(&self, id: &str, spec: &FleetSpec) -> Result<Fleet> {
        let path = format!("/v1/fleets/{}", encode(id));
        self.call(Method::PUT, &path, Some(spec), None).await
    }
    pub async fn delete_fleet(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/fleets/{}", encode(id))).await
    }
    /// Every machine of a fleet (every page).
    pub async fn fleet_machines(&self, id: &str) -> Result<MachineList> {
        self.fleet_machines_where(id, &[]).await
    }

    /// Revokes a machine: its sessions end LOST at once and it is replaced.
    pub async fn revoke_machine(&self, id: &str) -> Result<Revoked> {
        let path = format!("/v1/machines/{}/revoke", encode(id));
        self.call::<(), _>(Method::POST, &path, None, None).await
    }

    /// A fleet's machines filtered by query pairs (`id`, `address`, `status`, `build`,
    /// `data_center`, `zone`), every page.
    pub async fn fleet_machines_where(
        &self,
        id: &str,
        filters: &[(&str, &str)],
    ) -> Result<MachineList> {
        let mut all = MachineList {
            machines: Vec::new(),
            next_cursor: None,
        };
        let mut cursor: Option<String> = None;
        loop {
            let page: MachineList = self
                .get(&format!(
                    "/v1/fleets/{}/machines{}",
                    encode(id),
                    paged(filters, cursor.as_deref())
                ))
                .await?;
            all.machines.extend(page.machines);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Every process of a fleet, history included (every page).
    pub async fn fleet_processes(&self, id: &str) -> Result<ProcessList> {
        let mut all = ProcessList {
            processes: Vec::new(),
            next_cursor: None,
        };
        let mut cursor: Option<String> = None;
        loop {
            let page: ProcessList = self
                .get(&format!(
                    "/v1/fleets/{}/processes{}",
                    encode(id),
                    paged(&[], cursor.as_deref())
                ))
                .await?;
            all.processes.extend(page.processes);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    // -- zones ---------------------------------------------------------------------------

    pub async fn create_zone(&self, spec: &ZoneSpec) -> Result<Zone> {
        self.call(Method::POST, "/v1/zones", Some(spec), None).await
    }
    pub async fn get_zone(&self, id: &str) -> Result<Zone> {
        self.get(&format!("/v1/zones/{}", encode(id))).await
    }
    pub async fn update_zone(&self, id: &str, spec: &ZoneSpec) -> Result<Zone> {
        let path = format!("/v1/zones/{}", encode(id));
        self.call(Method::PUT, &path, Some(spec), None).await
    }
    /// Starts deleting a zone; it is gone once `get_zone` answers 404.
    pub async fn delete_zone(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/zones/{}", encode(id))).await
    }
    pub async fn zone_status(&self, id: &str) -> Result<ZoneStatus> {
        self.get(&format!("/v1/zones/{}/status", encode(id))).await
    }

    pub async fn locations(&self) -> Result<Vec<Location>> {
        self.get("/v1/locations").await
    }

    // -- bare-metal pool -----------------------------------------------------------------

    pub async fn create_bare_metal_machine(
        &self,
        spec: &BareMetalMachineSpec,
    ) -> Result<BareMetalMachine> {
        self.call(Method::POST, "/v1/bare-metal-machines", Some(spec), None)
            .await
    }
    pub async fn get_bare_metal_machine(&self, id: &str) -> Result<BareMetalMachine> {
        self.get(&format!("/v1/bare-metal-machines/{}", encode(id)))
            .await
    }
    pub async fn update_bare_metal_machine(
        &self,
        id: &str,
        spec: &BareMetalMachineSpec,
    ) -> Result<BareMetalMachine> {
        let path = format!("/v1/bare-metal-machines/{}", encode(id));
        self.call(Method::PUT, &path, Some(spec), None).await
    }
    /// Removes a machine from the pool; a 409 while it hosts active sessions.
    pub async fn delete_bare_metal_machine(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/bare-metal-machines/{}", encode(id)))
            .await
    }
    /// The pool, optionally at one location.
    pub async fn bare_metal_machines(
        &self,
        location: Option<&str>,
    ) -> Result<Vec<BareMetalMachine>> {
        let path = match location {
            Some(location) => format!("/v1/bare-metal-machines?location={}", encode(location)),
            None => "/v1/bare-metal-machines".to_string(),
        };
        let list: BareMetalMachineList = self.get(&path).await?;
        Ok(list.machines)
    }

    /// Reboots a machine: its sessions end LOST at once and every game-server process on
    /// it is restarted.
    pub async fn reboot_machine(&self, id: &str) -> Result<MachineOperation> {
        let path = format!("/v1/machines/{}/reboot", encode(id));
        self.call::<(), _>(Method::POST, &path, None, None).await
    }

    // -- placement -----------------------------------------------------------------------

    pub async fn place_session(&self, fleet: &str, request: &PlacementRequest) -> Result<Session> {
        let path = format!("/v1/fleets/{}/sessions", encode(fleet));
        let wait = Duration::from_secs(u64::from(request.wait_seconds.unwrap_or(0)) + 30);
        self.call(Method::POST, &path, Some(request), Some(wait))
            .await
    }
    pub async fn get_session(&self, id: &str) -> Result<Session> {
        self.get(&format!("/v1/sessions/{}", encode(id))).await
    }
    pub async fn end_session(&self, id: &str) -> Result<Session> {
        let path = format!("/v1/sessions/{}/end", encode(id));
        self.call::<(), _>(Method::POST, &path, None, None).await
    }
    /// Sessions filtered by query pairs (`zone`, `data_center`, `machine`, `build`, `status`).
    pub async fn list_sessions(&self, filters: &[(&str, &str)]) -> Result<SessionList> {
        let query: Vec<String> = filters
            .iter()
            .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
            .collect();
        self.get(&format!("/v1/sessions?{}", query.join("&"))).await
    }

    // -- events --------------------------------------------------------------------------

    /// Events matching `query`, newest first.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let list: EventList = self
            .get(&format!("/v1/events{}", query.to_query_string()))
            .await?;
        Ok(list.events)
    }

    /// Events of one fleet (by id or name) matching `query`, newest first; `query.fleet`
    /// is ignored.
    pub async fn fleet_events(&self, fleet: &str, query: &EventQuery) -> Result<Vec<Event>> {
        let query = EventQuery {
            fleet: None,
            ..query.clone()
        };
        let path = format!(
            "/v1/fleets/{}/events{}",
            encode(fleet),
            query.to_query_string()
        );
        let list: EventList = self.get(&path).await?;
        Ok(list.events)
    }

    // -- crashes -------------------------------------------------------------------------

    /// Crashes matching `query`, newest first.
    pub async fn crashes(&self, query: &CrashQuery) -> Result<Vec<Crash>> {
        let list: CrashList = self
            .get(&format!("/v1/crashes{}", query.to_query_string()))
            .await?;
        Ok(list.crashes)
    }

    /// Crashes of one fleet (by id or name) matching `query`, newest first; `query.fleet`
    /// is ignored.
    pub async fn fleet_crashes(&self, fleet: &str, query: &CrashQuery) -> Result<Vec<Crash>> {
        let query = CrashQuery {
            fleet: None,
            ..query.clone()
        };
        let path = format!(
            "/v1/fleets/{}/crashes{}",
            encode(fleet),
            query.to_query_string()
        );
        let list: CrashList = self.get(&path).await?;
        Ok(list.crashes)
    }

    // -- agent ---------------------------------------------------------------------------

    /// One agent sync; the client's token must be the machine's agent token.
    pub async fn agent_sync(&self, request: &SyncRequest) -> Result<SyncResponse> {
        let wait = Duration::from_millis(u64::from(request.wait_ms)) + Duration::from_secs(15);
        self.call(Method::POST, "/v1/agent/sync", Some(request), Some(wait))
            .await
    }
}

impl EventQuery {
    /// `?key=value&…` of the filters set, or the empty string.
    fn to_query_string(&self) -> String {
        let limit = self.limit.map(|limit| limit.to_string());
        query_string(&[
            ("fleet", self.fleet.as_deref()),
            ("zone", self.zone.as_deref()),
            ("machine", self.machine.as_deref()),
            ("level", self.level.map(EventLevel::as_str)),
            ("producer", self.producer.map(EventProducer::as_str)),
            ("text", self.text.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", self.cursor.as_deref()),
        ])
    }
}

impl CrashQuery {
    /// `?key=value&…` of the filters set, or the empty string.
    fn to_query_string(&self) -> String {
        let limit = self.limit.map(|limit| limit.to_string());
        query_string(&[
            ("fleet", self.fleet.as_deref()),
            ("zone", self.zone.as_deref()),
            ("machine", self.machine.as_deref()),
            ("build", self.build.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", self.cursor.as_deref()),
        ])
    }
}

/// `?key=value&…` of `filters` and, for a next page, its cursor (1,000 a page).
fn paged(filters: &[(&str, &str)], cursor: Option<&str>) -> String {
    let mut pairs: Vec<(&str, Option<&str>)> = filters
        .iter()
        .map(|(key, value)| (*key, Some(*value)))
        .collect();
    pairs.push(("limit", Some("1000")));
    pairs.push(("cursor", cursor));
    query_string(&pairs)
}

/// `?key=value&…` of the pairs with a value, encoded, or the empty string.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.map(|value| format!("{key}={}", encode(value))))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// Percent-encodes one path segment or query component.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{encode, EventQuery};
    use crate::model::CrashQuery;
    use crate::model::EventLevel;

    #[test]
    fn event_query_encodes_only_the_filters_set() {
        assert_eq!(EventQuery::default().to_query_string(), "");
        let query = EventQuery {
            level: Some(EventLevel::Warning),
            text: Some("no capacity".into()),
            limit: Some(5),
            ..EventQuery::default()
        };
        assert_eq!(
            query.to_query_string(),
            "?level=WARNING&text=no%20capacity&limit=5"
        );
    }

    #[test]
    fn crash_query_encodes_only_the_filters_set() {
        assert_eq!(CrashQuery::default().to_query_string(), "");
        let query = CrashQuery {
            zone: Some("zone-1".into()),
            build: Some("bld 2".into()),
            limit: Some(3),
            ..CrashQuery::default()
        };
        assert_eq!(
            query.to_query_string(),
            "?zone=zone-1&build=bld%202&limit=3"
        );
    }

    #[test]
    fn encode_escapes_reserved_characters() {
        assert_eq!(encode("flt-1"), "flt-1");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
