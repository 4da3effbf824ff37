//! Artifact stores: where a successful build's artifact is published (a directory, or a Zero-OS hub),
//! under a versioned name and a moving name that points at the newest.

mod directory;
mod hub;

use std::path::{Path, PathBuf};

pub use directory::DirectoryStore;
pub use hub::HubStore;

use crate::config::{ArtifactsKind, Config};
use crate::model::{Branch, CommitSha, RepoName};
use crate::recipes::ArtifactFormat;

/// The names of one artifact: `<org>-<repo>[-<tag>]-<branch>-<sha10><ext>` and the moving
/// `<org>-<repo>[-<tag>]-<branch><ext>`, with every `/` replaced by `-`. This scheme alone is
/// ambiguous (`a/b-c` and `a-b/c`): recipes whose names could meet are refused at load
/// (`recipes::names`). A pull request build (`pull/<n>`) has no moving name: it never moves a
/// download that a branch build owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactNames {
    pub versioned: String,
    pub moving: Option<String>,
}

impl ArtifactNames {
    pub fn new(repo: &RepoName, tag: Option<&str>, branch: &Branch, sha: &CommitSha, artifact_file: &str) -> Self {
        Self::named(&artifact_base(repo, tag, branch), branch, sha, artifact_file)
    }

    /// The names of an extra output: `<name>-<sha10><ext>` and the moving `<name><ext>`.
    pub fn output(name: &str, branch: &Branch, sha: &CommitSha, file: &str) -> Self {
        Self::named(name, branch, sha, file)
    }

    fn named(base: &str, branch: &Branch, sha: &CommitSha, file: &str) -> Self {
        let ext = extension(file);
        let moving = (!is_pull_request(branch)).then(|| format!("{base}{ext}"));
        Self { versioned: format!("{base}-{}{ext}", sha.short()), moving }
    }
}

/// `<org>-<repo>[-<tag>]-<branch>` with every `/` as `-`: an artifact's name without version and extension.
pub fn artifact_base(repo: &RepoName, tag: Option<&str>, branch: &Branch) -> String {
    let mut base = format!("{}-{}", repo.org(), repo.name());
    if let Some(tag) = tag {
        base.push('-');
        base.push_str(tag);
    }
    base.push('-');
    base.push_str(branch.as_str());
    base.replace('/', "-")
}

/// Whether builds of `branch` are a pull request's (`pull/<n>`).
pub fn is_pull_request(branch: &Branch) -> bool {
    branch.pull_number().is_some()
}

/// `.tar.gz` for tarballs, the last extension otherwise, nothing for a file without one.
pub fn extension(file: &str) -> &str {
    if file.ends_with(".tar.gz") {
        return ".tar.gz";
    }
    match file.rfind('.') {
        Some(at) if at > 0 => &file[at..],
        _ => "",
    }
}

/// What was published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// The versioned name in the store (`….tar.gz`, `….flist`, …).
    pub name: String,
    /// Where to download it, when the store serves downloads.
    pub url: Option<String>,
    pub sha256: String,
}

/// The configured artifact store.
pub enum ArtifactStore {
    Directory(DirectoryStore),
    /// Flists go to the hub; `format: binary` artifacts go to the directory, which the hub cannot take.
    Hub {
        hub: HubStore,
        binaries: DirectoryStore,
    },
}

impl ArtifactStore {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let directory =
            DirectoryStore::new(absolute(&config.artifacts.directory)?, format!("{}/artifacts", config.public_url));
        Ok(match config.artifacts.kind {
            ArtifactsKind::Directory => Self::Directory(directory),
            ArtifactsKind::Hub => Self::Hub { hub: HubStore::new(&config.artifacts.hub)?, binaries: directory },
        })
    }

    /// The directory served under `/artifacts/`.
    pub fn directory(&self) -> &Path {
        match self {
            Self::Directory(directory) | Self::Hub { binaries: directory, .. } => directory.root(),
        }
    }

    /// Publishes `file`; the error is a one-line reason for the build's record.
    pub async fn publish(
        &self,
        file: &Path,
        names: &ArtifactNames,
        format: ArtifactFormat,
    ) -> Result<Published, String> {
        match (self, format) {
            (Self::Directory(directory), _) | (Self::Hub { binaries: directory, .. }, ArtifactFormat::Binary) => {
                directory.publish(file, names).await
            }
            (Self::Hub { hub, .. }, ArtifactFormat::Flist) => hub.publish(file, names).await,
        }
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

/// SHA-256 of a file, in hex.
pub async fn sha256_file(file: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let (mut hasher, mut file, mut buffer) = (Sha256::new(), std::fs::File::open(file)?, vec![0; 256 * 1024]);
        loop {
            match file.read(&mut buffer)? {
                0 => return Ok(hex::encode(hasher.finalize())),
                n => hasher.update(&buffer[..n]),
            }
        }
    })
    .await
    .expect("hashing does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tag: Option<&str>, branch: &str, file: &str) -> ArtifactNames {
        ArtifactNames::new(
            &RepoName::parse("threefoldtech/0-core").unwrap(),
            tag,
            &Branch::parse(branch).unwrap(),
            &CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
            file,
        )
    }

    #[test]
    fn names_follow_the_original_scheme() {
        let n = names(None, "master", "result.tar.gz");
        assert_eq!(n.versioned, "threefoldtech-0-core-master-0123456789.tar.gz");
        assert_eq!(n.moving.as_deref(), Some("threefoldtech-0-core-master.tar.gz"));
        let n = names(Some("special-tag"), "feature/x", "result.tar.gz");
        assert_eq!(n.versioned, "threefoldtech-0-core-special-tag-feature-x-0123456789.tar.gz");
        let n = names(None, "master", "kernel.efi");
        assert_eq!(
            (n.versioned.as_str(), n.moving.as_deref()),
            ("threefoldtech-0-core-master-0123456789.efi", Some("threefoldtech-0-core-master.efi"))
        );
        assert_eq!(names(None, "master", "tool").moving.as_deref(), Some("threefoldtech-0-core-master"));
        let pull = names(None, "pull/7", "result.tar.gz");
        assert_eq!((pull.versioned.as_str(), pull.moving), ("threefoldtech-0-core-pull-7-0123456789.tar.gz", None));
    }
}
