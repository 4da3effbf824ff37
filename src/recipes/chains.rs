//! Image chains: a build script may commit its container as an image (`commit`), another may start
//! from that image (`from: org/repo@branch`), and a producer may rebuild its dependents. Resolved
//! and checked (producers exist, no cycles) when recipes load.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Recipe, RecipeProblem, RecipeSet};
use crate::model::{Branch, RepoName};

/// Prefix of the images autobuilder names itself (`commit: true`).
pub const IMAGE_PREFIX: &str = "autobuilder/";

/// Where an image comes from: the recipe of `repository` at `branch` that commits one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageSource {
    pub repository: RepoName,
    pub branch: Branch,
}

impl ImageSource {
    /// Parses `org/repo@branch`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (repo, branch) =
            text.split_once('@').ok_or_else(|| format!("from {text:?} must look like org/repo@branch"))?;
        Ok(Self {
            repository: RepoName::parse(repo).map_err(|e| e.to_string())?,
            branch: Branch::parse(branch).map_err(|e| e.to_string())?,
        })
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repository, self.branch)
    }
}

/// An extra file of the artifact directory published on its own: `<name>-<sha10><ext>` and the
/// moving `<name><ext>`, `name` holding `{org}`, `{repo}`, `{branch}` as it likes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub file: String,
    pub name: String,
}

impl Output {
    /// The name with its placeholders filled in (every `/` of a branch becomes `-`).
    pub fn name_for(&self, repo: &RepoName, branch: &Branch) -> String {
        self.name
            .replace("{org}", repo.org())
            .replace("{repo}", repo.name())
            .replace("{branch}", &branch.as_str().replace('/', "-"))
    }
}

/// The image namespace of a project: `autobuilder/<project>/` in Docker's lower case (the
/// configuration refuses two projects that would share one).
pub fn project_namespace(project: &str) -> String {
    let clean = clean_part(project);
    format!("{IMAGE_PREFIX}{}/", if clean.is_empty() { "project" } else { &clean })
}

/// The image repository a `commit: true` script of `repo` commits to in `project`:
/// `autobuilder/<project>/<org>-<repo>`. No other name can be committed to.
pub fn project_image(project: &str, repo: &RepoName) -> String {
    format!("{}{}-{}", project_namespace(project), clean_part(repo.org()), clean_part(repo.name()))
}

/// Lower case, every character Docker does not take in a name as `-`, no `-` at the ends.
fn clean_part(part: &str) -> String {
    let lower: String =
        part.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    lower.trim_matches('-').to_string()
}

/// Docker's longest tag.
pub const MAX_TAG: usize = 128;

/// The tag of a branch's newest image (`feature/x` -> `feature-x`; characters a tag cannot hold
/// become `-`, cut at Docker's 128). Two branches with one tag are refused at load.
pub fn branch_tag(branch: &Branch) -> String {
    branch
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' })
        .take(MAX_TAG)
        .collect()
}

/// The tag of the image of one commit of a branch: `<branch tag>-<sha10>` (within 128).
pub fn commit_tag(branch: &Branch, sha: &crate::model::CommitSha) -> String {
    let branch: String = branch_tag(branch).chars().take(MAX_TAG - 11).collect();
    format!("{branch}-{}", sha.short())
}

/// The registry host an image reference names explicitly (`host:5000/x`, `ghcr.io/x`,
/// `localhost/x`), or None for Docker Hub's short names (`ubuntu:16.04`, `org/image`).
pub fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

