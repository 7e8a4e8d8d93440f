//! The Debian package: built by `deploy/deb/build.sh` from the binary the suite already
//! built (CI does not compile a release build for it), installed with dpkg into a scratch
//! root (its maintainer scripts run with `DPKG_ROOT`, so the machine itself is not
//! touched), run from there, its unit verified, then removed (data and settings kept) and
//! purged (settings gone, the database still kept).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{introgy_bin, repo};

fn ok(output: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// A scratch root with what dpkg and useradd need: an empty dpkg database and minimal
/// account files.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "etc",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    for (file, line) in [
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(r.join(file), line).unwrap();
        std::fs::set_permissions(r.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // Maintainer scripts run on the host with DPKG_ROOT set instead of in a chroot
        // (the scratch root has no shell); libc6 and passwd are not in its database.
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args)
        .output()
        .unwrap()
}

pub fn build_package(out: &Path) -> PathBuf {
    let printed = ok(
        Command::new("bash")
            .arg(repo("deploy/deb/build.sh"))
            .args(["--binary", introgy_bin(), "--compress", "gzip", "--out"])
            .arg(out)
            .output()
            .unwrap(),
        "deploy/deb/build.sh",
    );
    PathBuf::from(printed.lines().last().unwrap().trim())
}

#[test]
fn the_debian_package_installs_runs_and_removes_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_package(out.path());
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("introgy_{}_", env!("CARGO_PKG_VERSION"))),
        "{}",
        deb.display()
    );
    let info = ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .output()
            .unwrap(),
        "dpkg-deb --info",
    );
    for field in [
        "Package: introgy",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: libc6 (>= ",
        "Recommends: nginx",
    ] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }
    let contents = ok(
        Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&deb)
            .output()
            .unwrap(),
        "dpkg-deb --contents",
    );
    for path in [
        "./usr/bin/introgy",
        "./lib/systemd/system/introgy.service",
        "./etc/nginx/sites-available/introgy.conf",
        "./etc/nginx/snippets/introgy-proxy.conf",
        "./etc/nginx/conf.d/introgy-upstream.conf",
        "./usr/share/introgy/introgy.env.template",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    assert!(
        !contents.contains("./etc/nginx/sites-enabled"),
        "the site is not enabled by the package"
    );

    let root = scratch_root();
    let r = root.path();
    let installed = ok(
        dpkg(r, &["--install", deb.to_str().unwrap()]),
        "dpkg --install",
    );
    assert!(installed.contains("Next steps"), "{installed}");

    // The binary runs from the package and names its build.
    let version = ok(
        Command::new(r.join("usr/bin/introgy"))
            .arg("--version")
            .output()
            .unwrap(),
        "introgy --version",
    );
    assert_eq!(
        version.trim(),
        format!(
            "introgy {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            introgy::COMMIT
        )
    );
    // The system user, the private data folder and the settings file with a secret.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("introgy:"))
        .unwrap_or_else(|| panic!("no introgy user:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/introgy:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    let data = std::fs::metadata(r.join("var/lib/introgy")).unwrap();
    assert_eq!(data.permissions().mode() & 0o777, 0o700);
    assert_eq!(data.uid(), uid);
    let env_file = r.join("etc/introgy/introgy.env");
    let env_meta = std::fs::metadata(&env_file).unwrap();
    assert_eq!(env_meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(env_meta.uid(), 0);
    let env = std::fs::read_to_string(&env_file).unwrap();
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("JWT_SECRET_KEY="))
        .unwrap();
    assert_eq!(secret.len(), 128);
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/introgy.service")).unwrap();
    assert!(unit
        .lines()
        .any(|l| l == "ExecStart=/usr/bin/introgy serve"));
    crate::verify_unit(r, "/lib/systemd/system/introgy.service");

    // Reinstalling (an upgrade to the same version) keeps the secret.
    ok(
        dpkg(r, &["--install", deb.to_str().unwrap()]),
        "dpkg --install again",
    );
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env);

    // Remove: the program goes; settings, conffiles and data stay.
    std::fs::write(r.join("var/lib/introgy/introgy.db"), "data").unwrap();
    ok(dpkg(r, &["--remove", "introgy"]), "dpkg --remove");
    assert!(!r.join("usr/bin/introgy").exists());
    assert!(!r.join("lib/systemd/system/introgy.service").exists());
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env);
    assert!(r.join("etc/nginx/sites-available/introgy.conf").exists());
    assert!(r.join("var/lib/introgy/introgy.db").exists());

    // Purge: settings and conffiles go; the database is never deleted by dpkg.
    let purged = ok(dpkg(r, &["--purge", "introgy"]), "dpkg --purge");
    assert!(!env_file.exists());
    assert!(!r.join("etc/nginx/sites-available/introgy.conf").exists());
    assert!(r.join("var/lib/introgy/introgy.db").exists());
    assert!(purged.contains("kept /var/lib/introgy"), "{purged}");
    let status = dpkg(r, &["--status", "introgy"]);
    assert!(!status.status.success(), "still registered after purge");
}
