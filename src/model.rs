//! Validated identifiers and the build record shared by every layer.

use std::fmt;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use sqlx::Database;
use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use time::OffsetDateTime;

/// A type stored as text, through sqlx's `Any` (the one query layer over SQLite and PostgreSQL):
/// written as its `as_str()`, read back through its `parse`, so a value the database holds is
/// checked as any other input. `enum`: a `parse` that answers `None` for an unknown word.
macro_rules! stored_as_text {
    (enum $name:ident) => {
        stored_as_text!($name, |text| {
            $name::parse(text).ok_or_else(|| format!("unknown {} {text:?}", stringify!($name)).into())
        });
    };
    ($name:ident, $parse:expr) => {
        impl sqlx::Type<Any> for $name {
            fn type_info() -> AnyTypeInfo {
                <str as sqlx::Type<Any>>::type_info()
            }
        }

        impl sqlx::Encode<'_, Any> for $name {
            fn encode_by_ref(&self, buf: &mut <Any as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as sqlx::Encode<Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Any> for $name {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                let parse: fn(&str) -> Result<$name, BoxDynError> = $parse;
                parse(<&str as sqlx::Decode<Any>>::decode(value)?)
            }
        }
    };
}

/// Conversions of a validated string newtype: from `String` through its `parse`, back to
/// `String`, and `Display`.
macro_rules! validated_string {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = anyhow::Error;
            fn try_from(value: String) -> anyhow::Result<Self> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        stored_as_text!($name, |text| Ok($name::parse(text)?));
    };
}

/// A GitHub repository, `org/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let Some((org, name)) = text.split_once('/') else {
            bail!("{text:?} is not a repository name like org/repo");
        };
        for part in [org, name] {
            ensure!(
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part.len() <= 100
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{text:?} is not a repository name like org/repo (letters, digits, '-', '_', '.')"
            );
        }
        Ok(Self(text.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn org(&self) -> &str {
        self.0.split_once('/').expect("validated").0
    }
    /// The repository name without its organisation.
    pub fn name(&self) -> &str {
        self.0.split_once('/').expect("validated").1
    }
}

validated_string!(RepoName);

/// A git branch name, as in `refs/heads/<branch>`; may hold `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Branch(String);

impl Branch {
    /// Accepts what `git check-ref-format --branch` accepts, minus the rarely used oddities.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        ensure!(!text.is_empty() && text.len() <= 255, "branch name {text:?} is empty or too long");
        ensure!(
            !text.chars().any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')),
            "branch name {text:?} holds a character git does not allow"
        );
        ensure!(
            !text.starts_with('/') && !text.ends_with('/') && !text.ends_with(".lock") && !text.contains("@{"),
            "branch name {text:?} is not a valid git branch name"
        );
        for part in text.split('/') {
            ensure!(
                !part.is_empty() && !part.starts_with('.') && !part.contains(".."),
                "branch name {text:?} has an empty, hidden or '..' component"
            );
        }
        Ok(Self(text.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The branch the builds of pull request `number` run as: `pull/<number>`.
    pub fn pull(number: u64) -> Self {
        Self(format!("pull/{number}"))
    }

    /// The pull request this branch stands for, when it is `pull/<number>`.
    pub fn pull_number(&self) -> Option<u64> {
        let number = self.0.strip_prefix("pull/")?;
        number.bytes().all(|b| b.is_ascii_digit()).then(|| number.parse().ok()).flatten()
    }
}

validated_string!(Branch);

/// A full commit id in lower-case hex (SHA-1 or SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        ensure!(
            (text.len() == 40 || text.len() == 64) && text.chars().all(|c| c.is_ascii_hexdigit()),
            "{text:?} is not a full commit id"
        );
        Ok(Self(text.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first ten characters, as used in artifact names.
    pub fn short(&self) -> &str {
        &self.0[..10]
    }
    /// The all-zero id GitHub sends as `after` when a branch is deleted.
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

validated_string!(CommitSha);

/// The id of a build (or a recipes reload) in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct BuildId(pub i64);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a build is in its life. `success`, `failure`, `error` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Queued,
    Running,
    /// The script ran and the artifact was published.
    Success,
    /// The script failed, or left no artifact: the commit's fault.
    Failure,
    /// Infrastructure failed: clone, image, Docker, artifact store.
    Error,
    Cancelled,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 6] = [
        BuildStatus::Queued,
        BuildStatus::Running,
        BuildStatus::Success,
        BuildStatus::Failure,
        BuildStatus::Error,
        BuildStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Success => "success",
            BuildStatus::Failure => "failure",
            BuildStatus::Error => "error",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Running)
    }
}

stored_as_text!(enum BuildStatus);

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a history entry is: a build of a script, or a reload of a project's recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    Build,
    Reload,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Build => "build",
            BuildKind::Reload => "reload",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [BuildKind::Build, BuildKind::Reload].into_iter().find(|k| k.as_str() == text)
    }
}

