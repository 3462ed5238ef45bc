//! The service config (gRFC A2 JSON): load balancing, per-method settings, retries, hedging,
//! retry throttling and health checking. Parsed and checked whole before anything is applied;
//! an error names the field by its JSON path.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};
use tonic::Code;

use super::status::CODE_NAMES;

/// A service config, parsed and checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceConfig {
    pub lb: LbPolicy,
    pub methods: Vec<MethodConfig>,
    pub retry_throttling: Option<Throttling>,
    /// `healthCheckConfig.serviceName` (gRFC A17): watch every endpoint's health.
    pub health_check_service: Option<String>,
}

/// `loadBalancingConfig` (the first policy this client knows), or `loadBalancingPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LbPolicy {
    #[default]
    PickFirst,
    RoundRobin,
    /// `least_request_experimental` / `least_request` (gRFC A48): `choiceCount` (2..=10,
    /// default 2) random endpoints, the one with the fewest calls in flight.
    LeastRequest {
        choice_count: u32,
    },
}

/// One `methodConfig` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodConfig {
    /// `name`: (service, method); an empty service matches every service, no method every
    /// method of the service.
    pub names: Vec<(String, Option<String>)>,
    pub timeout: Option<Duration>,
    pub wait_for_ready: Option<bool>,
    pub max_request_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub policy: Option<Policy>,
}

/// Retries or hedging (exactly one per method).
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Retry(RetryPolicy),
    Hedging(HedgingPolicy),
}

/// `retryPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// 2..=5 (larger values are capped at 5).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    pub retryable: HashSet<Code>,
    /// `perRpcBufferLimit` (bytes; default 256 KiB): what a stream keeps to resend.
    pub per_rpc_buffer_limit: usize,
}

/// `hedgingPolicy` (gRFC A6).
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    /// 2..=5 (larger values are capped at 5).
    pub max_attempts: u32,
    pub hedging_delay: Duration,
    pub non_fatal: HashSet<Code>,
}

/// `retryThrottling` (gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttling {
    /// In (0, 1000].
    pub max_tokens: f64,
    /// > 0, cut to three decimals (gRFC A6).
    pub token_ratio: f64,
}

/// `perRpcBufferLimit` when the retry policy gives none.
const DEFAULT_BUFFER_LIMIT: usize = 256 * 1024;
/// gRFC A6: larger `maxAttempts` are taken as this.
const MAX_ATTEMPTS_CAP: u64 = 5;
/// gRFC A48: `choiceCount`'s default and bounds.
const CHOICE_COUNT_DEFAULT: u64 = 2;
const CHOICE_COUNT_MAX: u64 = 10;
/// The longest proto3 Duration, in seconds (10 000 years).
const MAX_DURATION_SECS: u64 = 315_576_000_000;

impl ServiceConfig {
    /// Parses and checks a service config (JSON text). Errors read `<json path>: <problem>`,
    /// e.g. `methodConfig[0].retryPolicy.maxAttempts: must be at least 2`; text that is not
    /// JSON gives `invalid JSON at line L column C: <problem>`. No error carries a
    /// "service_config" prefix: the caller adds its own ("INVALID_ARGUMENT: service_config: ").
    ///
    /// Top-level fields understood: `loadBalancingConfig`, `loadBalancingPolicy` (deprecated;
    /// `loadBalancingConfig` wins when both are given), `methodConfig`, `retryThrottling`,
    /// `healthCheckConfig`. Other fields (`outlierDetection`, ...) and unknown fields inside
    /// the understood ones are ignored; a `null` field counts as absent (proto3 JSON).
    ///
    /// Choices where the gRFCs leave room:
    /// - `loadBalancingConfig: []` chooses nothing (the deprecated field, else pick_first);
    ///   a list with no policy this client knows is an error.
    /// - `choiceCount` is clamped to 2..=10.
    /// - A `methodConfig` entry without `name` applies to no method.
    /// - `healthCheckConfig` without `serviceName` watches the server as a whole ("").
    /// - Integers (`maxAttempts`, message sizes, ...) may be JSON numbers or strings of
    ///   digits, as proto3 JSON has them; durations are proto3 JSON Durations, not negative.
    pub fn parse(json: &str) -> Result<ServiceConfig, String> {
        let root: Value = serde_json::from_str(json).map_err(|e| invalid_json(&e))?;
        let Value::Object(top) = &root else {
            return Err(format!("top level: must be an object, not {}", kind(&root)));
        };
        Ok(ServiceConfig {
            lb: lb_policy(top)?,
            methods: method_configs(top)?,
            retry_throttling: field(top, "retryThrottling")
                .map(|v| throttling(v, "retryThrottling"))
                .transpose()?,
            health_check_service: field(top, "healthCheckConfig")
                .map(|v| health_check(v, "healthCheckConfig"))
                .transpose()?,
        })
    }