/// Whether a recipe of `project` may start from `image`: an explicit registry must be in
/// `[docker] allowed_registries`, and an `autobuilder/` image must be this project's own or one of
/// a project listed in its `images_from`.
pub fn check_baseimage(config: &crate::config::Config, project: &str, image: &str) -> Result<(), String> {
    if let Some(host) = registry_of(image)
        && !config.docker.allowed_registries.iter().any(|allowed| allowed == host)
        && !is_docker_hub(host)
    {
        return Err(format!(
            "baseimage {image} is on registry {host}, which is not in [docker] allowed_registries (autobuilder \
             never pulls from it: docker pull or docker load the image under a local name, or ask the operator to \
             allow {host})"
        ));
    }
    let local = strip_docker_hub(image);
    if !local.starts_with(IMAGE_PREFIX) || local.starts_with(&project_namespace(project)) {
        return Ok(());
    }
    let allowed = config.projects.get(project).map(|p| p.images_from.as_slice()).unwrap_or_default();
    if allowed.iter().any(|other| local.starts_with(&project_namespace(other))) {
        return Ok(());
    }
    Err(format!(
        "baseimage {image} is not an image of project {project} (its own are under {}): another project's images \
         need [projects.{project}] images_from = [\"<project>\"] in the configuration",
        project_namespace(project)
    ))
}

/// The registry an image is pulled from, as `[docker] allowed_registries` names it: `docker.io`
/// for a name without a host and for every name of Docker Hub's hosts.
pub fn pulled_from(image: &str) -> &str {
    match registry_of(image) {
        Some(host) if !is_docker_hub(host) => host,
        _ => "docker.io",
    }
}

fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// `docker.io/library/x` and `docker.io/x` are `x` on the host: the name the checks look at.
fn strip_docker_hub(image: &str) -> &str {
    let image = match registry_of(image) {
        Some(host) if is_docker_hub(host) => &image[host.len() + 1..],
        _ => image,
    };
    image.strip_prefix("library/").unwrap_or(image)
}

/// Points every `from` at its producer's image, refusing recipes whose producer is missing or
/// whose chain of `from`s loops; repeats until what is left is consistent.
pub fn resolve(set: &mut RecipeSet) {
    refuse_shared_images(set);
    loop {
        let producers: BTreeMap<ImageSource, String> = set
            .recipes
            .values()
            .filter_map(|recipe| {
                let image = recipe.scripts.iter().find_map(|s| s.commit.clone())?;
                Some((ImageSource { repository: recipe.repository.clone(), branch: recipe.branch.clone() }, image))
            })
            .collect();
        let mut refused: Vec<(String, String)> = Vec::new();
        for recipe in set.recipes.values() {
            for script in &recipe.scripts {
                if let Some(from) = &script.from
                    && !producers.contains_key(from)
                {
                    let why = format!("`{}`: from {from}: no recipe of {from} commits an image", script.script);
                    refused.push((recipe.file.clone(), why));
                }
            }
        }
        for cycle in cycles(set) {
            let path = cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> ");
            for node in &cycle[..cycle.len() - 1] {
                if let Some(recipe) = set.recipes.get(&(node.repository.clone(), node.branch.clone())) {
                    refused.push((recipe.file.clone(), format!("from makes a cycle: {path}")));
                }
            }
        }
        if refused.is_empty() {
            for recipe in set.recipes.values_mut() {
                for script in &mut recipe.scripts {
                    if let Some(from) = &script.from {
                        script.baseimage = Some(format!("{}:{}", producers[from], branch_tag(&from.branch)));
                    }
                }
            }
            return;
        }
        let files: BTreeSet<String> = refused.iter().map(|(file, _)| file.clone()).collect();
        set.recipes.retain(|_, recipe| !files.contains(&recipe.file));
        let mut seen = BTreeSet::new();
        for (file, reason) in refused {
            if seen.insert(file.clone()) {
                set.problems.push(RecipeProblem { file, reason });
            }
        }
        set.problems.sort_by(|a, b| a.file.cmp(&b.file));
    }
}

