//! Run-time arming choices (arm, disarm from the API or MQTT), kept in the state directory so that
//! they survive a restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

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

    pub fn load(&self) -> Result<BTreeMap<String, bool>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: not valid arming state ({e}); delete it to reset",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    pub fn save(&self, state: &BTreeMap<String, bool>) -> Result<(), String> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state).expect("a map of bools serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