stored_as_text!(enum BuildKind);

/// The state of a commit status, as GitHub names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

impl From<BuildStatus> for CommitState {
    fn from(status: BuildStatus) -> Self {
        match status {
            BuildStatus::Queued | BuildStatus::Running => CommitState::Pending,
            BuildStatus::Success => CommitState::Success,
            BuildStatus::Failure => CommitState::Failure,
            BuildStatus::Error | BuildStatus::Cancelled => CommitState::Error,
        }
    }
}

impl CommitState {
    pub fn parse(text: &str) -> Option<Self> {
        [CommitState::Pending, CommitState::Success, CommitState::Failure, CommitState::Error]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
        }
    }
}

impl fmt::Display for CommitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

stored_as_text!(enum CommitState);

/// What is known of a history entry when it is queued; it does not change afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewBuild {
    pub kind: BuildKind,
    pub project: String,
    pub repository: RepoName,
    pub branch: Branch,
    /// The commit built; none for a recipes reload that could not fetch (served as `""`).
    #[serde(with = "commit_or_empty")]
    pub commit: Option<CommitSha>,
    /// The build script, or `recipes` for a reload.
    pub script: String,
    pub baseimage: Option<String>,
    /// Commit message and author of the pushed head commit, when the push said.
    pub message: Option<String>,
    pub author: Option<String>,
}

/// Where an entry stands: its status and, once it ended, what it came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub status: BuildStatus,
    /// One-line reason of a non-success end.
    pub error: Option<String>,
    /// Name of the published artifact.
    pub artifact: Option<String>,
    /// Where the artifact can be downloaded.
    pub artifact_url: Option<String>,
    pub artifact_sha256: Option<String>,
    /// Extra outputs published by the build; none when it published none.
    pub outputs: Option<Vec<Output>>,
}

impl Outcome {
    /// An end with no artifact: `status` with its one-line reason.
    pub fn failed(status: BuildStatus, error: impl Into<String>) -> Self {
        Self { error: Some(error.into()), ..Self::plain(status) }
    }

    /// `status`, with no reason and no artifact.
    pub fn plain(status: BuildStatus) -> Self {
        Self { status, error: None, artifact: None, artifact_url: None, artifact_sha256: None, outputs: None }
    }
}

/// An extra output a build published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The versioned name in the artifact store.
    pub name: String,
    /// Where to download it, when the store serves downloads.
    pub url: Option<String>,
    pub sha256: String,
}

/// One entry of the history, as stored and as served by the JSON API (one flat object).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    #[serde(flatten)]
    pub new: NewBuild,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Served as RFC 3339 UTC with three fraction digits.
    #[serde(with = "millis")]
    pub created: OffsetDateTime,
    #[serde(with = "millis::option")]
    pub started: Option<OffsetDateTime>,
    #[serde(with = "millis::option")]
    pub ended: Option<OffsetDateTime>,
    /// The worker that runs or ran it (`[worker] name`); none while queued.
    #[serde(default)]
    pub worker: Option<String>,
}

/// Times as RFC 3339 in UTC with exactly three fraction digits, so that they sort as text too.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::BorrowedFormatItem;
    use time::format_description::well_known::Rfc3339;

    const FORMAT: &[BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

    pub fn format(time: OffsetDateTime) -> String {
        time.to_offset(time::UtcOffset::UTC).format(FORMAT).unwrap_or_default()
    }

    /// The time `ms` milliseconds after the epoch (the epoch itself when out of range).
    pub fn from_ms(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn serialize<S: Serializer>(time: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(time: &Option<OffsetDateTime>, serializer: S) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => serializer.serialize_some(&format(*time)),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<OffsetDateTime>, D::Error> {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|text| OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)).transpose()
        }
    }
}

