//! Builds the kernel programs (`monitor-ebpf`) with the nightly toolchain and bpf-linker, so the
//! object can be embedded in the `monitor` binary.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    if matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true")) {
        // Unit tests of user-space code can build without the eBPF toolchain; the embedded
        // object is then empty and loading it fails with a clear error.
        let placeholder = out_dir.join("monitor");
        if !placeholder.exists() {
            fs::write(placeholder, [])?;
        }
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .expect("monitor crate has a parent directory")
        .join("monitor-ebpf");
    let root = root.to_str().expect("utf-8 path").to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
