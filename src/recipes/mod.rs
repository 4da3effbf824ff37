//! Recipes: the `<org>/<repo>/<branch>.yaml` files of a recipes repository, parsed and validated.
//!
//! A broken file is reported with its path and reason and skipped; every other file still loads.

pub mod chains;
pub mod names;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::model::{Branch, MIN_CPUS, MemorySize, RepoName};
use chains::{ImageSource, Output};

/// Recipe files larger than this are refused (a recipe is a few lines).
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;

/// How a build's artifact is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFormat {
    /// A `.tar.gz` that becomes a Zero-OS flist on the hub.
    #[default]
    Flist,
    /// Any file, published as it is.
    Binary,
}

/// Limits a recipe asks for one build script; unset ones take `[builds]` defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptLimits {
    pub timeout_minutes: Option<u64>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

/// One build script of a recipe, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildScript {
    /// Path of the script inside the built repository, e.g. `autobuild/build.sh`.
    pub script: String,
    /// Absolute directory inside the container where the script leaves the artifact.
    pub archives: String,
    /// File name of the artifact inside `archives`.
    pub artifact: String,
    /// Image the container starts from; `None` means the configured default.
    pub baseimage: Option<String>,
    /// Extra part of the artifact name, to tell several scripts' artifacts apart.
    pub tag: Option<String>,
    pub format: ArtifactFormat,
    #[serde(default)]
    pub limits: ScriptLimits,
    /// Image repository the container is committed to after a successful script (always
    /// `autobuilder/<project>/<org>-<repo>`, see `chains::project_image`).
    #[serde(default)]
    pub commit: Option<String>,
    /// Start from the image this recipe commits (its `baseimage` is set from it at load).
    #[serde(default)]
    pub from: Option<ImageSource>,
    /// After a successful build, rebuild the recipes that start `from` this one.
    #[serde(default)]
    pub rebuild_dependents: bool,
    /// Extra files of the artifact directory published on their own.
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// The recipes commit this script was loaded from (set at reload).
    #[serde(default)]
    pub recipes_commit: Option<String>,
    /// Labels a worker must have (`[worker] labels`) to run it: the build host it needs.
    #[serde(default)]
    pub runs_on: Vec<String>,
}

impl BuildScript {
    /// Whether a worker with `labels` may run this script: it has every label of `runs_on`.
    pub fn runs_on_labels(&self, labels: &[String]) -> bool {
        self.runs_on.iter().all(|wanted| labels.contains(wanted))
    }
}

/// The recipe of one branch of one repository: its build scripts, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub repository: RepoName,
    pub branch: Branch,
    /// The recipe file inside the recipes repository.
    pub file: String,
    pub scripts: Vec<BuildScript>,
}

/// A recipe file that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeProblem {
    pub file: String,
    pub reason: String,
}

/// Everything loaded from one commit of a recipes repository.
#[derive(Debug, Clone, Default)]
pub struct RecipeSet {
    pub recipes: BTreeMap<(RepoName, Branch), Recipe>,
    pub problems: Vec<RecipeProblem>,
}

