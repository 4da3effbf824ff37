//! Webhook deliveries: `X-Hub-Signature-256` verification and the events autobuilder acts on.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::model::{Branch, CommitSha, RepoName};

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the HMAC-SHA256 of `body`, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    SignatureCheck::new(secret, header).is_some_and(|mut check| {
        check.update(body);
        check.verify()
    })
}

/// An `X-Hub-Signature-256` check fed the body piece by piece, as it arrives.
pub struct SignatureCheck {
    mac: Hmac<Sha256>,
    expected: Vec<u8>,
}

impl SignatureCheck {
    /// `None` when the header is missing or is not `sha256=<hex>`.
    pub fn new(secret: &[u8], header: Option<&str>) -> Option<Self> {
        let expected = hex::decode(header?.strip_prefix("sha256=")?.trim()).ok()?;
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        Some(Self { mac, expected })
    }

    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Whether the body fed so far has the signature of the header (compared in constant time).
    pub fn verify(self) -> bool {
        self.mac.verify_slice(&self.expected).is_ok()
    }
}

/// The `X-Hub-Signature-256` value for `body` (used by tests, benchmarks and the demo).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A delivery, reduced to what autobuilder needs.
#[derive(Debug)]
pub enum Event {
    Ping,
    Push(Push),
    PullRequest(PullRequest),
    /// A comment on a pull request asking autobuilder for something.
    Command(Command),
    /// Any other event: acknowledged and ignored.
    Other(String),
}

/// A `push` event.
#[derive(Debug)]
pub struct Push {
    pub repository: RepoName,
    /// The full ref, e.g. `refs/heads/master` or `refs/tags/v1`.
    pub git_ref: String,
    /// The pushed commit.
    pub after: CommitSha,
    /// The branch head before the push (`None` for a new branch).
    pub before: Option<CommitSha>,
    /// A force push (the branch may have moved back on purpose).
    pub forced: bool,
    pub deleted: bool,
    pub message: Option<String>,
    pub author: Option<String>,
}

impl Push {
    /// The branch pushed to, or `None` for tags and other refs.
    pub fn branch(&self) -> Option<Result<Branch, anyhow::Error>> {
        self.git_ref.strip_prefix("refs/heads/").map(Branch::parse)
    }
}

/// What a pull request comment can ask: `@autobuilder rebuild` or `@autobuilder status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Rebuild,
    Status,
}

/// An `issue_comment` on a pull request holding a command.
#[derive(Debug)]
pub struct Command {
    pub kind: CommandKind,
    pub repository: RepoName,
    pub number: u64,
    pub user: String,
}

/// The command in a comment: a line that is `@autobuilder rebuild` or `@autobuilder status`.
pub fn command_in(body: &str) -> Option<CommandKind> {
    body.lines().find_map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["@autobuilder", "rebuild"] => Some(CommandKind::Rebuild),
        ["@autobuilder", "status"] => Some(CommandKind::Status),
        _ => None,
    })
}

#[derive(Deserialize)]
struct RawCommentEvent {
    action: String,
    issue: RawIssue,
    comment: RawComment,
    repository: RawRepository,
}

