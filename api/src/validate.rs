//! Validation rules of the admin and placement bodies, shared by fleetformd (a 422 naming
//! the field) and the provider (a plan-time diagnostic on the attribute).
//!
//! Each rule is a plain function over one value, so the provider can apply it to whatever
//! part of a configuration is already known at plan time; `validate_*_spec` apply them all
//! to a whole body. Field paths use the JSON names of the wire types (`data_centers[1].name`);
//! the provider maps them to its block names.

use std::collections::BTreeSet;

use crate::model::*;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field (`data_centers[0].machine_models[1].instance_type`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Largest `process_restart_hours`: one week.
pub const MAX_PROCESS_RESTART_HOURS: u32 = 168;
/// Most machine models a data center may rank.
pub const MAX_MACHINE_MODELS: usize = 10;
/// Longest name (build, fleet, zone, data center) in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest placement `wait_seconds`.
pub const MAX_WAIT_SECONDS: u32 = 300;
/// Placeholders `launch_parameters` may use.
pub const LAUNCH_PLACEHOLDERS: &[&str] = &["port", "process_id", "sdk_addr"];

/// Script extensions a `launch_path` may not have: a fleet runs an executable, and a script
/// would hide the real process from the agent's crash and health tracking.
const SCRIPT_EXTENSIONS: &[&str] = &[".sh", ".ps1", ".bat", ".cmd"];

type Rule = Result<(), String>;

/// A name of a build, fleet, zone or data center: 1–128 characters, no control characters.
pub fn name(value: &str) -> Rule {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A name that also appears in URLs and placement requests (fleet, zone, data center):
/// letters, digits, `-` and `_`.
pub fn identifier(value: &str) -> Rule {
    name(value)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{value:?} may only contain ASCII letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// A build `source` URI.
pub fn build_source(value: &str) -> Rule {
    if let Some(path) = value.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{value:?} must be an absolute path: file:///abs/dir or file:///abs/pkg.tar.gz"
            ));
        }
        if path.split('/').any(|segment| segment == "..") {
            return Err(format!("{value:?} must not contain '..'"));
        }
        return Ok(());
    }
    if let Some(rest) = value.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() {
            return Err(format!(
                "{value:?} must name a bucket and a key: s3://bucket/key"
            ));
        }
        return Ok(());
    }
    if let Some(rest) = value.strip_prefix("https://") {
        if rest.is_empty() {
            return Err(format!("{value:?} must name a host"));
        }
        return Ok(());
    }
    Err(format!(
        "{value:?} must start with file://, s3:// or https://"
    ))
}

/// True when `source` names an archive (`.tar.gz`, `.tgz`) rather than a directory.
pub fn is_archive_source(source: &str) -> bool {
    source.ends_with(".tar.gz") || source.ends_with(".tgz")
}

/// A build `sha256`: 64 lower-case hex digits.
pub fn sha256(value: &str) -> Rule {
    if value.len() != 64
        || !value
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err("must be 64 lower-case hexadecimal digits".into());
    }
    Ok(())
}

/// `sha256` may only be given for archive sources: a directory has no single digest.
pub fn sha256_with_source(source: &str) -> Rule {
    if is_archive_source(source) {
        Ok(())
    } else {
        Err("can only be checked for an archive source (.tar.gz or .tgz), not a directory".into())
    }
}

/// A fleet `launch_path`: a relative path inside the build to an executable, not a script.
pub fn launch_path(value: &str) -> Rule {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let lower = value.to_ascii_lowercase();
    if let Some(ext) = SCRIPT_EXTENSIONS.iter().find(|ext| lower.ends_with(*ext)) {
        return Err(format!(
            "{value:?} is a script ({ext}); launch_path must name the game server's executable"
        ));
    }
    if value.starts_with('/') || value.starts_with('\\') {
        return Err(format!(
            "{value:?} must be relative to the build's root, not absolute"
        ));
    }
    if value.split(['/', '\\']).any(|segment| segment == "..") {
        return Err(format!("{value:?} must stay inside the build (no '..')"));
    }
    Ok(())
}

/// `launch_parameters`: only the documented `{placeholders}`, and balanced braces.
pub fn launch_parameters(value: &str) -> Rule {
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("has a '{' with no closing '}'".into());
        };
        let placeholder = &after[..close];
        if !LAUNCH_PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "unknown placeholder {{{placeholder}}}; known: {}",
                LAUNCH_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// `process_restart_hours`: 0–168.