/// Refuses the recipes that would commit to the same `image:tag` as another one (`a/b_c` and
/// `a/b-c`, or branches `x/y` and `x-y`), naming each other.
fn refuse_shared_images(set: &mut RecipeSet) {
    let mut makers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for recipe in set.recipes.values() {
        if let Some(image) = recipe.scripts.iter().find_map(|s| s.commit.clone()) {
            makers.entry(format!("{image}:{}", branch_tag(&recipe.branch))).or_default().push(recipe.file.clone());
        }
    }
    let mut refused = Vec::new();
    for (image, files) in makers.into_iter().filter(|(_, files)| files.len() > 1) {
        for file in &files {
            let others: Vec<&str> = files.iter().filter(|f| *f != file).map(String::as_str).collect();
            refused.push((file.clone(), format!("commits the image {image}, as {} does", others.join(", "))));
        }
    }
    set.recipes.retain(|_, recipe| !refused.iter().any(|(file, _)| *file == recipe.file));
    for (file, reason) in refused {
        set.problems.push(RecipeProblem { file, reason });
    }
    set.problems.sort_by(|a, b| a.file.cmp(&b.file));
}

/// Every loop of `from`s, each as the path that closes it (first node repeated at the end).
fn cycles(set: &RecipeSet) -> Vec<Vec<ImageSource>> {
    let node = |recipe: &Recipe| ImageSource { repository: recipe.repository.clone(), branch: recipe.branch.clone() };
    let edges: BTreeMap<ImageSource, Vec<ImageSource>> = set
        .recipes
        .values()
        .map(|recipe| (node(recipe), recipe.scripts.iter().filter_map(|s| s.from.clone()).collect()))
        .collect();
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        walk(&edges, &mut path, &mut done, &mut found);
    }
    found
}

fn walk(
    edges: &BTreeMap<ImageSource, Vec<ImageSource>>,
    path: &mut Vec<ImageSource>,
    done: &mut BTreeSet<ImageSource>,
    found: &mut Vec<Vec<ImageSource>>,
) {
    let here = path.last().expect("never empty").clone();
    if done.contains(&here) {
        return;
    }
    for next in edges.get(&here).into_iter().flatten() {
        if let Some(at) = path.iter().position(|n| n == next) {
            let mut cycle = path[at..].to_vec();
            cycle.push(next.clone());
            found.push(cycle);
        } else {
            path.push(next.clone());
            walk(edges, path, done, found);
            path.pop();
        }
    }
    done.insert(here);
}

