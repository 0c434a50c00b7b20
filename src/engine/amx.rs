//! Keeping llama.cpp off Intel's AMX matrix units.
//!
//! llama.cpp built for a CPU with AMX (Xeon 4th generation and later; `target-cpu=native` here, or the dynamic
//! `sapphirerapids` CPU variant) puts quantized weights (q8_0, q4_0, q4_K, …) in its AMX buffer type, and the pinned
//! llama.cpp's AMX matrix multiplication segfaults: in `ggml_backend_amx_mul_mat`, at every phi shape tried, from
//! the 64-wide test fixture to phi-1-small (upstream: ggml-org/llama.cpp#20824; wrong results: #16315). No
//! parameter of the safe API turns the AMX buffer type off (`use_extra_bufts` is not exposed, and a tensor override
//! "to the CPU" still picks the CPU's extra buffer types first).
//!
//! What llama.cpp does check is the kernel's permission to use AMX: before its first use it asks for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and when that fails it leaves the AMX buffer type out
//! ("AMX is not ready to be used!", printed to stderr) and uses its ordinary AVX kernels. So on CPUs with AMX, before
//! llama.cpp starts, the process installs a seccomp filter under which exactly that request fails with `EPERM`;
//! every other system call is untouched. The cost is AMX's speed-up on quantized models, on those CPUs only.

/// Whether the CPU has AMX-INT8 (CPUID leaf 7, EDX bit 25), the unit llama.cpp's AMX kernels need.
pub(crate) fn cpu_has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `cpuid` exists on every x86_64 CPU, and leaf 7 is answered (with zeros) where it is not
        // implemented; the call only reads registers. (A safe function in newer Rust, hence the allow.)
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        leaf7.edx & (1 << 25) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Makes the process's requests for AMX permission fail (see the module's documentation), for every thread, those
/// that exist (`SECCOMP_FILTER_FLAG_TSYNC`) and those started later. Sets `no_new_privs`, as any unprivileged
/// seccomp filter needs.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn deny_amx() -> std::io::Result<()> {
    /// `AUDIT_ARCH_X86_64`.
    const AUDIT_ARCH: u32 = 0xC000_003E;
    /// `ARCH_REQ_XCOMP_PERM` (asm/prctl.h).
    const ARCH_REQ_XCOMP_PERM: u32 = 0x1023;
    /// Offsets in `struct seccomp_data`: `nr`, `arch`, the low 32 bits of the first argument.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG0: u32 = 16;

    let statement = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jump_if_equal = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = |offset: u32| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let allow = statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    let filter = [
        load(ARCH),
        jump_if_equal(AUDIT_ARCH, 0, 5),
        load(NR),
        jump_if_equal(libc::SYS_arch_prctl as u32, 0, 3),
        load(ARG0),
        jump_if_equal(ARCH_REQ_XCOMP_PERM, 0, 1),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        allow,
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: plain system calls; `program` points at a valid filter that outlives them. The filter only ever
    // denies one `arch_prctl` request, which nothing but llama.cpp's AMX set-up makes.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &program as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn the_amx_permission_request_fails_and_nothing_else_does() {
        // In a child process: the filter stays with the process that installs it.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "engine::amx::tests::child_installs_the_filter", "--ignored", "--nocapture"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    #[ignore = "run by the_amx_permission_request_fails_and_nothing_else_does, in its own process"]
    fn child_installs_the_filter() {
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        super::deny_amx().unwrap();
        // SAFETY: arch_prctl with an integer argument, or a pointer to a local u64.
        let (request, query) = unsafe {
            let request = libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
            let request_errno = std::io::Error::last_os_error().raw_os_error();
            let mut features = 0u64;
            let query = libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut features as *mut u64);
            ((request, request_errno), query)
        };
        assert_eq!(request, (-1, Some(libc::EPERM)));
        // Other arch_prctl requests, and everything else, still work.
        assert_eq!(query, 0);
        assert!(std::fs::read_to_string("/proc/self/status").is_ok());
        // Threads started afterwards carry the filter too.
        let in_thread = std::thread::spawn(|| {
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) }
        });
        assert_eq!(in_thread.join().unwrap(), -1);
    }
}
