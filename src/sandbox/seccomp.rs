//! A seccomp filter that keeps a program from reaching the host's Unix sockets.
//!
//! The mount namespace makes the filesystem read-only, but connecting to a Unix socket needs no write access to a
//! read-only mount: any socket file the sandbox user may write to (a `0777` socket in `/tmp`, a desktop bus, a
//! container runtime's socket) would be reachable. The network namespace already isolates abstract sockets. So:
//!
//! - `socket(AF_UNIX, …)` fails with `EACCES`;
//! - `socketpair(AF_UNIX, …)` is allowed for stream sockets only (asyncio's self-pipe uses one; an unconnected
//!   datagram socket of a pair could still `sendto` a path);
//! - `io_uring_setup` fails with `ENOSYS` (io_uring creates sockets and connects without those system calls);
//! - system calls of another ABI (32-bit `int 0x80`, whose `socketcall` would bypass the checks; x32) fail with
//!   `ENOSYS`.
//!
//! The filter is built before the fork and installed between fork and exec (after `no_new_privs`), so it binds
//! Python and everything it starts.

use std::io;

/// `AUDIT_ARCH_*` of the architectures whose system call numbers the filter knows.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 system calls are x86_64's with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: `nr`, `arch`, then the arguments (the low 32 bits of each on little-endian
/// machines; `int` arguments are compared there, as the kernel uses them).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;
const ARG1: u32 = 24;
/// `SOCK_TYPE_MASK`: the socket type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u32 = 0xf;

/// A compiled filter, ready to install in a child.
pub(super) struct UnixSocketFilter {
    program: Vec<libc::sock_filter>,
}

impl UnixSocketFilter {
    /// `None` on architectures the filter does not know (then the probe reports Unix sockets as reachable).
    pub(super) fn new() -> Option<Self> {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            Some(Self { program: program() })
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            None
        }
    }

    /// Installs the filter for this process and what it executes.
    ///
    /// # Safety
    /// Only between fork and exec (or in a process that wants the filter for good): it makes plain system calls on
    /// data prepared before.
    pub(super) unsafe fn install(&self) -> io::Result<()> {
        let program = libc::sock_fprog { len: self.program.len() as u16, filter: self.program.as_ptr().cast_mut() };
        // SAFETY: plain system calls; `program` points at a valid filter that outlives the calls.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn program() -> Vec<libc::sock_filter> {
    let statement = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter { code: code as u16, jt, jf, k };
    let load = |offset: u32| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let ret = |value: u32| statement(libc::BPF_RET | libc::BPF_K, value);
    let errno = |errno: i32| ret(libc::SECCOMP_RET_ERRNO | (errno as u32 & 0xffff));
    let allow = ret(libc::SECCOMP_RET_ALLOW);
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let (socket, socketpair, io_uring_setup) =
        (libc::SYS_socket as u32, libc::SYS_socketpair as u32, libc::SYS_io_uring_setup as u32);
    let af_unix = libc::AF_UNIX as u32;

    let mut program = vec![
        load(ARCH),
        // Another ABI: nothing of it is allowed.
        jump(jeq, AUDIT_ARCH, 1, 0),
        errno(libc::ENOSYS),
        load(NR),
    ];
    #[cfg(target_arch = "x86_64")]
    program.extend([jump(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_SYSCALL_BIT, 0, 1), errno(libc::ENOSYS)]);
    program.extend([
        jump(jeq, socket, 3, 0),
        jump(jeq, socketpair, 5, 0),
        jump(jeq, io_uring_setup, 11, 0),
        allow,
        // socket: the domain.
        load(ARG0),
        jump(jeq, af_unix, 6, 0),
        allow,
        // socketpair: the domain, then the type.
        load(ARG0),
        jump(jeq, af_unix, 0, 4),
        load(ARG1),
        statement(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, SOCK_TYPE_MASK),
        jump(jeq, libc::SOCK_STREAM as u32, 1, 0),
        // Refused: AF_UNIX.
        errno(libc::EACCES),
        allow,
        // io_uring_setup
        errno(libc::ENOSYS),
    ]);
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter program on a `seccomp_data` the way the kernel would (the few BPF instructions it uses).
    fn verdict(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u32; 2]) -> u32 {
        let data = |offset: u32| match offset {
            NR => nr,
            ARCH => arch,
            ARG0 => args[0],
            ARG1 => args[1],
            other => panic!("load at {other}"),
        };
        let (mut pc, mut accumulator) = (0usize, 0u32);
        loop {
            let instruction = program[pc];
            let code = u32::from(instruction.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                accumulator = data(instruction.k);
            } else if code == libc::BPF_RET | libc::BPF_K {
                return instruction.k;
            } else if code == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K {
                accumulator &= instruction.k;
            } else {
                let taken = match code & 0xf0 {
                    c if c == libc::BPF_JEQ => accumulator == instruction.k,
                    c if c == libc::BPF_JGE => accumulator >= instruction.k,
                    other => panic!("jump {other:#x}"),
                };
                pc += usize::from(if taken { instruction.jt } else { instruction.jf });
            }
        }
    }

    #[test]
    fn unix_sockets_and_io_uring_are_refused_and_the_rest_allowed() {
        let program = program();
        let allow = libc::SECCOMP_RET_ALLOW;
        let eacces = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let (unix, inet) = (libc::AF_UNIX as u32, libc::AF_INET as u32);
        let stream_cloexec = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u32;
        let call = |nr: libc::c_long, args: [u32; 2]| verdict(&program, AUDIT_ARCH, nr as u32, args);
        assert_eq!(call(libc::SYS_socket, [unix, stream_cloexec]), eacces);
        assert_eq!(call(libc::SYS_socket, [unix, libc::SOCK_DGRAM as u32]), eacces);
        assert_eq!(call(libc::SYS_socket, [inet, stream_cloexec]), allow);
        assert_eq!(call(libc::SYS_socketpair, [unix, stream_cloexec]), allow);
        assert_eq!(call(libc::SYS_socketpair, [unix, libc::SOCK_DGRAM as u32]), eacces);
        assert_eq!(call(libc::SYS_io_uring_setup, [0, 0]), enosys);
        assert_eq!(call(libc::SYS_read, [0, 0]), allow);
        assert_eq!(call(libc::SYS_connect, [3, 0]), allow);
        assert_eq!(verdict(&program, 0x4000_0003, 102, [1, 0]), enosys, "another ABI (i386 socketcall)");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(verdict(&program, AUDIT_ARCH, X32_SYSCALL_BIT | 41, [unix, 1]), enosys, "x32");
    }
}
