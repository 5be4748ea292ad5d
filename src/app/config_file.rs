//! The config file the daemon runs from, and its one owner (the main loop): SIGHUP reads it again
//! ([`ConfigFile::reload`]); the console's rule editor reads a camera's perimeter from it and
//! saves a new one into it ([`ConfigFile::handle`]). Both apply what changed through
//! [`Daemon::reload`] ([`super::reload::ReloadPlan`]); both keep the running config when the new
//! one is refused.
//!
//! A save is checked before anything is written: the file on disk must still be the running one
//! (a hand edit not yet reloaded is a conflict, as is another editor's save since this one read
//! it); the camera's entries are changed in place ([`Perimeter::write_into`], comments kept); the
//! text that results must pass the same validation as `check-config` (each problem is mapped to
//! its shape) and change nothing that needs a restart. It is then written atomically (a
//! temporary file in the same directory, fsynced, renamed over the old one, with the old file's
//! mode), the previous file kept beside it as `<name>.bak`, and applied; if applying fails, the
//! previous file is put back.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use toml_edit::DocumentMut;
use tracing::{error, info, warn};

use super::Daemon;
use super::reload::ReloadPlan;
use crate::config::{Config, ConfigError};
use crate::control::{ConfigCommand, EditError, Perimeter, PerimeterView, Saved, ShapeProblem};
use crate::rules::edit::shape_at;
use crate::telemetry::config::{ReloadResult, reloaded};

/// The running config file: where it is and the text the running config came from.
pub struct ConfigFile {
    path: PathBuf,
    /// `None` when the file could not be read at the start (then nothing can be reloaded).
    text: Option<String>,
}

