//! Surveys: a question put to every other node of the cluster, answered by
//! each over the control channel, the answers gathered — for figures no one
//! node holds, such as how many subscribers a channel has across the
//! cluster. The asking node waits for the nodes it knows to be alive, up to
//! [`SURVEY_TIMEOUT`]; one that does not answer in time is left out, and
//! the log says so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::hub::Hub;
pub(super) use crate::wire::control::Answer;
use crate::wire::control::Question;

/// Longest wait for the other nodes' answers.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(2);

type Answers = mpsc::UnboundedSender<(String, Answer)>;

/// The surveys this node has under way.
#[derive(Default)]
pub(super) struct Surveys {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Answers>>,
}

impl Surveys {
    /// A new survey, taking answers until it is dropped.
    pub(super) fn open(&self) -> Pending<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, answers) = mpsc::unbounded_channel();
        self.pending.lock().insert(id, tx);
        Pending {
            surveys: self,
            id,
            answers,
        }
    }

    /// Node `from`'s answer to survey `id` (dropped when that survey is
    /// over).
    pub(super) fn answered(&self, id: u64, from: String, answer: Answer) {
        if let Some(tx) = self.pending.lock().get(&id) {
            let _ = tx.send((from, answer));
        }
    }
}

/// One survey under way.
pub(super) struct Pending<'a> {
    surveys: &'a Surveys,
    pub(super) id: u64,
    answers: mpsc::UnboundedReceiver<(String, Answer)>,
}

impl Pending<'_> {
    /// The answers, one per node, until every node in `expected` has
    /// answered or the time is up. A node not expected (one that has just
    /// joined) counts when it answers meanwhile.
    pub(super) async fn gather(mut self, mut expected: HashSet<String>) -> Vec<Answer> {
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        let mut heard = HashSet::new();
        let mut answers = Vec::new();
        while !expected.is_empty() {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some((from, answer))) => {
                    expected.remove(&from);
                    if heard.insert(from) {
                        answers.push(answer);
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        missing = expected.len(),
                        "survey: nodes did not answer in time; left out"
                    );
                    break;
                }
            }
        }
        answers
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.surveys.pending.lock().remove(&self.id);
    }
}

/// This node's answer to `question`.
pub(super) fn answer(hub: &Hub, question: &Question) -> Answer {
    match question {
        Question::Channels { prefix } => Answer::Channels {
            channels: hub
                .channels()
                .into_iter()
                .filter(|(name, _)| name.starts_with(prefix.as_str()))
                .map(|(name, n)| (name, n as u64))
                .collect(),
        },
        Question::Subscribers { channels } => Answer::Channels {
            channels: channels
                .iter()
                .map(|name| (name.clone(), hub.subscribers(name) as u64))
                .filter(|(_, n)| *n > 0)
                .collect(),
        },
    }
}

/// The subscribers of each channel, summed over the nodes' answers.
pub(super) fn channels(answers: Vec<Answer>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for answer in answers {
        let Answer::Channels { channels } = answer;
        for (name, n) in channels {
            *out.entry(name).or_insert(0) += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_gathered_once_per_node_until_all_are_in() {
        let surveys = Surveys::default();
        let pending = surveys.open();
        let id = pending.id;
        let counts = |c: &[(&str, u64)]| Answer::Channels {
            channels: c.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        };
        surveys.answered(id, "b".into(), counts(&[("x", 2)]));
        surveys.answered(id, "b".into(), counts(&[("x", 50)]));
        surveys.answered(id, "new".into(), counts(&[("y", 1)]));
        surveys.answered(id + 1, "c".into(), counts(&[("x", 70)]));
        surveys.answered(id, "c".into(), counts(&[("x", 3), ("z", 1)]));
        let expected = ["b".to_string(), "c".to_string()].into();
        let answers = pending.gather(expected).await;
        assert_eq!(answers.len(), 3);
        let mut all = answers;
        all.push(counts(&[("x", 1)]));
        let summed = channels(all);
        let want: BTreeMap<String, u64> =
            [("x".into(), 6), ("y".into(), 1), ("z".into(), 1)].into();
        assert_eq!(summed, want);
        assert!(surveys.pending.lock().is_empty(), "over once gathered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_does_not_answer_is_left_out_in_time() {
        let surveys = Surveys::default();
        let pending = surveys.open();
        surveys.answered(
            pending.id,
            "b".into(),
            Answer::Channels { channels: vec![] },
        );
        let started = tokio::time::Instant::now();
        let expected = ["b".to_string(), "gone".to_string()].into();
        let answers = pending.gather(expected).await;
        assert_eq!(answers.len(), 1);
        assert_eq!(started.elapsed(), SURVEY_TIMEOUT);
    }
}
