//! `lb cleanup`: an instance stops forwarding for good. Its XDP is
//! detached and its pins removed; in a cluster, the node leaves it (the
//! other nodes forget it rather than show it lost).

use anyhow::Context as _;

use crate::{cluster::store::Store, config::Config};

pub fn cleanup(config: &Config) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(&config.api_socket).is_ok() {
        anyhow::bail!(
            "the agent of instance {} is running (it answers on {}): stop it first",
            config.instance,
            config.api_socket.display()
        );
    }
    let dir = super::pin_dir(&config.instance);
    if dir.exists() {
        // The link pins go with it: nothing holds the XDP links then, and
        // the program is detached.
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("XDP detached from {}; removed {}", config.interfaces.join(", "), dir.display());
    }
    let Some(cluster) = &config.cluster else { return Ok(()) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async { Store::connect(cluster).await?.leave(&cluster.node).await }).with_context(|| {
        format!(
            "cannot tell the cluster store that node {} left: the other nodes show it gone (and alert) \
                 until it does; run lb cleanup again once the store answers",
            cluster.node
        )
    })?;
    println!("node {} left the cluster: the other nodes no longer show it", cluster.node);
    Ok(())
}
