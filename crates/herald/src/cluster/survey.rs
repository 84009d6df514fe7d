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

/// An answer longer than about this goes in parts (NATS takes messages of
/// up to 1 MB by default).
pub(super) const PART_BYTES: usize = 256 * 1024;

/// Which part of whose answer a message is.
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub from: String,
    pub part: u32,
    pub parts: u32,
}

type Answers = mpsc::UnboundedSender<(Part, Answer)>;

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

    /// A part of a node's answer to survey `id` (dropped when that survey
    /// is over).
    pub(super) fn answered(&self, id: u64, part: Part, answer: Answer) {
        if let Some(tx) = self.pending.lock().get(&id) {
            let _ = tx.send((part, answer));
        }
    }
}

/// One survey under way.
pub(super) struct Pending<'a> {
    surveys: &'a Surveys,
    pub(super) id: u64,
    answers: mpsc::UnboundedReceiver<(Part, Answer)>,
}

impl Pending<'_> {
    /// The answers of the nodes that answered whole (each part once),
    /// until every node in `expected` has or the time is up. A node not
    /// expected (one that has just joined) counts when it answers
    /// meanwhile.
    pub(super) async fn gather(mut self, mut expected: HashSet<String>) -> Vec<Answer> {
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        // Each node's parts so far; a node's answer counts once whole.
        let mut heard: HashMap<String, HashMap<u32, Answer>> = HashMap::new();
        let mut answers = Vec::new();
        while !expected.is_empty() {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some((part, answer))) => {
                    let parts = heard.entry(part.from.clone()).or_default();
                    if parts.len() >= part.parts as usize {
                        continue; // Taken whole already.
                    }
                    parts.entry(part.part).or_insert(answer);
                    if parts.len() >= part.parts as usize {
                        answers.extend(parts.values().cloned());
                        expected.remove(&part.from);
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

/// `answer` in parts of about `max` bytes of channel names at most (one
/// part, maybe empty, at least).
pub(super) fn split(answer: Answer, max: usize) -> Vec<Answer> {
    let Answer::Channels { channels } = answer;
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for (name, n) in channels {
        // A name, its count and the JSON around them.
        let weight = name.len() + 24;
        if size + weight > max && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            size = 0;
        }
        size += weight;
        parts.last_mut().expect("one part at least").push((name, n));
    }
    parts
        .into_iter()
        .map(|channels| Answer::Channels { channels })
        .collect()
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

    fn counts(c: &[(&str, u64)]) -> Answer {
        Answer::Channels {
            channels: c.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        }
    }

    fn whole(from: &str) -> Part {
        Part {
            from: from.into(),
            part: 0,
            parts: 1,
        }
    }

    #[tokio::test]
    async fn answers_are_gathered_once_per_node_until_all_are_in() {
        let surveys = Surveys::default();
        let pending = surveys.open();
        let id = pending.id;
        surveys.answered(id, whole("b"), counts(&[("x", 2)]));
        surveys.answered(id, whole("b"), counts(&[("x", 50)]));
        surveys.answered(id, whole("new"), counts(&[("y", 1)]));
        surveys.answered(id + 1, whole("c"), counts(&[("x", 70)]));
        surveys.answered(id, whole("c"), counts(&[("x", 3), ("z", 1)]));
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

    #[tokio::test]
    async fn a_long_answer_goes_in_parts_and_is_taken_whole() {
        let many: Vec<(String, u64)> = (0..1000)
            .map(|i| (format!("chat:room-{i:04}"), 1))
            .collect();
        let parts = split(
            Answer::Channels {
                channels: many.clone(),
            },
            4096,
        );
        assert!(parts.len() > 5, "{} parts", parts.len());
        for part in &parts {
            let Answer::Channels { channels } = part;
            let size: usize = channels.iter().map(|(n, _)| n.len() + 24).sum();
            assert!(size <= 4096 && !channels.is_empty());
        }
        assert_eq!(split(Answer::Channels { channels: vec![] }, 4096).len(), 1);

        // Out of order, one part twice: the node counts once it is whole.
        let surveys = Surveys::default();
        let pending = surveys.open();
        let count = parts.len() as u32;
        let mut order: Vec<u32> = (0..count).rev().collect();
        order.insert(1, count - 1);
        for i in order {
            let part = Part {
                from: "b".into(),
                part: i,
                parts: count,
            };
            surveys.answered(pending.id, part, parts[i as usize].clone());
        }
        let answers = pending.gather(["b".to_string()].into()).await;
        assert_eq!(channels(answers).len(), many.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_does_not_answer_is_left_out_in_time() {
        let surveys = Surveys::default();
        let pending = surveys.open();
        surveys.answered(pending.id, whole("b"), counts(&[]));
        // Half an answer is no answer.
        let half = Part {
            from: "c".into(),
            part: 0,
            parts: 2,
        };
        surveys.answered(pending.id, half, counts(&[("x", 1)]));
        let started = tokio::time::Instant::now();
        let expected = ["b".to_string(), "c".to_string(), "gone".to_string()].into();
        let answers = pending.gather(expected).await;
        assert_eq!(answers, vec![counts(&[])], "only b's, whole");
        assert_eq!(started.elapsed(), SURVEY_TIMEOUT);
    }
}
