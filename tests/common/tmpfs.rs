//! A small tmpfs that tests can fill to the last byte: the real "disk full".
//! Mounting needs root (CI runs as root); without it a test skips, saying so.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    /// Holds the mount point; removed after the unmount.
    _parent: tempfile::TempDir,
    mount_point: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB, or `None` (with a message on stderr)
    /// when mounting is impossible here.
    pub fn mount(size_mib: u32) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().expect("tempdir");
        let mount_point = parent.path().join("disk");
        std::fs::create_dir(&mount_point).expect("create mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&mount_point)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                _parent: parent,
                mount_point,
            }),
            Ok(output) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("SKIPPED: cannot run mount: {error}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Fills the file system to the last byte with `filler`; returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.mount_point.join("filler");
        let mut file = File::create(&path).expect("create filler");
        let mut chunk = vec![0xA5u8; 1 << 20];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => {
                    if chunk.len() == 1 {
                        break;
                    }
                    let half = chunk.len() / 2;
                    chunk.truncate(half);
                }
                Err(error) => panic!("fill tmpfs: {error}"),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a child process still holding a file must not fail the test.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}
