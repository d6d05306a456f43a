//! Fork servers: one warm Python process per code version that imports the
//! handler's module once and forks a child per run.
//!
//! A run whose handler does little costs what starting Python and importing
//! its modules cost; a fork server pays that once per version and worker.
//! Each run still gets its own process — forked from the clean server, so
//! nothing a run leaves (module globals, environment variables, memory)
//! reaches the next — in its own process group and working folder, with
//! its own environment, its stdout and stderr as its log, and its own
//! Landlock layer (the server's ruleset lets it into the version's runs
//! folder; the run's own, passed with the run, into its folder only).
//!
//! The worker and a server speak over a `SOCK_SEQPACKET` socket: a request
//! carries the run's folder, environment and descriptors (stdout, stderr,
//! ruleset); the server answers with the child's pid, then its raw wait
//! status. A server is killed when dropped (its children die with it:
//! `PR_SET_PDEATHSIG`), so the [`Pool`] drops only idle ones.
//!
//! See `runner.py` for the server's side and docs/user-code.md.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_domain::time::Timestamp;
use sluice_domain::{DeploymentId, OrganizationId, VersionId};
use tokio::io::unix::AsyncFd;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::sandbox;

/// A log line with its time.
pub type Line = (Timestamp, String);

/// How long a started server's import output is still read after it said
/// it is ready (a process it started may hold the pipe open).
const IMPORT_OUTPUT_WAIT: Duration = Duration::from_secs(1);

/// Why a version's server could not start: its import failed (the error as
/// the runner describes it) or the process could not be started.
#[derive(Debug, Clone)]
pub struct Failed {
    pub error: String,
    /// What the import printed, the traceback included.
    pub log: Vec<Line>,
}

/// What starts a version's server.
pub struct Launch {
    pub python: String,
    pub runner: PathBuf,
    /// Its working folder: the version's runs folder.
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub sandbox: sandbox::Prepared,
}

/// The messages a server sends about one request.
enum Event {
    Started(u32),
    Exited(i32),
}

type Waiting = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>>;

/// One version's warm interpreter.
pub struct Server {
    sock: Arc<AsyncFd<OwnedFd>>,
    /// Killed when the server is dropped.
    _process: tokio::process::Child,
    waiting: Waiting,
    next: AtomicU64,
    busy: AtomicUsize,
    alive: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
}

/// A run forked from a server: its pid (and process group) and its end.
pub struct Forked {
    pid: u32,
    events: mpsc::UnboundedReceiver<Event>,
    _busy: Busy,
    ended: bool,
}

/// Counts a run against its server from the request on: a busy server is
/// never stopped for being idle; the end marks when it was last used.
struct Busy(Arc<Server>);