pub fn process_restart_hours(value: i64) -> Rule {
    if !(0..=i64::from(MAX_PROCESS_RESTART_HOURS)).contains(&value) {
        return Err(format!(
            "must be between 0 and {MAX_PROCESS_RESTART_HOURS} (0 turns it off), got {value}"
        ));
    }
    Ok(())
}

/// `sessions_per_process` given the session mode.
pub fn sessions_per_process(value: i64, mode: SessionMode) -> Rule {
    if value < 1 {
        return Err(format!("must be at least 1, got {value}"));
    }
    if mode == SessionMode::Simple && value != 1 {
        return Err(format!(
            "must be 1 when session_mode is \"simple\" (got {value}); use session_mode = \"parallel\" to host several sessions per process"
        ));
    }
    if value > 1000 {
        return Err(format!("must be at most 1000, got {value}"));
    }
    Ok(())
}

/// An integer that must be at least `min` (and fit in 32 bits).
pub fn at_least(value: i64, min: i64) -> Rule {
    if value < min {
        return Err(format!("must be at least {min}, got {value}"));
    }
    if value > i64::from(u32::MAX) {
        return Err(format!("must be at most {}, got {value}", u32::MAX));
    }
    Ok(())
}

/// The buffer rules of an auto-scaled zone: at least one; the first starts at 0 active
/// sessions and thresholds strictly increase; each has exactly one amount.
pub fn buffer_rules(rules: &[BufferRule], mode: ScalingMode) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if mode == ScalingMode::Auto && rules.is_empty() {
        errors.push(FieldError::new(
            "buffer_rules",
            "at least one buffer rule is required when scaling_mode is \"auto\"",
        ));
    }
    for (index, rule) in rules.iter().enumerate() {
        let path = format!("buffer_rules[{index}]");
        if index == 0 && rule.min_active_sessions != 0 {
            errors.push(FieldError::new(
                format!("{path}.min_active_sessions"),
                format!(
                    "the first buffer rule must start at 0 active sessions, got {}",
                    rule.min_active_sessions
                ),
            ));
        }
        if index > 0 && rule.min_active_sessions <= rules[index - 1].min_active_sessions {
            errors.push(FieldError::new(
                format!("{path}.min_active_sessions"),
                format!(
                    "must be greater than the previous rule's {} (thresholds strictly increase)",
                    rules[index - 1].min_active_sessions
                ),
            ));
        }
        if let Err(message) = buffer_amounts(
            rule.available_servers,
            rule.available_percent,
            rule.available_predicted,
        ) {
            errors.push(FieldError::new(path.clone(), message));
        }
        if let Some(percent) = rule.available_percent {
            if !(1..=1000).contains(&percent) {
                errors.push(FieldError::new(
                    format!("{path}.available_percent"),
                    format!("must be between 1 and 1000, got {percent}"),
                ));
            }
        }
    }
    errors
}

/// Exactly one of a buffer rule's amounts.
pub fn buffer_amounts(servers: Option<u32>, percent: Option<u32>, predicted: Option<u32>) -> Rule {
    let set = [servers.is_some(), percent.is_some(), predicted.is_some()]
        .into_iter()
        .filter(|set| *set)
        .count();
    match set {
        1 => Ok(()),
        0 => Err(
            "set exactly one of available_servers, available_percent or available_predicted"
                .into(),
        ),
        _ => Err(
            "set exactly one of available_servers, available_percent or available_predicted, not several"
                .into(),
        ),
    }
}

/// Validates a build body.
pub fn validate_build_spec(spec: &BuildSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(&mut errors, "name", name(&spec.name));
    check(&mut errors, "source", build_source(&spec.source));
    if let Some(digest) = &spec.sha256 {
        check(&mut errors, "sha256", sha256(digest));
        check(&mut errors, "sha256", sha256_with_source(&spec.source));
    }
    errors
}