impl RecipeSet {
    /// Parses every recipe file of `project` among `files` (path relative to the repository root,
    /// content). Files that are not `.yaml`/`.yml`, or that live under a hidden folder, are not recipes.
    pub fn parse<'a>(project: &str, files: impl IntoIterator<Item = (String, &'a [u8])>) -> Self {
        let mut set = RecipeSet::default();
        for (file, content) in files {
            if !is_recipe_path(&file) {
                continue;
            }
            match parse_file(project, &file, content) {
                Ok(recipe) => {
                    let key = (recipe.repository.clone(), recipe.branch.clone());
                    if let Some(other) = set.recipes.get(&key) {
                        set.problems.push(RecipeProblem {
                            file,
                            reason: format!("{} already declares {} branch {}", other.file, key.0, key.1),
                        });
                    } else {
                        set.recipes.insert(key, recipe);
                    }
                }
                Err(reasons) => {
                    set.problems.extend(reasons.into_iter().map(|reason| RecipeProblem { file: file.clone(), reason }))
                }
            }
        }
        set.problems.sort_by(|a, b| a.file.cmp(&b.file));
        set
    }

    /// Moves the recipes that `check` refuses (one of their scripts) to the problems.
    pub fn refuse(&mut self, check: impl Fn(&BuildScript) -> Result<(), String>) {
        let refused: Vec<_> = self
            .recipes
            .iter()
            .filter_map(|(key, recipe)| {
                recipe
                    .scripts
                    .iter()
                    .find_map(|s| check(s).err().map(|why| (key.clone(), format!("`{}`: {why}", s.script))))
            })
            .collect();
        for (key, reason) in refused {
            let recipe = self.recipes.remove(&key).expect("listed above");
            self.problems.push(RecipeProblem { file: recipe.file, reason });
        }
        self.problems.sort_by(|a, b| a.file.cmp(&b.file));
    }

    /// The recipe of `repo` at `branch`, matched exactly (`feature/x` is not `x`).
    pub fn get(&self, repo: &RepoName, branch: &Branch) -> Option<&Recipe> {
        self.recipes.get(&(repo.clone(), branch.clone()))
    }

    /// The repositories that have at least one recipe.
    pub fn repositories(&self) -> Vec<&RepoName> {
        let mut repos: Vec<&RepoName> = self.recipes.keys().map(|(repo, _)| repo).collect();
        repos.dedup();
        repos
    }

    /// Reads every file of a checkout on disk (for `autobuilder check`), skipping `.git`.
    pub fn parse_dir(project: &str, root: &Path) -> std::io::Result<Self> {
        let mut files = Vec::new();
        collect_files(root, root, &mut files)?;
        Ok(Self::parse(project, files.iter().map(|(path, content)| (path.clone(), content.as_slice()))))
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if file_type.is_dir() {
            collect_files(root, &path, out)?;
        } else if file_type.is_file() {
            let relative = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            if is_recipe_path(&relative) {
                // Read one byte past the limit, so that parse_file can refuse an oversized file.
                let mut content = Vec::new();
                std::fs::File::open(&path)?.take(MAX_RECIPE_BYTES as u64 + 1).read_to_end(&mut content)?;
                out.push((relative, content));
            }
        }
    }
    Ok(())
}

/// Whether a repository path is a recipe file: `.yaml`/`.yml`, not under a hidden folder.
pub fn is_recipe_path(path: &str) -> bool {
    (path.ends_with(".yaml") || path.ends_with(".yml")) && !path.split('/').any(|part| part.starts_with('.'))
}

/// The raw YAML shape: `buildscripts` plus one mapping per script path. Read key by key (not
/// with `#[serde(flatten)]`, which buffers), so that an error names the line where it is.
struct RawRecipe {
    buildscripts: Vec<String>,
    scripts: BTreeMap<String, RawScript>,
}

impl<'de> Deserialize<'de> for RawRecipe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = RawRecipe;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of `buildscripts` and the settings of each build script")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawRecipe, A::Error> {
                let (mut buildscripts, mut scripts) = (None, BTreeMap::new());
                while let Some(key) = map.next_key::<String>()? {
                    if key == "buildscripts" {
                        buildscripts = Some(map.next_value()?);
                    } else {
                        let settings = map.next_value()?;
                        scripts.insert(key, settings);
                    }
                }
                let buildscripts = buildscripts.ok_or_else(|| serde::de::Error::missing_field("buildscripts"))?;
                Ok(RawRecipe { buildscripts, scripts })
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    archives: Option<String>,
    artifact: Option<String>,
    baseimage: Option<String>,
    tag: Option<String>,
    format: Option<ArtifactFormat>,
    timeout_minutes: Option<u64>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<i64>,
    commit: Option<CommitSpec>,
    from: Option<String>,
    rebuild_dependents: Option<bool>,
    outputs: Option<Vec<Output>>,
    runs_on: Option<Vec<String>>,
}

