//! The development signing secret: generated once and kept in the data directory, so a
//! restart does not log everyone out. Nobody but the service's user may read it: the file
//! is created 0600 (and tightened to 0600, with a warning, if it is found readable by
//! others), and a data directory created here is 0700. An existing directory is left as
//! it is (it may be the working directory). Production sets `JWT_SECRET_KEY` instead.

use std::path::Path;

use anyhow::Context;
use secrecy::SecretString;

use crate::config::MIN_SECRET_BYTES;

/// The file name, in the data directory.
pub const FILE_NAME: &str = "introgy-jwt-secret";

/// Reads the development signing secret kept in `dir`, creating it on first start.
pub fn load_or_create(dir: &Path) -> anyhow::Result<SecretString> {
    let path = dir.join(FILE_NAME);
    if path.exists() {
        keep_private(&path)?;
        let raw = std::fs::read_to_string(&path)
            .with_context(|| format!("Failed to read {}", path.display()))?;
        let trimmed = raw.trim();
        anyhow::ensure!(
            trimmed.len() >= MIN_SECRET_BYTES,
            "{} is too short to be a signing secret; delete it to generate a new one",
            path.display()
        );
        return Ok(SecretString::from(trimmed));
    }
    create_private_dir(dir)?;
    let secret = crate::auth::random_hex(64);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("Failed to create {}", path.display()))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "generated a development JWT signing secret; set JWT_SECRET_KEY in production"
    );
    Ok(SecretString::from(secret))
}

/// Creates `dir` (and missing parents) readable by the owner only.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("Failed to create {}", dir.display()))
}

/// Makes a secret file readable by the owner only, if anyone else could read it.
fn keep_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("Failed to read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("Failed to make {} private", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                was = %format!("{:o}", mode & 0o777),
                "the development signing secret was readable by others; it is now 0600"
            );
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_secret_and_a_new_data_directory_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/introgy");
        let secret = load_or_create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "data directory");
        assert_eq!(mode(&root.path().join("data")), 0o700, "created parent");
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600, "secret file");
        let again = load_or_create(&dir).unwrap();
        assert_eq!(
            again.expose_secret(),
            secret.expose_secret(),
            "kept across restarts"
        );
    }

    #[test]
    fn a_world_readable_secret_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
