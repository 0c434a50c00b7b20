//! Fresh user, mount, network, IPC and pid namespaces for one program, set up in the child between `fork` and
//! `exec` with plain system calls (no helper binaries: the mounts alone would cost ~5 ms each as `mount` processes).
//!
//! The child unshares the namespaces and maps the sandbox user to root inside, then forks once more: the grandchild
//! is pid 1 of the new pid namespace and becomes Python; the child stays behind, waits for it and exits the same
//! way, so the caller sees one process whose status is the program's. In the grandchild:
//!
//! 1. every mount becomes private (nothing propagates back), a fresh `/proc` shows only the namespace's processes,
//!    and the namespace's `pid_max` caps them (Linux ≥ 6.14 has one per namespace; elsewhere the write fails and
//!    the probe reports it);
//! 2. the work directory is bind-mounted onto itself, then every other mount is remounted read-only, `/` first;
//! 3. every capability is dropped (bounding set, ambient, effective/permitted/inheritable) and `no_new_privs` set,
//!    so Python, although root of the namespace, can undo none of it.
//!
//! The network namespace has only a loopback interface, which is down: no connection reaches anything.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Everything the child needs, prepared before the fork: the child only makes system calls and allocates nothing.
pub(super) struct NamespacePlan {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    work: CString,
    pid_max: Vec<u8>,
    /// Mount points with the flags that must be kept when remounting them (the kernel refuses to clear flags that
    /// a less privileged namespace inherited locked); `/` first.
    remounts: Vec<(CString, libc::c_ulong)>,
}

const PROC: &std::ffi::CStr = c"/proc";
const PROC_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

impl NamespacePlan {
    /// `uid`/`gid`: who the child is when it unshares (the sandbox user), mapped to root inside.
    pub(super) fn new(work: &Path, uid: u32, gid: u32, pid_max: u32) -> io::Result<Self> {
        let c_string = |bytes: &[u8]| CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        let mut remounts = vec![(c_string(b"/")?, 0)];
        for (point, flags) in mounts() {
            if point == "/" {
                remounts[0].1 = flags;
            } else if !remounts.iter().any(|(p, _)| p.as_bytes() == point.as_bytes()) {
                let flags = if point == "/proc" { flags | PROC_FLAGS } else { flags };
                remounts.push((c_string(point.as_bytes())?, flags));
            }
        }
        Ok(Self {
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
            work: c_string(work.as_os_str().as_bytes())?,
            pid_max: pid_max.to_string().into_bytes(),
            remounts,
        })
    }

    /// Runs in the child between fork and exec. Returns only in the grandchild, ready to exec.
    ///
    /// # Safety
    /// Only in a freshly forked child (single-threaded) before exec.
    pub(super) unsafe fn enter(&self) -> io::Result<()> {
        let flags =
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
        // SAFETY (all blocks below): plain system calls on buffers prepared before the fork.
        // Changing the uid from root (std did, for the sandbox user) left the process non-dumpable, which makes
        // /proc/self/* root's and the id maps below unwritable. exec would make it dumpable again anyway.
        check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) })?;
        check(unsafe { libc::unshare(flags) })?;
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", &self.uid_map)?;
        write_file(c"/proc/self/gid_map", &self.gid_map)?;
        let pid = check(unsafe { libc::fork() })?;
        if pid > 0 {
            // SAFETY: we are the single-threaded child; this never returns.
            unsafe { wait_and_mirror(pid) }
        }
        // The grandchild: pid 1 of the new namespace. If the child is killed (the time limit), so is it, and the
        // kernel then kills every process in the namespace.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) })?;
        self.mount()?;
        drop_capabilities()
    }

    fn mount(&self) -> io::Result<()> {
        let null = std::ptr::null();
        // SAFETY (all blocks below): plain system calls; every pointer is a valid C string or null.
        check(unsafe { libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null as _) })?;
        // A /proc of this pid namespace. Refused where the host's /proc is partly masked (e.g. in Docker); the old
        // one then stays, remounted read-only like the rest.
        let proc_mounted =
            unsafe { libc::mount(c"proc".as_ptr(), PROC.as_ptr(), c"proc".as_ptr(), PROC_FLAGS, null as _) } == 0;
        if proc_mounted {
            // Best effort: before Linux 6.14 pid_max is global and this write fails.
            let _ = write_file(c"/proc/sys/kernel/pid_max", &self.pid_max);
        }
        check(unsafe { libc::mount(self.work.as_ptr(), self.work.as_ptr(), null, libc::MS_BIND, null as _) })?;
        // The working directory still points into the mount below, which is about to become read-only.
        check(unsafe { libc::chdir(self.work.as_ptr()) })?;
        for (index, (point, keep)) in self.remounts.iter().enumerate() {
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep;
            let result = unsafe { libc::mount(null, point.as_ptr(), null, flags, null as _) };
            // `/` must become read-only. Others may be out of reach (under a directory the sandbox user cannot
            // enter, or hidden by the new /proc), which makes them harmless; the probe checks the outcome.
            if index == 0 {
                check(result)?;
            }
        }
        Ok(())
    }
}