/// The recipes (and their build scripts) that start from what `producer` commits.
pub fn dependents<'a>(set: &'a RecipeSet, producer: &ImageSource) -> Vec<&'a Recipe> {
    set.recipes.values().filter(|recipe| recipe.scripts.iter().any(|s| s.from.as_ref() == Some(producer))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> RecipeSet {
        let mut set = RecipeSet::parse("demo", files.iter().map(|(p, c)| (p.to_string(), c.as_bytes())));
        resolve(&mut set);
        set
    }

    const PRODUCER: &str = "buildscripts: [k.sh]\nk.sh: {artifact: k.tar.gz, commit: true, rebuild_dependents: true}\n";
    const DEPENDENT: &str = "buildscripts: [d.sh]\nd.sh: {artifact: d.tar.gz, from: org/initramfs@master}\n";

    #[test]
    fn from_points_at_the_producers_image() {
        let set = load(&[("org/initramfs/master.yaml", PRODUCER), ("org/core/master.yaml", DEPENDENT)]);
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        let core = &set.recipes.values().find(|r| r.repository.as_str() == "org/core").unwrap().scripts[0];
        assert_eq!(core.baseimage.as_deref(), Some("autobuilder/demo/org-initramfs:master"));
        let producer = ImageSource::parse("org/initramfs@master").unwrap();
        assert_eq!(dependents(&set, &producer).len(), 1);
    }

    #[test]
    fn a_missing_producer_or_a_cycle_is_refused() {
        let set = load(&[("org/core/master.yaml", DEPENDENT)]);
        assert!(set.problems[0].reason.contains("no recipe of org/initramfs@master commits an image"));
        let a = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, commit: true, from: org/b@master}\n";
        let b = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, commit: true, from: org/a@master}\n";
        let set = load(&[("org/a/master.yaml", a), ("org/b/master.yaml", b), ("org/initramfs/master.yaml", PRODUCER)]);
        assert_eq!(set.recipes.len(), 1, "only the producer outside the cycle loads");
        assert!(set.problems.iter().all(|p| p.reason.contains("cycle")), "{:?}", set.problems);
        assert!(set.problems[0].reason.contains("org/a@master -> org/b@master -> org/a@master"), "{:?}", set.problems);
    }

    #[test]
    fn docker_hub_has_one_name_in_allowed_registries() {
        for image in ["ubuntu:22.04", "docker.io/library/ubuntu", "index.docker.io/x/y", "registry-1.docker.io/x/y"] {
            assert_eq!(pulled_from(image), "docker.io", "{image}");
        }
        assert_eq!(pulled_from("ghcr.io/x/y:1"), "ghcr.io");
        assert_eq!(pulled_from("localhost:5000/x"), "localhost:5000");
    }

    #[test]
    fn image_names() {
        assert_eq!(
            project_image("My_Project", &RepoName::parse("ThreeFold_Tech/0-initramfs").unwrap()),
            "autobuilder/my-project/threefold-tech-0-initramfs"
        );
        assert_eq!(branch_tag(&Branch::parse("feature/x#1").unwrap()), "feature-x-1");
        let long = Branch::parse(&"b".repeat(200)).unwrap();
        let sha = crate::model::CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        assert_eq!(branch_tag(&long).len(), MAX_TAG);
        assert_eq!(commit_tag(&long, &sha).len(), MAX_TAG);
        assert!(commit_tag(&long, &sha).ends_with("-0123456789"));
        let output = Output { file: "vmlinuz.efi".into(), name: "zero-os-{branch}-generic".into() };
        assert_eq!(
            output.name_for(&RepoName::parse("o/r").unwrap(), &Branch::parse("dev/x").unwrap()),
            "zero-os-dev-x-generic"
        );
    }

    #[test]
    fn a_named_commit_and_a_shared_image_are_refused() {
        let named = "buildscripts: [k.sh]\nk.sh: {artifact: k.tar.gz, commit: redteam/busybox}\n";
        let set = load(&[("org/a/1.yaml", named)]);
        assert!(set.problems[0].reason.contains("commit takes true or false"), "{:?}", set.problems);
        let set = load(&[("org/b_c/master.yaml", PRODUCER), ("org/b-c/master.yaml", PRODUCER)]);
        assert!(set.recipes.is_empty());
        assert!(set.problems[0].reason.contains("autobuilder/demo/org-b-c:master"), "{:?}", set.problems);
        assert!(set.problems[0].reason.contains("org/b_c/master.yaml"), "{:?}", set.problems);
    }

    #[test]
    fn baseimages_of_other_projects_and_registries() {
        let config = crate::config::Config::from_toml_and_env(
            "[docker]\nallowed_registries = [\"ghcr.io\"]\n[projects.demo]\nrecipes = \"o/r\"\nwebhook_secret = \"s\"\n\
             images_from = [\"base\"]\n[projects.base]\nrecipes = \"o/r\"\nwebhook_secret = \"s\"\n",
            std::iter::empty(),
        )
        .unwrap();
        for ok in ["ubuntu:16.04", "autobuilder/demo/o-r:master", "autobuilder/base/o-r:master", "ghcr.io/x/y:1"] {
            assert_eq!(check_baseimage(&config, "demo", ok), Ok(()), "{ok}");
        }
        let err = check_baseimage(&config, "base", "docker.io/autobuilder/demo/o-r:master").unwrap_err();
        assert!(err.contains("images_from"), "{err}");
        let err = check_baseimage(&config, "demo", "registry.invalid.example:5000/x").unwrap_err();
        assert!(err.contains("allowed_registries"), "{err}");
        assert_eq!(registry_of("localhost/x"), Some("localhost"));
        assert_eq!(registry_of("org/x"), None);
    }
}
