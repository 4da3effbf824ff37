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

/// The image repository a `commit: true` script of `repo` commits to (Docker wants lower case).
pub fn default_image(repo: &RepoName) -> String {
    let clean = |part: &str| {
        let lower: String =
            part.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        lower.trim_matches('-').to_string()
    };
    format!("{IMAGE_PREFIX}{}-{}", clean(repo.org()), clean(repo.name()))
}

/// The tag of a branch's newest image (`feature/x` -> `feature-x`).
pub fn branch_tag(branch: &Branch) -> String {
    branch.as_str().replace('/', "-").chars().take(128).collect()
}

/// Checks an image repository name given to `commit` (lower case, Docker's characters).
pub fn check_image_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.contains(':')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c))
        && name.split('/').all(|part| !part.is_empty() && !part.starts_with(['.', '-', '_']));
    if ok { Ok(()) } else { Err(format!("commit {name:?} is not an image name (lower case, no tag)")) }
}

/// Points every `from` at its producer's image, refusing recipes whose producer is missing or
/// whose chain of `from`s loops; repeats until what is left is consistent.
pub fn resolve(set: &mut RecipeSet) {
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
        let mut set = RecipeSet::parse(files.iter().map(|(p, c)| (p.to_string(), c.as_bytes())));
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
        assert_eq!(core.baseimage.as_deref(), Some("autobuilder/org-initramfs:master"));
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
    fn image_names() {
        assert_eq!(
            default_image(&RepoName::parse("ThreeFold_Tech/0-initramfs").unwrap()),
            "autobuilder/threefold-tech-0-initramfs"
        );
        assert_eq!(branch_tag(&Branch::parse("feature/x").unwrap()), "feature-x");
        assert!(check_image_name("myorg/kernel").is_ok());
        for bad in ["Upper", "with:tag", "", "/x", "a//b"] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
        let output = Output { file: "vmlinuz.efi".into(), name: "zero-os-{branch}-generic".into() };
        assert_eq!(
            output.name_for(&RepoName::parse("o/r").unwrap(), &Branch::parse("dev/x").unwrap()),
            "zero-os-dev-x-generic"
        );
    }
}
