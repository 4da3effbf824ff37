//! The limits of one build: what its recipe asks for (`timeout_minutes`, `memory`, `cpus`, `pids`),
//! resolved within the `[builds]` defaults and caps into a time limit and the container's limits.

use std::time::Duration;

use crate::config::BuildsConfig;
use crate::docker::Limits;
use crate::model::{MIN_CPUS, MemorySize};
use crate::recipes::ScriptLimits;

/// The limits of one build: `[builds]` defaults, overridden by the recipe within the caps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildLimits {
    pub timeout: Duration,
    pub container: Limits,
}

/// Resolves what a recipe asks for; asking above a cap is an error naming the cap.
pub fn resolve(caps: &BuildsConfig, asked: &ScriptLimits) -> Result<BuildLimits, String> {
    let minutes = asked.timeout_minutes.unwrap_or(caps.timeout_minutes);
    if minutes > caps.max_timeout_minutes {
        return Err(format!(
            "timeout_minutes {minutes} is above [builds] max_timeout_minutes = {}",
            caps.max_timeout_minutes
        ));
    }
    let memory_text = asked.memory.as_deref().unwrap_or(&caps.memory);
    let memory = MemorySize::parse(memory_text).map_err(|e| format!("memory: {e:#}"))?;
    if memory > MemorySize::parse(&caps.max_memory).map_err(|e| e.to_string())? {
        return Err(format!("memory {memory_text} is above [builds] max_memory = {}", caps.max_memory));
    }
    let cpus = asked.cpus.unwrap_or(caps.cpus);
    if caps.max_cpus > 0.0 && (cpus > caps.max_cpus || cpus == 0.0) {
        return Err(format!("cpus {cpus} is above [builds] max_cpus = {}", caps.max_cpus));
    }
    if cpus != 0.0 && (cpus.is_nan() || cpus < MIN_CPUS) {
        return Err(format!("cpus {cpus} is below Docker's minimum of {MIN_CPUS}"));
    }
    let pids = asked.pids.unwrap_or(caps.pids);
    if caps.max_pids > 0 && (pids > caps.max_pids || pids == 0) {
        return Err(format!("pids {pids} is above [builds] max_pids = {}", caps.max_pids));
    }
    Ok(BuildLimits {
        timeout: Duration::from_secs(minutes * 60),
        container: Limits {
            memory: memory.bytes(),
            nano_cpus: (cpus * 1e9) as i64,
            pids,
            file_size: MemorySize::parse(&caps.max_file_size).map_err(|e| e.to_string())?.bytes(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SAMPLE: &str = r#"
        [projects.demo]
        recipes = "org/recipes"
        webhook_secret = "s3cret"
    "#;

    fn load(text: &str) -> anyhow::Result<Config> {
        Config::from_toml_and_env(text, std::iter::empty())
    }

    #[test]
    fn a_recipe_asking_nothing_gets_the_defaults() {
        let config = load(SAMPLE).unwrap();
        let limits = resolve(&config.builds, &ScriptLimits::default()).unwrap();
        assert_eq!((limits.container.memory, limits.container.pids), (4 << 30, 4096));
    }

    #[test]
    fn recipes_ask_for_limits_within_the_caps() {
        let config = load(SAMPLE).unwrap();
        let asked =
            ScriptLimits { timeout_minutes: Some(5), memory: Some("1g".into()), cpus: Some(1.5), pids: Some(100) };
        let limits = resolve(&config.builds, &asked).unwrap();
        assert_eq!(limits.timeout.as_secs(), 300);
        assert_eq!(
            (limits.container.memory, limits.container.nano_cpus, limits.container.pids),
            (1 << 30, 1_500_000_000, 100)
        );
        let greedy = ScriptLimits { memory: Some("64g".into()), ..Default::default() };
        assert!(resolve(&config.builds, &greedy).unwrap_err().contains("max_memory"));
        let slow = ScriptLimits { timeout_minutes: Some(10_000), ..Default::default() };
        assert!(resolve(&config.builds, &slow).unwrap_err().contains("max_timeout_minutes"));
    }

    #[test]
    fn cpus_below_dockers_minimum_are_refused() {
        let config = load(SAMPLE).unwrap();
        let tiny = ScriptLimits { cpus: Some(0.000_000_000_1), ..Default::default() };
        assert!(resolve(&config.builds, &tiny).unwrap_err().contains("minimum"));
        let capped = load(&format!("[builds]\nmax_cpus = 2.0\n{SAMPLE}")).unwrap();
        assert!(resolve(&capped.builds, &tiny).unwrap_err().contains("minimum"));
        let err = load(&format!("[builds]\ncpus = 0.001\n{SAMPLE}")).unwrap_err();
        assert!(format!("{err:#}").contains("minimum"), "{err:#}");
        let recipe = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, cpus: 0.0000000001}";
        let err = crate::recipes::parse_file("demo", "o/r/master.yaml", recipe.as_bytes()).unwrap_err();
        assert!(err[0].contains("below Docker's minimum of 0.01"), "{err:?}");
    }
}