impl Busy {
    fn new(server: &Arc<Server>) -> Busy {
        server.busy.fetch_add(1, Ordering::SeqCst);
        Busy(server.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_used.lock().expect("not poisoned") = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Starts a server and waits until its import is done. Answers the
    /// server and what the import printed.
    pub async fn start(launch: Launch) -> Result<(Arc<Server>, Vec<Line>), Failed> {
        let failed = |what: &str, e: &dyn std::fmt::Display| Failed {
            error: format!("{what}: {e}"),
            log: vec![],
        };
        let (ours, theirs) =
            seqpacket_pair().map_err(|e| failed("could not make the fork server's socket", &e))?;
        let theirs_raw = theirs.as_raw_fd();
        let sandbox = launch.sandbox;
        let mut cmd = Command::new(&launch.python);
        cmd.arg("-u")
            .arg(&launch.runner)
            .current_dir(&launch.dir)
            .env_clear()
            .envs(launch.env)
            .env("SLUICE_FORK_SERVER", theirs_raw.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: fcntl and the sandbox's system calls only (see
        // `sandbox::Prepared::enter`).
        unsafe {
            cmd.pre_exec(move || {
                // The server's end of the socket survives exec.
                if libc::fcntl(theirs_raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                sandbox.enter()
            });
        }
        let mut process = cmd
            .spawn()
            .map_err(|e| failed(&format!("could not start `{}`", launch.python), &e))?;
        drop(cmd);
        drop(theirs);
        // SAFETY: an OwnedFd is open and stays the same descriptor while
        // the AsyncFd owns it.
        let sock = unsafe { AsyncFd::register(ours) }
            .map_err(|e| failed("could not watch the fork server", &e.into_parts().1))?;
        let sock = Arc::new(sock);

        // What the import prints, until the server says it is ready and
        // lets go of its output.
        let (tx, mut rx) = mpsc::channel::<Line>(1024);
        let pumps = [
            tokio::spawn(crate::worker::pump(process.stdout.take(), tx.clone())),
            tokio::spawn(crate::worker::pump(process.stderr.take(), tx)),
        ];
        // Read together: an import that prints more than the pipes hold
        // would otherwise never get to say it is ready.
        let mut log = Vec::new();
        let mut first = None;
        let mut output_open = true;
        let mut deadline = None;
        loop {
            tokio::select! {
                m = recv(&sock), if first.is_none() => {
                    first = Some(m);
                    deadline = Some(tokio::time::Instant::now() + IMPORT_OUTPUT_WAIT);
                    if !output_open {
                        break;
                    }
                }
                line = rx.recv(), if output_open => match line {
                    Some(line) => log.push(line),
                    None if first.is_some() => break,
                    None => output_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => break,
            }
        }
        drop(pumps);
        let first = first.expect("the loop ends after the first message");
        let ready: Value = match first {
            Ok(Some(m)) => serde_json::from_slice(&m).unwrap_or(Value::Null),
            Ok(None) => Value::Null,
            Err(e) => return Err(failed("the fork server's socket failed", &e)),
        };
        match ready["ready"].as_bool() {
            Some(true) => {}
            Some(false) => {
                return Err(Failed {
                    error: ready["error"]
                        .as_str()
                        .unwrap_or("import failed")
                        .to_owned(),
                    log,
                })
            }
            None => {
                let status = process.wait().await.ok();
                return Err(Failed {
                    error: match status {
                        Some(s) => format!(
                            "the code's interpreter ended before it was ready: {}",
                            crate::worker::describe_exit(&s)
                        ),
                        None => "the code's interpreter ended before it was ready".into(),
                    },
                    log,
                });
            }
        }
        let waiting: Waiting = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_events(sock.clone(), waiting.clone(), alive.clone()));
        Ok((
            Arc::new(Server {
                sock,
                _process: process,
                waiting,
                next: AtomicU64::new(1),
                busy: AtomicUsize::new(0),
                alive,
                last_used: Mutex::new(Instant::now()),
            }),
            log,
        ))
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.busy.load(Ordering::SeqCst) == 0)
            .then(|| self.last_used.lock().expect("not poisoned").elapsed())
    }

    /// Forks a child for one run: its folder `work`, its whole environment
    /// `env`, its output to `stdout` and `stderr`, (with Landlock) the
    /// run's own ruleset, and its request and context unless they are in
    /// files in `work` (`request.json`, `context.json`).
    #[allow(clippy::too_many_arguments)]
    pub async fn fork(
        self: &Arc<Self>,
        work: &std::path::Path,
        env: &[(String, String)],
        stdout: OwnedFd,
        stderr: OwnedFd,
        ruleset: Option<BorrowedFd<'_>>,
        cpu_seconds: Option<u64>,
        inputs: Option<(&Value, &Value)>,
    ) -> std::io::Result<Forked> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, mut events) = mpsc::unbounded_channel();
        self.waiting.lock().expect("not poisoned").insert(id, tx);
        let busy = Busy::new(self);
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut request = json!({
            "id": id,
            "work": work.display().to_string(),
            "env": env,
            "restrict": libc::SYS_landlock_restrict_self,
            "cpu_seconds": cpu_seconds,
        });
        if let Some((run_request, context)) = inputs {
            request["request"] = run_request.clone();
            request["context"] = context.clone();
        }
        let request = request.to_string();
        let mut fds = vec![stdout.as_raw_fd(), stderr.as_raw_fd()];
        fds.extend(ruleset.map(|r| r.as_raw_fd()));
        if let Err(e) = send(&self.sock, request.as_bytes(), &fds).await {
            self.waiting.lock().expect("not poisoned").remove(&id);
            return Err(e);
        }
        drop((stdout, stderr));
        match events.recv().await {
            Some(Event::Started(pid)) => Ok(Forked {
                pid,
                events,
                _busy: busy,
                ended: false,
            }),
            _ => Err(std::io::Error::other(
                "the version's fork server ended before it started the run",
            )),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

impl Forked {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the run's process to end.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        loop {
            match self.events.recv().await {
                Some(Event::Exited(status)) => {
                    self.ended = true;
                    return Ok(ExitStatus::from_raw(status));
                }
                Some(Event::Started(_)) => continue,
                None => {
                    self.ended = true;
                    return Err(std::io::Error::other(
                        "the version's fork server ended while the run was running",
                    ));
                }
            }
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.ended {
            // SAFETY: kill(2) on the run's own process group.
            unsafe {
                libc::kill(-(self.pid as i32), libc::SIGKILL);
            }
        }
    }
}

/// Reads a server's answers and hands each to the run it is about; when
/// the server is gone, every run still waiting learns it.
async fn read_events(sock: Arc<AsyncFd<OwnedFd>>, waiting: Waiting, alive: Arc<AtomicBool>) {
    loop {
        let message = match recv(&sock).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        let Ok(m) = serde_json::from_slice::<Value>(&message) else {
            continue;
        };
        let Some(id) = m["id"].as_u64() else { continue };
        let mut waiting = waiting.lock().expect("not poisoned");
        if let Some(pid) = m["pid"].as_u64() {
            let taken = waiting
                .get(&id)
                .is_some_and(|tx| tx.send(Event::Started(pid as u32)).is_ok());
            if !taken {
                // Nobody waits for this run any more (its attempt ended
                // while the fork went on, say on a lost lease): it must not
                // run on unwatched.
                waiting.remove(&id);
                // SAFETY: kill(2) on the child (and its group, once made).
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        } else if let Some(status) = m["status"].as_i64() {
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(Event::Exited(status as i32));
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
    waiting.lock().expect("not poisoned").clear();
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors.
    let done = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two new descriptors owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Ours is read through the runtime; theirs stays blocking for Python.
    // SAFETY: plain fcntl calls on our descriptor.
    unsafe {
        let flags = libc::fcntl(ours.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((ours, theirs))
}

/// Receives one message; None when the server closed its end.
async fn recv(sock: &AsyncFd<OwnedFd>) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut guard = sock.readable().await?;
        let got = guard.try_io(|fd| {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_CMSG_CLOEXEC,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match got {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Sends one message with descriptors (`SCM_RIGHTS`).
async fn send(sock: &AsyncFd<OwnedFd>, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|fd| send_now(fd.as_raw_fd(), data, fds)) {
            Ok(done) => return done,
            Err(_would_block) => continue,
        }
    }
}

fn send_now(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_* compute sizes; the buffer is u64-aligned and as long
    // as CMSG_SPACE says; the header and data are written inside it.
    unsafe {
        let space = libc::CMSG_SPACE(payload) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Which version a server runs (for finding the servers of deleted ones).
#[derive(Debug, Clone)]
pub struct Owner {
    pub org: OrganizationId,
    pub deployment: DeploymentId,
    pub version: VersionId,
}

struct Slot {
    owner: Owner,
    server: tokio::sync::OnceCell<Result<Arc<Server>, Failed>>,
}

/// What [`Pool::server`] found.
pub enum Warm {
    /// A server to fork from; with what its import printed when this call
    /// started it.
    Ready(Arc<Server>, Option<Vec<Line>>),
    /// The version's import failed.
    Failed(Failed),
    /// Every warm slot is busy with another version's runs.
    Full,
}

/// The warm servers of one worker: at most `limit`, each stopped after
/// `idle` without a run.
pub struct Pool {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    limit: usize,
    idle: Duration,
}

impl Pool {
    pub fn new(limit: usize, idle: Duration) -> Pool {
        Pool {
            slots: Mutex::default(),
            limit,
            idle,
        }
    }

    /// The server for `key` (a version with its environment and limits),
    /// started with `launch` when there is none. An idle server of another
    /// version makes room when the pool is full.
    pub async fn server<F>(&self, key: String, owner: Owner, launch: F) -> Warm
    where
        F: FnOnce() -> Result<Launch, Failed>,
    {
        let slot = {
            let mut slots = self.slots.lock().expect("not poisoned");
            match slots.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    if slots.len() >= self.limit && !evict_idlest(&mut slots) {
                        return Warm::Full;
                    }
                    let slot = Arc::new(Slot {
                        owner,
                        server: tokio::sync::OnceCell::new(),
                    });
                    slots.insert(key.clone(), slot.clone());
                    slot
                }
            }
        };
        let mut printed = None;
        let started = slot
            .server
            .get_or_init(|| async {
                let started = match launch() {
                    Ok(l) => Server::start(l).await,
                    Err(f) => Err(f),
                };
                started.map(|(server, log)| {
                    printed = Some(log);
                    server
                })
            })
            .await;
        match started {
            Ok(server) if server.alive() => Warm::Ready(server.clone(), printed),
            Ok(_) => {
                self.forget(&key, &slot);
                Warm::Failed(Failed {
                    error: "the version's fork server ended; the next run starts a new one".into(),
                    log: vec![],
                })
            }
            Err(failed) => {
                // The next run tries the import again.
                self.forget(&key, &slot);
                Warm::Failed(failed.clone())
            }
        }
    }

    fn forget(&self, key: &str, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
    }

    /// Stops the servers idle for longer than the pool's idle time, those
    /// that died, and those whose version `gone` says is deleted.
    pub fn sweep(&self, gone: &dyn Fn(&Owner) -> bool) -> usize {
        let mut slots = self.slots.lock().expect("not poisoned");
        let before = slots.len();
        slots.retain(|_, slot| match slot.server.get() {
            Some(Ok(server)) => {
                server.alive()
                    && match server.idle_for() {
                        Some(idle) => idle < self.idle && !gone(&slot.owner),
                        None => true,
                    }
            }
            Some(Err(_)) => false,
            None => true,
        });
        before - slots.len()
    }

    /// The versions with a warm server.
    pub fn owners(&self) -> Vec<Owner> {
        let slots = self.slots.lock().expect("not poisoned");
        slots.values().map(|s| s.owner.clone()).collect()
    }

    /// How many servers are warm.
    pub fn len(&self) -> usize {
        self.slots.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every server (their runs, if any, die with them).
    pub fn clear(&self) {
        self.slots.lock().expect("not poisoned").clear();
    }
}

/// Drops the server idle for the longest; false when every one is busy.
fn evict_idlest(slots: &mut HashMap<String, Arc<Slot>>) -> bool {
    let idlest = slots
        .iter()
        .filter_map(|(k, s)| match s.server.get() {
            Some(Ok(server)) => server.idle_for().map(|d| (d, k.clone())),
            Some(Err(_)) => Some((Duration::MAX, k.clone())),
            None => None,
        })
        .max();
    match idlest {
        Some((_, key)) => {
            slots.remove(&key);
            true
        }
        None => false,
    }
}

/// A key for a version's server: the same code, environment and limits
/// share one.
pub fn key(version: &VersionId, env: &[(String, String)], limits: sandbox::Limits) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env.hash(&mut h);
    format!("{version}|{limits:?}|{:016x}", h.finish())
}
