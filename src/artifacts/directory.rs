//! The directory store: artifacts copied into a local directory, with a symlink as the moving name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ArtifactNames, Published};

pub struct DirectoryStore {
    root: PathBuf,
    /// URL under which `root` is served.
    base_url: String,
}

impl DirectoryStore {
    pub fn new(root: PathBuf, base_url: String) -> Self {
        Self { root, base_url }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Copies `file` in under its versioned name (atomically), then points the moving name at it.
    pub async fn publish(&self, file: &Path, names: &ArtifactNames) -> Result<Published, String> {
        let root = self.root.clone();
        let (file, names_owned) = (file.to_path_buf(), names.clone());
        let sha256 = tokio::task::spawn_blocking(move || copy_and_link(&root, &file, &names_owned))
            .await
            .expect("copying does not panic")
            .map_err(|e| format!("cannot store the artifact in {}: {e}", self.root.display()))?;
        Ok(Published {
            name: names.versioned.clone(),
            url: Some(format!("{}/{}", self.base_url, names.versioned)),
            sha256,
        })
    }
}

/// Copies under a unique temporary name then renames, and makes the link the same way, so that
/// readers never see a partial file and concurrent publishes of one name never collide. Returns
/// the sha256 of what was copied, hashed on the way (the file is read once).
fn copy_and_link(root: &Path, file: &Path, names: &ArtifactNames) -> std::io::Result<String> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let unique = || format!("{}-{}", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed));
    std::fs::create_dir_all(root)?;
    let partial = root.join(format!(".{}.{}.partial", names.versioned, unique()));
    let sha256 = copy_hashing(file, &partial)?;
    std::fs::rename(&partial, root.join(&names.versioned))?;
    if let Some(moving) = &names.moving {
        let link = root.join(format!(".{moving}.{}.link", unique()));
        std::os::unix::fs::symlink(&names.versioned, &link)?;
        std::fs::rename(&link, root.join(moving))?;
    }
    Ok(sha256)
}

fn copy_hashing(from: &Path, to: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let (mut source, mut target) = (std::fs::File::open(from)?, std::fs::File::create(to)?);
    let (mut hasher, mut buffer) = (Sha256::new(), vec![0; 256 * 1024]);
    loop {
        match source.read(&mut buffer)? {
            0 => break,
            n => {
                hasher.update(&buffer[..n]);
                target.write_all(&buffer[..n])?;
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_and_moves_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path().join("store"), "http://x/artifacts".into());
        let names = |v: &str| ArtifactNames { versioned: format!("a-{v}.tar.gz"), moving: Some("a.tar.gz".into()) };
        for (version, content) in [("1", "one"), ("2", "two")] {
            let source = dir.path().join("source");
            std::fs::write(&source, content).unwrap();
            let published = store.publish(&source, &names(version)).await.unwrap();
            assert_eq!(published.url.as_deref(), Some(format!("http://x/artifacts/a-{version}.tar.gz").as_str()));
            assert_eq!(published.sha256.len(), 64);
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("store/a.tar.gz")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(dir.path().join("store/a-1.tar.gz")).unwrap(), "one");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_publishes_of_one_name_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(DirectoryStore::new(dir.path().join("store"), "http://x".into()));
        let source = dir.path().join("source");
        std::fs::write(&source, "same").unwrap();
        let names = ArtifactNames { versioned: "a-1.tar.gz".into(), moving: Some("a.tar.gz".into()) };
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, source, names) = (store.clone(), source.clone(), names.clone());
                tokio::spawn(async move { store.publish(&source, &names).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let left: Vec<_> =
            std::fs::read_dir(dir.path().join("store")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only the artifact and its link remain: {left:?}");
    }
}
