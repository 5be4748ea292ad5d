//! Run-time arming choices (arm, disarm from the API or MQTT), kept in the state directory so that
//! they survive a restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why the arming choices were not loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ArmingError {
    #[error("{}: not valid arming state ({source}); delete it to reset", path.display())]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Run-time arming choices, saved as JSON in the state directory (written atomically).
#[derive(Debug, Clone)]
pub struct ArmingStore {
    path: PathBuf,
}

impl ArmingStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("arming.json"),
        }
    }

    pub fn load(&self) -> Result<BTreeMap<String, bool>, ArmingError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ArmingError::Invalid {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(self.io(source)),
        }
    }

    pub fn save(&self, state: &BTreeMap<String, bool>) -> Result<(), ArmingError> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state).expect("a map of bools serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> ArmingError {
        ArmingError::Io {
            path: self.path.clone(),
            source,
        }
    }
}
