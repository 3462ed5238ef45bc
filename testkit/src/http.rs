//! HTTP clients for tests: a blocking one (ureq, no tokio, so it can be used anywhere, even
//! inside an async test) and [`get_many`] (reqwest on tokio) for load tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-request timeout of both clients.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A response: status and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking client. Connections are not kept alive, so a request never lands on an idle
/// connection of a worker that a reload has retired.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .max_redirects(0)
            .build();
        Client {
            agent: config.into(),
        }
    }

    /// GET `url`; `Err` on a transport error (connection refused, reset, timeout, ...).
    pub fn get(&self, url: &str) -> Result<Resp, String> {
        let rsp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        read(url, rsp)
    }

    /// POST `body` to `url`; `Err` on a transport error.
    pub fn post(&self, url: &str, body: &[u8]) -> Result<Resp, String> {
        let rsp = self
            .agent
            .post(url)
            .send(body)
            .map_err(|e| format!("POST {url}: {e}"))?;
        read(url, rsp)
    }
}

fn read(url: &str, mut rsp: ureq::http::Response<ureq::Body>) -> Result<Resp, String> {
    let status = rsp.status().as_u16();
    let body = rsp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| format!("{url}: reading the body: {e}"))?;
    Ok(Resp { status, body })
}

/// GETs every url with `concurrency` requests in flight (at least one) and returns
/// `(status, body)` in the order of `urls`. A transport error gives status 0 and the error text
/// as the body, so one failure does not hide the others.
///
/// Needs a tokio runtime (`#[tokio::test(flavor = "multi_thread")]`, or
/// `tokio::runtime::Runtime::new()?.block_on(get_many(..))` from a plain test).
pub async fn get_many(urls: Vec<String>, concurrency: usize) -> Vec<(u16, Vec<u8>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .expect("building the reqwest client");
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, urls.len().max(1)) {
        let (client, urls, next) = (client.clone(), Arc::clone(&urls), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(i) else { break };
                done.push((i, fetch(&client, url).await));
            }
            done
        }));
    }
    let mut out: Vec<Option<(u16, Vec<u8>)>> = vec![None; urls.len()];
    for worker in workers {
        for (i, r) in worker.await.expect("a get_many worker panicked") {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.expect("every url is fetched once"))
        .collect()
}

async fn fetch(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let result = async {
        let rsp = client.get(url).send().await?;
        let status = rsp.status().as_u16();
        Ok::<_, reqwest::Error>((status, rsp.bytes().await?.to_vec()))
    }
    .await;
    result.unwrap_or_else(|e| (0, format!("GET {url}: {e}").into_bytes()))
}
