//! The raw llama.cpp calls that llama-cpp-2's safe API does not wrap. This is the only module that uses
//! `llama_cpp_sys_2` directly; each function checks its inputs so that nothing can reach a `GGML_ASSERT`.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// A failed quantization.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("{0}: the path is not valid UTF-8 or contains a NUL byte")]
    BadPath(PathBuf),
    #[error("{0}: no such input file")]
    MissingInput(PathBuf),
    #[error("{0}: {1}")]
    Backend(PathBuf, String),
    #[error("{input}: llama.cpp's quantizer failed (status {status})")]
    Failed { input: PathBuf, status: u32 },
}

/// Quantizes a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`), which knows the k-quant mixes
/// (`Q4_K_M` keeps some tensors at higher precision) that a plain per-tensor encoder does not.
///
/// `ftype` is a value of llama.cpp's `enum llama_ftype`; `threads` 0 uses every core.
pub fn quantize_model(input: &Path, output: &Path, ftype: u32, threads: u32) -> Result<(), QuantizeError> {
    if !input.is_file() {
        return Err(QuantizeError::MissingInput(input.to_path_buf()));
    }
    let c_path =
        |p: &Path| p.to_str().and_then(|s| CString::new(s).ok()).ok_or_else(|| QuantizeError::BadPath(p.to_path_buf()));
    let (c_input, c_output) = (c_path(input)?, c_path(output)?);
    super::worker::backend().map_err(|e| QuantizeError::Backend(input.to_path_buf(), e.to_string()))?;
    // SAFETY: the default parameters are a plain struct returned by value; the pointers we pass are valid,
    // NUL-terminated strings that outlive the call, and the input file exists. llama.cpp catches its own
    // exceptions here and reports them as a non-zero status.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype as _;
        params.nthread = i32::try_from(threads).unwrap_or(0);
        llama_cpp_sys_2::llama_model_quantize(c_input.as_ptr(), c_output.as_ptr(), &params)
    };
    if status != 0 {
        return Err(QuantizeError::Failed { input: input.to_path_buf(), status });
    }
    Ok(())
}

/// The version of the vendored llama.cpp, e.g. `0.6.0-dev`.
pub fn llama_cpp_version() -> String {
    // SAFETY: llama_version returns a pointer to a static NUL-terminated string.
    unsafe {
        let version = llama_cpp_sys_2::llama_version();
        if version.is_null() {
            return "unknown".to_owned();
        }
        CStr::from_ptr(version).to_string_lossy().into_owned()
    }
}

/// Has the CPU backend set up its extra buffer types (AMX, weight repacking) now, with its stderr discarded: with
/// AMX denied (see `amx.rs`) it prints "AMX is not ready to be used!" there, which would otherwise land on the
/// user's terminal (inside the TUI's screen, even) at the first model load. The set-up runs once per process.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn set_up_cpu_buffer_types_quietly() {
    type GetExtraBufts =
        unsafe extern "C" fn(llama_cpp_sys_2::ggml_backend_dev_t) -> *mut llama_cpp_sys_2::ggml_backend_buffer_type_t;
    // SAFETY: the registry calls take no input of ours but the device type and a NUL-terminated name; the proc
    // address, when there is one, has the type ggml-backend.h gives `ggml_backend_dev_get_extra_bufts_t`. Standard
    // error is swapped with dup/dup2 on descriptors this function owns, and restored before it returns (what other
    // threads write to stderr meanwhile is lost: this runs once, while the backend starts).
    unsafe {
        let device = llama_cpp_sys_2::ggml_backend_dev_by_type(llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_CPU);
        if device.is_null() {
            return;
        }
        let registry = llama_cpp_sys_2::ggml_backend_dev_backend_reg(device);
        if registry.is_null() {
            return;
        }
        let address =
            llama_cpp_sys_2::ggml_backend_reg_get_proc_address(registry, c"ggml_backend_dev_get_extra_bufts".as_ptr());
        if address.is_null() {
            return;
        }
        let get_extra_bufts: GetExtraBufts = std::mem::transmute(address);
        let saved = libc::dup(libc::STDERR_FILENO);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        let swapped = saved >= 0 && null >= 0 && libc::dup2(null, libc::STDERR_FILENO) >= 0;
        get_extra_bufts(device);
        if swapped {
            libc::dup2(saved, libc::STDERR_FILENO);
        }
        for fd in [saved, null] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}
