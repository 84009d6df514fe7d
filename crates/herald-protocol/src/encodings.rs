//! A message's encodings, kept beside it. Each wire format turns a message
//! into a frame once, when the first receiver speaking that format needs it;
//! every other receiver in that format gets the same frame. The cache knows
//! no format: a format is a type implementing [`Format`], defined where its
//! frames are defined (the transport's text frame for JSON, say), so adding
//! one changes nothing here or in whoever hands messages around.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

/// How many formats one message keeps at once. A message wanted in more
/// formats than this is encoded again for each further receiver: correct,
/// only slower.
const SLOTS: usize = 4;

/// A wire format for messages of type `M`.
pub trait Format<M>: 'static {
    /// What a transport sends. It is cloned for every receiver, so cloning
    /// should be cheap (a shared buffer).
    type Frame: Clone + Send + Sync + 'static;

    /// The message in this format; `None` when it cannot be (the format
    /// says why in its log). The outcome is cached either way.
    fn encode(message: &M) -> Option<Self::Frame>;
}

/// The frames made from one message so far, one per format.
#[derive(Default)]
pub struct Encodings {
    slots: [OnceLock<Box<dyn Any + Send + Sync>>; SLOTS],
}

/// Format `F`'s outcome for a message; its type tells the formats apart
/// even where two share a frame type.
struct Encoded<F: 'static, T>(Option<T>, PhantomData<fn() -> F>);

impl Encodings {
    /// `message` in format `F`: encoded on first use, then shared.
    pub fn get<M, F: Format<M>>(&self, message: &M) -> Option<F::Frame> {
        for slot in &self.slots {
            let cached = slot
                .get_or_init(|| Box::new(Encoded::<F, F::Frame>(F::encode(message), PhantomData)));
            if let Some(Encoded(frame, _)) = cached.downcast_ref::<Encoded<F, F::Frame>>() {
                return frame.clone();
            }
        }
        F::encode(message)
    }

    /// How many formats are cached.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Encodings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encodings({} cached)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Encodings made on this test's thread.
        static MADE: Cell<usize> = const { Cell::new(0) };
    }

    /// A format that counts its encodings; `N` tells the formats apart.
    struct Counted<const N: usize>;

    impl<const N: usize> Format<String> for Counted<N> {
        type Frame = String;
        fn encode(message: &String) -> Option<String> {
            MADE.set(MADE.get() + 1);
            (!message.is_empty()).then(|| format!("{N}:{message}"))
        }
    }

    #[test]
    fn each_format_is_encoded_once_and_shared() {
        let before = MADE.get();
        let message = "hi".to_string();
        let cache = Encodings::default();
        for _ in 0..3 {
            assert_eq!(
                cache.get::<_, Counted<0>>(&message).as_deref(),
                Some("0:hi")
            );
            assert_eq!(
                cache.get::<_, Counted<1>>(&message).as_deref(),
                Some("1:hi")
            );
        }
        assert_eq!(MADE.get() - before, 2);
        assert_eq!(cache.len(), 2);

        // A failed encoding is remembered too.
        let empty = String::new();
        let cache = Encodings::default();
        assert_eq!(cache.get::<_, Counted<0>>(&empty), None);
        assert_eq!(cache.get::<_, Counted<0>>(&empty), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn formats_beyond_the_slots_are_still_encoded() {
        let message = "x".to_string();
        let cache = Encodings::default();
        cache.get::<_, Counted<10>>(&message);
        cache.get::<_, Counted<11>>(&message);
        cache.get::<_, Counted<12>>(&message);
        cache.get::<_, Counted<13>>(&message);
        assert_eq!(
            cache.get::<_, Counted<14>>(&message).as_deref(),
            Some("14:x")
        );
        assert_eq!(cache.len(), SLOTS);
    }
}