/// A commit that may be missing, served as its id or `""`.
mod commit_or_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::CommitSha;

    pub fn serialize<S: Serializer>(commit: &Option<CommitSha>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(commit.as_ref().map_or("", CommitSha::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<CommitSha>, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "" => Ok(None),
            text => CommitSha::parse(text).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// The fewest CPUs Docker can limit a container to; fewer would truncate to no limit at all.
pub const MIN_CPUS: f64 = 0.01;

/// A Docker-style memory size (`512m`, `4g`, `1048576`), at least Docker's minimum of 6m.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemorySize(i64);

impl MemorySize {
    /// Parses a number of bytes with an optional unit `k`, `m` or `g` (and an optional `b`).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text.as_str(), ""),
        };
        let number: i64 = digits
            .parse()
            .map_err(|e| anyhow::Error::new(e).context(format!("{text:?} is not a size like 512m or 4g")))?;
        let factor = match unit.trim_end_matches('b') {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            _ => bail!("{text:?} has an unknown unit: use k, m or g"),
        };
        let bytes = number.checked_mul(factor).ok_or_else(|| anyhow::anyhow!("size too large"))?;
        ensure!(bytes >= 6 << 20, "{text:?} is below Docker's minimum of 6m");
        Ok(Self(bytes))
    }

    pub fn bytes(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_a_fixed_width() {
        assert_eq!(millis::format(millis::from_ms(1_700_000_000_100)), "2023-11-14T22:13:20.100Z");
        assert_eq!(millis::format(millis::from_ms(1_700_000_000_000)), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn a_build_is_one_flat_object() {
        let build = Build {
            id: BuildId(7),
            new: NewBuild {
                kind: BuildKind::Reload,
                project: "p".into(),
                repository: RepoName::parse("org/recipes").unwrap(),
                branch: Branch::parse("master").unwrap(),
                commit: None,
                script: "recipes".into(),
                baseimage: None,
                message: None,
                author: None,
            },
            outcome: Outcome::failed(BuildStatus::Error, "cannot fetch"),
            created: millis::from_ms(1_700_000_000_100),
            started: None,
            ended: Some(millis::from_ms(1_700_000_000_000)),
            worker: None,
        };
        let served = serde_json::to_value(&build).unwrap();
        assert_eq!(
            served,
            serde_json::json!({
                "id": 7, "kind": "reload", "project": "p", "repository": "org/recipes", "branch": "master",
                "commit": "", "script": "recipes", "baseimage": null, "status": "error", "message": null,
                "author": null, "created": "2023-11-14T22:13:20.100Z", "started": null,
                "ended": "2023-11-14T22:13:20.000Z", "error": "cannot fetch", "artifact": null,
                "artifact_url": null, "artifact_sha256": null, "outputs": null, "worker": null
            })
        );
        let back: Build = serde_json::from_value(served.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), served);
    }

    #[test]
    fn repo_names() {
        let repo = RepoName::parse("threefoldtech/0-core").unwrap();
        assert_eq!((repo.org(), repo.name()), ("threefoldtech", "0-core"));
        for bad in ["nope", "a/b/c", "../x", "a/..", "a/", "/b", "a/b c", "a/b\n"] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn branch_names() {
        for good in ["master", "feature/x", "release-1.2", "a/b/c"] {
            assert!(Branch::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in ["", "../etc", "a/../b", "/x", "x/", "a//b", ".hidden", "a b", "x\u{7}", "a.lock", "x:y"] {
            assert!(Branch::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn commit_ids() {
        let sha = CommitSha::parse("ABCDEF0123456789abcdef0123456789abcdef01").unwrap();
        assert_eq!(sha.short(), "abcdef0123");
        assert!(CommitSha::parse("0000000000000000000000000000000000000000").unwrap().is_zero());
        assert!(CommitSha::parse("abc").is_err());
        assert!(CommitSha::parse("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(MemorySize::parse("512m").unwrap().bytes(), 512 << 20);
        assert_eq!(MemorySize::parse("2G").unwrap().bytes(), 2 << 30);
        assert!(MemorySize::parse("lots").is_err());
        assert!(MemorySize::parse("1k").is_err());
    }
}
