// Linked into pbench (tests/bench/pbench.cpp, unchanged) when it is built against the llama.cpp libraries of
// phi-tui's `dynamic-backends` build (GGML_BACKEND_DL=ON), whose backends are modules loaded at run time: this loads
// the modules in $PBENCH_BACKENDS before pbench's main runs. Engine and raw harness then run the very same
// libllama, libggml and backend modules (CPU variants, CUDA).
#include "ggml-backend.h"

#include <cstdlib>

static const bool backends_loaded = [] {
    const char * dir = std::getenv("PBENCH_BACKENDS");
    if (dir != nullptr) {
        ggml_backend_load_all_from_path(dir);
    }
    return dir != nullptr;
}();
