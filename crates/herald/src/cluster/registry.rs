//! The other nodes this one has heard from recently: the node list of
//! `info`, and the nodes a survey waits for.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::wire::control::NodeInfo;

#[derive(Default)]
pub(super) struct Registry {
    nodes: Mutex<HashMap<String, Heard>>,
}

/// What a node said of itself last, and when.
struct Heard {
    info: NodeInfo,
    /// It answers surveys.
    surveys: bool,
    at: Instant,
}

impl Registry {
    pub(super) fn seen(&self, info: NodeInfo, surveys: bool) {
        let heard = Heard {
            surveys,
            at: Instant::now(),
            info,
        };
        self.nodes.lock().insert(heard.info.uid.clone(), heard);
    }

    pub(super) fn forget(&self, uid: &str) {
        self.nodes.lock().remove(uid);
    }

    /// Nodes heard from within `max_silence`, by name; older entries are
    /// dropped.
    pub(super) fn alive(&self, max_silence: Duration) -> Vec<NodeInfo> {
        let mut out: Vec<NodeInfo> = self
            .live(max_silence)
            .into_iter()
            .map(|(info, _)| info)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The uids of the live nodes that answer surveys.
    pub(super) fn surveyed(&self, max_silence: Duration) -> HashSet<String> {
        self.live(max_silence)
            .into_iter()
            .filter(|(_, surveys)| *surveys)
            .map(|(info, _)| info.uid)
            .collect()
    }

    fn live(&self, max_silence: Duration) -> Vec<(NodeInfo, bool)> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, heard| heard.at.elapsed() <= max_silence);
        nodes
            .values()
            .map(|h| (h.info.clone(), h.surveys))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uid: &str) -> NodeInfo {
        NodeInfo {
            uid: uid.into(),
            name: uid.into(),
            version: "0".into(),
            num_clients: 0,
            num_users: 0,
            num_channels: 0,
            num_subs: 0,
            uptime: 0,
            num_publications: 0,
        }
    }

    #[test]
    fn silent_nodes_drop_out() {
        let r = Registry::default();
        r.seen(info("a"), true);
        assert_eq!(r.alive(Duration::from_secs(60)), vec![info("a")]);
        r.forget("a");
        assert!(r.alive(Duration::from_secs(60)).is_empty());
        r.seen(info("a"), true);
        assert!(r.alive(Duration::ZERO).is_empty());
    }

    #[test]
    fn only_nodes_that_answer_surveys_are_waited_for() {
        let r = Registry::default();
        r.seen(info("new"), true);
        r.seen(info("old"), false);
        assert_eq!(r.alive(Duration::from_secs(60)).len(), 2);
        let surveyed = r.surveyed(Duration::from_secs(60));
        assert_eq!(surveyed, HashSet::from(["new".to_string()]));
    }
}
