//! What `/__version__` answers (Dockerflow): the build's `version.json`.

use serde::{Deserialize, Serialize};

/// Source, version, commit and build of this binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Where the source lives.
    pub source: String,
    /// The release version.
    pub version: String,
    /// The git commit built.
    pub commit: String,
    /// The CI build that made it.
    pub build: String,
}

impl VersionInfo {
    /// Reads `version.json` at `path` (baked into container images); without
    /// one, describes this build from what cargo knew at compile time.
    pub fn load(path: &std::path::Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| Self {
                source: "https://github.com/mozilla-services/addonreg".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                commit: option_env!("ADDONREG_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .into(),
                build: option_env!("ADDONREG_BUILD").unwrap_or("local").into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_the_build_and_reads_a_file() {
        let built = VersionInfo::load(std::path::Path::new("/nonexistent/version.json"));
        assert_eq!(built.version, env!("CARGO_PKG_VERSION"));
        let path = std::env::temp_dir().join(format!("version-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"source":"s","version":"v","commit":"c","build":"b"}"#,
        )
        .unwrap();
        assert_eq!(VersionInfo::load(&path).commit, "c");
        std::fs::remove_file(path).unwrap();
    }
}
