//! Names the build: the git commit the binary was built from, for `introgy --version`,
//! `/health` and the `introgy_build_info` metric.
//!
//! `INTROGY_BUILD_COMMIT` wins (builds from a source tarball, or a packager that knows
//! the commit); otherwise `git rev-parse` in the source tree; otherwise `unknown`, so a
//! build without git or without `.git` still works.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=INTROGY_BUILD_COMMIT");
    let commit = std::env::var("INTROGY_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it names (a
            // commit). In a worktree `.git` is a file, so ask git where these live.
            if let Some(head) = git(&["rev-parse", "--path-format=absolute", "--git-path", "HEAD"])
            {
                println!("cargo:rerun-if-changed={head}");
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(path) =
                    git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
                {
                    if Path::new(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
                if let Some(packed) = git(&[
                    "rev-parse",
                    "--path-format=absolute",
                    "--git-path",
                    "packed-refs",
                ]) {
                    if Path::new(&packed).exists() {
                        println!("cargo:rerun-if-changed={packed}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=INTROGY_BUILD_COMMIT={}", commit.trim());
}