    /// The method config for `path` ("/pkg.Service/Method"): an entry naming the service and
    /// method, else one naming the service, else one with an empty name (the default).
    pub fn method(&self, path: &str) -> Option<&MethodConfig> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        self.named(service, Some(method))
            .or_else(|| self.named(service, None))
            .or_else(|| self.named("", None))
    }

    /// The entry whose `name` list holds exactly (`service`, `method`).
    fn named(&self, service: &str, method: Option<&str>) -> Option<&MethodConfig> {
        self.methods.iter().find(|m| {
            m.names
                .iter()
                .any(|(s, n)| s == service && n.as_deref() == method)
        })
    }
}

/// serde_json's error as `invalid JSON at line L column C: <problem>`.
fn invalid_json(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let place = format!(" at line {} column {}", e.line(), e.column());
    let problem = text.strip_suffix(&place).unwrap_or(&text);
    format!(
        "invalid JSON at line {} column {}: {problem}",
        e.line(),
        e.column()
    )
}

/// The path of `key` under `path`.
fn key_path(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// `obj[key]`, a `null` counting as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// What a JSON value is, for errors.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: must be an object, not {}", kind(v)))
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a [Value], String> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("{path}: must be an array, not {}", kind(v)))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{path}: must be a string, not {}", kind(v)))
}

fn boolean(v: &Value, path: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{path}: must be a boolean, not {}", kind(v)))
}

/// A finite JSON number.
fn number(v: &Value, path: &str) -> Result<f64, String> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{path}: must be a number, not {}", kind(v)))
}

/// A non-negative integer: a JSON number or a string of digits (proto3 JSON's int64).
fn integer(v: &Value, path: &str) -> Result<u64, String> {
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    parsed.ok_or_else(|| format!("{path}: must be an integer >= 0, not {v}"))
}

/// A byte count ([`integer`]) that fits `usize`.
fn byte_count(v: &Value, path: &str) -> Result<usize, String> {
    let n = integer(v, path)?;
    usize::try_from(n).map_err(|_| format!("{path}: {n} is too large"))
}

/// A proto3 JSON Duration: seconds in digits, up to 9 digits of fraction, then `s`.
fn duration(v: &Value, path: &str) -> Result<Duration, String> {
    let text = string(v, path)?;
    parse_duration(text).ok_or_else(|| {
        format!("{path}: {text:?} is not a duration (seconds, e.g. \"1.5s\", up to 9 decimals)")
    })
}

/// [`duration`]'s text, `None` when it is not one.
fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (secs, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let secs: u64 = secs.parse().ok().filter(|&s| s <= MAX_DURATION_SECS)?;
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32)
    };
    Some(Duration::new(secs, nanos))
}

/// A duration that must be more than zero.
fn positive_duration(v: &Value, path: &str) -> Result<Duration, String> {
    match duration(v, path)? {
        Duration::ZERO => Err(format!("{path}: must be greater than 0")),
        d => Ok(d),
    }
}

/// A status code: its name (any case) or its number, 0..=16.
fn status_code(v: &Value, path: &str) -> Result<Code, String> {
    let number = match v {
        Value::String(name) => CODE_NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)),
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => {
            return Err(format!(
                "{path}: must be a status code name or number, not {}",
                kind(v)
            ))
        }
    };
    match number.filter(|&n| n < CODE_NAMES.len()) {
        Some(n) => Ok(Code::from_i32(n as i32)),
        None => Err(format!("{path}: {v} is not a status code")),
    }
}

/// A list of status codes.
fn status_codes(v: &Value, path: &str) -> Result<HashSet<Code>, String> {
    array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, c)| status_code(c, &format!("{path}[{i}]")))
        .collect()
}

/// `obj[key]`, which must be there.
fn required<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, String> {
    field(obj, key).ok_or_else(|| format!("{}: required", key_path(path, key)))
}

/// The policy: `loadBalancingConfig`'s first known one, else `loadBalancingPolicy`, else
/// pick_first.
fn lb_policy(top: &Map<String, Value>) -> Result<LbPolicy, String> {
    if let Some(list) = field(top, "loadBalancingConfig") {
        if let Some(policy) = lb_config(list, "loadBalancingConfig")? {
            return Ok(policy);
        }
    }
    match field(top, "loadBalancingPolicy") {
        Some(v) => lb_policy_name(v, "loadBalancingPolicy"),
        None => Ok(LbPolicy::default()),
    }
}