/// Validates a fleet body.
pub fn validate_fleet_spec(spec: &FleetSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(&mut errors, "name", identifier(&spec.name));
    check(&mut errors, "build_id", name(&spec.build_id));
    check(&mut errors, "launch_path", launch_path(&spec.launch_path));
    if let Some(parameters) = &spec.launch_parameters {
        check(
            &mut errors,
            "launch_parameters",
            launch_parameters(parameters),
        );
    }
    check(
        &mut errors,
        "process_restart_hours",
        process_restart_hours(i64::from(spec.process_restart_hours)),
    );
    check(
        &mut errors,
        "sessions_per_process",
        sessions_per_process(i64::from(spec.sessions_per_process), spec.session_mode),
    );
    check(
        &mut errors,
        "storage_gb",
        at_least(i64::from(spec.storage_gb), 1),
    );
    errors
}

/// Validates a zone body.
pub fn validate_zone_spec(spec: &ZoneSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(&mut errors, "fleet_id", name(&spec.fleet_id));
    check(&mut errors, "name", identifier(&spec.name));
    check(
        &mut errors,
        "initial_server_processes",
        at_least(i64::from(spec.initial_server_processes), 1),
    );
    errors.extend(buffer_rules(&spec.buffer_rules, spec.scaling_mode));
    if let (Some(min), Some(max)) = (spec.free_slots_min, spec.free_slots_max) {
        if min > max {
            errors.push(FieldError::new(
                "free_slots_max",
                format!("must be at least free_slots_min ({min}), got {max}"),
            ));
        }
    }
    if spec.data_centers.is_empty() {
        errors.push(FieldError::new(
            "data_centers",
            "at least one data center is required",
        ));
    }
    let mut seen = BTreeSet::new();
    for (index, dc) in spec.data_centers.iter().enumerate() {
        let path = format!("data_centers[{index}]");
        check(&mut errors, &format!("{path}.name"), identifier(&dc.name));
        if !seen.insert(dc.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!(
                    "data center names must be unique; {:?} appears twice",
                    dc.name
                ),
            ));
        }
        check(&mut errors, &format!("{path}.location"), name(&dc.location));
        errors.extend(data_center_shape(dc, &path));
    }
    errors
}

/// The per-kind rules of one data center: models and maximum for VMs, a pool count for
/// bare metal.
pub fn data_center_shape(dc: &DataCenterSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match dc.machine_type {
        MachineType::Vm => {
            if dc.machine_models.is_empty() || dc.machine_models.len() > MAX_MACHINE_MODELS {
                errors.push(FieldError::new(
                    format!("{path}.machine_models"),
                    format!(
                        "a vm data center ranks 1 to {MAX_MACHINE_MODELS} machine models, got {}",
                        dc.machine_models.len()
                    ),
                ));
            }
            match dc.max_server_processes {
                None => errors.push(FieldError::new(
                    format!("{path}.max_server_processes"),
                    "is required for a vm data center",
                )),
                Some(0) => errors.push(FieldError::new(
                    format!("{path}.max_server_processes"),
                    "must be at least 1",
                )),
                Some(_) => {}
            }
            if dc.bare_metal_machines.is_some() {
                errors.push(FieldError::new(
                    format!("{path}.bare_metal_machines"),
                    "only applies to a bare_metal data center",
                ));
            }
        }
        MachineType::BareMetal => {
            if dc.bare_metal_machines.unwrap_or(0) == 0 {
                errors.push(FieldError::new(
                    format!("{path}.bare_metal_machines"),
                    "a bare_metal data center takes at least 1 machine from the pool",
                ));
            }
            if dc.max_server_processes.is_some() {
                errors.push(FieldError::new(
                    format!("{path}.max_server_processes"),
                    "only applies to a vm data center; bare metal runs all its machines",
                ));
            }
            if dc.machine_models.len() > MAX_MACHINE_MODELS {
                errors.push(FieldError::new(
                    format!("{path}.machine_models"),
                    format!("at most {MAX_MACHINE_MODELS} machine models"),
                ));
            }
        }
    }
    for (index, model) in dc.machine_models.iter().enumerate() {
        let model_path = format!("{path}.machine_models[{index}]");
        check(
            &mut errors,
            &format!("{model_path}.instance_type"),
            name(&model.instance_type),
        );
        check(
            &mut errors,
            &format!("{model_path}.processes_per_machine"),
            at_least(i64::from(model.processes_per_machine), 1),
        );
    }
    errors
}

