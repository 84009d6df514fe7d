//! The forms of one publication that subscribers with delta compression
//! (`delta: "fossil"`) get: whole, or as a Fossil delta against the
//! channel's previous publication. In JSON their data is a JSON string (the
//! SDK applies the delta to text, then parses it); in Protobuf it is the
//! bytes themselves. Each form is made once per fan-out, when the first
//! subscriber needing it comes, and shared like the publication itself.

use std::cell::OnceCell;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::Publication;

/// A publication and the forms made of it for delta subscribers.
pub struct Forms<'a> {
    publication: &'a Arc<Publication>,
    /// The channel's previous publication in the stream, when this one may
    /// go as a delta against it.
    prev: Option<&'a Publication>,
    text: OnceCell<Option<Arc<Publication>>>,
    patch: OnceCell<Option<Bytes>>,
    text_patch: OnceCell<Option<Arc<Publication>>>,
    binary_patch: OnceCell<Option<Arc<Publication>>>,
}

impl<'a> Forms<'a> {
    /// `prev` is the channel's publication before this one; it serves as
    /// the base only if the publisher allowed a delta and it is this one's
    /// predecessor in the same stream.
    pub fn new(publication: &'a Arc<Publication>, prev: Option<&'a Publication>) -> Self {
        let prev = prev.filter(|prev| {
            publication.use_delta
                && publication.offset > 0
                && prev.offset + 1 == publication.offset
                && prev.epoch == publication.epoch
        });
        Self {
            publication,
            prev,
            text: OnceCell::new(),
            patch: OnceCell::new(),
            text_patch: OnceCell::new(),
            binary_patch: OnceCell::new(),
        }
    }

    pub fn publication(&self) -> &Arc<Publication> {
        self.publication
    }

    /// The offset of the publication a delta would be against.
    pub fn base(&self) -> Option<u64> {
        self.prev.map(|p| p.offset)
    }

    /// The whole publication for a delta subscriber: in JSON (`text`) its
    /// data as a JSON string; `None` when that cannot be (see [`as_text`]).
    pub fn whole(&self, text: bool) -> Option<Arc<Publication>> {
        if !text {
            return Some(self.publication.clone());
        }
        self.text.get_or_init(|| as_text(self.publication)).clone()
    }

    /// The publication as a delta against [`Forms::base`], if it may be
    /// one and the delta is smaller than the data.
    pub fn delta(&self, text: bool) -> Option<Arc<Publication>> {
        let cell = if text {
            &self.text_patch
        } else {
            &self.binary_patch
        };
        cell.get_or_init(|| {
            let patch = self.patch.get_or_init(|| self.make_patch()).clone()?;
            let data = if text { quoted(&patch)? } else { patch };
            Some(Arc::new(self.publication.with_data(data, true)))
        })
        .clone()
    }

    fn make_patch(&self) -> Option<Bytes> {
        let prev = self.prev?;
        let data = &self.publication.data;
        // The crate's `delta(a, b)` turns `b` into `a`.
        let patch = fossil_delta::delta(&data[..], &prev.data[..]);
        (patch.len() < data.len()).then(|| Bytes::from(patch))
    }
}

/// A publication for a JSON delta subscriber, whole: its data as a JSON
/// string (as recovered publications go too). `None` for data that is not
/// UTF-8, which reaches no JSON client (as for other JSON subscribers).
pub fn as_text(publication: &Publication) -> Option<Arc<Publication>> {
    let data = quoted(&publication.data)?;
    Some(Arc::new(publication.with_data(data, false)))
}

/// `bytes` as a JSON string; `None` if they are not UTF-8 (a delta may
/// not be: such a publication goes whole).
fn quoted(bytes: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(bytes).ok()?;
    serde_json::to_vec(text).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64, data: &str, use_delta: bool) -> Arc<Publication> {
        let p = Publication::new(Arc::from("c"), Bytes::from(data.to_owned()), None)
            .with_offset(offset)
            .with_epoch(Arc::from("e"))
            .with_use_delta(use_delta);
        Arc::new(p)
    }

    const BIG: &str = r#"{"score":{"home":1,"away":0},"minute":10,"text":"a long unchanged description of the match"}"#;
    const NEXT: &str = r#"{"score":{"home":1,"away":1},"minute":11,"text":"a long unchanged description of the match"}"#;

    #[test]
    fn a_delta_applied_to_the_previous_data_gives_the_data() {
        let prev = publication(1, BIG, false);
        let next = publication(2, NEXT, true);
        let forms = Forms::new(&next, Some(&prev));
        assert_eq!(forms.base(), Some(1));
        let binary = forms.delta(false).expect("a delta");
        assert!(binary.delta && binary.data.len() < NEXT.len());
        let applied = fossil_delta::apply(BIG.as_bytes(), &binary.data[..]).unwrap();
        assert_eq!(applied, NEXT.as_bytes());
        // In JSON the same delta as a JSON string.
        let text = forms.delta(true).expect("a delta");
        let patch: String = serde_json::from_slice(&text.data).unwrap();
        assert_eq!(patch.as_bytes(), &binary.data[..]);
        assert_eq!((text.offset, text.delta), (2, true));
        // Made once, shared.
        assert!(Arc::ptr_eq(&text, &forms.delta(true).unwrap()));
    }

    #[test]
    fn whole_data_in_json_is_a_string() {
        let p = publication(3, BIG, true);
        let forms = Forms::new(&p, None);
        assert_eq!(forms.base(), None);
        assert!(forms.delta(true).is_none());
        let text = forms.whole(true).unwrap();
        assert!(!text.delta);
        assert_eq!(serde_json::from_slice::<String>(&text.data).unwrap(), BIG);
        assert!(
            Arc::ptr_eq(&forms.whole(false).unwrap(), &p),
            "Protobuf: as it is"
        );
        let binary = Arc::new(Publication::new(
            Arc::from("c"),
            Bytes::from_static(b"\xff"),
            None,
        ));
        assert!(
            Forms::new(&binary, None).whole(true).is_none(),
            "not UTF-8: no JSON form"
        );
    }

    #[test]
    fn only_an_allowed_successor_in_the_same_stream_is_a_delta() {
        let prev = publication(1, BIG, false);
        let not_allowed = publication(2, NEXT, false);
        assert_eq!(Forms::new(&not_allowed, Some(&prev)).base(), None);
        let gap = publication(3, NEXT, true);
        assert_eq!(Forms::new(&gap, Some(&prev)).base(), None);
        let other_epoch = Arc::new(
            Publication::new(Arc::from("c"), Bytes::from(NEXT), None)
                .with_offset(2)
                .with_epoch(Arc::from("f"))
                .with_use_delta(true),
        );
        assert_eq!(Forms::new(&other_epoch, Some(&prev)).base(), None);
    }

    #[test]
    fn a_delta_no_smaller_than_the_data_is_not_used() {
        let prev = publication(1, "1", false);
        let next = publication(2, "2", true);
        assert!(Forms::new(&next, Some(&prev)).delta(false).is_none());
    }
}