/// `commit: true` (autobuilder names the image); `commit: <image name>` is refused with a reason.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommitSpec {
    Yes(bool),
    Named(String),
}

/// Parses and validates one recipe file of `project`; the error is a one-line reason.
pub fn parse_file(project: &str, file: &str, content: &[u8]) -> Result<Recipe, Vec<String>> {
    let (repository, branch) = target_of(file).map_err(|why| vec![why])?;
    if content.len() > MAX_RECIPE_BYTES {
        return Err(vec![format!("file is larger than {MAX_RECIPE_BYTES} bytes")]);
    }
    let text = std::str::from_utf8(content).map_err(|_| vec!["file is not UTF-8".to_string()])?;
    if text.trim().is_empty() {
        return Err(vec!["file is empty: it needs a `buildscripts` list".into()]);
    }
    let raw: RawRecipe = serde_saphyr::from_str(text).map_err(|e| vec![one_line(&e.to_string())])?;
    let mut problems = Vec::new();
    if raw.buildscripts.is_empty() {
        problems.push("`buildscripts` is empty: list at least one script".into());
    }
    for key in raw.scripts.keys().filter(|key| !raw.buildscripts.contains(key)) {
        problems.push(format!("`{key}` has settings but is not listed in `buildscripts`"));
    }
    let mut scripts = Vec::new();
    for (index, script) in raw.buildscripts.iter().enumerate() {
        if raw.buildscripts[..index].contains(script) {
            problems.push(format!("`{script}` is listed twice in `buildscripts`"));
            continue;
        }
        if let Err(why) = check_relative_path(script) {
            problems.push(format!("build script `{script}`: {why}"));
            continue;
        }
        let Some(settings) = raw.scripts.get(script) else {
            problems.push(format!("build script `{script}` has no settings: it needs at least `artifact`"));
            continue;
        };
        match validate_script(project, script, settings, &repository) {
            Ok(valid) => scripts.push(valid),
            Err(whys) => problems.extend(whys.into_iter().map(|why| format!("`{script}`: {why}"))),
        }
    }
    let mut names: BTreeMap<(Option<&str>, ArtifactFormat), &str> = BTreeMap::new();
    for script in &scripts {
        if let Some(other) = names.insert((script.tag.as_deref(), script.format), &script.script) {
            problems.push(format!(
                "`{other}` and `{}` would publish artifacts under the same name: give one of them a `tag`",
                script.script
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Recipe { repository, branch, file: file.to_string(), scripts })
}

/// Checks the settings of one build script; every problem found, each a one-line reason.
fn validate_script(
    project: &str,
    script: &str,
    raw: &RawScript,
    repository: &RepoName,
) -> Result<BuildScript, Vec<String>> {
    let mut problems = Vec::new();
    let mut keep = |result: Result<(), String>| problems.extend(result.err());
    let format = raw.format.unwrap_or_default();
    let artifact = raw.artifact.clone().unwrap_or_default();
    keep(check_artifact(raw.artifact.as_deref(), format));
    let archives = raw.archives.clone().unwrap_or_else(|| "/tmp/archives".into());
    keep(check_archives(&archives));
    if let Some(image) = &raw.baseimage
        && (image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        keep(Err(format!("baseimage {image:?} is not an image name")));
    }
    if let Some(tag) = &raw.tag
        && (tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        keep(Err(format!("tag {tag:?} may only hold letters, digits, '-', '_' and '.'")));
    }
    let limits = ScriptLimits {
        timeout_minutes: raw.timeout_minutes,
        memory: raw.memory.clone(),
        cpus: raw.cpus,
        pids: raw.pids,
    };
    keep(check_limits(&limits));
    let commit = match &raw.commit {
        None | Some(CommitSpec::Yes(false)) => None,
        Some(CommitSpec::Yes(true)) => Some(chains::project_image(project, repository)),
        Some(CommitSpec::Named(name)) => {
            keep(Err(format!(
                "commit takes true or false, not {name:?}: autobuilder names the image {} (a chosen name could \
                 overwrite any image)",
                chains::project_image(project, repository)
            )));
            None
        }
    };
    let from = match raw.from.as_deref().map(ImageSource::parse).transpose() {
        Ok(from) => from,
        Err(why) => {
            keep(Err(why));
            None
        }
    };
    if raw.from.is_some() && raw.baseimage.is_some() {
        keep(Err("`from` and `baseimage` both name the image to start from: keep one".into()));
    }
    let outputs = raw.outputs.clone().unwrap_or_default();
    for output in &outputs {
        keep(check_output(output, repository));
    }
    let runs_on = raw.runs_on.clone().unwrap_or_default();
    for label in &runs_on {
        keep(crate::config::check_label(label).map_err(|why| format!("runs_on: {why}")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(BuildScript {
        script: script.to_string(),
        archives,
        artifact,
        baseimage: raw.baseimage.clone(),
        tag: raw.tag.clone(),
        format,
        limits,
        commit,
        from,
        rebuild_dependents: raw.rebuild_dependents.unwrap_or(false),
        outputs,
        recipes_commit: None,
        runs_on,
    })
}

fn check_artifact(artifact: Option<&str>, format: ArtifactFormat) -> Result<(), String> {
    let artifact = artifact.ok_or("`artifact` is missing: name the file the script produces")?;
    if artifact.is_empty()
        || artifact == "."
        || artifact == ".."
        || artifact.contains('/')
        || artifact.contains('\\')
        || artifact.chars().any(char::is_control)
    {
        return Err(format!("artifact {artifact:?} must be a plain file name"));
    }
    if format == ArtifactFormat::Flist && !artifact.ends_with(".tar.gz") {
        return Err(format!("artifact {artifact:?} must end in .tar.gz for format flist (or set `format: binary`)"));
    }
    Ok(())
}

fn check_archives(archives: &str) -> Result<(), String> {
    let inside = archives
        .strip_prefix('/')
        .ok_or_else(|| format!("archives {archives:?} must be an absolute path in the container"))?;
    check_relative_path(inside).map_err(|why| format!("archives {archives:?}: {why}"))?;
    if archives.contains([':', ',']) {
        return Err(format!("archives {archives:?} must not hold ':' or ','"));
    }
    Ok(())
}

fn check_limits(limits: &ScriptLimits) -> Result<(), String> {
    if let Some(memory) = &limits.memory {
        MemorySize::parse(memory).map_err(|e| format!("memory: {e:#}"))?;
    }
    if limits.timeout_minutes == Some(0) || limits.cpus.is_some_and(|c| c <= 0.0) || limits.pids.is_some_and(|p| p <= 0)
    {
        return Err("timeout_minutes, cpus and pids must be positive".into());
    }
    if let Some(cpus) = limits.cpus
        && (cpus.is_nan() || cpus < MIN_CPUS)
    {
        return Err(format!("cpus {cpus} is below Docker's minimum of {MIN_CPUS}"));
    }
    Ok(())
}

fn check_output(output: &Output, repository: &RepoName) -> Result<(), String> {
    if output.file.is_empty()
        || output.file.contains(['/', '\\'])
        || output.file == ".."
        || output.file.chars().any(char::is_control)
    {
        return Err(format!("output file {:?} must be a plain file name in archives", output.file));
    }
    let sample = output.name_for(repository, &Branch::parse("b").expect("valid"));
    let own = format!("{}-{}", repository.org(), repository.name());
    if !sample.starts_with(&own) {
        return Err(format!(
            "output name {:?} must begin with {{org}}-{{repo}} ({own}), so that it cannot take another \
             repository's names",
            output.name
        ));
    }
    if !sample.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!(
            "output name {:?} may only hold letters, digits, '-', '_', '.' and {{org}}, {{repo}}, {{branch}}",
            output.name
        ));
    }
    Ok(())
}

/// `org/repo/branch/with/slashes.yaml` -> (`org/repo`, `branch/with/slashes`).
fn target_of(file: &str) -> Result<(RepoName, Branch), String> {
    let stem = file.strip_suffix(".yaml").or_else(|| file.strip_suffix(".yml")).ok_or("not a .yaml file")?;
    let mut parts = stem.splitn(3, '/');
    let (Some(org), Some(repo), Some(branch)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("a recipe file must be at <org>/<repo>/<branch>.yaml".into());
    };
    let repository = RepoName::parse(&format!("{org}/{repo}")).map_err(|e| e.to_string())?;
    let branch = Branch::parse(branch).map_err(|e| e.to_string())?;
    if let Some(number) = branch.pull_number() {
        return Err(format!(
            "branch pull/{number} is where pull request #{number} is built: a recipe cannot name it (pull \
             requests use the recipe of the branch they target)"
        ));
    }
    Ok((repository, branch))
}

/// A path inside a repository or container: relative, no `..`, no control characters.
fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path is empty");
    }
    if path.chars().any(char::is_control) {
        return Err("path holds control characters");
    }
    if path.starts_with('/') {
        return Err("path must be relative");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err("path must not hold `..`"),
        }
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
buildscripts:
  - autobuild/build-1.sh
  - autobuild/build-2.sh
autobuild/build-1.sh:
  archives: /tmp/archives
  artifact: result.tar.gz
autobuild/build-2.sh:
  baseimage: ubuntu:14.04
  archives: /tmp/archives
  artifact: result.tar.gz
  tag: special-tag
";

    fn parse(file: &str, text: &str) -> Result<Recipe, String> {
        parse_file("demo", file, text.as_bytes()).map_err(|problems| problems.join("; "))
    }

    #[test]
    fn every_problem_of_a_file_is_reported() {
        let text = "buildscripts: [a.sh, b.sh, b.sh, c.sh]
a.sh: {artifact: ../x, archives: relative, cpus: -1}
b.sh: {artifact: b.zip}
d.sh: {artifact: d.tar.gz}
";
        let problems = parse_file("demo", "org/app/master.yaml", text.as_bytes()).unwrap_err();
        let expected = [
            "`d.sh` has settings but is not listed",
            "`a.sh`: artifact \"../x\" must be a plain file name",
            "`a.sh`: archives \"relative\" must be an absolute path",
            "`a.sh`: timeout_minutes, cpus and pids must be positive",
            "`b.sh`: artifact \"b.zip\" must end in .tar.gz",
            "`b.sh` is listed twice",
            "build script `c.sh` has no settings",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for (problem, expected) in problems.iter().zip(expected) {
            assert!(problem.starts_with(expected), "{problem:?} should start with {expected:?}");
        }
    }

    #[test]
    fn runs_on_names_labels_a_worker_must_have() {
        let text = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, runs_on: [gpu, arm64]}\n";
        let script = &parse("org/app/master.yaml", text).unwrap().scripts[0];
        assert!(script.runs_on_labels(&["arm64".into(), "gpu".into(), "big".into()]));
        assert!(!script.runs_on_labels(&["gpu".into()]), "every label is needed");
        let anywhere = parse("org/app/master.yaml", "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz}\n").unwrap();
        assert!(anywhere.scripts[0].runs_on_labels(&[]));
        let err =
            parse("org/app/master.yaml", "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, runs_on: [\"a b\"]}\n");
        assert!(err.unwrap_err().contains("runs_on: label \"a b\" may only hold"));
    }

    #[test]
    fn a_yaml_error_names_its_line() {
        let text = "buildscripts: [a.sh]\na.sh:\n  artifact: a.tar.gz\n  artefact: typo\n";
        let err = parse("org/app/master.yaml", text).unwrap_err();
        assert!(err.contains("line 4") && err.contains("artefact"), "{err}");
        let err = parse("org/app/master.yaml", "buildscripts: [a.sh]\na.sh:\n  artifact: [\n").unwrap_err();
        assert!(err.contains("line 3") || err.contains("line 4"), "{err}");
    }

    #[test]
    fn parses_the_original_example() {
        let recipe = parse("org/repo/feature/x.yaml", GOOD).unwrap();
        assert_eq!(recipe.repository.as_str(), "org/repo");
        assert_eq!(recipe.branch.as_str(), "feature/x");
        assert_eq!(recipe.scripts.len(), 2);
        assert_eq!(recipe.scripts[1].baseimage.as_deref(), Some("ubuntu:14.04"));
        assert_eq!(recipe.scripts[1].tag.as_deref(), Some("special-tag"));
        assert_eq!(recipe.scripts[0].format, ArtifactFormat::Flist);
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("buildscripts: []", "empty"),
            ("buildscripts: [a.sh]", "no settings"),
            ("buildscripts: [a.sh]\na.sh: {archives: /x}", "`artifact` is missing"),
            ("buildscripts: [a.sh]\na.sh: {artifact: ../x.tar.gz}", "plain file name"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz, archives: /a/../b}", "`..`"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz, archives: rel}", "absolute"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz, archives: '/a:/etc'}", "':'"),
            ("buildscripts: [../a.sh]\n../a.sh: {artifact: x.tar.gz}", "`..`"),
            ("buildscripts: [/a.sh]\n/a.sh: {artifact: x.tar.gz}", "relative"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz, artefact: y}", "artefact"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.zip}", ".tar.gz"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz}\nb.sh: {artifact: y.tar.gz}", "not listed"),
            ("buildscripts: [a.sh, b.sh]\na.sh: {artifact: x.tar.gz}\nb.sh: {artifact: y.tar.gz}", "same name"),
            ("buildscripts: [a.sh]\na.sh: {artifact: x.tar.gz, tag: 'a/b'}", "tag"),
            ("buildscripts: [a.sh\n", ""),
        ];
        for (text, expected) in cases {
            let err = parse("org/repo/master.yaml", text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn binary_format_takes_any_file() {
        let recipe = parse("o/r/master.yml", "buildscripts: [b.sh]\nb.sh: {artifact: tool, format: binary}").unwrap();
        assert_eq!(recipe.scripts[0].format, ArtifactFormat::Binary);
        assert_eq!(recipe.scripts[0].archives, "/tmp/archives");
    }

    #[test]
    fn file_locations() {
        assert!(parse("org/master.yaml", GOOD).unwrap_err().contains("<org>/<repo>/<branch>.yaml"));
        assert!(parse("org/repo/bad..branch.yaml", GOOD).is_err());
        assert!(parse("org/repo/pull/7.yaml", GOOD).unwrap_err().contains("pull request #7"));
        assert!(parse("org/repo/pull/x.yaml", GOOD).is_ok());
        assert!(is_recipe_path("o/r/master.yaml"));
        assert!(!is_recipe_path("o/r/README.md"));
        assert!(!is_recipe_path(".github/workflows/ci.yml"));
    }

    #[test]
    fn a_broken_file_does_not_stop_the_others() {
        let set = RecipeSet::parse(
            "demo",
            [
                ("org/a/master.yaml".to_string(), GOOD.as_bytes()),
                ("org/b/master.yaml".to_string(), b"buildscripts: [".as_slice()),
                ("org/c/dev.yml".to_string(), GOOD.as_bytes()),
                ("README.md".to_string(), b"hello".as_slice()),
            ],
        );
        assert_eq!(set.recipes.len(), 2);
        assert_eq!(set.problems.len(), 1);
        assert_eq!(set.problems[0].file, "org/b/master.yaml");
        assert!(set.get(&RepoName::parse("org/c").unwrap(), &Branch::parse("dev").unwrap()).is_some());
        assert!(set.get(&RepoName::parse("org/c").unwrap(), &Branch::parse("master").unwrap()).is_none());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = (b'a' + level - 1) as char;
            let name = (b'a' + level) as char;
            bomb.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        bomb.push_str("buildscripts: *l\n");
        assert!(parse("o/r/master.yaml", &bomb).is_err());
    }
}