impl ConfigFile {
    /// The file the daemon was started from (read again now: the text to compare reloads with).
    pub fn open(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .inspect_err(|e| warn!(file = %path.display(), error = %e, "cannot read the config file again; reloads are refused until a restart"))
            .ok();
        Self {
            path: path.to_owned(),
            text,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SIGHUP: reads the file again and applies what can be applied live; an invalid file, or
    /// one that changes what needs a restart, is refused with its reasons. Counted in
    /// `kinderwatch_config_reloads_total{result}`.
    pub async fn reload(&mut self, daemon: &mut Daemon) {
        let file = self.path.clone();
        info!(file = %file.display(), "SIGHUP: reloading the config");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let result = async {
            // Read once: the text compared later is the text that was applied.
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            let base = file.parent().unwrap_or(Path::new("."));
            let new = Config::from_toml(&text, &file, base)?;
            let plan = self.plan(&text)?;
            if !plan.is_empty() {
                daemon.reload(new, &plan).await?;
            }
            Ok::<_, anyhow::Error>((text, plan))
        }
        .await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        match result {
            Ok((text, plan)) => {
                self.text = Some(text);
                if plan.is_empty() {
                    info!("config reloaded: nothing changed");
                    reloaded(ReloadResult::Unchanged);
                } else {
                    info!(rules = plan.rules, cameras = ?plan.cameras, added = ?plan.added,
                          removed = ?plan.removed, "config reloaded and applied");
                    reloaded(ReloadResult::Applied);
                }
            }
            Err(e) => {
                refused(&file, &e);
                reloaded(ReloadResult::Refused);
            }
        }
    }

    /// What changes from the running text to `text`.
    fn plan(&self, text: &str) -> anyhow::Result<ReloadPlan> {
        let old = self.text.as_deref().context(
            "the running file could not be read at the start; restart the service to apply changes",
        )?;
        let parse = |t: &str| {
            t.parse::<toml::Table>()
                .with_context(|| format!("{}: not valid TOML", self.path.display()))
        };
        Ok(ReloadPlan::between(&parse(old)?, &parse(text)?))
    }

    /// Answers one request of the console's editor.
    pub async fn handle(&mut self, daemon: &mut Daemon, command: ConfigCommand) {
        match command {
            ConfigCommand::GetPerimeter { camera, reply } => {
                let _ = reply.send(self.perimeter(daemon.config(), &camera));
            }
            ConfigCommand::SavePerimeter {
                camera,
                version,
                perimeter,
                reply,
            } => {
                let outcome = self.save(daemon, &camera, &version, &perimeter).await;
                match &outcome {
                    Ok(saved) if saved.changed => {
                        info!(camera = %camera, file = %self.path.display(), "perimeter saved from the console and applied");
                        reloaded(ReloadResult::Applied);
                    }
                    Ok(_) => reloaded(ReloadResult::Unchanged),
                    Err(e) => {
                        warn!(camera = %camera, error = %e, "perimeter from the console refused; the running config stays");
                        reloaded(ReloadResult::Refused);
                    }
                }
                let _ = reply.send(outcome);
            }
        }
    }

    fn perimeter(&self, config: &Config, camera: &str) -> Result<PerimeterView, EditError> {
        let text = self.running_text()?;
        let cam = config
            .cameras
            .iter()
            .find(|c| c.id == camera)
            .ok_or_else(|| EditError::NoSuchCamera(camera.to_owned()))?;
        Ok(PerimeterView::new(
            version(text),
            Perimeter::of(&config.zones, &cam.object_masks, &config.rules, camera),
        ))
    }

    fn running_text(&self) -> Result<&str, EditError> {
        self.text.as_deref().ok_or_else(|| {
            EditError::Conflict(format!(
                "{} could not be read when the daemon started; restart the service to edit it",
                self.path.display()
            ))
        })
    }

    async fn save(
        &mut self,
        daemon: &mut Daemon,
        camera: &str,
        from_version: &str,
        perimeter: &Perimeter,
    ) -> Result<Saved, EditError> {
        let running = self.running_text()?.to_owned();
        if !daemon.config().cameras.iter().any(|c| c.id == camera) {
            return Err(EditError::NoSuchCamera(camera.to_owned()));
        }
        let on_disk = std::fs::read_to_string(&self.path)
            .map_err(|e| EditError::Failed(format!("cannot read {}: {e}", self.path.display())))?;
        if on_disk != running {
            return Err(EditError::Conflict(format!(
                "{} was changed on disk and not reloaded; reload it (systemctl reload kinderwatch) or undo that change, then edit again",
                self.path.display()
            )));
        }
        if from_version != version(&running) {
            return Err(EditError::Conflict(
                "the config was changed since this editor opened it; open the editor again to see the change".into(),
            ));
        }
        if let Some(twice) = perimeter.duplicate() {
            return Err(EditError::Invalid(vec![ShapeProblem {
                path: String::new(),
                message: format!("{twice}; give each shape its own name"),
                shape: None,
            }]));
        }
        let mut doc: DocumentMut = running
            .parse()
            .map_err(|e| EditError::Failed(format!("{}: {e}", self.path.display())))?;
        perimeter
            .write_into(&mut doc, camera)
            .map_err(|why| EditError::Failed(format!("{}: {why}", self.path.display())))?;
        let text = doc.to_string();
        if text == running {
            return Ok(Saved {
                version: version(&running),
                changed: false,
            });
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let new =
            Config::from_toml(&text, &self.path, base).map_err(|e| invalid(&e, &text, camera))?;
        let plan = self
            .plan(&text)
            .map_err(|e| EditError::Failed(e.to_string()))?;
        if !plan.restart.is_empty() {
            return Err(EditError::NeedsRestart(plan.restart));
        }
        let backup =
            write_atomically(&self.path, &text).map_err(|e| EditError::Failed(format!("{e:#}")))?;
        if let Err(e) = daemon.reload(new, &plan).await {
            let target = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
            return Err(match std::fs::copy(&backup, &target) {
                Ok(_) => {
                    error!(file = %self.path.display(), error = %e, "the saved perimeter could not be applied; the previous file is back");
                    EditError::Failed(format!("not applied ({e:#}); the previous file is back"))
                }
                Err(restore) => {
                    // The file on disk is the new one, the running config the old: the next
                    // save sees the difference as a conflict; SIGHUP would apply the new one.
                    error!(file = %self.path.display(), error = %e, restore_error = %restore, backup = %backup.display(), "the saved perimeter could not be applied, and the previous file could not be put back");
                    EditError::Failed(format!(
                        "not applied ({e:#}), and the previous file could not be put back ({restore}): copy {} over {} by hand",
                        backup.display(),
                        self.path.display()
                    ))
                }
            });
        }
        self.text = Some(text);
        Ok(Saved {
            version: version(self.text.as_deref().unwrap_or_default()),
            changed: true,
        })
    }
}

/// The version the editor sees: the SHA-256 of the file's text, in hex.
fn version(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Each problem of a refused config, with the edited camera's shape it is in.
fn invalid(e: &ConfigError, text: &str, camera: &str) -> EditError {
    let doc: Option<DocumentMut> = text.parse().ok();
    EditError::Invalid(
        e.problems
            .iter()
            .map(|p| ShapeProblem {
                path: p.path.clone(),
                message: p.message.clone(),
                shape: doc.as_ref().and_then(|d| shape_at(d, camera, &p.path)),
            })
            .collect(),
    )
}

/// Writes `text` over `file` atomically (temporary file, fsync, rename, fsync of the directory),
/// with the old file's permissions; the old file is kept as `<file>.bak`. The backup's path.
fn write_atomically(file: &Path, text: &str) -> anyhow::Result<PathBuf> {
    // Through a symbolic link, the file it points to is replaced (not the link).
    let resolved = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let file = resolved.as_path();
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .context("the config path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let backup = dir.join(format!("{name}.bak"));
    let cannot = |what: &str| {
        format!(
            "cannot {what} in {} (the service user needs write access to that directory to save from the console)",
            dir.display()
        )
    };
    let permissions = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .permissions();
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(permissions)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| cannot("write a temporary file"));
    }
    let _ = std::fs::remove_file(&backup);
    if let Err(e) =
        std::fs::hard_link(file, &backup).or_else(|_| std::fs::copy(file, &backup).map(|_| ()))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| cannot("keep the previous file as a backup"));
    }
    if let Err(e) = std::fs::rename(&tmp, file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| cannot("replace the config file"));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(backup)
}

/// Logs why a reload was refused: an invalid file's problems one per line, with their key paths.
fn refused(file: &Path, e: &anyhow::Error) {
    if let Some(invalid) = e.downcast_ref::<ConfigError>() {
        for p in &invalid.problems {
            error!(file = %file.display(), problem = %p, "config reload refused; the running config stays");
        }
    } else {
        error!(file = %file.display(), error = %e, "config reload refused; the running config stays");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_keeps_the_mode_and_a_backup() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("site.toml");
        std::fs::write(&file, "old = 1\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let backup = write_atomically(&file, "new = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new = 2\n");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), "old = 1\n");
        assert_eq!(backup, dir.path().join("site.toml.bak"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // No temporary file is left.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn through_a_symbolic_link_the_target_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        std::fs::write(&real, "old = 1\n").unwrap();
        let link = dir.path().join("kinderwatch.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, "new = 2\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new = 2\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("real.toml.bak")).unwrap(),
            "old = 1\n"
        );
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_named() {
        let err = write_atomically(Path::new("/proc/kinderwatch-test.toml"), "x").unwrap_err();
        assert!(format!("{err:#}").contains("/proc"), "{err:#}");
    }
}
