//! A build's working copy of exactly the pushed commit, at the cost of what changed: its objects
//! come from the repository's mirror (only new ones fetched, then hard-linked into the checkout),
//! or, for the first build of a repository under `[git] depth = N`, from a shallow fetch of the
//! commit while the mirror is filled in the background. Its files are written into the working
//! copy of an earlier build of the branch when one is given, reusing the files already there.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use git2::{Oid, Repository};

use super::mirror::{Locked, Mirror, NotOnBranch};
use super::{Fetched, fetch, redact_url, remote_ref, split_credentials};
use crate::model::{Branch, CommitSha};

/// The commit a build wants, and where it comes from.
#[derive(Clone)]
pub struct Wanted {
    pub url: String,
    pub branch: Branch,
    pub commit: CommitSha,
    /// The repository's mirror (`data_dir/mirrors/<org>/<repo>.git`).
    pub mirror: PathBuf,
    /// `[git] depth`: 0 for the full history, N for at least the last N commits.
    pub depth: u32,
}

/// How a checkout got its objects, for the build log.
#[derive(Debug, PartialEq, Eq)]
pub enum Via {
    /// From the mirror, after fetching what was new into it (rebuilt first when it was damaged).
    Mirror { fetched: Fetched, rebuilt: bool },
    /// A shallow fetch of the commit itself (the mirror was not filled yet).
    Shallow { fetched: Fetched },
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Mirror { fetched, rebuilt: false } if fetched.objects == 0 => {
                write!(f, "from the mirror, which had the commit already")
            }
            Via::Mirror { fetched, rebuilt: false } => write!(f, "from the mirror after fetching {fetched} into it"),
            Via::Mirror { fetched, rebuilt: true } => {
                write!(f, "from the mirror, rebuilt because it was damaged, after fetching {fetched}")
            }
            Via::Shallow { fetched } => write!(f, "by a shallow fetch of {fetched} (the mirror is filled meanwhile)"),
        }
    }
}

/// Makes `dest` a repository with `wanted.commit` checked out, detached. Its `.git` holds the
/// history (all of it, or at least `depth` commits), the tags, and an `origin` without
/// credentials, so scripts may run git commands such as `git describe`. `dest` may hold the
/// working copy of an earlier, finished build: its `.git` is made anew, its files are rewritten
/// (see [`write_tree`]).
pub fn check_out(wanted: &Wanted, dest: &Path) -> anyhow::Result<Via> {
    remove(&dest.join(".git"))?;
    let mirror = Mirror { path: &wanted.mirror, url: &wanted.url };
    if wanted.depth > 0 && !mirror.is_filled() {
        let fetched = shallow(wanted, dest)?;
        let filling = wanted.clone();
        std::thread::spawn(move || fill_mirror(&filling));
        return Ok(Via::Shallow { fetched });
    }
    let attempt = |rebuild: bool| -> anyhow::Result<Via> {
        let (via, oid) = mirror.locked(true, |locked| share_mirror(locked, wanted, dest, rebuild)).expect("waited")?;
        finish(&Repository::open(dest)?, &wanted.url, oid)?;
        Ok(via)
    };
    match attempt(false) {
        Ok(via) => Ok(via),
        Err(error) if error.is::<NotOnBranch>() || is_out_of_space(&error) => Err(error),
        Err(error) => {
            tracing::warn!(mirror = %wanted.mirror.display(), "rebuilding the mirror: {error:#}");
            remove(dest)?;
            attempt(true)
        }
    }
}

/// Fetches what is new into the mirror (or makes it anew) and makes `dest` a repository sharing
/// its objects and refs; returns the commit to check out. Once shared, the objects are the
/// checkout's own files: a later rebuild of the mirror does not touch them.
fn share_mirror(locked: &Locked<'_>, wanted: &Wanted, dest: &Path, rebuild: bool) -> anyhow::Result<(Via, Oid)> {
    let (fetched, oid) = match rebuild {
        false => locked.fetch(&wanted.branch, Some(&wanted.commit))?,
        true => locked.rebuild(&wanted.branch, Some(&wanted.commit))?,
    };
    Repository::init(dest).with_context(|| format!("cannot create a repository in {}", dest.display()))?;
    share_objects(&locked.path().join("objects"), &dest.join(".git/objects"))?;
    copy_refs(&Repository::open_bare(locked.path())?, &wanted.branch, &dest.join(".git"))?;
    Ok((Via::Mirror { fetched, rebuilt: rebuild }, oid))
}

