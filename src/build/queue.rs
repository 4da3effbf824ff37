//! The build queue: builds take their place when queued and get a slot in that order, within the
//! global limit and their project's own. A project at its limit does not hold up the others.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::model::BuildId;

/// A queued build's place (1: the next to run), the builds ahead of it, and what holds it back.
#[derive(Debug, serde::Serialize, PartialEq, Eq)]
pub struct Waiting {
    pub place: usize,
    pub ahead: usize,
    pub reason: String,
}

pub struct Queue {
    state: Mutex<State>,
    changed: Notify,
    limit: usize,
    project_limits: HashMap<String, usize>,
}

#[derive(Default)]
struct State {
    /// Queued builds in queue order (ids grow with time), with their project.
    waiting: BTreeSet<(BuildId, String)>,
    running: usize,
    running_per_project: HashMap<String, usize>,
}

/// A build's slot; given back when dropped.
pub struct Slot {
    queue: Arc<Queue>,
    project: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock().expect("not poisoned");
        state.running -= 1;
        *state.running_per_project.entry(self.project.clone()).or_default() -= 1;
        drop(state);
        self.queue.changed.notify_waiters();
    }
}

/// A build's place in the queue; leaving it (a cancel) lets the next one through.
pub struct Place {
    queue: Arc<Queue>,
    key: Option<(BuildId, String)>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.state.lock().expect("not poisoned").waiting.remove(&key);
            self.queue.changed.notify_waiters();
        }
    }
}

impl Queue {
    /// `limit` builds at once; a project in `project_limits` at most that many of them.
    pub fn new(limit: usize, project_limits: HashMap<String, usize>) -> Arc<Self> {
        Arc::new(Self { state: Mutex::default(), changed: Notify::new(), limit, project_limits })
    }

    /// Takes a place at the end of the queue (call when the build is queued).
    pub fn enter(self: &Arc<Self>, id: BuildId, project: &str) -> Place {
        let key = (id, project.to_string());
        self.state.lock().expect("not poisoned").waiting.insert(key.clone());
        Place { queue: self.clone(), key: Some(key) }
    }

    /// Waits until this place is the first that may run, then trades it for a slot.
    pub async fn slot(self: &Arc<Self>, mut place: Place) -> Slot {
        let key = place.key.clone().expect("a place is used once");
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("not poisoned");
                if self.next_to_run(&state).as_ref() == Some(&key) {
                    state.waiting.remove(&key);
                    state.running += 1;
                    *state.running_per_project.entry(key.1.clone()).or_default() += 1;
                    place.key = None;
                    return Slot { queue: self.clone(), project: key.1 };
                }
            }
            notified.await;
        }
    }

    /// A slot at once, beyond the limit if need be: for builds re-attached after a restart,
    /// whose containers already run.
    pub fn slot_now(self: &Arc<Self>, project: &str) -> Slot {
        let mut state = self.state.lock().expect("not poisoned");
        state.running += 1;
        *state.running_per_project.entry(project.to_string()).or_default() += 1;
        Slot { queue: self.clone(), project: project.to_string() }
    }

    /// (queued, running) builds.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().expect("not poisoned");
        (state.waiting.len(), state.running)
    }

    /// Why the queued build `id` waits, in words; None when it is not in the queue.
    pub fn why_waiting(&self, id: BuildId) -> Option<Waiting> {
        let state = self.state.lock().expect("not poisoned");
        let (ahead, (_, project)) = state.waiting.iter().enumerate().find(|(_, (queued, _))| *queued == id)?;
        let project_limit = self.project_limits.get(project).copied().unwrap_or(usize::MAX);
        let reason = if state.running >= self.limit {
            format!("all {} build slots are busy ([builds] concurrency)", self.limit)
        } else if state.running_per_project.get(project).copied().unwrap_or(0) >= project_limit {
            format!("project {project} runs its limit of {project_limit} builds at once")
        } else {
            "starting".to_string()
        };
        Some(Waiting { place: ahead + 1, ahead, reason })
    }

    /// The oldest waiting build that may start now.
    fn next_to_run(&self, state: &State) -> Option<(BuildId, String)> {
        if state.running >= self.limit {
            return None;
        }
        state
            .waiting
            .iter()
            .find(|(_, project)| {
                let limit = self.project_limits.get(project).copied().unwrap_or(usize::MAX);
                state.running_per_project.get(project).copied().unwrap_or(0) < limit
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn started(queue: &Arc<Queue>, place: Place) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), queue.slot(place)).await.ok()
    }

    #[tokio::test]
    async fn builds_run_in_queue_order_within_the_limits() {
        let queue = Queue::new(2, HashMap::from([("busy".to_string(), 1)]));
        let places: Vec<Place> = [(1, "busy"), (2, "busy"), (3, "other"), (4, "other")]
            .into_iter()
            .map(|(id, project)| queue.enter(BuildId(id), project))
            .collect();
        let mut places = places.into_iter();
        let (p1, p2, p3, p4) =
            (places.next().unwrap(), places.next().unwrap(), places.next().unwrap(), places.next().unwrap());

        let s1 = started(&queue, p1).await.expect("first in line");
        // 2 waits for its project's only slot; 3 may pass it.
        let waiting2 = tokio::spawn({
            let queue = queue.clone();
            async move { queue.slot(p2).await }
        });
        let s3 = started(&queue, p3).await.expect("another project passes the busy one");
        assert_eq!(queue.counts(), (2, 2));
        let busy = queue.why_waiting(BuildId(2)).unwrap();
        assert_eq!((busy.place, busy.ahead), (1, 0));
        assert!(busy.reason.contains("build slots are busy"), "{}", busy.reason);
        assert_eq!(queue.why_waiting(BuildId(4)).unwrap().place, 2);
        assert!(queue.why_waiting(BuildId(1)).is_none(), "a running build is not waiting");
        // 4 must wait: the global limit is reached.
        let waiting4 = tokio::spawn({
            let queue = queue.clone();
            async move { queue.slot(p4).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting4.is_finished() && !waiting2.is_finished());
        drop(s1); // 2 is next in line and its project is free now
        let _s2 = waiting2.await.unwrap();
        assert!(!waiting4.is_finished());
        drop(s3);
        let _s4 = waiting4.await.unwrap();
        assert_eq!(queue.counts(), (0, 2));
    }

    #[tokio::test]
    async fn leaving_the_queue_lets_the_next_one_through() {
        let queue = Queue::new(1, HashMap::new());
        let running = queue.slot_now("p");
        let first = queue.enter(BuildId(1), "p");
        let second = queue.enter(BuildId(2), "p");
        drop(first); // cancelled while queued
        drop(running);
        assert!(started(&queue, second).await.is_some());
    }
}
