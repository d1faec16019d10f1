//! `cargo xtask docker-image`: the router's container image, `FROM scratch` with a static
//! weave-router (glibc, `+crt-static`: [`crate::build::build_static`]), built without a
//! registry.

use std::time::Instant;

use anyhow::Result;

use crate::run::{self, cmd, status, step};

/// The image's name.
pub const IMAGE: &str = "weave-router:latest";

pub fn build(docker_host: Option<&str>) -> Result<()> {
    let t = Instant::now();
    step("docker-image: static weave-router");
    let root = run::root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = crate::build::build_static()?;
    let context = target_dir.join("docker-image");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&bin, context.join("weave-router"))?;
    std::fs::copy(root.join("docker/Dockerfile"), context.join("Dockerfile"))?;
    step(&format!("docker-image: docker build -t {IMAGE}"));
    let mut c = cmd("docker");
    if let Some(h) = docker_host {
        c.args(["-H", h]);
    }
    // The classic builder: no BuildKit, no registry, FROM scratch needs no pull.
    c.env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", IMAGE])
        .arg(&context);
    status(&mut c)?;
    println!("    {IMAGE} built in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}
