//! Property tests of everything that parses untrusted input: webhook payloads, recipe files,
//! branch and repository names. Whatever comes in, nothing panics, and whatever is accepted is safe
//! to use as a path or a name.

use autobuilder::artifacts::ArtifactNames;
use autobuilder::github::events::{Event, parse_event};
use autobuilder::model::{Branch, CommitSha, RepoName};
use autobuilder::recipes::{RecipeSet, parse_file};
use proptest::prelude::*;

/// Pieces that make parsers work hard: traversal, control characters, YAML and JSON syntax.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("/etc".to_string()),
        Just("a/../b".to_string()),
        Just("x\u{0}y".to_string()),
        Just("line\nbreak".to_string()),
        Just("&anchor [*anchor]".to_string()),
        Just("{a: [".to_string()),
        Just("refs/heads/".to_string()),
        Just("ünïcödé".to_string()),
        "[a-zA-Z0-9._/-]{0,24}",
        any::<String>(),
    ]
}

fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.split('/').any(|p| p == "..")
        && !path.chars().any(char::is_control)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_any_event_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        for event in ["push", "pull_request", "issue_comment", "ping", "other"] {
            let _ = parse_event(event, &body);
        }
    }

    #[test]
    fn accepted_pull_requests_carry_only_safe_names(repo in nasty(), base in nasty(), number in any::<u64>()) {
        let body = serde_json::json!({
            "action": "opened", "number": number, "repository": {"full_name": repo},
            "pull_request": {"head": {"ref": "x", "sha": "a".repeat(40), "repo": null},
                             "base": {"ref": base, "sha": "b".repeat(40)}}
        });
        if let Ok(Event::PullRequest(pr)) = parse_event("pull_request", body.to_string().as_bytes()) {
            prop_assert!(is_safe_relative(pr.repository.as_str()));
            prop_assert!(is_safe_relative(pr.base.as_str()));
            prop_assert!(pr.from_fork(), "a deleted head repository counts as a fork");
        }
    }

    #[test]
    fn accepted_pushes_carry_only_safe_names(
        repo in nasty(), git_ref in nasty(), after in prop_oneof![Just("a".repeat(40)), nasty()], deleted in any::<bool>()
    ) {
        let body = serde_json::json!({
            "ref": format!("refs/heads/{git_ref}"), "after": after, "deleted": deleted,
            "repository": {"full_name": repo}, "head_commit": null
        });
        if let Ok(Event::Push(push)) = parse_event("push", body.to_string().as_bytes()) {
            prop_assert!(RepoName::parse(push.repository.as_str()).is_ok());
            prop_assert!(is_safe_relative(push.repository.as_str()));
            if let Some(Ok(branch)) = push.branch() {
                prop_assert!(is_safe_relative(branch.as_str()), "{:?}", branch);
            }
        }
    }

    #[test]
    fn any_bytes_as_a_recipe_never_panic(path in nasty(), content in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_file("fuzz", &path, &content);
    }

    #[test]
    fn accepted_recipes_only_name_safe_paths(
        script in nasty(), artifact in nasty(), archives in nasty(), tag in nasty(), branch in nasty(),
        image in nasty(), key in prop_oneof![Just("artifact".to_string()), Just("artefact".to_string()), "[a-z]{1,8}"],
    ) {
        let yaml = format!(
            "buildscripts: [{script:?}]\n{script:?}:\n  artifact: {artifact:?}\n  archives: {archives:?}\n  tag: {tag:?}\n  baseimage: {image:?}\n  {key}: x\n"
        );
        let file = format!("org/repo/{branch}.yaml");
        if let Ok(recipe) = parse_file("fuzz", &file, yaml.as_bytes()) {
            for s in &recipe.scripts {
                prop_assert!(is_safe_relative(&s.script), "{:?}", s.script);
                prop_assert!(!s.artifact.contains('/') && s.artifact != ".." && !s.artifact.is_empty());
                prop_assert!(s.archives.starts_with('/') && is_safe_relative(&s.archives[1..]));
                let names = ArtifactNames::new(
                    &recipe.repository, s.tag.as_deref(), &recipe.branch,
                    &CommitSha::parse(&"a".repeat(40)).unwrap(), &s.artifact,
                );
                prop_assert!(!names.versioned.contains('/') && names.moving.as_ref().is_none_or(|m| !m.contains('/')));
            }
        }
    }

    #[test]
    fn names_accepted_are_safe(text in nasty()) {
        if let Ok(branch) = Branch::parse(&text) {
            prop_assert!(is_safe_relative(branch.as_str()));
        }
        if let Ok(repo) = RepoName::parse(&text) {
            prop_assert!(is_safe_relative(repo.as_str()) && repo.as_str().split('/').count() == 2);
        }
    }

    #[test]
    fn a_recipes_checkout_of_random_files_loads_what_is_valid(
        files in proptest::collection::vec((nasty(), proptest::collection::vec(any::<u8>(), 0..128)), 0..8)
    ) {
        let set = RecipeSet::parse("fuzz", files.iter().map(|(p, c)| (p.clone(), c.as_slice())));
        for ((repo, branch), recipe) in &set.recipes {
            prop_assert_eq!(&recipe.repository, repo);
            prop_assert!(is_safe_relative(branch.as_str()));
        }
    }
}
