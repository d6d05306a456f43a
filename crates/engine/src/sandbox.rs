//! The sandbox user code runs in: what a run's process may touch of the
//! host, enforced by the kernel in the child before it execs the
//! interpreter.
//!
//! Layers, each on its own:
//!
//! - **Landlock** (Linux ≥ 5.13; every access right up to the running
//!   kernel's ABI): the process reads and runs only the system's libraries
//!   and programs (`/usr`, `/lib*`, `/bin`, `/sbin`), a short list of `/etc`
//!   files a program needs (the loader cache, time zones, CA certificates,
//!   name resolution, users and groups), the interpreter's own prefix and
//!   site-packages, the version's code (read-only) and the runner; it reads
//!   and writes only its own working folder (its `HOME` and `TMPDIR`). No
//!   `/proc` (so not the server's environment or command line), no data dir,
//!   no objects, no other run's folder. From ABI 6 it cannot signal
//!   processes outside its sandbox either, nor reach their abstract sockets.
//! - **An unprivileged user** when the server runs as root: the run's
//!   process becomes `nobody` (65534), its working folder handed to it; the
//!   store's files are readable by their owner only.
//! - **No new privileges** (`PR_SET_NO_NEW_PRIVS`): no setuid program gives
//!   any back.
//! - **The server is not dumpable** ([`harden_server`]): a process of the
//!   same user cannot read its environment or memory through `/proc`.
//! - **Limits** ([`Limits`]): address space, CPU seconds and open files per
//!   run, when configured; no core files.
//!
//! Not isolated: the network (a handler may call any host the server can
//! reach), and the CPU and memory a run uses beyond the limits set.
//!
//! Everything is prepared in the parent (a Landlock ruleset is a file
//! descriptor); the child, between fork and exec, only makes system calls
//! that are safe there (no allocation).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

/// What a run's sandbox lets it reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Read (and execute) only.
    pub read: Vec<PathBuf>,
    /// Read and write, create and remove.
    pub write: Vec<PathBuf>,
    /// Read and write, create and remove: the run's own folder, the one
    /// path a ruleset names that no other run's names (so never kept open:
    /// see [`KEPT`]).
    pub own: Option<PathBuf>,
}

/// Per-run resource limits (None: not limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Address space, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time, in seconds.
    pub cpu_seconds: Option<u64>,
    /// Open files.
    pub open_files: Option<u64>,
}

impl Limits {
    /// These limits, each tightened by a deployment's own.
    pub fn with(self, deployment: sluice_domain::RunLimits) -> Limits {
        let tighter = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            memory_bytes: tighter(self.memory_bytes, deployment.memory_mb.map(|mb| mb << 20)),
            cpu_seconds: tighter(self.cpu_seconds, deployment.cpu_seconds),
            open_files: tighter(self.open_files, deployment.open_files),
        }
    }
}

/// How well this kernel and process can sandbox runs, found once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The Landlock ABI version (0: none).
    pub landlock_abi: i64,
    /// Runs drop to this user and group (the server runs as root).
    pub run_as: Option<u32>,
}

/// `nobody` on Linux distributions.
const NOBODY: u32 = 65534;

/// The `/etc` entries a program commonly needs (when they exist).
const ETC: [&str; 16] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
];

const SYSTEM: [&str; 7] = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt"];

