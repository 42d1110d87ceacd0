//! `cargo xtask install`: the agent's binary, its systemd unit and the
//! README, where the unit expects them.

use std::path::Path;

use anyhow::Context as _;

const BINARY: &str = "/usr/local/bin/lb";
const UNIT: &str = "/etc/systemd/system/lb@.service";
const DOC: &str = "/usr/local/share/doc/lb/README.md";
const CONFIG_DIR: &str = "/etc/lb";

pub fn install(lb: &Path) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    copy(lb, BINARY, 0o755)?;
    copy(&root.join("lb-userspace/systemd/lb@.service"), UNIT, 0o644)?;
    copy(&root.join("README.md"), DOC, 0o644)?;
    std::fs::create_dir_all(CONFIG_DIR).with_context(|| format!("cannot create {CONFIG_DIR}"))?;
    if Path::new("/run/systemd/system").exists() {
        let status = std::process::Command::new("systemctl").arg("daemon-reload").status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("install: systemctl daemon-reload failed; run it yourself");
        }
    }
    println!(
        "installed {BINARY} and {UNIT}.\n\
         Write an instance's config to {CONFIG_DIR}/NAME.toml (check it: lb agent --check --config {CONFIG_DIR}/NAME.toml),\n\
         then: systemctl enable --now lb@NAME\n\
         Restarting or stopping the unit leaves forwarding running; to stop forwarding for good:\n\
         systemctl stop lb@NAME && lb cleanup --config {CONFIG_DIR}/NAME.toml"
    );
    Ok(())
}

fn copy(from: &Path, to: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = Path::new(to).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Through a temporary name: a running binary cannot be written over.
    let tmp = format!("{to}.new");
    std::fs::copy(from, &tmp).with_context(|| format!("cannot copy {} to {tmp}", from.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot install {to}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_runs_the_installed_binary_on_the_instances_config() {
        let unit = include_str!("../../lb-userspace/systemd/lb@.service");
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        assert_eq!(exec, format!("{} agent --config {}/%i.toml", super::BINARY, super::CONFIG_DIR));
        assert!(unit.contains("KillMode=process"), "only the agent is signalled");
        assert!(unit.contains("\nType=notify\n"), "started once the agent says it serves");
        let reload = unit.lines().find_map(|l| l.strip_prefix("ExecReload=")).expect("ExecReload");
        assert_eq!(reload, format!("{} reload --config {}/%i.toml --this-node", super::BINARY, super::CONFIG_DIR));
    }
}
