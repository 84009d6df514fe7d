use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;

use super::*;

#[derive(Default)]
struct Probe {
    key: u64,
    id: String,
    user: String,
    got: Mutex<Vec<Arc<Publication>>>,
    controls: Mutex<Vec<Control>>,
    presence: AtomicU64,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

fn probe(user: &str) -> Arc<Probe> {
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::new(Probe {
        key,
        id: format!("c{key}"),
        user: user.into(),
        ..Default::default()
    })
}

impl Client for Probe {
    fn key(&self) -> u64 {
        self.key
    }
    fn client_id(&self) -> &str {
        &self.id
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn deliver(&self, p: &Arc<Publication>) {
        self.got.lock().push(p.clone());
    }
    fn deliver_presence(&self, _: &Arc<PresenceEvent>) {
        self.presence.fetch_add(1, Ordering::Relaxed);
    }
    fn control(&self, c: Control) {
        self.controls.lock().push(c);
    }
}

fn publication(ch: &str) -> Arc<Publication> {
    Arc::new(Publication::new(
        Arc::from(ch),
        Bytes::from_static(b"{}"),
        None,
    ))
}

#[test]
fn fan_out_shares_one_publication() {
    let hub = Hub::new();
    let (a, b, c) = (probe("1"), probe("2"), probe("3"));
    assert!(hub.subscribe("news", a.clone(), false));
    assert!(!hub.subscribe("news", b.clone(), false));
    hub.subscribe("other", c.clone(), false);
    let p = publication("news");
    assert_eq!(hub.deliver(&p), 2);
    assert!(Arc::ptr_eq(&a.got.lock()[0], &b.got.lock()[0]));
    assert!(c.got.lock().is_empty());
    assert_eq!(hub.num_subscriptions(), 3);
    assert!(!hub.unsubscribe("news", a.key));
    assert!(hub.unsubscribe("news", b.key));
    assert_eq!(hub.deliver(&publication("news")), 0);
    assert_eq!(hub.num_channels(), 1);
}

#[test]
fn limits_per_node_and_user() {
    let hub = Hub::new();
    let (a1, a2, b) = (probe("a"), probe("a"), probe("b"));
    hub.add_client(a1.clone(), 2, 1).unwrap();
    assert_eq!(hub.add_client(a2.clone(), 2, 1), Err(Refused::UserLimit));
    hub.add_client(b.clone(), 2, 1).unwrap();
    assert_eq!(hub.add_client(probe("c"), 2, 1), Err(Refused::NodeLimit));
    assert_eq!(hub.num_clients(), 2);
    hub.remove_client(&*a1);
    hub.remove_client(&*a1);
    assert_eq!(hub.num_clients(), 1);
    hub.add_client(a2.clone(), 2, 1).unwrap();
    assert_eq!(hub.user_clients("a").len(), 1);
    assert_eq!(hub.client(a2.client_id()).unwrap().key(), a2.key);
    assert_eq!(hub.num_users(), 2);
}

#[test]
fn anonymous_connections_are_not_user_limited() {
    let hub = Hub::new();
    for _ in 0..3 {
        hub.add_client(probe(""), 0, 1).unwrap();
    }
    assert_eq!(hub.num_clients(), 3);
}

#[test]
fn presence_events_go_to_subscribers_that_asked() {
    let hub = Hub::new();
    let (a, b) = (probe("1"), probe("2"));
    hub.subscribe("room", a.clone(), true);
    hub.subscribe("room", b.clone(), false);
    let info = Arc::new(herald_protocol::ClientInfo::default());
    hub.deliver_presence(&Arc::new(PresenceEvent::new(Arc::from("room"), info, true)));
    assert_eq!(a.presence.load(Ordering::Relaxed), 1);
    assert_eq!(b.presence.load(Ordering::Relaxed), 0);
}