// Landlock's ABI (include/uapi/linux/landlock.h).
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_TRUNCATE: u64 = 1 << 14;
const FS_IOCTL_DEV: u64 = 1 << 15;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Every filesystem right this ABI knows.
fn fs_rights(abi: i64) -> u64 {
    match abi {
        ..=0 => 0,
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

/// The rights that apply to a file (not a directory).
fn file_rights(abi: i64) -> u64 {
    (FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV) & fs_rights(abi)
}

impl Support {
    /// Probes the kernel and the process; warns loudly about each layer
    /// that is missing.
    pub fn probe() -> Support {
        // SAFETY: the documented way to ask for the ABI version.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        let abi = abi.max(0);
        if abi == 0 {
            tracing::warn!(
                "this kernel has no Landlock: user code is NOT confined to its own folder \
                 (it can read whatever this server's user can); see docs/user-code.md"
            );
        }
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Support {
            landlock_abi: abi,
            run_as: root.then_some(NOBODY),
        }
    }
}

/// Whether a user that is neither the owner nor in the group can reach
/// `path`: every folder above it searchable by others, and it readable.
pub fn others_can_reach(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0) && mode(&path) & 0o004 != 0
}

/// Makes the server's own process undumpable: another process of its user
/// cannot read its environment, memory or open files through `/proc`.
pub fn harden_server() {
    // SAFETY: a plain prctl on this process.
    let done = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if done != 0 {
        tracing::warn!("could not make the server undumpable: its /proc files stay readable");
    }
}

/// A sandbox made ready in the parent: a Landlock ruleset (when the kernel
/// has Landlock) and the limits; [`Prepared::enter`] applies it in the child.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<OwnedFd>,
    run_as: Option<u32>,
    limits: Limits,
    /// The process that spawns the run (its parent once forked).
    parent: libc::pid_t,
}

impl Policy {
    /// The policy of one run: the system, the interpreter's `prefixes`, the
    /// code (`code`, `runner`) read-only; its working folder `work` read
    /// and write.
    pub fn for_run(prefixes: &[PathBuf], code: &Path, runner: &Path, work: &Path) -> Policy {
        let mut read: Vec<PathBuf> = SYSTEM.iter().chain(ETC.iter()).map(PathBuf::from).collect();
        read.extend(prefixes.iter().cloned());
        read.extend([code.to_owned(), runner.to_owned()]);
        read.extend(["/dev/urandom", "/dev/random"].map(PathBuf::from));
        Policy {
            read,
            write: vec![PathBuf::from("/dev/null"), PathBuf::from("/dev/zero")],
            own: Some(work.to_owned()),
        }
    }

    /// Builds the ruleset. Paths that do not exist are left out.
    pub fn prepare(&self, support: Support, limits: Limits) -> std::io::Result<Prepared> {
        let ruleset = if support.landlock_abi > 0 {
            Some(self.ruleset(support.landlock_abi)?)
        } else {
            None
        };
        Ok(Prepared {
            ruleset,
            run_as: support.run_as,
            limits,
            // SAFETY: getpid cannot fail.
            parent: unsafe { libc::getpid() },
        })
    }

    fn ruleset(&self, abi: i64) -> std::io::Result<OwnedFd> {
        let all = fs_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: all,
            handled_access_net: 0,
            scoped: if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        // Older kernels know a shorter attribute.
        let size = match abi {
            ..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        // SAFETY: attr lives across the call; size is what this ABI reads.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size,
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR;
        for (paths, rights) in [(&self.read, read), (&self.write, all)] {
            for p in paths {
                if let Some(opened) = kept(p) {
                    add_rule(&ruleset, p, &opened, rights, abi)?;
                }
            }
        }
        if let Some(own) = &self.own {
            if let Some(opened) = open_path(own) {
                add_rule(&ruleset, own, &opened, all, abi)?;
            }
        }
        Ok(ruleset)
    }
}

/// A path opened for a rule (`O_PATH`: nothing is read through it).
#[derive(Debug)]
struct Opened {
    fd: OwnedFd,
    is_dir: bool,
    /// Which file it is (`st_dev`, `st_ino`).
    file: (u64, u64),
}

/// The paths rules name, kept open between rulesets: a run's ruleset
/// names some thirty paths that every other run's names too (the system's,
/// the interpreter's, the code's), and opening, inspecting and closing each
/// for every run was most of the system calls a run cost the server. A kept
/// descriptor serves while `stat` of its path finds the same file; a path
/// replaced since (a reinstalled interpreter, a version's code unpacked
/// again) is opened anew. At most [`KEPT_MAX`] paths are kept (the code
/// folders of many versions would otherwise hold a descriptor each).
static KEPT: LazyLock<Mutex<HashMap<PathBuf, Arc<Opened>>>> = LazyLock::new(Default::default);
const KEPT_MAX: usize = 256;

/// `path` opened, from [`KEPT`] when it is still the file kept; `None`
/// when it is not on this host.
fn kept(path: &Path) -> Option<Arc<Opened>> {
    let file = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))?;
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(opened) = kept.get(path).filter(|o| o.file == file) {
        return Some(opened.clone());
    }
    let opened = Arc::new(open_path(path)?);
    if kept.len() >= KEPT_MAX {
        kept.clear();
    }
    kept.insert(path.to_owned(), opened.clone());
    Some(opened)
}

