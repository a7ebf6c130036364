//! The HTTP side of Connect: one `reqwest` client (TLS always verified, optional private
//! CA, optional authenticating proxy, bearer token), error classification into the
//! library's kinds, retries with exponential backoff and jitter, and an inactivity
//! timeout instead of a whole-request timeout (a slow but healthy gigabyte transfer is
//! never cut off; a stalled one is).

use crate::error::{Error, ErrorKind, Result};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::{ConnectOptions, ProxyOptions};

/// Longest wait honoured from a `Retry-After` header; a longer one is capped so a run
/// never sleeps for hours on one server's say-so.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A parsed proxy address: what the user typed, reduced to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyAddr {
    pub host: String,
    pub port: u16,
}

impl ProxyAddr {
    /// `host[:port]`, optional `http://` scheme, port 80 by default. Credentials in the
    /// URI are refused (without echoing them), so a password never sits in a command line.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid_argument(format!("proxy address: {why}"));
        let s = uri.trim();
        if s.is_empty() {
            return Err(bad(
                "empty (expected host[:port], e.g. proxy.contoso.com:8080)",
            ));
        }
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                return Err(bad(
                    "only http:// proxies are supported (HTTPS targets are tunnelled through them with CONNECT)",
                ))
            }
            None => s,
        };
        if rest.contains('@') {
            return Err(bad(
                "it must not contain a user name or password; give the user name separately and the password through SCT_PROXY_PASSWORD or the prompt",
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(Error::invalid_argument(format!(
                "proxy address '{s}' is not host[:port]"
            )));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after ']'")),
            };
            (format!("[{h}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "proxy address '{s}': '{p}' is not a port number (1-65535)"
                ))
            })?,
        };
        if host.is_empty() {
            return Err(bad("no host name"));
        }
        Ok(ProxyAddr { host, port })
    }

    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Validated service base URI, without a trailing slash.
