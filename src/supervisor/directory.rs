//! A live view of the agent list for readers that outlive a reload (the control server, the
//! dashboard): the list changes only when a reload adds or removes agents.

use std::sync::Arc;

use tokio::sync::watch;

use crate::agent::AgentHandle;

#[derive(Clone)]
pub struct AgentDirectory {
    agents: watch::Receiver<Arc<Vec<AgentHandle>>>,
}

impl AgentDirectory {
    pub(super) fn new(agents: watch::Receiver<Arc<Vec<AgentHandle>>>) -> Self {
        Self { agents }
    }

    /// A directory that never changes, for servers started over a fixed set of agents.
    pub fn fixed(agents: Vec<AgentHandle>) -> Self {
        let (sender, agents) = watch::channel(Arc::new(agents));
        // Dropping the sender freezes the value; readers keep seeing it.
        drop(sender);
        Self { agents }
    }

    /// The agents as they are now, in order.
    pub fn current(&self) -> Arc<Vec<AgentHandle>> {
        self.agents.borrow().clone()
    }

    pub fn find(&self, id: &str) -> Option<AgentHandle> {
        self.current()
            .iter()
            .find(|agent| agent.id() == id)
            .cloned()
    }
}
