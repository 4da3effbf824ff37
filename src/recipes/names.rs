//! Published names: every recipe owns the names its builds publish (the artifact's and every
//! output's, moving and versioned). Recipes whose names could ever meet are refused at load,
//! naming each other, so one repository or branch never overwrites another's download.
//!
//! The original scheme `<org>-<repo>[-<tag>]-<branch>-<sha10><ext>` is kept; it is ambiguous on
//! its own (`a/b-c`, `a/b` with tag `c` and `a-b/c` all give `a-b-c-master`), which is why the
//! names are compared: a moving name is a fixed text, a versioned one a text with ten hex digits
//! in it, and two of them meet when some text fits both. Pull request builds publish versioned
//! names only (see `artifacts::ArtifactNames`).

use std::collections::{BTreeMap, BTreeSet};

use super::{Recipe, RecipeProblem, RecipeSet};
use crate::artifacts::{artifact_base, extension};

/// One name a recipe publishes: `before`, then ten hex digits when `versioned`, then `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    before: String,
    versioned: bool,
    after: String,
}

const VERSION_DIGITS: usize = 10;

impl Name {
    fn len(&self) -> usize {
        self.before.len() + if self.versioned { VERSION_DIGITS } else { 0 } + self.after.len()
    }

    /// The byte at `at`, or None where the version's hex digits are.
    fn at(&self, at: usize) -> Option<u8> {
        let digits = if self.versioned { VERSION_DIGITS } else { 0 };
        if at < self.before.len() {
            Some(self.before.as_bytes()[at])
        } else if at < self.before.len() + digits {
            None
        } else {
            Some(self.after.as_bytes()[at - self.before.len() - digits])
        }
    }

    /// Whether some published name fits both.
    fn meets(&self, other: &Name) -> bool {
        self.len() == other.len()
            && (0..self.len()).all(|at| match (self.at(at), other.at(at)) {
                (Some(a), Some(b)) => a == b,
                (Some(c), None) | (None, Some(c)) => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
                (None, None) => true,
            })
    }

    /// How the name reads in a message.
    fn show(&self) -> String {
        if self.versioned { format!("{}<sha10>{}", self.before, self.after) } else { self.before.clone() }
    }
}

/// A name and who publishes it: the project (None: the set being loaded), the file, the file's part.
struct Owned {
    project: Option<String>,
    file: String,
    what: String,
    name: Name,
}

/// The names of one recipe: (what publishes it, name), the moving and the versioned of each file.
fn names_of(recipe: &Recipe) -> Vec<(String, Name)> {
    let mut names = Vec::new();
    for script in &recipe.scripts {
        let base = artifact_base(&recipe.repository, script.tag.as_deref(), &recipe.branch);
        let mut files = vec![(format!("`{}`", script.script), base, extension(&script.artifact).to_string())];
        for output in &script.outputs {
            let name = output.name_for(&recipe.repository, &recipe.branch);
            files.push((format!("`{}` output {}", script.script, output.file), name, extension(&output.file).into()));
        }
        for (what, base, ext) in files {
            names.push((what.clone(), Name { before: format!("{base}{ext}"), versioned: false, after: String::new() }));
            names.push((what, Name { before: format!("{base}-"), versioned: true, after: ext }));
        }
    }
    names
}