pub(crate) fn parse_service_uri(uri: &str) -> Result<reqwest::Url> {
    let s = uri.trim();
    if s.is_empty() {
        return Err(Error::invalid_argument(
            "no update service given (use -serviceuri or SCT_SERVICE_URI)",
        ));
    }
    let url = reqwest::Url::parse(s).map_err(|e| {
        Error::invalid_argument(format!(
            "service address '{s}' is not a valid http:// or https:// URL: {e}"
        ))
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::invalid_argument(format!(
            "service address '{s}' must start with http:// or https://"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_argument(
            "the service address must not contain a user name or password; use the token option",
        ));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(Error::invalid_argument(format!(
            "service address '{s}' must be a base URL like https://updates.contoso.com"
        )));
    }
    Ok(url)
}

/// When a request was last making progress; the inactivity timeout counts from here.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A global bandwidth limit shared by every transfer (token bucket of one second).
pub(crate) struct RateLimit {
    bytes_per_sec: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }
    /// Account for `n` bytes just transferred, sleeping as needed to hold the rate.
    pub async fn consume(&self, n: u64) {
        let due = {
            let mut next = self.next.lock().await;
            let base = (*next).max(Instant::now());
            *next = base + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *next
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What went wrong with one request, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: Error,
    pub transient: bool,
    /// A server-requested wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn permanent(error: Error) -> Self {
        Failure {
            error,
            transient: false,
            retry_after: None,
        }
    }
    pub fn transient(error: Error) -> Self {
        Failure {
            error,
            transient: true,
            retry_after: None,
        }
    }
}

/// Everything a request needs: the client, the service base, the retry policy.
pub(crate) struct Http {
    client: reqwest::Client,
    base: reqwest::Url,
    proxy: Option<(ProxyAddr, Option<String>)>,
    /// `Basic ...` for the proxy, kept only to diagnose a refused tunnel. Never shown.
    proxy_basic: Option<String>,
    pub idle_timeout: Duration,
    pub max_attempts: u32,
    retry_base: Duration,
    pub cancel: CancellationToken,
    pub rate: Option<RateLimit>,
}

impl Http {
    pub fn new(opts: &ConnectOptions, cancel: CancellationToken) -> Result<Self> {
        let base = parse_service_uri(&opts.service_uri)?;
        let idle_timeout = Duration::from_secs(opts.idle_timeout_secs.max(1));
        let mut headers = HeaderMap::new();
        if let Some(token) = opts.token.as_deref().filter(|t| !t.is_empty()) {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Error::invalid_argument(
                    "the service token contains characters not allowed in an HTTP header",
                )
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut b = reqwest::Client::builder()
            .user_agent(crate::tool_version())
            .default_headers(headers)
            .connect_timeout(idle_timeout.min(Duration::from_secs(30)))
            .tcp_keepalive(Duration::from_secs(30))
            // Redirects are followed: a service with `--content-redirect` answers content
            // with a 307 to a presigned object-store URL. reqwest drops `Authorization`
            // (the service token) when a redirect leaves the service's host and port, and
            // keeps `Range`, so a resume continues wherever the bytes come from; what
            // arrives is verified against the signed manifest as always
            // (tests/connect_redirect.rs).
            .redirect(reqwest::redirect::Policy::limited(5))
            .https_only(false);
        if let Some(path) = &opts.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::io(format!("reading CA certificate {}", path.display()), &e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::new(
                    ErrorKind::Tls,
                    format!("{} is not a PEM certificate: {e}", path.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(Error::new(
                    ErrorKind::Tls,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let proxy = match &opts.proxy {
            Some(p) if !p.uri.trim().is_empty() => Some(build_proxy(p)?),
            _ => None,
        };
        b = match &proxy {
            Some((_, reqwest_proxy)) => b.proxy(reqwest_proxy.clone()),
            // Explicit is better than surprising: without a proxy option, connect directly
            // (HTTP_PROXY and friends in the environment are not used).
            None => b.no_proxy(),
        };
        let client = b
            .build()
            .map_err(|e| Error::new(ErrorKind::Tls, format!("cannot set up HTTPS: {e}")))?;
        Ok(Http {
            client,
            base,
            proxy_basic: opts.proxy.as_ref().and_then(|p| {
                let user = p.username.as_deref().filter(|u| !u.is_empty())?;
                let pair = format!("{user}:{}", p.password.as_deref().unwrap_or(""));
                use base64::Engine;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }),
            proxy: proxy
                .map(|(addr, _)| (addr, opts.proxy.as_ref().and_then(|p| p.username.clone()))),
            idle_timeout,
            max_attempts: opts.max_attempts.max(1),
            retry_base: Duration::from_millis(opts.retry_base_delay_ms),
            cancel,
            rate: opts
                .max_bytes_per_second
                .filter(|r| *r > 0)
                .map(RateLimit::new),
        })
    }

    /// The service's base URL as given (for messages: it holds no secrets).
    pub fn base_display(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// Absolute URL for a service path such as `/v1/usage` (as offered by the service).
    /// Only paths on the service itself are accepted, so a hostile answer cannot send
    /// the bearer token to another host.
    pub fn url(&self, path: &str) -> Result<reqwest::Url> {
        if !path.starts_with('/') || path.starts_with("//") || path.contains(['\\', '#']) {
            return Err(Error::new(
                ErrorKind::Service,
                format!(
                    "the service answered with an unusable path '{}'",
                    path.escape_debug()
                ),
            ));
        }
        let s = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let url = reqwest::Url::parse(&s).map_err(|e| {
            Error::new(
                ErrorKind::Service,
                format!(
                    "the service answered with an unusable path '{}': {e}",
                    path.escape_debug()
                ),
            )
        })?;
        if url.origin() != self.base.origin() {
            return Err(Error::new(
                ErrorKind::Service,
                format!(
                    "the service answered with a path outside itself '{}'",
                    path.escape_debug()
                ),
            ));
        }
        Ok(url)
    }

    pub fn get(&self, url: reqwest::Url) -> RequestBuilder {
        self.client.get(url)
    }
    pub fn post(&self, url: reqwest::Url) -> RequestBuilder {
        self.client.post(url)
    }

    /// Send one request, waiting for the answer's headers no longer than the inactivity
    /// timeout after the last sign of progress (`activity` is touched by the body stream
    /// of an upload, so a long upload is not cut off). Statuses are not judged here.
    pub async fn send_once(
        &self,
        req: RequestBuilder,
        what: &str,
        activity: &Activity,
    ) -> std::result::Result<Response, Failure> {
        activity.touch();
        let res = self.idle(activity, req.send()).await?;
        match res {
            Ok(r) => Ok(r),
            Err(e) => {
                let mut f = self.classify(&e, what);
                if self.proxy.is_some() && error_chain(&e).contains("unsuccessful") {
                    if let Some(better) = self.diagnose_tunnel(what).await {
                        f = better;
                    }
                }
                Err(f)
            }
        }
    }

    /// The HTTP client only says a proxy tunnel (CONNECT, for an https:// service) was
    /// "unsuccessful". Ask the proxy once more by hand to learn why, so the message names
    /// the real cause: credentials refused (407, or a proxy's own 401), tunnel forbidden,
    /// or the proxy unable to reach the service.
    async fn diagnose_tunnel(&self, what: &str) -> Option<Failure> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, _) = self.proxy.as_ref()?;
        let host = self.base.host_str()?;
        let target = format!("{host}:{}", self.base.port_or_known_default()?);
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(basic) = &self.proxy_basic {
            req.push_str(&format!("Proxy-Authorization: {basic}\r\n"));
        }
        req.push_str("\r\n");
        let probe = async {
            let host = addr.host.trim_start_matches('[').trim_end_matches(']');
            let mut s = tokio::net::TcpStream::connect((host, addr.port))
                .await
                .ok()?;
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(buf)
        };
        let buf = tokio::time::timeout(Duration::from_secs(10), probe)
            .await
            .ok()??;
        let head = String::from_utf8_lossy(&buf);
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let code: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let status = StatusCode::from_u16(code).ok()?;
        let mut headers = HeaderMap::new();
        for l in lines.take_while(|l| !l.is_empty()) {
            if let Some((k, v)) = l.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                ) {
                    headers.append(k, v);
                }
            }
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED
            || (status == StatusCode::UNAUTHORIZED && self.is_proxy_401(&headers, b""))
        {
            return Some(Failure::permanent(self.proxy_auth_error()));
        }
        let error = |m: String| Error::new(ErrorKind::Network, format!("{what}: {m}"));
        let proxy = addr.display();
        Some(if status.is_server_error() {
            Failure::transient(error(format!(
                "the proxy {proxy} could not connect to {target} (it answered {status})"
            )))
        } else if status.is_success() {
            return None;
        } else {
            Failure::permanent(error(format!(
                "the proxy {proxy} refused to open a tunnel to {target} (it answered {status}); ask its administrator to allow it"
            )))
        })
    }

    /// Run `fut` unless it shows no activity for the inactivity timeout, or the run is
    /// cancelled.
    pub async fn idle<T>(
        &self,
        activity: &Activity,
        fut: impl Future<Output = T>,
    ) -> std::result::Result<T, Failure> {
        let watchdog = async {
            loop {
                let idle = activity.idle_for();
                if idle >= self.idle_timeout {
                    return;
                }
                tokio::time::sleep(self.idle_timeout - idle).await;
            }
        };
        tokio::select! {
            r = fut => Ok(r),
            _ = watchdog => Err(Failure::transient(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no data from {} for {} s",
                    self.peer_display(),
                    self.idle_timeout.as_secs()
                ),
            ))),
            _ = self.cancel.cancelled() => Err(Failure::permanent(Error::cancelled())),
        }
    }

    fn peer_display(&self) -> String {
        match &self.proxy {
            Some((addr, _)) => {
                format!("{} (through proxy {})", self.base_display(), addr.display())
            }
            None => self.base_display(),
        }
    }

    /// Judge a status that is not a success: a 407 is the proxy's refusal, 408/429/5xx
    /// are worth retrying (honouring `Retry-After`), other 4xx are permanent.
    pub fn status_failure(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        what: &str,
        body: &[u8],
    ) -> Failure {
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED
            || (status == StatusCode::UNAUTHORIZED && self.is_proxy_401(headers, body))
        {
            return Failure::permanent(self.proxy_auth_error());
        }
        let detail = api_error_message(body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let error = Error::new(
            ErrorKind::Service,
            format!("{what}: the service answered {status}{detail}"),
        );
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        let error = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Error::new(
                ErrorKind::Service,
                format!("{what}: the service refused access ({status}); check the service token{detail}"),
            )
        } else {
            error
        };
        Failure {
            error,
            transient,
            retry_after: if transient {
                retry_after(headers)
            } else {
                None
            },
        }
    }

    /// Some proxies (tinyproxy 1.11 among them) refuse wrong credentials with a 401 of
    /// their own instead of a 407. The service's 401 is always an `ApiError` JSON body, so
    /// a 401 that is not one, through a proxy that announces itself in its challenge or
    /// `Server` header, is the proxy's.
    fn is_proxy_401(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        if self.proxy.is_none() || api_error_message(body).is_some() {
            return false;
        }
        let mentions_proxy = |name: reqwest::header::HeaderName| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| s.to_ascii_lowercase().contains("proxy"))
            })
        };
        headers.contains_key(reqwest::header::PROXY_AUTHENTICATE)
            || mentions_proxy(reqwest::header::WWW_AUTHENTICATE)
            || mentions_proxy(reqwest::header::SERVER)
    }

    fn proxy_auth_error(&self) -> Error {
        let (addr, user) = match &self.proxy {
            Some((a, u)) => (a.display(), u.clone()),
            None => ("(none configured)".to_string(), None),
        };
        match user {
            Some(u) => Error::new(
                ErrorKind::ProxyAuth,
                format!("the proxy {addr} refused the credentials for user {u} (HTTP 407)"),
            ),
            None => Error::new(
                ErrorKind::ProxyAuth,
                format!("the proxy {addr} requires authentication (HTTP 407); give a proxy user name and password"),
            ),
        }
    }

    /// Turn a `reqwest` error into the library's kinds with a message naming the right
    /// culprit (proxy, TLS, service), never a misleading one.
    pub fn classify(&self, e: &reqwest::Error, what: &str) -> Failure {
        let chain = error_chain(e);
        if chain.contains("proxy authorization required") {
            return Failure::permanent(self.proxy_auth_error());
        }
        if let Some(tls) = tls_problem(e) {
            // Point at the CA option only when the issuer is what failed: an expired or
            // wrongly named certificate is the service's to fix, whatever CA is given.
            let lower = tls.to_ascii_lowercase();
            let hint = if lower.contains("expired") || lower.contains("not valid after") {
                " (the service's certificate has expired: the service must renew it)"
            } else if lower.contains("notyetvalid") || lower.contains("not valid before") {
                " (the service's certificate is not valid yet: check both machines' clocks)"
            } else if lower.contains("name") && !lower.contains("issuer") {
                " (the certificate does not name this host: use the name it was issued for)"
            } else {
                " (if the service uses a private certificate authority, pass its certificate as the CA certificate option)"
            };
            return Failure::permanent(Error::new(
                ErrorKind::Tls,
                format!(
                    "{what}: TLS verification of {} failed: {tls}{hint}",
                    self.base_display()
                ),
            ));
        }
        let io = io_reason(e);
        if let Some((addr, _)) = &self.proxy {
            // Every connection goes to the proxy first: a connect failure is the proxy's,
            // unless the proxy answered the tunnel request (then the target is at fault).
            if e.is_connect() && !chain.contains("unsuccessful") {
                return Failure::transient(Error::new(
                    ErrorKind::ProxyConnect,
                    format!(
                        "cannot reach proxy {}: {}",
                        addr.display(),
                        io.unwrap_or_else(|| "connection failed".into())
                    ),
                ));
            }
            if e.is_connect() {
                return Failure::transient(Error::new(
                    ErrorKind::Network,
                    format!(
                        "{what}: the proxy {} did not open a tunnel to {}",
                        addr.display(),
                        self.base_display()
                    ),
                ));
            }
        }
        if e.is_timeout() {
            return Failure::transient(Error::new(
                ErrorKind::Timeout,
                format!("{what}: timed out connecting to {}", self.base_display()),
            ));
        }
        if e.is_connect() {
            return Failure::transient(Error::new(
                ErrorKind::Network,
                format!(
                    "{what}: cannot connect to the update service at {}: {}",
                    self.base_display(),
                    io.unwrap_or_else(|| "connection failed".into())
                ),
            ));
        }
        Failure::transient(Error::new(
            ErrorKind::Network,
            format!(
                "{what}: the connection to {} failed: {}",
                self.peer_display(),
                io.unwrap_or_else(|| short_reason(e))
            ),
        ))
    }

    /// Sleep before attempt `attempt + 1` (1-based `attempt` just failed), see
    /// [`backoff_delay`]; cancellation interrupts the wait.
    pub async fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Result<()> {
        let wait = backoff_delay(self.retry_base, attempt, retry_after, rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.cancel.cancelled() => Err(Error::cancelled()),
        }
    }

    /// Send a request built by `make` until it gets a non-retryable answer: transient
    /// failures (connection, timeout, 408/429/5xx) are retried up to `max_attempts`.
    /// Returns the response (a success, or a permanent status the caller judges).
    pub async fn send_with_retry(
        &self,
        what: &str,
        mut make: impl FnMut(&Activity) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let activity = Activity::new();
            let req = make(&activity)?;
            let failure = match self.send_once(req, what, &activity).await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() || !is_retryable_status(status) {
                        return Ok(resp);
                    }
                    let headers = resp.headers().clone();
                    let body = self.read_small(resp, 64 * 1024).await.unwrap_or_default();
                    self.status_failure(status, &headers, what, &body)
                }
                Err(f) => f,
            };
            if !failure.transient || attempt >= self.max_attempts {
                return Err(with_attempts(failure.error, attempt));
            }
            self.backoff(attempt, failure.retry_after).await?;
        }
    }

    /// Read a small body (manifest, signature, error) into memory, refusing more than
    /// `limit` bytes.
    pub async fn read_small(
        &self,
        mut resp: Response,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let activity = Activity::new();
        let mut out = Vec::new();
        loop {
            activity.touch();
            let chunk = self
                .idle(&activity, resp.chunk())
                .await?
                .map_err(|e| self.classify(&e, "reading the answer"))?;
            match chunk {
                Some(c) => {
                    if out.len() as u64 + c.len() as u64 > limit {
                        return Err(Failure::permanent(Error::new(
                            ErrorKind::Service,
                            format!("the service's answer is larger than {limit} bytes"),
                        )));
                    }
                    out.extend_from_slice(&c);
                }
                None => return Ok(out),
            }
        }
    }
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)` capped at 30 s, of which half
/// is fixed and half random (`random` in 0..1) so clients spread out without ever
/// retrying at once; a server's `Retry-After` (capped at 2 min) wins when it is longer.
pub(crate) fn backoff_delay(
    base: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
    random: f64,
) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = exp / 2;
    let jittered = half + half.mul_f64(random.clamp(0.0, 1.0));
    match retry_after {
        Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
        None => jittered,
    }
}

fn with_attempts(e: Error, attempts: u32) -> Error {
    if attempts > 1 {
        Error::new(
            e.kind(),
            format!("{} (after {attempts} attempts)", e.message()),
        )
    } else {
        e
    }
}

pub(crate) fn is_retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

fn build_proxy(p: &ProxyOptions) -> Result<(ProxyAddr, reqwest::Proxy)> {
    let addr = ProxyAddr::parse(&p.uri)?;
    let mut proxy = reqwest::Proxy::all(format!("http://{}", addr.display())).map_err(|e| {
        Error::invalid_argument(format!(
            "proxy address '{}' is not usable: {e}",
            addr.display()
        ))
    })?;
    match (&p.username, &p.password) {
        (Some(u), pw) if !u.is_empty() => {
            if u.contains(':') {
                return Err(Error::invalid_argument(
                    "the proxy user name must not contain ':'",
                ));
            }
            proxy = proxy.basic_auth(u, pw.as_deref().unwrap_or(""));
        }
        (_, Some(pw)) if !pw.is_empty() => {
            return Err(Error::invalid_argument(
                "a proxy password was given without a proxy user name",
            ))
        }
        _ => {}
    }
    Ok((addr, proxy))
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The `message` of an [`ApiError`](crate::api::ApiError) body, if it is one.
pub(crate) fn api_error_message(body: &[u8]) -> Option<String> {
    let e: crate::api::ApiError = serde_json::from_slice(body).ok()?;
    Some(format!("{} ({})", e.error.message, e.error.code))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A TLS failure somewhere in the chain, described briefly.
fn tls_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<tokio_rustls::rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<tokio_rustls::rustls::Error>() {
                    return Some(r.to_string());
                }
            }
        }
        cur = c.source();
    }
    let chain = error_chain(e);
    if chain.contains("certificate") || chain.contains("InvalidCertificate") {
        return Some(
            chain
                .rsplit(": ")
                .next()
                .unwrap_or("certificate problem")
                .to_string(),
        );
    }
    None
}

/// The operating system's reason for a connection failure, in plain words.
fn io_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind as K;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(
                match io.kind() {
                    K::ConnectionRefused => "connection refused",
                    K::ConnectionReset => "connection reset",
                    K::ConnectionAborted => "connection aborted",
                    K::TimedOut => "timed out",
                    K::UnexpectedEof => "the connection closed unexpectedly",
                    K::BrokenPipe => "the connection closed unexpectedly (broken pipe)",
                    _ => return Some(io.to_string()),
                }
                .to_string(),
            );
        }
        cur = c.source();
    }
    None
}

fn short_reason(e: &reqwest::Error) -> String {
    let chain = error_chain(e);
    // reqwest's first line repeats the URL; the innermost cause is the useful part.
    chain.rsplit(": ").next().unwrap_or(&chain).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addresses() {
        let p = |s: &str| ProxyAddr::parse(s).map(|a| a.display());
        assert_eq!(p("proxy.contoso.com").unwrap(), "proxy.contoso.com:80");
        assert_eq!(
            p("proxy.contoso.com:8080").unwrap(),
            "proxy.contoso.com:8080"
        );
        assert_eq!(p("http://proxy:3128/").unwrap(), "proxy:3128");
        assert_eq!(p("HTTP://proxy:3128").unwrap(), "proxy:3128");
        assert_eq!(p("[::1]:3128").unwrap(), "[::1]:3128");
        assert_eq!(p("[::1]").unwrap(), "[::1]:80");
        for bad in [
            "",
            "proxy:0",
            "proxy:99999",
            "proxy:x",
            "socks5://p:1",
            "p/x",
            ":80",
            "[::1",
        ] {
            let e = ProxyAddr::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let e = ProxyAddr::parse("http://meg:Secr3t@proxy:8080").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.message().contains("Secr3t"), "{e}");
    }

    #[test]
    fn service_uris() {
        assert!(parse_service_uri("http://127.0.0.1:8080").is_ok());
        assert!(parse_service_uri("https://updates.contoso.com/sct/").is_ok());
        for bad in [
            "",
            "ftp://x",
            "updates.contoso.com",
            "http://u:p@host",
            "http://h/?q=1",
        ] {
            let e = parse_service_uri(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(!e.message().contains("u:p"), "{e}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    fn http_with(opts: &ConnectOptions) -> Http {
        Http::new(opts, CancellationToken::new()).unwrap()
    }

    #[test]
    fn urls_stay_on_the_service() {
        let opts = ConnectOptions::new("a", "b", "http://127.0.0.1:9/base/");
        let h = http_with(&opts);
        assert_eq!(
            h.url("/v1/usage").unwrap().as_str(),
            "http://127.0.0.1:9/base/v1/usage"
        );
        for bad in ["v1/x", "//evil.example/x", "/\\evil", "/x#y"] {
            assert_eq!(h.url(bad).unwrap_err().kind(), ErrorKind::Service, "{bad}");
        }
    }

    #[test]
    fn statuses_are_judged() {
        let mut opts = ConnectOptions::new("a", "b", "http://127.0.0.1:9");
        opts.proxy = Some(ProxyOptions {
            uri: "127.0.0.1:3128".into(),
            username: Some("meg".into()),
            password: Some("Secr3t".into()),
        });
        let h = http_with(&opts);
        let empty = HeaderMap::new();
        let f = h.status_failure(StatusCode::PROXY_AUTHENTICATION_REQUIRED, &empty, "x", b"");
        assert_eq!(f.error.kind(), ErrorKind::ProxyAuth);
        assert!(!f.transient);
        assert!(f.error.message().contains("user meg"), "{}", f.error);
        assert!(!f.error.message().contains("Secr3t"));
        let mut ra = HeaderMap::new();
        ra.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let f = h.status_failure(StatusCode::TOO_MANY_REQUESTS, &ra, "x", b"");
        assert!(f.transient);
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        let f = h.status_failure(StatusCode::SERVICE_UNAVAILABLE, &empty, "x", b"");
        assert!(f.transient);
        let body = br#"{"error":{"code":"not_a_cab","message":"the upload is not a cabinet"}}"#;
        let f = h.status_failure(StatusCode::BAD_REQUEST, &empty, "uploading a.cab", body);
        assert!(!f.transient);
        assert_eq!(f.error.kind(), ErrorKind::Service);
        assert!(
            f.error
                .message()
                .contains("the upload is not a cabinet (not_a_cab)"),
            "{}",
            f.error
        );
        let f = h.status_failure(StatusCode::UNAUTHORIZED, &empty, "x", b"");
        assert!(f.error.message().contains("token"), "{}", f.error);
        // tinyproxy's answer to wrong credentials: a 401 with its own challenge.
        let mut tiny = HeaderMap::new();
        tiny.insert(
            reqwest::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Tinyproxy\""),
        );
        let f = h.status_failure(StatusCode::UNAUTHORIZED, &tiny, "x", b"<html>");
        assert_eq!(f.error.kind(), ErrorKind::ProxyAuth);
        // The service's own 401 (an ApiError body) is not blamed on the proxy.
        let api = br#"{"error":{"code":"unauthorized","message":"a bearer token is required"}}"#;
        let f = h.status_failure(StatusCode::UNAUTHORIZED, &tiny, "x", api);
        assert_eq!(f.error.kind(), ErrorKind::Service);
        let f = h.status_failure(StatusCode::REQUEST_TIMEOUT, &empty, "x", b"");
        assert!(f.transient);
    }

    #[test]
    fn password_only_is_refused() {
        let mut opts = ConnectOptions::new("a", "b", "http://127.0.0.1:9");
        opts.proxy = Some(ProxyOptions {
            uri: "127.0.0.1:3128".into(),
            username: None,
            password: Some("Secr3t".into()),
        });
        let e = Http::new(&opts, CancellationToken::new()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.message().contains("Secr3t"));
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff_delay(base, 1, None, 0.0), Duration::from_millis(50));
        assert_eq!(
            backoff_delay(base, 1, None, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff_delay(base, 4, None, 0.0),
            Duration::from_millis(400)
        );
        assert_eq!(
            backoff_delay(base, 4, None, 1.0),
            Duration::from_millis(800)
        );
        assert_eq!(backoff_delay(base, 40, None, 1.0), MAX_BACKOFF);
        let ra = Some(Duration::from_secs(7));
        assert_eq!(backoff_delay(base, 1, ra, 0.5), Duration::from_secs(7));
        let huge = Some(Duration::from_secs(100_000));
        assert_eq!(backoff_delay(base, 1, huge, 0.5), MAX_RETRY_AFTER);
    }
}