/// `loadBalancingConfig`: single-key objects; the first whose policy is known wins (`None`
/// for an empty list).
fn lb_config(v: &Value, path: &str) -> Result<Option<LbPolicy>, String> {
    let list = array(v, path)?;
    let mut asked = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let obj = object(entry, &entry_path)?;
        let mut keys = obj.iter();
        let (Some((name, config)), None) = (keys.next(), keys.next()) else {
            return Err(format!(
                "{entry_path}: must have exactly one field (the policy's name), not {}",
                obj.len()
            ));
        };
        if let Some(policy) = known_lb(name, config, &key_path(&entry_path, name))? {
            return Ok(Some(policy));
        }
        asked.push(format!("{name:?}"));
    }
    if asked.is_empty() {
        return Ok(None);
    }
    Err(format!(
        "{path}: no policy this client knows (known: pick_first, round_robin, \
         least_request_experimental; asked for {})",
        asked.join(", ")
    ))
}

/// The policy `name` with its `config`, `None` when the name is not known.
fn known_lb(name: &str, config: &Value, path: &str) -> Result<Option<LbPolicy>, String> {
    let known = matches!(
        name,
        "pick_first" | "round_robin" | "least_request_experimental" | "least_request"
    );
    if !known {
        return Ok(None);
    }
    let config = object(config, path)?;
    Ok(Some(match name {
        "pick_first" => LbPolicy::PickFirst,
        "round_robin" => LbPolicy::RoundRobin,
        _ => LbPolicy::LeastRequest {
            choice_count: choice_count(config, path)?,
        },
    }))
}

/// `choiceCount` (gRFC A48), clamped to 2..=10.
fn choice_count(config: &Map<String, Value>, path: &str) -> Result<u32, String> {
    let n = match field(config, "choiceCount") {
        Some(v) => integer(v, &key_path(path, "choiceCount"))?,
        None => CHOICE_COUNT_DEFAULT,
    };
    // Clamped into 2..=10, the value fits u32.
    Ok(n.clamp(CHOICE_COUNT_DEFAULT, CHOICE_COUNT_MAX) as u32)
}

/// The deprecated `loadBalancingPolicy` (a policy name, any case).
fn lb_policy_name(v: &Value, path: &str) -> Result<LbPolicy, String> {
    let name = string(v, path)?;
    let policy = match name.to_ascii_lowercase().as_str() {
        "pick_first" => LbPolicy::PickFirst,
        "round_robin" => LbPolicy::RoundRobin,
        "least_request_experimental" | "least_request" => LbPolicy::LeastRequest {
            choice_count: CHOICE_COUNT_DEFAULT as u32,
        },
        _ => return Err(format!("{path}: unknown policy {name:?}")),
    };
    Ok(policy)
}

/// `methodConfig`: its entries, no name in two of them.
fn method_configs(top: &Map<String, Value>) -> Result<Vec<MethodConfig>, String> {
    let Some(v) = field(top, "methodConfig") else {
        return Ok(Vec::new());
    };
    let path = "methodConfig";
    let mut seen: HashMap<(String, Option<String>), String> = HashMap::new();
    let mut methods = Vec::new();
    for (i, entry) in array(v, path)?.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let config = method_config(entry, &entry_path)?;
        for (j, name) in config.names.iter().enumerate() {
            let name_path = format!("{entry_path}.name[{j}]");
            if let Some(first) = seen.insert(name.clone(), name_path.clone()) {
                return Err(format!("{name_path}: duplicate name (as {first})"));
            }
        }
        methods.push(config);
    }
    Ok(methods)
}

/// One `methodConfig` entry.
fn method_config(v: &Value, path: &str) -> Result<MethodConfig, String> {
    let obj = object(v, path)?;
    let at = |key: &str| key_path(path, key);
    let names = match field(obj, "name") {
        Some(list) => method_names(list, &at("name"))?,
        None => Vec::new(),
    };
    let opt = |key: &str| field(obj, key).map(|v| (v, at(key)));
    Ok(MethodConfig {
        names,
        timeout: opt("timeout").map(|(v, p)| duration(v, &p)).transpose()?,
        wait_for_ready: opt("waitForReady")
            .map(|(v, p)| boolean(v, &p))
            .transpose()?,
        max_request_bytes: opt("maxRequestMessageBytes")
            .map(|(v, p)| byte_count(v, &p))
            .transpose()?,
        max_response_bytes: opt("maxResponseMessageBytes")
            .map(|(v, p)| byte_count(v, &p))
            .transpose()?,
        policy: policy(obj, path)?,
    })
}