/// A machine's network address: a host name or an IP address, no scheme, port or spaces.
pub fn address(value: &str) -> Rule {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 253 {
        return Err("must be at most 253 bytes".into());
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host_name = value.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !host_name {
        return Err(format!(
            "{value:?} is neither an IP address nor a host name (no scheme, port or spaces)"
        ));
    }
    Ok(())
}

/// Validates a bare-metal machine body (the location is checked against the server's).
pub fn validate_bare_metal_spec(spec: &BareMetalMachineSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(&mut errors, "name", identifier(&spec.name));
    check(&mut errors, "location", identifier(&spec.location));
    check(&mut errors, "address", address(&spec.address));
    if let Some(cores) = spec.cores {
        check(&mut errors, "cores", at_least(i64::from(cores), 1));
    }
    if let Some(memory) = spec.memory_gb {
        check(&mut errors, "memory_gb", at_least(i64::from(memory), 1));
    }
    for (key, value) in &spec.labels {
        let field = format!("labels.{key}");
        if key.is_empty() || key.len() > 63 || key.chars().any(char::is_control) {
            errors.push(FieldError::new(
                field,
                "label keys are 1 to 63 bytes without control characters",
            ));
        } else if value.len() > 255 || value.chars().any(char::is_control) {
            errors.push(FieldError::new(
                field,
                "label values are at most 255 bytes without control characters",
            ));
        }
    }
    errors
}

/// Validates a placement body (the fleet and zone are checked against the store).
pub fn validate_placement(request: &PlacementRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(&mut errors, "zone", name(&request.zone));
    if let Some(wait) = request.wait_seconds {
        if wait > MAX_WAIT_SECONDS {
            errors.push(FieldError::new(
                "wait_seconds",
                format!("must be at most {MAX_WAIT_SECONDS}, got {wait}"),
            ));
        }
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            errors.push(FieldError::new("idempotency_key", "must be 1 to 256 bytes"));
        }
    }
    if let Some(players) = request.max_players {
        if players == 0 {
            errors.push(FieldError::new("max_players", "must be at least 1"));
        }
    }
    errors
}