/// Fetches the commit with `depth` commits of history straight into a new repository at `dest`:
/// the branch first; the commit by itself when the branch has moved past it; the whole branch
/// when the remote serves neither shallowly.
fn shallow(wanted: &Wanted, dest: &Path) -> anyhow::Result<Fetched> {
    let repo = Repository::init(dest).with_context(|| format!("cannot create a repository in {}", dest.display()))?;
    let oid = Oid::from_str(wanted.commit.as_str())?;
    let depth = i32::try_from(wanted.depth).unwrap_or(i32::MAX);
    let refspec = format!("+{}:refs/remotes/origin/{}", remote_ref(&wanted.branch), wanted.branch);
    let mut fetched = match fetch(&repo, &wanted.url, &[refspec.as_str()], depth) {
        // libgit2 fetches file:// URLs whole.
        Err(error) if format!("{error:#}").contains("shallow fetch is not supported") => {
            fetch(&repo, &wanted.url, &[refspec.as_str()], 0)?
        }
        result => result?,
    };
    for (refspec, depth) in [(wanted.commit.as_str(), depth), (refspec.as_str(), 0)] {
        if repo.find_commit(oid).is_ok() {
            break;
        }
        if let Ok(more) = fetch(&repo, &wanted.url, &[refspec], depth) {
            fetched += more;
        }
    }
    if repo.find_commit(oid).is_err() {
        let url = redact_url(&wanted.url);
        return Err(NotOnBranch(format!(
            "commit {oid} is not on branch {} of {url} (force-pushed away?)",
            wanted.branch
        ))
        .into());
    }
    finish(&repo, &wanted.url, oid)?;
    Ok(fetched)
}

/// Fills the mirror after a shallow checkout, so that the next build of the repository fetches
/// only what is new. Skipped when another fill (or a build) holds the mirror.
fn fill_mirror(wanted: &Wanted) {
    let mirror = Mirror { path: &wanted.mirror, url: &wanted.url };
    let filled = mirror.locked(false, |locked| match locked.fetch(&wanted.branch, None) {
        Ok(_) => Ok(()),
        Err(_) => locked.rebuild(&wanted.branch, None).map(|_| ()),
    });
    if let Some(Err(error)) = filled {
        tracing::warn!(mirror = %wanted.mirror.display(), "cannot fill the mirror: {error:#}");
    }
}

/// Gives the checkout the mirror's objects: hard links (packs are never rewritten, so sharing
/// them is safe), or copies where the two are on different file systems.
fn share_objects(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `info` (alternates, packs list) is the mirror's own; libgit2 writes `pack_git2_*` and
        // `tmp_*` files while it fetches.
        if name == "info" || name.starts_with("pack_git2_") || name.starts_with("tmp") {
            continue;
        }
        let target = to.join(&*name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            share_objects(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target).with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Writes the mirror's tags and the branch's tracking ref into the checkout's `packed-refs`.
fn copy_refs(mirror: &Repository, branch: &Branch, git_dir: &Path) -> anyhow::Result<()> {
    let tracking = format!("refs/remotes/origin/{branch}");
    let mut refs = Vec::new();
    for reference in mirror.references_glob("refs/tags/*")? {
        let reference = reference?;
        if let (Ok(name), Some(oid)) = (reference.name(), reference.target()) {
            refs.push(format!("{oid} {name}\n"));
        }
    }
    if let Ok(oid) = mirror.refname_to_id(&tracking) {
        refs.push(format!("{oid} {tracking}\n"));
    }
    refs.sort_by(|a, b| a[41..].cmp(&b[41..]));
    std::fs::write(git_dir.join("packed-refs"), refs.concat())?;
    Ok(())
}

/// Points the checkout's `origin` at the URL without credentials and checks `oid` out, detached:
/// its files written, and an index of them so that `git status` need not read them again.
fn finish(repo: &Repository, url: &str, oid: Oid) -> anyhow::Result<()> {
    // The checkout is mounted into the build container: its origin never holds credentials.
    repo.remote("origin", &split_credentials(url).0)?;
    repo.set_head_detached(oid)?;
    let tree = repo.find_commit(oid)?.tree()?;
    let workdir = repo.workdir().context("the checkout has a working directory")?.to_path_buf();
    write_tree(repo, &tree, &workdir)?;
    let mut index = repo.index()?;
    index.read_tree(&tree)?;
    let entries: Vec<git2::IndexEntry> = index.iter().collect();
    for mut entry in entries {
        let path = workdir.join(std::ffi::OsStr::from_bytes(&entry.path));
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        // The index keeps 32 bits of each, as git does.
        entry.ctime = git2::IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32);
        entry.mtime = git2::IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32);
        (entry.dev, entry.ino, entry.uid, entry.gid) = (meta.dev() as u32, meta.ino() as u32, meta.uid(), meta.gid());
        entry.file_size = meta.size() as u32;
        index.add(&entry)?;
    }
    index.write()?;
    Ok(())
}

