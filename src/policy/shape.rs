//! What a value can be, as far as cost goes: the shape of the variables at hand (their actual list
//! lengths, string lengths and footprints), and of what a rule computes from them. Every bound is an
//! upper bound: a list's elements share one joined shape, a value of unknown kind keeps only bounds.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value as Json;

/// Footprint of a scalar (a number, a bool, a string's header), in the units of [`Shape::total`].
pub(super) const SCALAR: u64 = 32;
/// Footprint of one list or map entry beyond its value (its box and slot).
pub(super) const ENTRY: u64 = 16;

/// Upper bounds on a value.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Shape {
    /// Footprint: bytes of strings, plus [`SCALAR`] per value and [`ENTRY`] per list or map entry.
    pub total: u64,
    /// Longest list or map, here or nested.
    pub entries: u64,
    /// Longest string or bytes, here or nested (map keys included).
    pub bytes: u64,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Kind {
    /// A string or bytes of at most [`Shape::bytes`], or any other scalar.
    Scalar,
    List {
        len: u64,
        elem: Rc<Shape>,
    },
    /// `complete`: every key a value of this shape can have is in `fields`.
    Map {
        len: u64,
        keys: u64,
        fields: Rc<BTreeMap<String, Shape>>,
        complete: bool,
    },
    /// Unknown kind: only the bounds hold, for it and for anything inside it.
    Any,
}

impl Shape {
    pub fn scalar(bytes: u64) -> Shape {
        Shape { total: SCALAR.saturating_add(bytes), entries: 0, bytes, kind: Kind::Scalar }
    }

    pub fn any(total: u64, entries: u64, bytes: u64) -> Shape {
        Shape { total, entries, bytes, kind: Kind::Any }
    }

    /// The shape of one JSON value (exact: its own lengths and footprint).
    pub fn of_json(value: &Json) -> Shape {
        match value {
            Json::String(s) => Shape::scalar(s.len() as u64),
            Json::Array(items) => Shape::list(items.iter().map(Shape::of_json)),
            Json::Object(map) => Shape::map(
                map.iter().map(|(k, v)| (Some(k.as_str()), Shape::scalar(k.len() as u64), Shape::of_json(v))),
            ),
            _ => Shape::scalar(0),
        }
    }

    /// A list of these elements.
    pub fn list(elements: impl Iterator<Item = Shape>) -> Shape {
        let (mut len, mut total, mut elem) = (0u64, SCALAR, None::<Shape>);
        for e in elements {
            len += 1;
            total = total.saturating_add(ENTRY).saturating_add(e.total);
            match elem.as_mut() {
                None => elem = Some(e),
                Some(joined) => joined.absorb(&e),
            }
        }
        let elem = elem.unwrap_or_else(|| Shape::scalar(0));
        Shape {
            total,
            entries: len.max(elem.entries),
            bytes: elem.bytes,
            kind: Kind::List { len, elem: Rc::new(elem) },
        }
    }