fn check(errors: &mut Vec<FieldError>, field: &str, rule: Rule) {
    if let Err(message) = rule {
        errors.push(FieldError::new(field, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_path_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("plain binary", "bin/server", true),
            ("shell script", "start.sh", false),
            ("powershell upper case", "Start.PS1", false),
            ("batch", "run.bat", false),
            ("cmd", "run.cmd", false),
            ("absolute", "/bin/server", false),
            ("escapes build", "../server", false),
            ("empty", "", false),
            ("exe", "Server.exe", true),
        ];
        for (case, value, ok) in cases {
            assert_eq!(launch_path(value).is_ok(), *ok, "{case}: {value}");
        }
    }

    #[test]
    fn address_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("ipv4", "10.0.0.7", true),
            ("ipv6", "2001:db8::1", true),
            ("host name", "bm-01.fra.example.com", true),
            ("single label", "localhost", true),
            ("empty", "", false),
            ("scheme", "http://10.0.0.7", false),
            ("port", "10.0.0.7:7777", false),
            ("space", "bm 01", false),
            ("empty label", "a..b", false),
            ("leading hyphen", "-a.b", false),
        ];
        for (case, value, ok) in cases {
            assert_eq!(address(value).is_ok(), *ok, "{case}: {value}");
        }
    }

    #[test]
    fn bare_metal_spec_names_every_bad_field() {
        let spec = BareMetalMachineSpec {
            name: "bad name".into(),
            location: "fra".into(),
            address: "http://x".into(),
            cores: Some(0),
            memory_gb: Some(0),
            labels: [(String::new(), "v".into())].into(),
        };
        let fields: Vec<String> = validate_bare_metal_spec(&spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["name", "address", "cores", "memory_gb", "labels."],
            "{fields:?}"
        );
    }

    #[test]
    fn launch_parameter_cases() {
        assert!(launch_parameters("--port {port} --id {process_id} --sdk {sdk_addr}").is_ok());
        assert!(launch_parameters("").is_ok());
        assert!(launch_parameters("--x {nope}")
            .unwrap_err()
            .contains("{nope}"));
        assert!(launch_parameters("--x {port").is_err());
    }

    #[test]
    fn source_cases() {
        let cases: &[(&str, bool)] = &[
            ("file:///opt/build", true),
            ("file:///opt/build.tar.gz", true),
            ("file://relative", false),
            ("file:///opt/../etc", false),
            ("s3://bucket/key.tar.gz", true),
            ("s3://bucket", false),
            ("https://example.invalid/b.tgz", true),
            ("ftp://x/y", false),
        ];
        for (value, ok) in cases {
            assert_eq!(build_source(value).is_ok(), *ok, "{value}");
        }
    }

    #[test]
    fn restart_hours_and_sessions() {
        assert!(process_restart_hours(0).is_ok());
        assert!(process_restart_hours(168).is_ok());
        assert!(process_restart_hours(169).is_err());
        assert!(process_restart_hours(-1).is_err());
        assert!(sessions_per_process(1, SessionMode::Simple).is_ok());
        assert!(sessions_per_process(2, SessionMode::Simple).is_err());
        assert!(sessions_per_process(4, SessionMode::Parallel).is_ok());
        assert!(sessions_per_process(0, SessionMode::Parallel).is_err());
    }

    fn rule(min: u32, servers: Option<u32>, percent: Option<u32>) -> BufferRule {
        BufferRule {
            min_active_sessions: min,
            available_servers: servers,
            available_percent: percent,
            available_predicted: None,
        }
    }

    #[test]
    fn buffer_rule_cases() {
        let auto = ScalingMode::Auto;
        assert!(buffer_rules(&[rule(0, Some(2), None)], auto).is_empty());
        assert!(buffer_rules(&[rule(0, Some(2), None), rule(10, None, Some(20))], auto).is_empty());
        let none = buffer_rules(&[], auto);
        assert_eq!(none[0].field, "buffer_rules");
        assert!(buffer_rules(&[], ScalingMode::Fixed).is_empty());
        let both = buffer_rules(&[rule(0, Some(2), Some(5))], auto);
        assert_eq!(both[0].field, "buffer_rules[0]");
        let neither = buffer_rules(&[rule(0, None, None)], auto);
        assert_eq!(neither[0].field, "buffer_rules[0]");
        let first = buffer_rules(&[rule(3, Some(1), None)], auto);
        assert_eq!(first[0].field, "buffer_rules[0].min_active_sessions");
        let order = buffer_rules(&[rule(0, Some(1), None), rule(0, Some(2), None)], auto);
        assert_eq!(order[0].field, "buffer_rules[1].min_active_sessions");
    }

    fn zone() -> ZoneSpec {
        ZoneSpec {
            fleet_id: "flt-1".into(),
            name: "eu".into(),
            scaling_mode: ScalingMode::Auto,
            initial_server_processes: 2,
            buffer_rules: vec![rule(0, Some(1), None)],
            free_slots_min: None,
            free_slots_max: None,
            cooldown_minutes: 0,
            placement_strategy: PlacementStrategy::Pack,
            data_centers: vec![DataCenterSpec {
                name: "dc1".into(),
                location: "local".into(),
                priority: 0,
                machine_type: MachineType::Vm,
                machine_models: vec![MachineModel {
                    instance_type: "local".into(),
                    processes_per_machine: 2,
                }],
                max_server_processes: Some(4),
                bare_metal_machines: None,
            }],
        }
    }

    #[test]
    fn zone_is_valid_and_duplicate_data_centers_are_named() {
        assert_eq!(validate_zone_spec(&zone()), vec![]);
        let mut spec = zone();
        spec.data_centers.push(spec.data_centers[0].clone());
        let errors = validate_zone_spec(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "data_centers[1].name");
    }

    #[test]
    fn vm_data_center_needs_models_and_maximum() {
        let mut spec = zone();
        spec.data_centers[0].machine_models.clear();
        spec.data_centers[0].max_server_processes = None;
        let fields: Vec<_> = validate_zone_spec(&spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "data_centers[0].machine_models",
                "data_centers[0].max_server_processes"
            ]
        );
    }

    #[test]
    fn sha256_only_for_archives() {
        let mut spec = BuildSpec {
            name: "b".into(),
            version: None,
            operating_system: OperatingSystem::Linux,
            source: "file:///opt/game".into(),
            sha256: Some("a".repeat(64)),
        };
        assert_eq!(validate_build_spec(&spec)[0].field, "sha256");
        spec.source = "file:///opt/game.tar.gz".into();
        assert!(validate_build_spec(&spec).is_empty());
        spec.sha256 = Some("XYZ".into());
        assert_eq!(validate_build_spec(&spec)[0].field, "sha256");
    }
}