/// Writes the files of `tree` into `dir`, which may hold the files of an earlier checkout: a
/// regular file (with no other link) already at a path is kept, and written again in place when
/// its content differs, rather than made anew (creating files is most of a checkout's cost on
/// some file systems); anything else there that is not the commit's (other files, links,
/// directories) is removed. Files are written as committed: `.gitattributes` conversions are not
/// applied.
fn write_tree(repo: &Repository, tree: &git2::Tree<'_>, dir: &Path) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut bad_path = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        let unsafe_name = matches!(name.as_str(), "" | "." | "..") || name.eq_ignore_ascii_case(".git");
        if unsafe_name || name.contains(['/', '\0']) {
            bad_path = Some(format!("{root}{name}"));
            return git2::TreeWalkResult::Abort;
        }
        entries.push((PathBuf::from(format!("{root}{name}")), entry.filemode(), entry.id()));
        git2::TreeWalkResult::Ok
    })
    .or_else(|e| if bad_path.is_some() { Ok(()) } else { Err(e) })?;
    if let Some(path) = bad_path {
        anyhow::bail!("the commit has a path that is not checked out, for safety: {path:?}");
    }
    let dirs: HashSet<&Path> = entries
        .iter()
        .filter(|(_, mode, _)| matches!(*mode, 0o040000 | 0o160000))
        .map(|(path, ..)| path.as_path())
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut reusable = HashSet::new();
    survey(dir, Path::new(""), &dirs, &mut reusable)?;
    for (path, mode, id) in &entries {
        let target = dir.join(path);
        match mode {
            0o040000 | 0o160000 => {
                match std::fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        reusable.remove(path);
                        std::fs::remove_file(&target)?;
                        std::fs::create_dir(&target)?;
                    }
                    Err(_) => std::fs::create_dir(&target)?,
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
            }
            0o120000 => {
                if reusable.remove(path) {
                    std::fs::remove_file(&target)?;
                }
                let blob = repo.find_blob(*id)?;
                std::os::unix::fs::symlink(Path::new(std::str::from_utf8(blob.content())?), &target)?;
            }
            _ => {
                let blob = repo.find_blob(*id)?;
                let file = match reusable.remove(path) {
                    true => rewrite(&target, blob.content())?,
                    false => {
                        let mut file = std::fs::File::create_new(&target)?;
                        file.write_all(blob.content())?;
                        file
                    }
                };
                let executable = *mode == 0o100755;
                file.set_permissions(std::fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }))?;
            }
        }
    }
    for path in reusable {
        std::fs::remove_file(dir.join(path))?;
    }
    Ok(())
}

/// Makes the file at `path` hold `content`: left alone when it does already, else overwritten and
/// cut to its length. Never truncated to nothing first: ext4 flushes a file emptied that way to
/// disk when it is closed (`auto_da_alloc`), which costs a write to disk per file.
fn rewrite(path: &Path, content: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Read, Seek};
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    if file.metadata()?.len() == content.len() as u64 {
        let mut now = Vec::with_capacity(content.len());
        file.read_to_end(&mut now)?;
        if now == content {
            return Ok(file);
        }
        file.rewind()?;
    }
    file.write_all(content)?;
    file.set_len(content.len() as u64)?;
    Ok(file)
}