    /// A map of these entries: (the key when it is a known string, the key's shape, the value's).
    pub fn map<'a>(entries: impl Iterator<Item = (Option<&'a str>, Shape, Shape)>) -> Shape {
        let (mut len, mut total, mut keys, mut entries_in, mut bytes) = (0u64, SCALAR, 0u64, 0u64, 0u64);
        let (mut fields, mut complete) = (BTreeMap::<String, Shape>::new(), true);
        for (name, key, value) in entries {
            len += 1;
            total = total.saturating_add(ENTRY).saturating_add(key.total).saturating_add(value.total);
            keys = keys.max(key.bytes);
            entries_in = entries_in.max(key.entries).max(value.entries);
            bytes = bytes.max(key.bytes).max(value.bytes);
            match name {
                Some(name) => match fields.get_mut(name) {
                    Some(known) => known.absorb(&value),
                    None => {
                        fields.insert(name.to_owned(), value);
                    }
                },
                None => complete = false,
            }
        }
        let kind = Kind::Map { len, keys, fields: Rc::new(fields), complete };
        Shape { total, entries: len.max(entries_in), bytes, kind }
    }

    /// A shape for a value of either.
    pub fn join(&self, other: &Shape) -> Shape {
        let mut joined = self.clone();
        joined.absorb(other);
        joined
    }

    /// Joins `other` into this shape in place (what is not shared is not copied: joining the
    /// elements of a long list stays linear in their size).
    pub fn absorb(&mut self, other: &Shape) {
        self.total = self.total.max(other.total);
        self.entries = self.entries.max(other.entries);
        self.bytes = self.bytes.max(other.bytes);
        self.kind = match (std::mem::replace(&mut self.kind, Kind::Any), &other.kind) {
            (Kind::Scalar, Kind::Scalar) => Kind::Scalar,
            (Kind::List { len: a, mut elem }, Kind::List { len: b, elem: y }) => {
                if !Rc::ptr_eq(&elem, y) {
                    Rc::make_mut(&mut elem).absorb(y);
                }
                Kind::List { len: a.max(*b), elem }
            }
            (
                Kind::Map { len: a, keys: ka, mut fields, complete: ca },
                Kind::Map { len: b, keys: kb, fields: fb, complete: cb },
            ) => {
                if !Rc::ptr_eq(&fields, fb) {
                    let mine = Rc::make_mut(&mut fields);
                    for (k, v) in fb.iter() {
                        match mine.get_mut(k) {
                            Some(w) => w.absorb(v),
                            None => {
                                mine.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Kind::Map { len: a.max(*b), keys: ka.max(*kb), fields, complete: ca && *cb }
            }
            _ => Kind::Any,
        };
    }

    /// `a + b`: strings and lists concatenate (numbers add: a scalar), anything else is no larger
    /// than both together.
    pub fn concat(&self, other: &Shape) -> Shape {
        if let (Kind::Scalar, Kind::Scalar) = (&self.kind, &other.kind) {
            return Shape::scalar(self.bytes.saturating_add(other.bytes));
        }
        let total = self.total.saturating_add(other.total);
        let entries = self.entries.saturating_add(other.entries);
        let bytes = self.bytes.saturating_add(other.bytes);
        let kind = match (&self.kind, &other.kind) {
            (Kind::List { len: a, elem: x }, Kind::List { len: b, elem: y }) => {
                Kind::List { len: a.saturating_add(*b), elem: Rc::new(x.join(y)) }
            }
            _ => Kind::Any,
        };
        Shape { total, entries, bytes, kind }
    }

    /// What any part of this value can be (the bounds of the whole).
    fn part(&self) -> Shape {
        Shape::any(self.total, self.entries, self.bytes)
    }

    /// `x.field`, `x["field"]`.
    pub fn field(&self, name: &str) -> Shape {
        match &self.kind {
            Kind::Map { fields, complete, .. } => match fields.get(name) {
                Some(shape) => shape.clone(),
                // No such key: the selection fails.
                None if *complete => Shape::scalar(0),
                None => self.part(),
            },
            Kind::Any => self.clone(),
            _ => Shape::scalar(0),
        }
    }

    /// `x[key]` where the key is not a known string.
    pub fn index(&self) -> Shape {
        match &self.kind {
            Kind::List { elem, .. } => elem.as_ref().clone(),
            Kind::Map { .. } | Kind::Any => self.part(),
            Kind::Scalar => Shape::scalar(0),
        }
    }

    /// What a macro's variable is bound to when iterating this value, and how many times at most.
    pub fn iteration(&self) -> (Shape, u64) {
        match &self.kind {
            Kind::List { len, elem } => (elem.as_ref().clone(), *len),
            Kind::Map { len, keys, .. } => (Shape::scalar(*keys), *len),
            Kind::Any => (self.part(), self.entries),
            Kind::Scalar => (Shape::scalar(0), 0),
        }
    }

    /// Whether every bound of `other` is within this shape's (what a fixed point needs).
    pub fn covers(&self, other: &Shape) -> bool {
        self.join(other) == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shapes_are_exact_and_lists_join_their_elements() {
        let s = Shape::of_json(&json!({"licenses": ["MIT", "Apache-2.0"], "n": 1}));
        assert_eq!((s.entries, s.bytes), (2, 10));
        let licenses = s.field("licenses");
        let (elem, n) = licenses.iteration();
        assert_eq!((n, elem.bytes, elem.total), (2, 10, SCALAR + 10));
        assert_eq!(s.field("missing"), Shape::scalar(0), "a complete map has no other key");
        let layers = Shape::of_json(&json!([{"digest": "a"}, {"digest": "bbbb", "size": 1}]));
        let (layer, n) = layers.iteration();
        assert_eq!((n, layer.field("digest").bytes), (2, 4));
        assert!(layer.covers(&Shape::of_json(&json!({"digest": "cc"}))));
        assert_eq!(Shape::of_json(&json!([[1, 2, 3]])).entries, 3, "nested lists count");
    }

    /// 1024 layers of 50 annotations each, all different: joined in time linear in their size.
    #[test]
    fn joining_many_distinct_maps_stays_linear() {
        let layers: Vec<Json> = (0..1024)
            .map(|i| {
                let annotations: serde_json::Map<String, Json> =
                    (0..50).map(|k| (format!("k{i}-{k}"), json!("v"))).collect();
                json!({"digest": "d", "annotations": annotations})
            })
            .collect();
        let list = Json::Array(layers);
        let started = std::time::Instant::now();
        let shape = Shape::of_json(&list);
        let elapsed = started.elapsed();
        let (layer, n) = shape.iteration();
        assert_eq!((n, layer.field("annotations").iteration().1), (1024, 50));
        assert!(matches!(&layer.field("annotations").kind, Kind::Map { fields, .. } if fields.len() == 51_200));
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn concatenation_adds_and_mixed_kinds_keep_bounds() {
        let a = Shape::scalar(5);
        assert_eq!(a.concat(&a).bytes, 10);
        let l = Shape::of_json(&json!(["x", "y"]));
        let ll = l.concat(&l);
        assert_eq!((ll.iteration().1, ll.total), (4, 2 * l.total));
        let mixed = a.join(&l);
        assert_eq!(mixed.kind, Kind::Any);
        assert_eq!((mixed.entries, mixed.bytes, mixed.total), (2, 5, l.total.max(a.total)));
        assert_eq!(mixed.iteration().1, 2);
        assert_eq!(mixed.field("f"), mixed);
    }
}