/// `name`: (service, method) pairs; a method needs a service.
fn method_names(v: &Value, path: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut names = Vec::new();
    for (i, entry) in array(v, path)?.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let obj = object(entry, &entry_path)?;
        let text = |key: &str| -> Result<String, String> {
            field(obj, key)
                .map(|v| string(v, &key_path(&entry_path, key)).map(str::to_owned))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let (service, method) = (text("service")?, text("method")?);
        if service.is_empty() && !method.is_empty() {
            return Err(format!("{entry_path}.method: method without service"));
        }
        names.push((service, Some(method).filter(|m| !m.is_empty())));
    }
    Ok(names)
}

/// `retryPolicy` or `hedgingPolicy`, not both.
fn policy(obj: &Map<String, Value>, path: &str) -> Result<Option<Policy>, String> {
    match (field(obj, "retryPolicy"), field(obj, "hedgingPolicy")) {
        (Some(_), Some(_)) => Err(format!(
            "{path}: retryPolicy and hedgingPolicy are exclusive"
        )),
        (Some(v), None) => {
            retry_policy(v, &key_path(path, "retryPolicy")).map(|p| Some(Policy::Retry(p)))
        }
        (None, Some(v)) => {
            hedging_policy(v, &key_path(path, "hedgingPolicy")).map(|p| Some(Policy::Hedging(p)))
        }
        (None, None) => Ok(None),
    }
}

/// `maxAttempts`: at least 2, larger than 5 taken as 5.
fn max_attempts(obj: &Map<String, Value>, path: &str) -> Result<u32, String> {
    let key = key_path(path, "maxAttempts");
    let n = integer(required(obj, "maxAttempts", path)?, &key)?;
    if n < 2 {
        return Err(format!("{key}: must be at least 2"));
    }
    // At most 5 once capped: fits u32.
    Ok(n.min(MAX_ATTEMPTS_CAP) as u32)
}

/// `retryPolicy` (gRFC A6; `perRpcBufferLimit` is this client's).
fn retry_policy(v: &Value, path: &str) -> Result<RetryPolicy, String> {
    let obj = object(v, path)?;
    let at = |key: &str| key_path(path, key);
    let max_attempts = max_attempts(obj, path)?;
    let initial_backoff = positive_duration(
        required(obj, "initialBackoff", path)?,
        &at("initialBackoff"),
    )?;
    let max_backoff = positive_duration(required(obj, "maxBackoff", path)?, &at("maxBackoff"))?;
    let backoff_multiplier = number(
        required(obj, "backoffMultiplier", path)?,
        &at("backoffMultiplier"),
    )?;
    if backoff_multiplier <= 0.0 {
        return Err(format!(
            "{}: must be greater than 0",
            at("backoffMultiplier")
        ));
    }
    let codes_path = at("retryableStatusCodes");
    let retryable = status_codes(required(obj, "retryableStatusCodes", path)?, &codes_path)?;
    if retryable.is_empty() {
        return Err(format!("{codes_path}: must not be empty"));
    }
    let per_rpc_buffer_limit = field(obj, "perRpcBufferLimit")
        .map(|v| byte_count(v, &at("perRpcBufferLimit")))
        .transpose()?
        .unwrap_or(DEFAULT_BUFFER_LIMIT);
    Ok(RetryPolicy {
        max_attempts,
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        retryable,
        per_rpc_buffer_limit,
    })
}

