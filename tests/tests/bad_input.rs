//! Bad input to every admin and placement route gets a 4xx JSON error naming the field,
//! never a 5xx, and changes nothing.

use anyhow::Result;
use fleetform_api::*;
use fleetform_e2e::*;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    status: u16,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body: body.map(|b| serde_json::to_vec(&b).unwrap()),
        status,
        field,
    }
}

fn build_body() -> Value {
    json!({ "name": "b", "source": "file:///opt/game" })
}

fn fleet_body(build_id: &str) -> Value {
    json!({ "name": "f", "build_id": build_id, "launch_path": "server" })
}

fn zone_body(fleet_id: &str) -> Value {
    json!({
        "fleet_id": fleet_id, "name": "z", "initial_server_processes": 1,
        "buffer_rules": [{ "available_servers": 1 }],
        "data_centers": [{ "name": "a", "location": "local",
            "machine_models": [{ "instance_type": "local", "processes_per_machine": 1 }],
            "max_server_processes": 1 }]
    })
}

fn bare_metal_body() -> Value {
    json!({ "name": "bm-1", "location": "local", "address": "10.0.0.7" })
}

/// A zone whose one data center asks for the bare-metal pool at `local`, which offers VMs:
/// valid in shape (so it reaches the server's location check), wrong for this server.
fn bare_metal_zone_body(fleet_id: &str) -> Value {
    let mut body = zone_body(fleet_id);
    let data_center = body["data_centers"][0].as_object_mut().unwrap();
    data_center.insert("machine_type".into(), json!("bare_metal"));
    data_center.insert("bare_metal_machines".into(), json!(1));
    data_center.remove("max_server_processes");
    body
}

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let (last, parents) = path.split_last().expect("a path");
    let mut target = &mut body;
    for key in parents {
        target = match key.parse::<usize>() {
            Ok(index) => &mut target[index],
            Err(_) => &mut target[*key],
        };
    }
    match (last.parse::<usize>(), target.as_array_mut()) {
        (Ok(index), Some(array)) if index == array.len() => array.push(value),
        (Ok(index), Some(array)) => array[index] = value,
        _ => target[*last] = value,
    }
    body
}

fn without(mut body: Value, key: &str) -> Value {
    body.as_object_mut().unwrap().remove(key);
    body
}

