//! The relay's data plane loaded into a test bed, with pins in a bpffs
//! directory of its own that is removed on drop.

use std::{
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use media_user::dataplane::{DataPlane, Options, XdpMode};

use crate::bed::Bed;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A [`DataPlane`] whose pinned maps are deleted when it is dropped.
pub struct Relay {
    dp: Option<DataPlane>,
}

impl Relay {
    /// Load the relay program in the bed's relay namespace with a fresh pin
    /// directory and attach it to `ra` and `rb` in `mode`.
    pub fn start(bed: &Bed, mode: XdpMode, max_flows: u32) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/media-relay-test-{}-{n}",
            std::process::id()
        ));
        let root = pin_root.clone();
        let dp = bed.relay.enter(move || {
            let mut dp = DataPlane::load(&Options {
                pin_root,
                max_flows,
            })?;
            dp.attach("ra", mode)?;
            dp.attach("rb", mode)?;
            // The tests drive the data plane themselves: they are its
            // running controller, for as long as they hold it.
            dp.heartbeat(std::time::Duration::from_secs(24 * 3600), (0, 0), false);
            Ok(dp)
        });
        match dp {
            Ok(dp) => Ok(Self { dp: Some(dp) }),
            Err(e) => {
                // A failed load may already have created (and pinned) maps.
                let _ = std::fs::remove_dir_all(&root);
                Err(e)
            }
        }
    }
}

impl Deref for Relay {
    type Target = DataPlane;
    fn deref(&self) -> &DataPlane {
        self.dp.as_ref().expect("present until drop")
    }
}

impl DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut DataPlane {
        self.dp.as_mut().expect("present until drop")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take()
            && let Err(e) = dp.teardown()
        {
            eprintln!("warning: could not remove test pins: {e}");
        }
    }
}
