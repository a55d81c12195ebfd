//! How many workers, and where: timely's own flags, turned into its configuration.

use std::path::Path;

use super::RunError;

pub use crate::plan::Workers;

impl Workers {
    /// Timely's configuration for these flags.
    pub fn timely_config(&self) -> Result<timely::Config, RunError> {
        let threads = self.threads_per_process();
        let processes = self.processes.max(1);
        if self.process >= processes {
            return Err(RunError::Workers(format!(
                "--process {} is out of range for --processes {processes} (processes are numbered from 0)",
                self.process
            )));
        }
        if processes == 1 {
            return Ok(if threads == 1 {
                timely::Config::thread()
            } else {
                timely::Config::process(threads)
            });
        }
        let addresses = match &self.hostfile {
            Some(path) => read_hostfile(path, processes)?,
            None => (0..processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Reads one `host:port` per line (blank lines and `#` comments skipped); needs one per process.
fn read_hostfile(path: &Path, processes: usize) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Workers(format!("cannot read hostfile {}: {e}", path.display())))?;
    let hosts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if let Some(bad) = hosts.iter().find(|h| {
        h.rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    }) {
        return Err(RunError::Workers(format!(
            "hostfile {}: `{bad}` is not host:port",
            path.display()
        )));
    }
    if hosts.len() < processes {
        return Err(RunError::Workers(format!(
            "hostfile {} lists {} hosts but --processes is {processes}",
            path.display(),
            hosts.len()
        )));
    }
    Ok(hosts.into_iter().take(processes).collect())
}