/// Walks `root/at` (not `.git`, never following links): removes the directories that are not in
/// `dirs` and whatever is neither a directory nor a regular file with a single link; puts the
/// paths of the regular files left in `reusable`.
fn survey(root: &Path, at: &Path, dirs: &HashSet<&Path>, reusable: &mut HashSet<PathBuf>) -> anyhow::Result<()> {
    let here = root.join(at);
    for entry in std::fs::read_dir(&here).with_context(|| format!("cannot read {}", here.display()))? {
        let entry = entry?;
        let path = at.join(entry.file_name());
        if path == Path::new(".git") {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            match dirs.contains(path.as_path()) {
                true => survey(root, &path, dirs, reusable)?,
                false => std::fs::remove_dir_all(entry.path())?,
            }
        } else if kind.is_file() && entry.metadata()?.nlink() == 1 {
            reusable.insert(path);
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn remove(dest: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn is_out_of_space(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("No space left on device")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A repository at `dir/src` with `commits` commits on master (one file each) and a tag on the
    /// first; returns its file URL.
    fn repository(dir: &Path, commits: usize) -> String {
        let src = dir.join("src");
        git(dir, &["init", "-q", "-b", "master", src.to_str().unwrap()]);
        for n in 0..commits {
            std::fs::write(src.join(format!("file{n}")), format!("content {n}\n")).unwrap();
            git(&src, &["add", "."]);
            git(&src, &["commit", "-q", "-m", &format!("commit {n}")]);
            if n == 0 {
                git(&src, &["tag", "-a", "v1.0", "-m", "first"]);
            }
        }
        format!("file://{}", src.display())
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn wanted(dir: &Path, url: &str, depth: u32) -> Wanted {
        let head = git(&dir.join("src"), &["rev-parse", "HEAD"]);
        Wanted {
            url: url.to_string(),
            branch: Branch::parse("master").unwrap(),
            commit: CommitSha::parse(&head).unwrap(),
            mirror: dir.join("mirrors/o/r.git"),
            depth,
        }
    }

    #[test]
    fn a_second_checkout_fetches_only_what_is_new_and_keeps_history_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 30);
        let first = check_out(&wanted(dir.path(), &url, 0), &dir.path().join("b1")).unwrap();
        let Via::Mirror { fetched: first, rebuilt: false } = first else { panic!("{first:?}") };
        assert!(first.objects >= 90, "{first:?}");

        std::fs::write(dir.path().join("src/new"), "new\n").unwrap();
        git(&dir.path().join("src"), &["add", "."]);
        git(&dir.path().join("src"), &["commit", "-q", "-m", "one more"]);
        let want = wanted(dir.path(), &url, 0);
        let second = check_out(&want, &dir.path().join("b2")).unwrap();
        let Via::Mirror { fetched: second, rebuilt: false } = second else { panic!("{second:?}") };
        assert!(second.objects < 10, "only the new commit, its tree and blob, and little else: {second:?}");

        let checkout = dir.path().join("b2");
        assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), want.commit.as_str());
        assert_eq!(git(&checkout, &["rev-list", "--count", "HEAD"]), "31");
        assert_eq!(git(&checkout, &["describe", "--tags"]).split('-').next(), Some("v1.0"));
        assert_eq!(git(&checkout, &["status", "--porcelain"]), "", "a clean working tree");
        assert_eq!(std::fs::read_to_string(checkout.join("new")).unwrap(), "new\n");
        assert_eq!(git(&checkout, &["remote", "get-url", "origin"]), url);
    }

    #[test]
    fn a_checkout_into_an_earlier_working_copy_rewrites_it_to_exactly_the_commit() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 3);
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("dir/sub/deep"), "deep\n").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("file0", src.join("link")).unwrap();
        std::fs::write(src.join(".gitignore"), "*.o\n").unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", "more kinds of files"]);
        let dest = dir.path().join("work");
        check_out(&wanted(dir.path(), &url, 0), &dest).unwrap();
        let kept_inode = std::fs::metadata(dest.join("file1")).unwrap().ino();

        // What a build may leave: changed, added, ignored, linked and replaced files, and a .git
        // that would run a command for the next build's git.
        std::fs::write(dest.join("file0"), "changed by the build\n").unwrap();
        std::fs::write(dest.join("untracked"), "x").unwrap();
        std::fs::write(dest.join("output.o"), "x").unwrap();
        std::fs::create_dir_all(dest.join("junk/deeper")).unwrap();
        std::fs::hard_link(dest.join("file2"), dest.join("junk/file2-link")).unwrap();
        std::fs::remove_dir_all(dest.join("dir/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", dest.join("dir/sub")).unwrap();
        std::fs::set_permissions(dest.join("run.sh"), std::fs::Permissions::from_mode(0o4777)).unwrap();
        std::fs::remove_file(dest.join("link")).unwrap();
        std::fs::write(dest.join("link"), "no longer a link").unwrap();
        std::fs::write(dest.join(".git/config"), "[core]\n\tfsmonitor = touch /tmp/pwned\n").unwrap();

        std::fs::write(src.join("file1"), "new content\n").unwrap();
        git(&src, &["rm", "-q", "file2"]);
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", "the next push"]);
        let next = wanted(dir.path(), &url, 0);
        check_out(&next, &dest).unwrap();

        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), next.commit.as_str());
        assert_eq!(git(&dest, &["status", "--porcelain", "--ignored"]), "", "exactly the commit, nothing else");
        assert_eq!(std::fs::read_to_string(dest.join("file0")).unwrap(), "content 0\n");
        assert_eq!(std::fs::read_to_string(dest.join("file1")).unwrap(), "new content\n");
        assert_eq!(std::fs::metadata(dest.join("file1")).unwrap().ino(), kept_inode, "written in place");
        assert!(!dest.join("file2").exists() && !dest.join("junk").exists() && !dest.join("output.o").exists());
        assert_eq!(std::fs::read_to_string(dest.join("dir/sub/deep")).unwrap(), "deep\n");
        assert!(std::fs::symlink_metadata(dest.join("dir/sub")).unwrap().is_dir());
        assert_eq!(std::fs::metadata(dest.join("run.sh")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("file0"));
        assert!(!std::fs::read_to_string(dest.join(".git/config")).unwrap().contains("fsmonitor"));
        assert_eq!(git(&dest, &["describe", "--tags"]).split('-').next(), Some("v1.0"));
    }

    #[test]
    fn a_damaged_mirror_is_rebuilt_and_the_checkout_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 5);
        let want = wanted(dir.path(), &url, 0);
        check_out(&want, &dir.path().join("b1")).unwrap();
        // Garbage over every pack (new files: the first checkout's hard links keep the old ones).
        let packs = want.mirror.join("objects/pack");
        for entry in std::fs::read_dir(&packs).unwrap() {
            let path = entry.unwrap().path();
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"not a pack").unwrap();
        }
        let via = check_out(&want, &dir.path().join("b2")).unwrap();
        assert!(matches!(via, Via::Mirror { rebuilt: true, .. }), "{via:?}");
        assert_eq!(git(&dir.path().join("b2"), &["rev-parse", "HEAD"]), want.commit.as_str());
        assert!(!dir.path().join("mirrors/o/r.git.new").exists() && !dir.path().join("mirrors/o/r.git.old").exists());
        // A mirror that is not a repository at all is made again too.
        std::fs::remove_dir_all(&want.mirror).unwrap();
        std::fs::write(&want.mirror, b"a file where the mirror was").unwrap();
        check_out(&want, &dir.path().join("b3")).unwrap();
        assert_eq!(git(&dir.path().join("b3"), &["rev-parse", "HEAD"]), want.commit.as_str());
    }

    #[test]
    fn a_commit_the_remote_does_not_have_fails_without_rebuilding_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 2);
        let mut want = wanted(dir.path(), &url, 0);
        check_out(&want, &dir.path().join("b1")).unwrap();
        let marker = want.mirror.join("kept");
        std::fs::write(&marker, b"").unwrap();
        want.commit = CommitSha::parse(&"ab".repeat(20)).unwrap();
        let error = check_out(&want, &dir.path().join("b2")).unwrap_err();
        assert!(format!("{error:#}").contains("is not on branch master"), "{error:#}");
        assert!(marker.exists(), "the mirror was kept");
    }

    #[test]
    fn concurrent_checkouts_of_one_repository_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 10);
        let want = wanted(dir.path(), &url, 0);
        std::thread::scope(|scope| {
            let checkouts: Vec<_> = (0..4)
                .map(|n| {
                    let (want, dest) = (&want, dir.path().join(format!("b{n}")));
                    scope.spawn(move || check_out(want, &dest).map(|_| dest))
                })
                .collect();
            for checkout in checkouts {
                let dest = checkout.join().unwrap().unwrap();
                assert_eq!(git(&dest, &["rev-parse", "HEAD"]), want.commit.as_str());
            }
        });
    }

    #[test]
    fn with_a_depth_the_first_checkout_does_not_wait_for_the_mirror_and_fills_it_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let url = repository(dir.path(), 20);
        let want = wanted(dir.path(), &url, 1);
        let first = check_out(&want, &dir.path().join("b1")).unwrap();
        assert!(matches!(first, Via::Shallow { .. }), "{first:?}");
        let checkout = dir.path().join("b1");
        assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), want.commit.as_str());
        // libgit2 fetches file:// URLs whole; tests/checkout.rs sees a real shallow fetch over HTTP.
        let mirror = Mirror { path: &want.mirror, url: &url };
        for _ in 0..200 {
            if mirror.is_filled() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let second = check_out(&want, &dir.path().join("b2")).unwrap();
        assert!(matches!(second, Via::Mirror { rebuilt: false, .. }), "{second:?}");
        assert_eq!(git(&dir.path().join("b2"), &["rev-list", "--count", "HEAD"]), "20");
    }
}