/// Mount points and their per-mount flags, from /proc/self/mountinfo. Those under /proc are left out: the new /proc
/// hides them.
fn mounts() -> Vec<(String, libc::c_ulong)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let point = super::unescape_mountinfo(fields.nth(4)?);
            let options = fields.next()?;
            (!point.starts_with("/proc/")).then(|| (point, mount_flags(options)))
        })
        .collect()
}

fn mount_flags(options: &str) -> libc::c_ulong {
    options
        .split(',')
        .map(|option| match option {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "nosymfollow" => libc::MS_NOSYMFOLLOW,
            _ => 0,
        })
        .fold(0, |flags, flag| flags | flag)
}

fn check<T: Default + PartialOrd>(result: T) -> io::Result<T> {
    if result < T::default() {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}

fn write_file(path: &std::ffi::CStr, contents: &[u8]) -> io::Result<()> {
    // SAFETY: plain system calls on a valid path and buffer; the fd is ours and closed on every path.
    unsafe {
        let fd = check(libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
        let written = libc::write(fd, contents.as_ptr().cast(), contents.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != contents.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

/// The child's part: hold no file descriptor (so the caller's pipes close when the program's processes are gone,
/// and std's exec-error pipe once the grandchild has exec'd), wait for the grandchild, and end the same way.
///
/// # Safety
/// Only in the single-threaded child after fork.
unsafe fn wait_and_mirror(pid: libc::pid_t) -> ! {
    // SAFETY: plain system calls; nothing here allocates.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        let mut status = 0;
        loop {
            if libc::waitpid(pid, &mut status, 0) == pid {
                break;
            }
            if *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = libc::WTERMSIG(status);
        // Die of the same signal, so the caller sees e.g. SIGXCPU or SIGSEGV.
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal)
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Leaves the process with no capability now or after exec (it stays uid 0 of its namespace, which without
/// capabilities only means owning the files that the namespace maps to it).
fn drop_capabilities() -> io::Result<()> {
    // SAFETY (all blocks below): plain system calls with valid arguments.
    for cap in 0..64 {
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            // EINVAL: past the kernel's last capability.
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(io::Error::last_os_error());
        }
    }
    // Kernels before 4.3 have no ambient capabilities (EINVAL), and then nothing to clear.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) })?;
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags_keep_what_the_kernel_locks() {
        assert_eq!(mount_flags("rw,nosuid,nodev,relatime"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME);
        assert_eq!(mount_flags("ro,noexec"), libc::MS_NOEXEC);
        assert_eq!(mount_flags("rw"), 0);
    }

    #[test]
    fn the_plan_remounts_root_first_and_skips_what_proc_hides() {
        let plan = NamespacePlan::new(Path::new("/tmp/work"), 1000, 1000, 301).unwrap();
        assert_eq!(plan.remounts[0].0.as_bytes(), b"/");
        assert!(plan.remounts.iter().all(|(p, _)| !p.as_bytes().starts_with(b"/proc/")));
        assert_eq!(plan.uid_map, b"0 1000 1\n");
        assert_eq!(plan.pid_max, b"301");
    }
}
