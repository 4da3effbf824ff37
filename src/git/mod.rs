//! Git (libgit2): a build's checkout of the pushed commit, the mirrors it comes from (which also
//! give the recipes and the ancestry of pushes), and the credentials of clone URLs.
//!
//! Every function here blocks; call them from `tokio::task::spawn_blocking`.

mod checkout;
mod mirror;

pub use checkout::{Wanted, check_out};
pub use mirror::Mirror;

use anyhow::Context;
use git2::{FetchOptions, Repository};

use crate::model::{Branch, CommitSha};

/// The commit `branch` points at on the remote (`git ls-remote`).
pub fn branch_head(url: &str, branch: &Branch) -> anyhow::Result<CommitSha> {
    let mut remote = git2::Remote::create_detached(url)?;
    remote.connect(git2::Direction::Fetch).with_context(|| format!("cannot reach {}", redact_url(url)))?;
    let wanted = format!("refs/heads/{branch}");
    let head = remote.list()?.iter().find(|head| head.name() == wanted).map(|head| head.oid().to_string());
    let head = head.with_context(|| format!("branch {branch} not found in {}", redact_url(url)))?;
    CommitSha::parse(&head)
}

/// Where a build's branch lives on the remote: `pull/<n>` is pull request n's head
/// (`refs/pull/<n>/head`, which GitHub keeps for forks too), anything else a branch.
pub fn remote_ref(branch: &Branch) -> String {
    match branch.pull_number() {
        Some(number) => format!("refs/pull/{number}/head"),
        None => format!("refs/heads/{branch}"),
    }
}

/// What a fetch received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub objects: usize,
    pub bytes: usize,
}

impl std::ops::AddAssign for Fetched {
    fn add_assign(&mut self, more: Fetched) {
        self.objects += more.objects;
        self.bytes += more.bytes;
    }
}

impl std::fmt::Display for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} objects ({:.1} MiB)", self.objects, self.bytes as f64 / 1048576.0)
    }
}

/// Fetches `refspecs` from `url` into `repo`, with `depth` commits of history (0: all).
fn fetch(repo: &Repository, url: &str, refspecs: &[&str], depth: i32) -> anyhow::Result<Fetched> {
    let (clean, credentials) = split_credentials(url);
    let mut remote = repo.remote_anonymous(&clean)?;
    let mut options = FetchOptions::new();
    options.download_tags(git2::AutotagOption::None);
    options.update_fetchhead(false);
    if depth > 0 {
        options.depth(depth);
    }
    if let Some((user, password)) = credentials {
        // Given to libgit2 when the server asks, so the URL it records (FETCH_HEAD) holds none.
        let mut asked = false;
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks.credentials(move |_, _, _| {
            if std::mem::replace(&mut asked, true) {
                return Err(git2::Error::from_str("the credentials of [git] clone_url were refused"));
            }
            git2::Cred::userpass_plaintext(&user, &password)
        });
        options.remote_callbacks(callbacks);
    }
    remote
        .fetch(refspecs, Some(&mut options), None)
        .with_context(|| format!("git fetch of {} failed", redact_url(url)))?;
    let stats = remote.stats();
    Ok(Fetched { objects: stats.received_objects(), bytes: stats.received_bytes() })
}

/// An `http(s)://` URL without its user info, and that user info as (user, password) when it has
/// one (`https://x-access-token:TOKEN@github.com/a/b.git`; a lone `https://TOKEN@host/...` is a
/// user with an empty password). Other URLs (`ssh://git@host/...`) are left as they are.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| matches!(*s, "http" | "https")) else {
        return (url.to_string(), None);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = authority[..at].split_once(':').unwrap_or((&authority[..at], ""));
    (format!("{scheme}://{}", &rest[at + 1..]), Some((user.to_string(), password.to_string())))
}

/// The values of a clone URL that are secret, to mask in build logs: the password, or the user
/// when it has none (a token given as the user).
pub fn url_secrets(url: &str) -> Vec<String> {
    match split_credentials(url).1 {
        Some((_, password)) if !password.is_empty() => vec![password],
        Some((user, _)) if !user.is_empty() => vec![user],
        _ => Vec::new(),
    }
}

/// The URL without credentials (`https://user:token@host/x` -> `https://***@host/x`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact_url("https://x:tok@github.com/a/b.git"), "https://***@github.com/a/b.git");
        assert_eq!(redact_url("file:///tmp/a/b.git"), "file:///tmp/a/b.git");
    }

    #[test]
    fn credentials_are_split_from_the_url() {
        let (clean, credentials) = split_credentials("https://x-access-token:tok@github.com/a/b.git");
        assert_eq!(clean, "https://github.com/a/b.git");
        assert_eq!(credentials, Some(("x-access-token".into(), "tok".into())));
        assert_eq!(url_secrets("https://x-access-token:tok@github.com/a/b.git"), ["tok"]);
        assert_eq!(url_secrets("https://ghp_abc@github.com/a/b.git"), ["ghp_abc"]);
        assert_eq!(split_credentials("https://github.com/a@b.git"), ("https://github.com/a@b.git".into(), None));
        assert_eq!(split_credentials("ssh://git@host/a/b.git").1, None);
        assert_eq!(split_credentials("file:///tmp/a/b.git").1, None);
        assert!(url_secrets("https://github.com/{repo}.git").is_empty());
    }
}