#[derive(Deserialize)]
struct RawIssue {
    number: u64,
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawComment {
    body: Option<String>,
    user: RawUser,
}

/// A `pull_request` event.
#[derive(Debug)]
pub struct PullRequest {
    /// `opened`, `synchronize`, `reopened`, `closed`, ...
    pub action: String,
    pub number: u64,
    /// The repository the pull request is for (its base).
    pub repository: RepoName,
    /// The branch it wants to merge into.
    pub base: Branch,
    pub head_sha: CommitSha,
    /// The head before a `synchronize`.
    pub before: Option<CommitSha>,
    /// Where the head lives: the base repository, or a fork.
    pub head_repository: Option<String>,
    pub title: Option<String>,
    pub user: Option<String>,
}

impl PullRequest {
    pub fn from_fork(&self) -> bool {
        self.head_repository.as_deref() != Some(self.repository.as_str())
    }
}

#[derive(Deserialize)]
struct RawPullRequestEvent {
    action: String,
    number: u64,
    before: Option<String>,
    pull_request: RawPullRequest,
    repository: RawRepository,
}

#[derive(Deserialize)]
struct RawPullRequest {
    title: Option<String>,
    user: Option<RawUser>,
    head: RawEnd,
    base: RawEnd,
}

#[derive(Deserialize)]
struct RawEnd {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<RawRepository>,
}

#[derive(Deserialize)]
struct RawUser {
    login: String,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    before: Option<String>,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    deleted: bool,
    repository: RawRepository,
    head_commit: Option<RawCommit>,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct RawCommit {
    message: Option<String>,
    author: Option<RawAuthor>,
}

#[derive(Deserialize)]
struct RawAuthor {
    name: Option<String>,
}

/// A commit id a delivery names, unless absent, malformed or all zeros (no commit).
fn known_commit(text: Option<&str>) -> Option<CommitSha> {
    text.and_then(|text| CommitSha::parse(text).ok()).filter(|sha| !sha.is_zero())
}

/// Most characters kept of a commit message (or pull request title) and of an author name: they
/// are stored with every build and sent to every monitor page.
pub const MAX_MESSAGE_CHARS: usize = 4096;
pub const MAX_AUTHOR_CHARS: usize = 200;

/// `text` cut to `max` characters, with `…` where it was cut.
fn bounded(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Parses a delivery of type `event` (the `X-GitHub-Event` header). The error says what is wrong.
pub fn parse_event(event: &str, body: &[u8]) -> anyhow::Result<Event> {
    Ok(match event {
        "ping" => Event::Ping,
        "push" => {
            let raw: RawPush = serde_json::from_slice(body)?;
            let head = raw.head_commit;
            Event::Push(Push {
                repository: RepoName::parse(&raw.repository.full_name)?,
                git_ref: raw.git_ref,
                after: CommitSha::parse(&raw.after)?,
                before: known_commit(raw.before.as_deref()),
                forced: raw.forced,
                deleted: raw.deleted,
                message: head.as_ref().and_then(|c| c.message.clone()).map(|m| bounded(m, MAX_MESSAGE_CHARS)),
                author: head.and_then(|c| c.author).and_then(|a| a.name).map(|a| bounded(a, MAX_AUTHOR_CHARS)),
            })
        }
        "pull_request" => {
            let raw: RawPullRequestEvent = serde_json::from_slice(body)?;
            let pr = raw.pull_request;
            Event::PullRequest(PullRequest {
                action: raw.action,
                number: raw.number,
                repository: RepoName::parse(&raw.repository.full_name)?,
                base: Branch::parse(&pr.base.git_ref)?,
                head_sha: CommitSha::parse(&pr.head.sha)?,
                before: known_commit(raw.before.as_deref()),
                head_repository: pr.head.repo.map(|r| r.full_name),
                title: pr.title.map(|t| bounded(t, MAX_MESSAGE_CHARS)),
                user: pr.user.map(|u| bounded(u.login, MAX_AUTHOR_CHARS)),
            })
        }
        "issue_comment" => {
            let raw: RawCommentEvent = serde_json::from_slice(body)?;
            let kind = command_in(raw.comment.body.as_deref().unwrap_or_default());
            match kind {
                Some(kind) if raw.action == "created" && raw.issue.pull_request.is_some() => Event::Command(Command {
                    kind,
                    repository: RepoName::parse(&raw.repository.full_name)?,
                    number: raw.issue.number,
                    user: raw.comment.user.login,
                }),
                _ => Event::Other("issue_comment without a command".into()),
            }
        }
        other => Event::Other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let body = b"{\"zen\":\"hi\"}";
        let good = sign(b"secret", body);
        assert!(verify_signature(b"secret", body, Some(&good)));
        assert!(!verify_signature(b"other", body, Some(&good)));
        assert!(!verify_signature(b"secret", b"{}", Some(&good)));
        assert!(!verify_signature(b"secret", body, None));
        assert!(!verify_signature(b"secret", body, Some("sha1=abc")));
        assert!(!verify_signature(b"secret", body, Some("sha256=zz")));
    }

    #[test]
    fn push_events() {
        let body = serde_json::json!({
            "ref": "refs/heads/feature/x",
            "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": {"full_name": "org/repo"},
            "head_commit": {"message": "fix it", "author": {"name": "Ada"}}
        });
        let Event::Push(push) = parse_event("push", body.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(push.branch().unwrap().unwrap().as_str(), "feature/x");
        assert_eq!(push.message.as_deref(), Some("fix it"));
        assert_eq!(push.author.as_deref(), Some("Ada"));

        // A 5 MB message and a long author name are cut.
        let huge = serde_json::json!({
            "ref": "refs/heads/x", "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": {"full_name": "org/repo"},
            "head_commit": {"message": "é".repeat(5_000_000), "author": {"name": "A".repeat(10_000)}}
        });
        let Event::Push(push) = parse_event("push", huge.to_string().as_bytes()).unwrap() else { panic!() };
        assert_eq!(push.message.unwrap().chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(push.author.unwrap(), format!("{}…", "A".repeat(MAX_AUTHOR_CHARS)));

        let tag = serde_json::json!({
            "ref": "refs/tags/v1", "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": {"full_name": "org/repo"}, "head_commit": null
        });
        let Event::Push(push) = parse_event("push", tag.to_string().as_bytes()).unwrap() else { panic!() };
        assert!(push.branch().is_none());
    }

    #[test]
    fn commands_in_comments() {
        assert_eq!(command_in("looks good\n@autobuilder  rebuild\n"), Some(CommandKind::Rebuild));
        assert_eq!(command_in("@autobuilder status"), Some(CommandKind::Status));
        assert_eq!(command_in("please @autobuilder rebuild this"), None);
        assert_eq!(command_in("@autobuilder deploy"), None);
    }

    /// GitHub's own example deliveries (`shared/github-payloads/<event>/*.json` beside the
    /// repository, from octokit/webhooks), as (event, file name, body).
    fn github_examples() -> Vec<(String, String, Vec<u8>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/github-payloads");
        let events = std::fs::read_dir(&root).unwrap_or_else(|e| {
            panic!("GitHub's example deliveries are expected in {}: {e}", root.display());
        });
        let mut examples = Vec::new();
        for event in events.map(Result::unwrap).filter(|e| e.file_type().unwrap().is_dir()) {
            for file in std::fs::read_dir(event.path()).unwrap().map(Result::unwrap) {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") {
                    let event = event.file_name().to_string_lossy().into_owned();
                    examples.push((event, name, std::fs::read(file.path()).unwrap()));
                }
            }
        }
        examples.sort();
        examples
    }

    #[test]
    fn every_example_delivery_of_github_parses() {
        let examples = github_examples();
        assert!(examples.len() > 200, "only {} examples found", examples.len());
        let (mut pushes, mut pulls, mut comments) = (0, 0, 0);
        for (event, file, body) in &examples {
            let parsed = parse_event(event, body).unwrap_or_else(|e| panic!("{event}/{file}: {e:#}"));
            let raw: serde_json::Value = serde_json::from_slice(body).unwrap();
            match parsed {
                Event::Push(push) => {
                    pushes += 1;
                    assert_eq!(push.repository.as_str(), raw["repository"]["full_name"], "{file}");
                    assert_eq!(push.git_ref, raw["ref"], "{file}");
                    assert_eq!(push.after.as_str(), raw["after"], "{file}");
                    assert_eq!(push.deleted, raw["deleted"] == true, "{file}");
                    assert_eq!(push.before.is_none(), raw["before"].as_str().unwrap().bytes().all(|b| b == b'0'));
                    assert_eq!(push.message.as_deref(), raw["head_commit"]["message"].as_str(), "{file}");
                }
                Event::PullRequest(pr) => {
                    pulls += 1;
                    let raw_pr = &raw["pull_request"];
                    assert_eq!(pr.action, raw["action"], "{file}");
                    assert_eq!(pr.number, raw["number"].as_u64().unwrap(), "{file}");
                    assert_eq!(pr.base.as_str(), raw_pr["base"]["ref"], "{file}");
                    assert_eq!(pr.head_sha.as_str(), raw_pr["head"]["sha"], "{file}");
                    assert_eq!(pr.head_repository.as_deref(), raw_pr["head"]["repo"]["full_name"].as_str());
                }
                Event::Command(_) => panic!("{file}: no example comment holds an autobuilder command"),
                Event::Ping => assert_eq!(event, "ping"),
                Event::Other(_) => {
                    assert!(!matches!(event.as_str(), "push" | "pull_request" | "ping"), "{event}/{file}");
                    comments += usize::from(event == "issue_comment");
                }
            }
        }
        assert_eq!((pushes, pulls, comments), (6, 28, 8), "every push, pull_request and issue_comment example");
    }

    #[test]
    fn malformed_pushes_are_errors() {
        for body in [
            "",
            "{",
            "[]",
            r#"{"ref":"refs/heads/x"}"#,
            r#"{"ref":"x","after":"nope","repository":{"full_name":"a/b"}}"#,
        ] {
            assert!(parse_event("push", body.as_bytes()).is_err(), "{body}");
        }
        assert!(matches!(parse_event("issues", b"{}").unwrap(), Event::Other(_)));
    }
}
