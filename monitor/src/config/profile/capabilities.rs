//! Named capabilities: what a kind of work needs, allowed by name (`allow.capabilities`)
//! rather than spelled out as paths in every profile that needs it.

/// A capability: what it adds to a profile's allow lists (globs may name variables of
/// [`super::facts`]).
#[derive(Debug)]
pub struct Capability {
    pub name: &'static str,
    pub description: &'static str,
    pub exec: &'static [&'static str],
    pub read: &'static [&'static str],
    pub write: &'static [&'static str],
}

/// `compile-toolchain`: the C/C++ compiler that torch.compile (inductor), Triton and
/// FlashInfer start to build kernels at run time, with the programs the driver runs
/// (cc1, cc1plus, as, collect2, ld), the headers they read and the temporary files they
/// write. Measured with vLLM's CPU build (`cargo xtask realserve vllm`): the compiler on a
/// cold compile cache, and `openssl sha512` of the preprocessed header on every start.
pub const COMPILE_TOOLCHAIN: Capability = Capability {
    name: "compile-toolchain",
    description: "the C/C++ compiler (cc, gcc, g++, cc1, cc1plus, as, ld, collect2), \
                  CUDA's nvcc/ptxas, ninja, openssl (inductor's header hash), and the \
                  headers they read",
    exec: &[
        "/usr/bin/cc",
        "/usr/bin/c++",
        "/usr/bin/cpp*",
        "/usr/bin/gcc*",
        "/usr/bin/g++*",
        "/usr/bin/clang*",
        "/usr/bin/x86_64-linux-gnu-*",
        "/usr/bin/aarch64-linux-gnu-*",
        "/usr/bin/as",
        "/usr/bin/ld",
        "/usr/bin/ld.*",
        "/usr/lib/gcc/**",
        "/usr/libexec/gcc/**",
        "/usr/lib/llvm-*/bin/*",
        "/usr/local/cuda*/bin/**",
        "/usr/local/cuda*/nvvm/bin/**",
        "**/site-packages/triton/backends/nvidia/bin/*",
        "**/dist-packages/triton/backends/nvidia/bin/*",
        "**/bin/ninja",
        // torch inductor hashes the header it preprocessed with `openssl sha512`
        // (torch/_inductor/codecache.py), on every start.
        "/usr/bin/openssl",
        // conda's compiler packages (`conda install gxx_linux-64`).
        "${python.prefix}/bin/*-conda-linux-gnu-*",
        "${python.prefix}/libexec/gcc/**",
    ],
    read: &[
        "/usr/include/**",
        "/usr/local/include/**",
        "/usr/lib/gcc/**",
        "/usr/libexec/gcc/**",
        "/usr/lib/x86_64-linux-gnu/**",
        "/usr/lib/aarch64-linux-gnu/**",
        "/usr/local/cuda*/**",
        "${python.base_prefix}/include/**",
        "${python.prefix}/include/**",
        "${python.prefix}/lib/**",
        "${tmp}/**",
    ],
    write: &["${tmp}/**"],
};

/// Every capability.
pub const CAPABILITIES: &[&Capability] = &[&COMPILE_TOOLCHAIN];

pub fn by_name(name: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().copied().find(|c| c.name == name)
}