/// Opens `path` for a rule; `None` when it is not on this host.
fn open_path(path: &Path) -> Option<Opened> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string; O_PATH opens nothing for reading.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH descriptors can be fstat'ed); st lives across the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some(Opened {
        is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        file: (st.st_dev, st.st_ino),
        fd,
    })
}

/// Allows `rights` beneath `path`, opened as `opened` (a file gets the
/// rights files have).
fn add_rule(
    ruleset: &OwnedFd,
    path: &Path,
    opened: &Opened,
    rights: u64,
    abi: i64,
) -> std::io::Result<()> {
    let rights = if opened.is_dir {
        rights
    } else {
        rights & file_rights(abi)
    };
    let attr = PathBeneathAttr {
        allowed_access: rights,
        parent_fd: opened.fd.as_raw_fd(),
    };
    // SAFETY: attr and both descriptors live across the call.
    let done = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if done < 0 {
        return Err(std::io::Error::other(format!(
            "sandbox rule for {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

impl Prepared {
    /// The Landlock ruleset, for a process that applies it itself (a run
    /// forked from a fork server: see `forkserver`).
    pub fn ruleset(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.ruleset.as_ref().map(|r| r.as_fd())
    }

    /// Applies the sandbox to the calling process. Runs in the child
    /// between fork and exec: system calls only, no allocation.
    pub fn enter(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        let limit = |resource, value: Option<u64>| {
            if let Some(v) = value {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                // SAFETY: a plain setrlimit.
                if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                    return false;
                }
            }
            true
        };
        if !limit(libc::RLIMIT_CORE, Some(0))
            || !limit(libc::RLIMIT_AS, self.limits.memory_bytes)
            || !limit(libc::RLIMIT_CPU, self.limits.cpu_seconds)
            || !limit(libc::RLIMIT_NOFILE, self.limits.open_files)
        {
            return fail();
        }
        if let Some(id) = self.run_as {
            // SAFETY: async-signal-safe calls, in the order that drops root.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return fail();
                }
            }
        }
        // The code dies with its worker instead of running on as an orphan.
        // Set after the user changes: a change of credentials clears it.
        // SAFETY: plain prctl calls on this process.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail();
            }
            if libc::getppid() != self.parent {
                // The worker died before the signal was set.
                libc::_exit(1);
            }
        }
        // SAFETY: plain prctl and Landlock calls on this process.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            if let Some(ruleset) = &self.ruleset {
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) != 0 {
                    return fail();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_path_serves_until_the_path_is_another_file() {
        let dir = std::env::temp_dir().join(format!("sluice-kept-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = kept(&dir).unwrap();
        assert!(first.is_dir);
        // The same folder: the same descriptor, not opened again.
        assert!(Arc::ptr_eq(&first, &kept(&dir).unwrap()));
        // Replaced by another (a code folder unpacked again): opened anew,
        // and the descriptor is the new folder's.
        let other = dir.with_extension("new");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        std::fs::rename(&other, &dir).unwrap();
        let again = kept(&dir).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(again.file, (meta.dev(), meta.ino()));
        // SAFETY: a zeroed stat is a valid buffer; the descriptor is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(again.fd.as_raw_fd(), &mut st) }, 0);
        assert_eq!((st.st_dev, st.st_ino), (meta.dev(), meta.ino()));
        // Gone: no rule.
        std::fs::remove_dir(&dir).unwrap();
        assert!(kept(&dir).is_none());
    }
}