/// `hedgingPolicy` (gRFC A6).
fn hedging_policy(v: &Value, path: &str) -> Result<HedgingPolicy, String> {
    let obj = object(v, path)?;
    let at = |key: &str| key_path(path, key);
    Ok(HedgingPolicy {
        max_attempts: max_attempts(obj, path)?,
        hedging_delay: field(obj, "hedgingDelay")
            .map(|v| duration(v, &at("hedgingDelay")))
            .transpose()?
            .unwrap_or_default(),
        non_fatal: field(obj, "nonFatalStatusCodes")
            .map(|v| status_codes(v, &at("nonFatalStatusCodes")))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `retryThrottling` (gRFC A6): `maxTokens` in (0, 1000], `tokenRatio` > 0 (three decimals).
fn throttling(v: &Value, path: &str) -> Result<Throttling, String> {
    let obj = object(v, path)?;
    let tokens_path = key_path(path, "maxTokens");
    let max_tokens = number(required(obj, "maxTokens", path)?, &tokens_path)?;
    if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
        return Err(format!("{tokens_path}: must be in (0, 1000]"));
    }
    let ratio_path = key_path(path, "tokenRatio");
    let ratio = number(required(obj, "tokenRatio", path)?, &ratio_path)?;
    let token_ratio = (ratio * 1000.0).trunc() / 1000.0;
    if token_ratio <= 0.0 {
        return Err(format!(
            "{ratio_path}: must be greater than 0 (at three decimals)"
        ));
    }
    Ok(Throttling {
        max_tokens,
        token_ratio,
    })
}

/// `healthCheckConfig` (gRFC A17): the service whose health to watch ("" the server's).
fn health_check(v: &Value, path: &str) -> Result<String, String> {
    let obj = object(v, path)?;
    match field(obj, "serviceName") {
        Some(name) => string(name, &key_path(path, "serviceName")).map(str::to_owned),
        None => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        ServiceConfig::parse(json).unwrap_err()
    }

    fn ok(json: &str) -> ServiceConfig {
        ServiceConfig::parse(json).unwrap()
    }

    /// A config of one method entry: `fields` inside it, named foo.Bar.
    fn method_json(fields: &str) -> String {
        format!(r#"{{"methodConfig": [{{"name": [{{"service": "foo.Bar"}}], {fields}}}]}}"#)
    }

    fn retry_json(fields: &str) -> String {
        method_json(&format!(r#""retryPolicy": {{{fields}}}"#))
    }

    const RETRY: &str = r#""maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 4]"#;

    fn retry_of(cfg: &ServiceConfig) -> &RetryPolicy {
        match &cfg.methods[0].policy {
            Some(Policy::Retry(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(ok("{}"), ServiceConfig::default());
        assert_eq!(
            ok(r#"{"outlierDetection": {"x": 1}}"#),
            ServiceConfig::default()
        );
    }

    #[test]
    fn invalid_json_and_top_level() {
        assert_eq!(
            err(""),
            "invalid JSON at line 1 column 0: EOF while parsing a value"
        );
        assert!(err("{\n  \"a\": }").starts_with("invalid JSON at line 2 column 8: "));
        assert_eq!(err("[]"), "top level: must be an object, not an array");
    }

    #[test]
    fn load_balancing_config() {
        let lb = |j: &str| ok(j).lb;
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#),
            LbPolicy::RoundRobin
        );
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"grpclb": {}}, {"pick_first": {}}]}"#),
            LbPolicy::PickFirst
        );
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"least_request_experimental": {}}]}"#),
            LbPolicy::LeastRequest { choice_count: 2 }
        );
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"least_request": {"choiceCount": 4}}]}"#),
            LbPolicy::LeastRequest { choice_count: 4 }
        );
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"least_request": {"choiceCount": 99}}]}"#),
            LbPolicy::LeastRequest { choice_count: 10 }
        );
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"least_request": {"choiceCount": 1}}]}"#),
            LbPolicy::LeastRequest { choice_count: 2 }
        );
        // Entries after the chosen one are not looked at.
        assert_eq!(
            lb(r#"{"loadBalancingConfig": [{"round_robin": {}}, 7]}"#),
            LbPolicy::RoundRobin
        );
    }

    #[test]
    fn deprecated_policy_field() {
        let lb = |j: &str| ok(j).lb;
        assert_eq!(
            lb(r#"{"loadBalancingPolicy": "round_robin"}"#),
            LbPolicy::RoundRobin
        );
        assert_eq!(
            lb(r#"{"loadBalancingPolicy": "ROUND_ROBIN"}"#),
            LbPolicy::RoundRobin
        );
        assert_eq!(
            lb(r#"{"loadBalancingPolicy": "round_robin",
                   "loadBalancingConfig": [{"pick_first": {}}]}"#),
            LbPolicy::PickFirst
        );
        assert_eq!(
            lb(r#"{"loadBalancingPolicy": "round_robin", "loadBalancingConfig": []}"#),
            LbPolicy::RoundRobin
        );
        assert_eq!(
            err(r#"{"loadBalancingPolicy": "grpclb"}"#),
            r#"loadBalancingPolicy: unknown policy "grpclb""#
        );
    }

    #[test]
    fn load_balancing_errors() {
        assert_eq!(
            err(r#"{"loadBalancingConfig": [{"xds": {}}, {"grpclb": {}}]}"#),
            "loadBalancingConfig: no policy this client knows (known: pick_first, round_robin, \
             least_request_experimental; asked for \"xds\", \"grpclb\")"
        );
        assert_eq!(
            err(r#"{"loadBalancingConfig": [{"xds": {}}, {"round_robin": 3}]}"#),
            "loadBalancingConfig[1].round_robin: must be an object, not a number"
        );
        assert_eq!(
            err(r#"{"loadBalancingConfig": [{"a": {}, "b": {}}]}"#),
            "loadBalancingConfig[0]: must have exactly one field (the policy's name), not 2"
        );
        assert_eq!(
            err(r#"{"loadBalancingConfig": [{}]}"#),
            "loadBalancingConfig[0]: must have exactly one field (the policy's name), not 0"
        );
        assert_eq!(
            err(r#"{"loadBalancingConfig": {"round_robin": {}}}"#),
            "loadBalancingConfig: must be an array, not an object"
        );
        assert_eq!(
            err(r#"{"loadBalancingConfig": [{"least_request": {"choiceCount": -1}}]}"#),
            "loadBalancingConfig[0].least_request.choiceCount: must be an integer >= 0, not -1"
        );
    }

    #[test]
    fn method_fields() {
        let cfg = ok(&method_json(
            r#""timeout": "1.5s", "waitForReady": true,
               "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": "4194304""#,
        ));
        let m = &cfg.methods[0];
        assert_eq!(m.names, vec![("foo.Bar".to_owned(), None)]);
        assert_eq!(m.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(m.wait_for_ready, Some(true));
        assert_eq!(m.max_request_bytes, Some(1024));
        assert_eq!(m.max_response_bytes, Some(4 << 20));
        assert_eq!(m.policy, None);
        let nulls = ok(&method_json(r#""timeout": null, "retryPolicy": null"#));
        assert_eq!(nulls.methods[0].timeout, None);
    }

    #[test]
    fn method_field_errors() {
        assert_eq!(
            err(&method_json(r#""waitForReady": "yes""#)),
            "methodConfig[0].waitForReady: must be a boolean, not a string"
        );
        assert_eq!(
            err(&method_json(r#""maxRequestMessageBytes": -1"#)),
            "methodConfig[0].maxRequestMessageBytes: must be an integer >= 0, not -1"
        );
        assert_eq!(
            err(&method_json(r#""maxResponseMessageBytes": "1e3""#)),
            "methodConfig[0].maxResponseMessageBytes: must be an integer >= 0, not \"1e3\""
        );
        assert_eq!(
            err(&method_json(r#""maxResponseMessageBytes": 1.5"#)),
            "methodConfig[0].maxResponseMessageBytes: must be an integer >= 0, not 1.5"
        );
        assert_eq!(
            err(r#"{"methodConfig": {}}"#),
            "methodConfig: must be an array, not an object"
        );
        assert_eq!(
            err(r#"{"methodConfig": [{"name": [{"service": 1}]}]}"#),
            "methodConfig[0].name[0].service: must be a string, not a number"
        );
    }

    #[test]
    fn durations() {
        let d = |t: &str| parse_duration(t);
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("0.000000001s"), Some(Duration::from_nanos(1)));
        assert_eq!(
            d("315576000000s"),
            Some(Duration::from_secs(315_576_000_000))
        );
        for bad in [
            "",
            "s",
            "1",
            "1.s",
            ".5s",
            "-1s",
            "1.5",
            "1.0000000001s",
            "1ms",
            "1e3s",
            "+1s",
            "315576000001s",
            " 1s",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        assert_eq!(
            err(&method_json(r#""timeout": "1m""#)),
            "methodConfig[0].timeout: \"1m\" is not a duration (seconds, e.g. \"1.5s\", up to 9 \
             decimals)"
        );
        assert_eq!(
            err(&method_json(r#""timeout": 1"#)),
            "methodConfig[0].timeout: must be a string, not a number"
        );
    }

    #[test]
    fn names_and_duplicates() {
        let cfg = ok(r#"{"methodConfig": [
            {"name": [{"service": "a.S", "method": "M"}, {"service": "a.S", "method": ""}]},
            {"name": [{}]},
            {"name": [{"service": "b.S", "extra": 1}]}
        ]}"#);
        assert_eq!(
            cfg.methods[0].names,
            vec![("a.S".into(), Some("M".into())), ("a.S".into(), None)]
        );
        assert_eq!(cfg.methods[1].names, vec![(String::new(), None)]);
        assert_eq!(cfg.methods[2].names, vec![("b.S".into(), None)]);
        assert_eq!(
            err(r#"{"methodConfig": [{"name": [{}]}, {}, {"name": [{"method": "M"}]}]}"#),
            "methodConfig[2].name[0].method: method without service"
        );
        assert_eq!(
            err(r#"{"methodConfig": [{"name": [{"service": "a.S"}]},
                                     {"name": [{"service": "a.S", "method": ""}]}]}"#),
            "methodConfig[1].name[0]: duplicate name (as methodConfig[0].name[0])"
        );
        assert_eq!(
            err(r#"{"methodConfig": [{"name": [{}, {"service": ""}]}]}"#),
            "methodConfig[0].name[1]: duplicate name (as methodConfig[0].name[0])"
        );
        // No name: applies to nothing, clashes with nothing.
        assert_eq!(ok(r#"{"methodConfig": [{}, {}]}"#).methods[0].names, vec![]);
    }

    #[test]
    fn method_lookup() {
        let cfg = ok(r#"{"methodConfig": [
            {"name": [{}], "timeout": "1s"},
            {"name": [{"service": "a.S"}], "timeout": "2s"},
            {"name": [{"service": "a.S", "method": "M"}], "timeout": "3s"}
        ]}"#);
        let timeout = |p: &str| cfg.method(p).and_then(|m| m.timeout).map(|d| d.as_secs());
        assert_eq!(timeout("/a.S/M"), Some(3));
        assert_eq!(timeout("/a.S/Other"), Some(2));
        assert_eq!(timeout("/b.S/M"), Some(1));
        assert_eq!(timeout("garbage"), Some(1));
        let no_default = ok(r#"{"methodConfig": [{"name": [{"service": "a.S"}]}]}"#);
        assert!(no_default.method("/b.S/M").is_none());
        assert!(no_default.method("/a.S/M").is_some());
        assert!(ok("{}").method("/a.S/M").is_none());
    }

    #[test]
    fn retry_policy_parsed() {
        let cfg = ok(&retry_json(RETRY));
        let p = retry_of(&cfg);
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.initial_backoff, Duration::from_millis(100));
        assert_eq!(p.max_backoff, Duration::from_secs(1));
        assert_eq!(p.backoff_multiplier, 2.0);
        assert_eq!(
            p.retryable,
            HashSet::from([Code::Unavailable, Code::DeadlineExceeded])
        );
        assert_eq!(p.per_rpc_buffer_limit, 262_144);
        let more = ok(&retry_json(
            &RETRY.replace("3,", r#"9, "perRpcBufferLimit": 1000,"#),
        ));
        assert_eq!(retry_of(&more).max_attempts, 5);
        assert_eq!(retry_of(&more).per_rpc_buffer_limit, 1000);
        let lower = ok(&retry_json(&RETRY.replace("UNAVAILABLE", "unavailable")));
        assert!(retry_of(&lower).retryable.contains(&Code::Unavailable));
    }

    #[test]
    fn retry_policy_errors() {
        let at = "methodConfig[0].retryPolicy";
        let with = |from: &str, to: &str| err(&retry_json(&RETRY.replace(from, to)));
        assert_eq!(
            with(r#""maxAttempts": 3"#, r#""maxAttempts": 1"#),
            format!("{at}.maxAttempts: must be at least 2")
        );
        assert_eq!(
            with(r#""maxAttempts": 3,"#, ""),
            format!("{at}.maxAttempts: required")
        );
        assert_eq!(
            with(r#""0.1s""#, r#""0s""#),
            format!("{at}.initialBackoff: must be greater than 0")
        );
        assert_eq!(
            with(r#""1s""#, r#""0.0s""#),
            format!("{at}.maxBackoff: must be greater than 0")
        );
        assert_eq!(
            with(r#""backoffMultiplier": 2"#, r#""backoffMultiplier": 0"#),
            format!("{at}.backoffMultiplier: must be greater than 0")
        );
        assert_eq!(
            with(r#""backoffMultiplier": 2"#, r#""backoffMultiplier": "2""#),
            format!("{at}.backoffMultiplier: must be a number, not a string")
        );
        assert_eq!(
            with(r#"["UNAVAILABLE", 4]"#, "[]"),
            format!("{at}.retryableStatusCodes: must not be empty")
        );
        assert_eq!(
            with(r#"["UNAVAILABLE", 4]"#, r#"["UNAVAILABLE", "NOPE"]"#),
            format!("{at}.retryableStatusCodes[1]: \"NOPE\" is not a status code")
        );
        assert_eq!(
            with(r#"["UNAVAILABLE", 4]"#, "[17]"),
            format!("{at}.retryableStatusCodes[0]: 17 is not a status code")
        );
        assert_eq!(
            with(r#"["UNAVAILABLE", 4]"#, "[true]"),
            format!(
                "{at}.retryableStatusCodes[0]: must be a status code name or number, not a \
                 boolean"
            )
        );
        assert_eq!(
            err(&method_json(r#""retryPolicy": []"#)),
            format!("{at}: must be an object, not an array")
        );
    }

    #[test]
    fn hedging_policy() {
        let cfg = ok(&method_json(
            r#""hedgingPolicy": {"maxAttempts": 7, "hedgingDelay": "0.5s",
                                 "nonFatalStatusCodes": ["UNAVAILABLE", "ABORTED"]}"#,
        ));
        assert_eq!(
            cfg.methods[0].policy,
            Some(Policy::Hedging(HedgingPolicy {
                max_attempts: 5,
                hedging_delay: Duration::from_millis(500),
                non_fatal: HashSet::from([Code::Unavailable, Code::Aborted]),
            }))
        );
        let bare = ok(&method_json(r#""hedgingPolicy": {"maxAttempts": 2}"#));
        assert_eq!(
            bare.methods[0].policy,
            Some(Policy::Hedging(HedgingPolicy {
                max_attempts: 2,
                hedging_delay: Duration::ZERO,
                non_fatal: HashSet::new(),
            }))
        );
        assert_eq!(
            err(&method_json(r#""hedgingPolicy": {"maxAttempts": 0}"#)),
            "methodConfig[0].hedgingPolicy.maxAttempts: must be at least 2"
        );
        assert_eq!(
            err(&method_json(
                r#""hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "x"}"#
            )),
            "methodConfig[0].hedgingPolicy.hedgingDelay: \"x\" is not a duration (seconds, e.g. \
             \"1.5s\", up to 9 decimals)"
        );
        assert_eq!(
            err(&method_json(&format!(
                r#""retryPolicy": {{{RETRY}}}, "hedgingPolicy": {{"maxAttempts": 2}}"#
            ))),
            "methodConfig[0]: retryPolicy and hedgingPolicy are exclusive"
        );
    }

    #[test]
    fn retry_throttling() {
        let t = |j: &str| ok(j).retry_throttling.unwrap();
        assert_eq!(
            t(r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#),
            Throttling {
                max_tokens: 10.0,
                token_ratio: 0.1
            }
        );
        assert_eq!(
            t(r#"{"retryThrottling": {"maxTokens": 1000, "tokenRatio": 0.12345}}"#).token_ratio,
            0.123
        );
        for bad in ["0", "-1", "1000.5", "1e9"] {
            assert_eq!(
                err(&format!(
                    r#"{{"retryThrottling": {{"maxTokens": {bad}, "tokenRatio": 1}}}}"#
                )),
                "retryThrottling.maxTokens: must be in (0, 1000]"
            );
        }
        assert_eq!(
            err(r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0001}}"#),
            "retryThrottling.tokenRatio: must be greater than 0 (at three decimals)"
        );
        assert_eq!(
            err(r#"{"retryThrottling": {"maxTokens": 10}}"#),
            "retryThrottling.tokenRatio: required"
        );
        assert_eq!(
            err(r#"{"retryThrottling": 5}"#),
            "retryThrottling: must be an object, not a number"
        );
    }

    #[test]
    fn health_check_config() {
        let h = |j: &str| ok(j).health_check_service;
        assert_eq!(
            h(r#"{"healthCheckConfig": {"serviceName": "foo"}}"#),
            Some("foo".into())
        );
        assert_eq!(h(r#"{"healthCheckConfig": {}}"#), Some(String::new()));
        assert_eq!(h("{}"), None);
        assert_eq!(
            err(r#"{"healthCheckConfig": {"serviceName": 3}}"#),
            "healthCheckConfig.serviceName: must be a string, not a number"
        );
    }

    #[test]
    fn every_status_code_by_name_and_number() {
        for (i, name) in CODE_NAMES.iter().enumerate() {
            let by_name = status_code(&Value::from(*name), "c").unwrap();
            let by_number = status_code(&Value::from(i), "c").unwrap();
            assert_eq!(by_name, by_number);
            assert_eq!(by_number as usize, i);
        }
    }
}
