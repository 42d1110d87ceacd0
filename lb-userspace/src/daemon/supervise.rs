//! Who watches the agent's parts: the owner's thread and every task. None
//! of them may end before the agent is told to stop; if one does (a panic,
//! a loop that returned), the agent must not go on answering reads from a
//! frozen snapshot while deadlines and sweeps have stopped. It stops with
//! the cause, and exits non-zero: forwarding goes on (XDP stays attached
//! with the states as they are), and systemd starts it again.

use std::{collections::HashMap, future::Future};

use tokio::{
    sync::oneshot,
    task::{Id, JoinSet},
};

/// The agent's tasks, by name, and the owner's thread's end.
pub struct Parts {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    owner_ended: oneshot::Receiver<()>,
}

/// Held by the owner's thread: dropped when the thread ends, by a return
/// or by a panic.
pub struct OwnerAlive(#[allow(dead_code, reason = "held for its drop")] oneshot::Sender<()>);

impl Parts {
    pub fn new() -> (Parts, OwnerAlive) {
        let (alive, owner_ended) = oneshot::channel();
        (Parts { tasks: JoinSet::new(), names: HashMap::new(), owner_ended }, OwnerAlive(alive))
    }

    /// Runs `task` on the runtime as one of the agent's parts.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for `stop` (a signal); returns the cause if a part ended first.
    pub async fn until(&mut self, stop: impl Future<Output = ()>) -> Result<(), String> {
        tokio::select! {
            () = stop => Ok(()),
            _ = &mut self.owner_ended => Err("the owner of the state stopped (its thread ended)".to_owned()),
            Some(ended) = self.tasks.join_next_with_id() => Err(match ended {
                Ok((id, ())) => format!("the {} task ended", self.name(id)),
                Err(e) if e.is_panic() => format!("the {} task panicked: {}", self.name(e.id()), panic_text(e.into_panic())),
                Err(e) => format!("the {} task was cancelled", self.name(e.id())),
            }),
        }
    }

    /// After shutdown was sent: waits for every task to end.
    pub async fn join_all(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unknown")
    }
}

pub fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn never() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_stop_signal_ends_the_watch_without_a_fault() {
        let (mut parts, _alive) = Parts::new();
        parts.spawn("api", never());
        assert_eq!(parts.until(std::future::ready(())).await, Ok(()));
    }

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_a_fault_named_with_its_cause() {
        let (mut parts, _alive) = Parts::new();
        parts.spawn("api", never());
        parts.spawn("reset requests", async {});
        assert_eq!(parts.until(never()).await, Err("the reset requests task ended".to_owned()));

        let (mut parts, _alive) = Parts::new();
        parts.spawn("health monitors", async { panic!("a bug") });
        assert_eq!(parts.until(never()).await, Err("the health monitors task panicked: a bug".to_owned()));
    }

    #[tokio::test]
    async fn the_owners_thread_panicking_is_a_fault() {
        let (mut parts, alive) = Parts::new();
        parts.spawn("api", never());
        let owner = std::thread::spawn(move || {
            let _alive = alive;
            std::thread::sleep(Duration::from_millis(10));
            panic!("the owner's bug");
        });
        let ended = tokio::time::timeout(Duration::from_secs(60), parts.until(never())).await;
        assert_eq!(ended.expect("noticed"), Err("the owner of the state stopped (its thread ended)".to_owned()));
        assert_eq!(panic_text(owner.join().unwrap_err()), "the owner's bug");
    }
}