/// `body` without `key` in its first data center.
fn without_dc_key(mut body: Value, key: &str) -> Value {
    body["data_centers"][0].as_object_mut().unwrap().remove(key);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_naming_the_field_and_changes_nothing() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    // Something real to refer to, and to check nothing changes.
    let build = client
        .create_build(&serde_json::from_value(build_body())?)
        .await?;
    let fleet = client
        .create_fleet(&serde_json::from_value(fleet_body(&build.id))?)
        .await?;
    let zone = client
        .create_zone(&serde_json::from_value(zone_body(&fleet.id))?)
        .await?;
    let huge = Some(json!({ "name": "x".repeat(2 * 1024 * 1024), "source": "file:///x" }));
    let b = &build.id;
    let f = &fleet.id;
    let z = &zone.id;

    #[rustfmt::skip]
    let cases = vec![
        // builds
        case("build: wrong type", "POST", "/v1/builds", Some(with(build_body(), &["name"], json!(5))), 400, Some("name")),
        case("build: unknown field", "POST", "/v1/builds", Some(with(build_body(), &["colour"], json!("red"))), 400, Some("colour")),
        case("build: missing field", "POST", "/v1/builds", Some(without(build_body(), "source")), 400, Some("source")),
        case("build: bad source", "POST", "/v1/builds", Some(with(build_body(), &["source"], json!("ftp://x/y"))), 422, Some("source")),
        case("build: bad os", "POST", "/v1/builds", Some(with(build_body(), &["operating_system"], json!("beos"))), 400, Some("operating_system")),
        case("build: sha256 of a directory", "POST", "/v1/builds", Some(with(build_body(), &["sha256"], json!("a".repeat(64)))), 422, Some("sha256")),
        case("build: oversized", "POST", "/v1/builds", huge.clone(), 413, None),
        case("build: not json", "POST", "/v1/builds", None, 400, None),
        case("build: unknown id", "GET", "/v1/builds/bld-nope", None, 404, None),
        case("build: update unknown id", "PUT", "/v1/builds/bld-nope", Some(build_body()), 404, None),
        case("build: immutable source", "PUT", format!("/v1/builds/{b}"), Some(with(build_body(), &["source"], json!("file:///other"))), 422, Some("source")),
        case("build: delete in use", "DELETE", format!("/v1/builds/{b}"), None, 409, None),
        case("build: delete unknown", "DELETE", "/v1/builds/bld-nope", None, 404, None),
        // fleets
        case("fleet: unknown build", "POST", "/v1/fleets", Some(fleet_body("bld-nope")), 422, Some("build_id")),
        case("fleet: script launch path", "POST", "/v1/fleets", Some(with(fleet_body(b), &["launch_path"], json!("start.sh"))), 422, Some("launch_path")),
        case("fleet: restart hours over 168", "POST", "/v1/fleets", Some(with(fleet_body(b), &["process_restart_hours"], json!(169))), 422, Some("process_restart_hours")),
        case("fleet: negative restart hours", "POST", "/v1/fleets", Some(with(fleet_body(b), &["process_restart_hours"], json!(-1))), 400, Some("process_restart_hours")),
        case("fleet: parallel sessions in simple mode", "POST", "/v1/fleets", Some(with(fleet_body(b), &["sessions_per_process"], json!(2))), 422, Some("sessions_per_process")),
        case("fleet: bad session mode", "POST", "/v1/fleets", Some(with(fleet_body(b), &["session_mode"], json!("many"))), 400, Some("session_mode")),
        case("fleet: unknown placeholder", "POST", "/v1/fleets", Some(with(fleet_body(b), &["launch_parameters"], json!("--x {nope}"))), 422, Some("launch_parameters")),
        case("fleet: duplicate name", "POST", "/v1/fleets", Some(fleet_body(b)), 409, Some("name")),
        case("fleet: missing field", "POST", "/v1/fleets", Some(without(fleet_body(b), "launch_path")), 400, Some("launch_path")),
        case("fleet: unknown field", "POST", "/v1/fleets", Some(with(fleet_body(b), &["regions"], json!([]))), 400, Some("regions")),
        case("fleet: oversized", "POST", "/v1/fleets", huge.clone(), 413, None),
        case("fleet: rename", "PUT", format!("/v1/fleets/{f}"), Some(with(fleet_body(b), &["name"], json!("g"))), 422, Some("name")),
        case("fleet: unknown id", "GET", "/v1/fleets/flt-nope", None, 404, None),
        case("fleet: update unknown id", "PUT", "/v1/fleets/flt-nope", Some(fleet_body(b)), 404, None),
        case("fleet: delete with zones", "DELETE", format!("/v1/fleets/{f}"), None, 409, None),
        case("fleet: machines of unknown fleet", "GET", "/v1/fleets/flt-nope/machines", None, 404, None),
        // zones
        case("zone: unknown fleet", "POST", "/v1/zones", Some(zone_body("flt-nope")), 422, Some("fleet_id")),
        case("zone: duplicate data center", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "1"], zone_body(f)["data_centers"][0].clone())), 422, Some("data_centers[1].name")),
        case("zone: both buffer amounts", "POST", "/v1/zones", Some(with(zone_body(f), &["buffer_rules", "0", "available_percent"], json!(10))), 422, Some("buffer_rules[0]")),
        case("zone: no buffer rule in auto mode", "POST", "/v1/zones", Some(with(zone_body(f), &["buffer_rules"], json!([]))), 422, Some("buffer_rules")),
        case("zone: unknown location", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "0", "location"], json!("mars"))), 422, Some("data_centers[0].location")),
        case("zone: wrong type deep", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "0", "priority"], json!("high"))), 400, Some("data_centers[0].priority")),
        case("zone: unknown field deep", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "0", "colour"], json!(1))), 400, Some("data_centers[0].colour")),
        case("zone: zero initial", "POST", "/v1/zones", Some(with(zone_body(f), &["initial_server_processes"], json!(0))), 422, Some("initial_server_processes")),
        case("zone: duplicate name", "POST", "/v1/zones", Some(zone_body(f)), 409, Some("name")),
        case("zone: oversized", "POST", "/v1/zones", huge.clone(), 413, None),
        case("zone: rename", "PUT", format!("/v1/zones/{z}"), Some(with(zone_body(f), &["name"], json!("y"))), 422, Some("name")),
        case("zone: unknown id", "GET", "/v1/zones/zone-nope", None, 404, None),
        case("zone: status of unknown id", "GET", "/v1/zones/zone-nope/status", None, 404, None),
        case("zone: delete unknown", "DELETE", "/v1/zones/zone-nope", None, 404, None),
        // placement
        case("place: unknown fleet", "POST", "/v1/fleets/flt-nope/sessions", Some(json!({ "zone": "z" })), 404, None),
        case("place: unknown zone", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({ "zone": "nowhere" })), 422, Some("zone")),
        case("place: missing zone", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({})), 400, Some("zone")),
        case("place: wrong type", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({ "zone": "z", "max_players": "ten" })), 400, Some("max_players")),
        case("place: wrong type in map", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({ "zone": "z", "player_latencies_ms": { "a": -3 } })), 400, Some("player_latencies_ms.a")),
        case("place: unknown field", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({ "zone": "z", "region": "eu" })), 400, Some("region")),
        case("place: wait too long", "POST", format!("/v1/fleets/{f}/sessions"), Some(json!({ "zone": "z", "wait_seconds": 100000 })), 422, Some("wait_seconds")),
        case("place: oversized", "POST", format!("/v1/fleets/{f}/sessions"), huge.clone(), 413, None),
        case("session: unknown id", "GET", "/v1/sessions/sess-nope", None, 404, None),
        case("session: end unknown id", "POST", "/v1/sessions/sess-nope/end", None, 404, None),
        case("sessions: unknown filter", "GET", "/v1/sessions?colour=red", None, 400, Some("colour")),
        case("sessions: bad status filter", "GET", "/v1/sessions?status=PAUSED", None, 422, Some("status")),
        // events
        case("events: bad level", "GET", "/v1/events?level=LOUD", None, 422, Some("level")),
        case("events: level in lower case", "GET", "/v1/events?level=info", None, 422, Some("level")),
        case("events: bad producer", "GET", "/v1/events?producer=AGENT", None, 422, Some("producer")),
        case("events: limit not a number", "GET", "/v1/events?limit=ten", None, 422, Some("limit")),
        case("events: limit zero", "GET", "/v1/events?limit=0", None, 422, Some("limit")),
        case("events: limit too large", "GET", "/v1/events?limit=10001", None, 422, Some("limit")),
        case("events: negative limit", "GET", "/v1/events?limit=-1", None, 422, Some("limit")),
        case("events: unknown filter", "GET", "/v1/events?colour=red", None, 400, Some("colour")),
        case("events: malformed query value", "GET", "/v1/events?level=%FF", None, 422, Some("level")),
        case("fleet events: unknown fleet", "GET", "/v1/fleets/flt-nope/events", None, 404, None),
        case("fleet events: bad level", "GET", format!("/v1/fleets/{f}/events?level=DEBUG"), None, 422, Some("level")),
        case("fleet events: bad limit", "GET", format!("/v1/fleets/{f}/events?limit=0"), None, 422, Some("limit")),
        case("fleet events: fleet filter on a fleet's route", "GET", format!("/v1/fleets/{f}/events?fleet=other"), None, 400, Some("fleet")),
        case("fleet events: unknown filter", "GET", format!("/v1/fleets/{f}/events?severity=ERROR"), None, 400, Some("severity")),
        // crashes
        case("crashes: limit not a number", "GET", "/v1/crashes?limit=ten", None, 422, Some("limit")),
        case("crashes: limit zero", "GET", "/v1/crashes?limit=0", None, 422, Some("limit")),
        case("crashes: limit too large", "GET", "/v1/crashes?limit=10001", None, 422, Some("limit")),
        case("crashes: negative limit", "GET", "/v1/crashes?limit=-1", None, 422, Some("limit")),
        case("crashes: malformed limit", "GET", "/v1/crashes?limit=%FF", None, 422, Some("limit")),
        case("crashes: unknown filter", "GET", "/v1/crashes?signal=11", None, 400, Some("signal")),
        case("crashes: level is an event filter", "GET", "/v1/crashes?level=ERROR", None, 400, Some("level")),
        case("crashes: wrong method", "POST", "/v1/crashes", Some(json!({})), 405, None),
        case("fleet crashes: unknown fleet", "GET", "/v1/fleets/flt-nope/crashes", None, 404, None),
        case("fleet crashes: bad limit", "GET", format!("/v1/fleets/{f}/crashes?limit=0"), None, 422, Some("limit")),
        case("fleet crashes: bad limit on an unknown fleet", "GET", "/v1/fleets/flt-nope/crashes?limit=x", None, 422, Some("limit")),
        case("fleet crashes: fleet filter on a fleet's route", "GET", format!("/v1/fleets/{f}/crashes?fleet=other"), None, 400, Some("fleet")),
        case("fleet crashes: unknown filter", "GET", format!("/v1/fleets/{f}/crashes?exit_code=3"), None, 400, Some("exit_code")),
        // bare-metal pool (this server has no bare_metal location: `local` and `sim` only)
        case("bare metal: unknown field", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["colour"], json!("red"))), 400, Some("colour")),
        case("bare metal: missing name", "POST", "/v1/bare-metal-machines", Some(without(bare_metal_body(), "name")), 400, Some("name")),
        case("bare metal: missing address", "POST", "/v1/bare-metal-machines", Some(without(bare_metal_body(), "address")), 400, Some("address")),
        case("bare metal: wrong type", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["cores"], json!("many"))), 400, Some("cores")),
        case("bare metal: address with a scheme", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["address"], json!("http://x"))), 422, Some("address")),
        case("bare metal: zero cores", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["cores"], json!(0))), 422, Some("cores")),
        case("bare metal: zero memory", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["memory_gb"], json!(0))), 422, Some("memory_gb")),
        case("bare metal: empty label key", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["labels"], json!({ "": "v" }))), 422, Some("labels.")),
        case("bare metal: bad name", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["name"], json!("bm 1"))), 422, Some("name")),
        case("bare metal: vm location", "POST", "/v1/bare-metal-machines", Some(bare_metal_body()), 422, Some("location")),
        case("bare metal: sim location", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["location"], json!("sim"))), 422, Some("location")),
        case("bare metal: unknown location", "POST", "/v1/bare-metal-machines", Some(with(bare_metal_body(), &["location"], json!("mars"))), 422, Some("location")),
        case("bare metal: oversized", "POST", "/v1/bare-metal-machines", huge.clone(), 413, None),
        case("bare metal: update unknown field", "PUT", "/v1/bare-metal-machines/bm-nope", Some(with(bare_metal_body(), &["colour"], json!("red"))), 400, Some("colour")),
        case("bare metal: update missing name", "PUT", "/v1/bare-metal-machines/bm-nope", Some(without(bare_metal_body(), "name")), 400, Some("name")),
        case("bare metal: update bad address", "PUT", "/v1/bare-metal-machines/bm-nope", Some(with(bare_metal_body(), &["address"], json!("http://x"))), 422, Some("address")),
        case("bare metal: update zero cores", "PUT", "/v1/bare-metal-machines/bm-nope", Some(with(bare_metal_body(), &["cores"], json!(0))), 422, Some("cores")),
        case("bare metal: update empty label key", "PUT", "/v1/bare-metal-machines/bm-nope", Some(with(bare_metal_body(), &["labels"], json!({ "": "v" }))), 422, Some("labels.")),
        case("bare metal: update unknown id", "PUT", "/v1/bare-metal-machines/bm-nope", Some(bare_metal_body()), 404, None),
        case("bare metal: unknown id", "GET", "/v1/bare-metal-machines/bm-nope", None, 404, None),
        case("bare metal: delete unknown", "DELETE", "/v1/bare-metal-machines/bm-nope", None, 404, None),
        case("bare metal: unknown filter", "GET", "/v1/bare-metal-machines?colour=red", None, 400, Some("colour")),
        case("bare metal: wrong method", "PATCH", "/v1/bare-metal-machines", Some(bare_metal_body()), 405, None),
        // machines
        case("machine: reboot unknown", "POST", "/v1/machines/mch-nope/reboot", None, 404, None),
        case("machine: revoke unknown", "POST", "/v1/machines/mch-nope/revoke", None, 404, None),
        // zones with bare metal
        case("zone: bare metal at a vm location", "POST", "/v1/zones", Some(with(bare_metal_zone_body(f), &["name"], json!("metal"))), 422, Some("data_centers[0].machine_type")),
        case("zone: update to bare metal at a vm location", "PUT", format!("/v1/zones/{z}"), Some(bare_metal_zone_body(f)), 422, Some("data_centers[0].machine_type")),
        case("zone: bare metal without a pool count", "POST", "/v1/zones", Some(without_dc_key(bare_metal_zone_body(f), "bare_metal_machines")), 422, Some("data_centers[0].bare_metal_machines")),
        case("zone: bare metal with a vm maximum", "POST", "/v1/zones", Some(with(bare_metal_zone_body(f), &["data_centers", "0", "max_server_processes"], json!(1))), 422, Some("data_centers[0].max_server_processes")),
        case("zone: pool count on a vm data center", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "0", "bare_metal_machines"], json!(1))), 422, Some("data_centers[0].bare_metal_machines")),
        case("zone: bad machine type", "POST", "/v1/zones", Some(with(zone_body(f), &["data_centers", "0", "machine_type"], json!("mainframe"))), 400, Some("data_centers[0].machine_type")),
        // the rest
        case("malformed path", "GET", "/v1/builds/%FF", None, 400, None),
        case("malformed query value", "GET", "/v1/sessions?status=%FF", None, 422, Some("status")),
        case("unknown route", "GET", "/v1/nothing", None, 404, None),
        case("wrong method", "PATCH", "/v1/builds", Some(build_body()), 405, None),
        case("agent: unknown machine token", "POST", "/v1/agent/sync", Some(json!({ "agent_pid": 1, "address": "127.0.0.1", "processes": [] })), 401, None),
    ];

    // A fresh connection per case: after a 413 the server closes the connection without
    // reading the rest of the body, and a pooled one could be reused before that is seen.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut failures = Vec::new();
    for case in &cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes())?;
        let mut request = http
            .request(method, format!("{}{}", server.url, case.path))
            .bearer_auth(TOKEN);
        request = match &case.body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(body.clone()),
            None if case.method == "POST" && case.name.contains("not json") => {
                request.body("{\"name\": ")
            }
            None => request,
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body: Result<ErrorBody, _> = serde_json::from_str(&text);
        let problem = match body {
            _ if status >= 500 => Some(format!("5xx: {status} {text}")),
            Err(_) => Some(format!("not a JSON error body: {status} {text}")),
            Ok(_) if status != case.status => {
                Some(format!("status {status}, want {}: {text}", case.status))
            }
            Ok(body) if case.field.is_some() && body.error.field.as_deref() != case.field => {
                Some(format!(
                    "field {:?}, want {:?}: {text}",
                    body.error.field, case.field
                ))
            }
            // A 404 about the missing thing, from its route: not the fallback of a route
            // that does not exist.
            Ok(body)
                if status == 404
                    && body.error.message.starts_with("route ")
                        != (case.name == "unknown route") =>
            {
                Some(format!("404 from the wrong place: {text}"))
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", case.name));
        }
    }

    // Without the admin token nothing is answered, with a JSON 401.
    let guarded = [
        format!("/v1/builds/{b}"),
        "/v1/events".to_string(),
        format!("/v1/fleets/{f}/events"),
        "/v1/crashes".to_string(),
        format!("/v1/fleets/{f}/crashes"),
        // It hands out agent tokens.
        "/v1/bare-metal-machines".to_string(),
        "/v1/bare-metal-machines/bm-nope".to_string(),
    ];
    for path in &guarded {
        for token in [None, Some("wrong")] {
            let mut request = http.get(format!("{}{path}", server.url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            if response.status().as_u16() != 401 {
                failures.push(format!(
                    "{path} with token {token:?}: status {}",
                    response.status()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing was half-applied: the same three resources, unchanged.
    assert_eq!(client.get_build(b).await?, build);
    assert_eq!(client.get_fleet(f).await?.spec(), fleet.spec());
    assert_eq!(client.get_zone(z).await?.spec, zone.spec);
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM builds WHERE id <> ?", b).await?,
        0
    );
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM fleets WHERE id <> ?", f).await?,
        0
    );
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM zones WHERE id <> ?", z).await?,
        0
    );
    assert_eq!(
        count_rows(&server, "SELECT COUNT(*) FROM sessions WHERE id <> ?", "").await?,
        0
    );
    assert_eq!(
        count_rows(
            &server,
            "SELECT COUNT(*) FROM bare_metal_machines WHERE id <> ?",
            ""
        )
        .await?,
        0
    );
    assert!(client.bare_metal_machines(None).await?.is_empty());
    Ok(())
}

/// The event lists answer 200 with `{ "events": [...] }`, empty when nothing matches, and
/// take a fleet's name as well as its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_lists_are_json_lists() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let get = |path: String| {
        let request = http.get(format!("{}{path}", server.url)).bearer_auth(TOKEN);
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, body))
        }
    };

    // A fresh server has nothing to tell.
    assert_eq!(
        get("/v1/events".into()).await?,
        (200, json!({ "events": [] }))
    );
    assert!(client.events(&EventQuery::default()).await?.is_empty());

    let build = client
        .create_build(&serde_json::from_value(build_body())?)
        .await?;
    let fleet = client
        .create_fleet(&serde_json::from_value(fleet_body(&build.id))?)
        .await?;
    // Every filter at once, matching nothing: an empty list, not an error.
    let (status, body) = get(format!(
        "/v1/fleets/{}/events?zone=zone-nope&machine=mch-nope&level=ERROR&producer=MACHINE&text=x&limit=5",
        fleet.name
    ))
    .await?;
    assert_eq!((status, body), (200, json!({ "events": [] })));
    // By name or id, whatever events the fleet has are its own.
    for id_or_name in [&fleet.name, &fleet.id] {
        let events = client
            .fleet_events(id_or_name, &EventQuery::default())
            .await?;
        assert!(
            events
                .iter()
                .all(|e| e.fleet_id.as_deref() == Some(&fleet.id)),
            "{events:?}"
        );
    }
    let filtered = client
        .events(&EventQuery {
            fleet: Some(fleet.name.clone()),
            machine: Some("mch-nope".into()),
            level: Some(EventLevel::Warning),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    assert!(filtered.is_empty(), "{filtered:?}");
    Ok(())
}

/// The crash lists answer 200 with `{ "crashes": [...] }`, empty when nothing matches, and
/// take a fleet's name as well as its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_lists_are_json_lists() -> Result<()> {
    let server = Fleetformd::start()?;
    let client = server.client();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let get = |path: String| {
        let request = http.get(format!("{}{path}", server.url)).bearer_auth(TOKEN);
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, body))
        }
    };
    assert_eq!(
        get("/v1/crashes".into()).await?,
        (200, json!({ "crashes": [] }))
    );
    let build = client
        .create_build(&serde_json::from_value(build_body())?)
        .await?;
    let fleet = client
        .create_fleet(&serde_json::from_value(fleet_body(&build.id))?)
        .await?;
    // Every filter at once, matching nothing: an empty list, not an error.
    for path in [
        format!(
            "/v1/fleets/{}/crashes?zone=zone-nope&machine=mch-nope&build={}&limit=5",
            fleet.name, build.id
        ),
        format!(
            "/v1/crashes?fleet={}&zone=zone-nope&machine=mch-nope&build=bld-nope&limit=10000",
            fleet.id
        ),
        // A fleet that no longer exists (or never did) keeps its history readable.
        "/v1/crashes?fleet=flt-gone".to_string(),
    ] {
        assert_eq!(get(path).await?, (200, json!({ "crashes": [] })));
    }
    for id_or_name in [&fleet.name, &fleet.id] {
        assert!(client
            .fleet_crashes(id_or_name, &CrashQuery::default())
            .await?
            .is_empty());
    }
    let filtered = client
        .crashes(&CrashQuery {
            fleet: Some(fleet.name.clone()),
            build: Some(build.id.clone()),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    assert!(filtered.is_empty(), "{filtered:?}");
    Ok(())
}