/// Refuses every recipe of `set` whose published names could meet another's, in `set` or in
/// `others` (the recipes of other projects, which share the artifact store). Both recipes of
/// `set` are refused; one of `others` is named (the caller refuses it when it checks that
/// project against this one).
pub fn refuse_collisions(set: &mut RecipeSet, others: &[(&str, &RecipeSet)]) {
    // (where, what, name) grouped by length: names of different lengths never meet.
    let mut by_length: BTreeMap<usize, Vec<Owned>> = BTreeMap::new();
    for recipe in set.recipes.values() {
        for (what, name) in names_of(recipe) {
            let owned = Owned { project: None, file: recipe.file.clone(), what, name };
            by_length.entry(owned.name.len()).or_default().push(owned);
        }
    }
    for (project, other) in others {
        for recipe in other.recipes.values() {
            for (what, name) in names_of(recipe) {
                if let Some(list) = by_length.get_mut(&name.len()) {
                    list.push(Owned { project: Some(project.to_string()), file: recipe.file.clone(), what, name });
                }
            }
        }
    }
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for list in by_length.values() {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let same = a.project == b.project && a.file == b.file && a.what == b.what;
                if same || a.project.is_some() && b.project.is_some() || !a.name.meets(&b.name) {
                    continue;
                }
                for (mine, theirs) in [(a, b), (b, a)] {
                    if mine.project.is_some() {
                        continue;
                    }
                    let place = match &theirs.project {
                        Some(project) => format!("{} of project {project}", theirs.file),
                        None => theirs.file.clone(),
                    };
                    let reason = format!(
                        "{} publishes {}, a name that {place} ({}) publishes too: give one a `tag` or rename the output",
                        mine.what,
                        mine.name.show(),
                        theirs.what
                    );
                    refused.entry(mine.file.clone()).or_insert(reason);
                }
            }
        }
    }
    let files: BTreeSet<&String> = refused.keys().collect();
    set.recipes.retain(|_, recipe| !files.contains(&recipe.file));
    for (file, reason) in refused {
        set.problems.push(RecipeProblem { file, reason });
    }
    set.problems.sort_by(|a, b| a.file.cmp(&b.file));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> RecipeSet {
        let mut set = RecipeSet::parse("demo", files.iter().map(|(p, c)| (p.to_string(), c.as_bytes())));
        refuse_collisions(&mut set, &[]);
        set
    }

    const PLAIN: &str = "buildscripts: [b.sh]\nb.sh: {artifact: r.tar.gz}\n";

    #[test]
    fn ambiguous_repositories_tags_and_branches_are_refused_naming_each_other() {
        let tagged = "buildscripts: [b.sh]\nb.sh: {artifact: r.tar.gz, tag: c}\n";
        let set = load(&[("a/b-c/master.yaml", PLAIN), ("a/b/master.yaml", tagged), ("a-b/c/master.yaml", PLAIN)]);
        assert!(set.recipes.is_empty(), "{:?}", set.problems);
        assert_eq!(set.problems.len(), 3);
        assert!(set.problems.iter().all(|p| p.reason.contains("a-b-c-master.tar.gz")), "{:?}", set.problems);
        let set = load(&[("o/r/feature/x.yaml", PLAIN), ("o/r/feature-x.yaml", PLAIN), ("o/r/master.yaml", PLAIN)]);
        assert_eq!(set.recipes.len(), 1, "{:?}", set.problems);
        assert!(set.problems[0].reason.contains("o/r/feature/x.yaml"), "{:?}", set.problems);
    }

    #[test]
    fn a_moving_name_cannot_be_another_branchs_versioned_name() {
        let set = load(&[("o/r/master.yaml", PLAIN), ("o/r/master-0123456789.yaml", PLAIN)]);
        assert_eq!(set.recipes.len(), 0, "{:?}", set.problems);
        let set = load(&[("o/r/master.yaml", PLAIN), ("o/r/master-release.yaml", PLAIN)]);
        assert_eq!(set.recipes.len(), 2, "{:?}", set.problems);
    }

    #[test]
    fn an_output_cannot_take_another_repositorys_download() {
        let evil =
            "buildscripts: [b.sh]\nb.sh: {artifact: e.tar.gz, outputs: [{file: x.tar.gz, name: org-evil-app-x}]}\n";
        let app = "buildscripts: [b.sh]\nb.sh: {artifact: e.tar.gz, tag: app}\n";
        let set = load(&[("org/evil/master.yaml", evil), ("org/evil/x.yaml", app)]);
        assert!(set.problems.iter().any(|p| p.reason.contains("output x.tar.gz")), "{:?}", set.problems);
        let stranger =
            "buildscripts: [b.sh]\nb.sh: {artifact: e.tar.gz, outputs: [{file: x.tar.gz, name: org-app-master}]}\n";
        let set = load(&[("org/evil/master.yaml", stranger)]);
        assert!(set.problems[0].reason.contains("must begin with {org}-{repo}"), "{:?}", set.problems);
    }

    #[test]
    fn another_projects_recipe_keeps_its_names() {
        let other = load(&[("org/app/master.yaml", PLAIN)]);
        let mut set = RecipeSet::parse("demo", [("org/app/master.yaml".to_string(), PLAIN.as_bytes())]);
        refuse_collisions(&mut set, &[("first", &other)]);
        assert!(set.recipes.is_empty());
        assert!(set.problems[0].reason.contains("org/app/master.yaml of project first"), "{:?}", set.problems);
    }
}
