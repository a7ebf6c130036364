//! `sct-service serve`: bind, announce the address on the first stdout line, accept
//! connections (plain or TLS) and serve them until SIGINT/SIGTERM, then finish the
//! requests in flight (for up to [`SHUTDOWN_GRACE`]) and exit.

use super::content::{Content, ContentUrl};
use super::http::{router, AppState};
use super::Store;
use crate::error::{Error, ErrorKind, Result};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// How long requests in flight may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A client must send its request headers within this time (slow-loris guard).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS client must finish its handshake within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub store: PathBuf,
    /// `--catalog`; `None`: the store's own `catalog.sqlite`.
    pub catalog: Option<crate::catalog::CatalogUrl>,
    /// `127.0.0.1:0` by default: loopback only, a free port.
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_upload_bytes: u64,
    /// A connection that moves no byte either way for this long is closed (a stalled or
    /// malicious slow client must not hold a task and an open file forever).
    pub idle_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog until one
    /// closes, so a flood of connections cannot exhaust descriptors or memory.
    pub max_connections: usize,
    /// `--content`: where content and uploads live (default: the store folder).
    pub content: Option<ContentUrl>,
    /// `--content-redirect`: answer content requests with a 307 to a presigned URL valid
    /// this long instead of streaming the bytes through this process.
    pub content_redirect: Option<Duration>,
}

/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `--max-connections`: far above what sites and their Connect runs need (a few
/// parallel downloads each), far below a process's usual 1,024-descriptor limit once
/// each served file's descriptor is counted too.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default lifetime of a presigned URL with `--content-redirect`: long enough to start a
/// download (a started GET is not cut off when its URL expires; a resume asks the
/// service again and gets a fresh URL), short enough that a leaked URL soon stops working.
pub const DEFAULT_REDIRECT_TTL: Duration = Duration::from_secs(300);

/// Serve until SIGINT/SIGTERM. `token` (never logged) enables bearer authentication.
/// The first line on stdout is `sct-service listening on http(s)://ADDR`, flushed.
pub fn serve(opts: &ServeOptions, token: Option<String>) -> Result<()> {
    let (store, catalog): (Store, Arc<dyn crate::catalog::Catalog>) = match &opts.catalog {
        None => {
            let store = Store::open(&opts.store)?;
            let c = crate::catalog::SqliteCatalog::open(&store.catalog_path())?;
            (store, Arc::new(c))
        }
        Some(url) => (
            Store::open_folder(&opts.store)?,
            Arc::from(crate::catalog::open(url)?),
        ),
    };
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(super::tls::acceptor(c, k)?),
        (None, None) => None,
        _ => {
            return Err(Error::invalid_argument(
                "--tls-cert and --tls-key go together: give both or neither",
            ))
        }
    };
    // Kept here so the catalog (a PostgreSQL client pool, whose synchronous clients must
    // not be dropped inside the async runtime) is dropped last, after the runtime.
    let keep_catalog = catalog.clone();
    let content = Content::open(opts.content.as_ref(), store.root())?;
    let state = Arc::new(
        AppState::with_catalog(store, catalog, token.as_deref(), opts.max_upload_bytes)
            .with_content(content, opts.content_redirect)?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", &e))?;
    let result = rt.block_on(run(
        opts.listen,
        tls,
        state,
        opts.idle_timeout,
        opts.max_connections.max(1),
    ));
    drop(rt);
    drop(keep_catalog);
    result
}

async fn run(
    listen: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    idle: Duration,
    max_connections: usize,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("listening on {listen}"), &e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", &e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "sct-service listening on {scheme}://{addr}")
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("writing to standard output", &e))?;
    }
    let app = router(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            // At the cap, accept nothing until a connection ends (the branch above).
            accepted = listener.accept(), if conns.len() < max_connections => {
                let (tcp, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        eprintln!("sct-service: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let stop = stop_rx.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls {
                        None => serve_connection(tcp, app, stop, idle, true).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_connection(stream, app, stop, idle, false).await,
                                Ok(Err(e)) => eprintln!("sct-service: TLS handshake failed: {e}"),
                                Err(_) => eprintln!("sct-service: TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    eprintln!("sct-service: shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("sct-service: closing connections still open after {SHUTDOWN_GRACE:?}");
        conns.abort_all();
    }
    eprintln!("sct-service: stopped");
    Ok(())
}

/// Serve one connection. `plain`: the connection is plain TCP, so HTTP/1 response bodies go
/// from hyper's buffers to `writev` untouched and may be mapped file windows
/// ([`crate::http::ZeroCopy`]); over TLS, rustls reads them in the process.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
    plain: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Watched {
        inner: io,
        started,
        last: last.clone(),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let app = tower::ServiceExt::map_request(
        app,
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            // HTTP/1 only: HTTP/2 (h2c) copies a DATA frame's small payloads into its own
            // buffer, in the process.
            if plain && req.version() <= hyper::Version::HTTP_11 {
                req.extensions_mut().insert(crate::http::ZeroCopy);
            }
            req
        },
    );
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            // Errors here are clients going away or speaking garbage: nothing to do.
            _ = conn.as_mut() => return,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = tick.tick() => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    eprintln!("sct-service: closing a connection idle for {}s", quiet.as_secs());
                    return;
                }
            }
        }
    }
}

/// An I/O stream that records when bytes last moved (milliseconds since `started`).
struct Watched<I> {
    inner: I,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<I> Watched<I> {
    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Read a token file: the first line, trimmed; empty is refused.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the token file {}", path.display()), &e))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("the token file {} is empty", path.display()),
        ));
    }
    Ok(token)
}
