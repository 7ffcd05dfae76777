//! The live generation of a model kept in a local file (for models whose backend cannot hold it in a
//! transaction of its own): written to a temporary file, synced, and renamed over the old one, so a reader
//! sees the old number or the new one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `DIR/<name>.generation`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.generation"))
}

/// The generation in `file`, 1 when there is none yet.
pub fn read(file: &Path) -> std::io::Result<u32> {
    match std::fs::read_to_string(file) {
        Ok(s) => s.trim().parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} holds {s:?}, not a generation number: {e}",
                    file.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
        Err(e) => Err(e),
    }
}

pub fn write(file: &Path, generation: u32) -> std::io::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = file.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{generation}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    if let Some(parent) = file.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// [`read`] as a family's `active_generation` answers it.
pub fn live(file: &Path) -> Result<u32, crate::runner::ProjectionError> {
    read(file).map_err(|e| {
        crate::runner::ProjectionError::Failed(format!("reading the live generation: {e}"))
    })
}

/// [`write`] as a family's `promote` answers it.
pub fn promote(file: &Path, generation: u32) -> Result<(), crate::runner::ProjectionError> {
    write(file, generation).map_err(|e| {
        crate::runner::ProjectionError::Failed(format!(
            "writing the live generation to {}: {e}",
            file.display()
        ))
    })
}

/// `active_generation` and `promote` of a [`Family`](crate::runner::Family) whose live generation is the
/// pointer file at `self.$file` ([`live`], [`promote`]): one pointer for every log, so the genesis is not
/// asked.
macro_rules! family_generations {
    ($file:ident) => {
        fn active_generation(
            &self,
            _genesis: Option<&str>,
        ) -> crate::runner::BoxFuture<'_, Result<u32, crate::runner::ProjectionError>> {
            Box::pin(async move { crate::pointer::live(&self.$file) })
        }

        fn promote(
            &self,
            generation: u32,
            _genesis: Option<&str>,
        ) -> crate::runner::BoxFuture<'_, Result<(), crate::runner::ProjectionError>> {
            Box::pin(async move { crate::pointer::promote(&self.$file, generation) })
        }
    };
}
pub(crate) use family_generations;

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_pointer_is_generation_one_and_writes_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = super::path(dir.path(), "influx");
        assert_eq!(super::read(&f).unwrap(), 1);
        super::write(&f, 3).unwrap();
        assert_eq!(super::read(&f).unwrap(), 3);
        std::fs::write(&f, "x").unwrap();
        assert!(super::read(&f).is_err());
    }
}
