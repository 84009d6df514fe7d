//! Publication filters by tags (the subscribe command's `tf`), with
//! Centrifugo's operators: a tree of `and`, `or` and `not` nodes over
//! leaves comparing one tag — `eq`, `neq`, `in`, `nin`, `ex` (exists),
//! `nex`, `sw` (starts with), `ew`, `ct` (contains), and `gt`, `gte`, `lt`,
//! `lte` comparing as numbers (a tag that is not a number never matches).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct FilterNode {
    /// `and`, `or`, `not`, or empty for a leaf.
    pub op: String,
    pub key: String,
    pub cmp: String,
    pub val: String,
    pub vals: Vec<String>,
    pub nodes: Vec<FilterNode>,
}

/// The deepest filter taken: a client cannot make delivery recurse without
/// end.
pub const MAX_DEPTH: usize = 16;
/// The most nodes, and the most `vals`, a filter may have in all: it is
/// checked for every publication and subscriber.
pub const MAX_NODES: usize = 64;
pub const MAX_VALS: usize = 256;

impl FilterNode {
    /// Whether the tree is well formed and within the limits; why not.
    pub fn validate(&self) -> Result<(), String> {
        self.check(0)?;
        let (nodes, vals) = self.size();
        if nodes > MAX_NODES {
            return Err(format!(
                "tags filter of {nodes} nodes (at most {MAX_NODES})"
            ));
        }
        if vals > MAX_VALS {
            return Err(format!("tags filter of {vals} vals (at most {MAX_VALS})"));
        }
        Ok(())
    }

    /// (nodes, vals) of the whole tree.
    fn size(&self) -> (usize, usize) {
        self.nodes
            .iter()
            .fold((1, self.vals.len()), |(n, v), child| {
                let (cn, cv) = child.size();
                (n + cn, v + cv)
            })
    }

    fn check(&self, depth: usize) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(format!("tags filter deeper than {MAX_DEPTH}"));
        }
        match self.op.as_str() {
            "" => self.check_leaf(),
            "and" | "or" if self.nodes.is_empty() => {
                Err(format!("{} needs at least one node", self.op))
            }
            "and" | "or" => self.nodes.iter().try_for_each(|n| n.check(depth + 1)),
            "not" if self.nodes.len() != 1 => Err("not takes exactly one node".into()),
            "not" => self.nodes[0].check(depth + 1),
            op => Err(format!("unknown op {op:?}")),
        }
    }

    fn check_leaf(&self) -> Result<(), String> {
        let cmp = self.cmp.as_str();
        match cmp {
            "eq" | "neq" | "sw" | "ew" | "ct" | "gt" | "gte" | "lt" | "lte" => {
                if self.val.is_empty() || !self.vals.is_empty() {
                    return Err(format!("{cmp} compares with val (not vals)"));
                }
            }
            "in" | "nin" => {
                if self.vals.is_empty() || !self.val.is_empty() {
                    return Err(format!("{cmp} compares with vals (not val)"));
                }
            }
            "ex" | "nex" => {
                if !self.val.is_empty() || !self.vals.is_empty() {
                    return Err(format!("{cmp} takes neither val nor vals"));
                }
            }
            "" => return Err("a leaf needs cmp".into()),
            other => return Err(format!("unknown cmp {other:?}")),
        }
        if self.key.is_empty() && cmp != "ex" && cmp != "nex" {
            return Err("a leaf needs key".into());
        }
        Ok(())
    }

    /// Whether a publication with `tags` passes (for a validated tree).
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        match self.op.as_str() {
            "and" => self.nodes.iter().all(|n| n.matches(tags)),
            "or" => self.nodes.iter().any(|n| n.matches(tags)),
            "not" => self.nodes.first().is_some_and(|n| !n.matches(tags)),
            _ => self.leaf(tags.get(&self.key).map(String::as_str)),
        }
    }

    fn leaf(&self, tag: Option<&str>) -> bool {
        let val = self.val.as_str();
        match (self.cmp.as_str(), tag) {
            ("eq", Some(t)) => t == val,
            ("neq", t) => t != Some(val),
            ("in", t) => self.vals.iter().any(|v| Some(v.as_str()) == t),
            ("nin", t) => !self.vals.iter().any(|v| Some(v.as_str()) == t),
            ("ex", t) => t.is_some(),
            ("nex", t) => t.is_none(),
            ("sw", Some(t)) => t.starts_with(val),
            ("ew", Some(t)) => t.ends_with(val),
            ("ct", Some(t)) => t.contains(val),
            (cmp @ ("gt" | "gte" | "lt" | "lte"), Some(t)) => {
                let (Ok(t), Ok(v)) = (t.trim().parse::<f64>(), val.trim().parse::<f64>()) else {
                    return false;
                };
                match cmp {
                    "gt" => t > v,
                    "gte" => t >= v,
                    "lt" => t < v,
                    _ => t <= v,
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            val: val.into(),
            ..Default::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn leaves_compare_one_tag() {
        let t = tags(&[("team", "eng"), ("price", "10.5"), ("name", "herald")]);
        let cases = [
            (leaf("team", "eq", "eng"), true),
            (leaf("team", "eq", "ops"), false),
            (leaf("missing", "eq", "x"), false),
            (leaf("team", "neq", "ops"), true),
            (leaf("missing", "neq", "x"), true),
            (leaf("name", "sw", "her"), true),
            (leaf("name", "ew", "ald"), true),
            (leaf("name", "ct", "ral"), true),
            (leaf("name", "ct", "xyz"), false),
            (leaf("price", "gt", "9"), true),
            (leaf("price", "gt", "10.5"), false),
            (leaf("price", "gte", "10.5"), true),
            (leaf("price", "lt", "100"), true),
            (leaf("price", "lte", "10"), false),
            (leaf("name", "gt", "1"), false),
            (leaf("missing", "lt", "1"), false),
        ];
        for (f, want) in cases {
            f.validate().unwrap();
            assert_eq!(f.matches(&t), want, "{f:?}");
        }
        let is_in = FilterNode {
            key: "team".into(),
            cmp: "in".into(),
            vals: vec!["ops".into(), "eng".into()],
            ..Default::default()
        };
        assert!(is_in.matches(&t));
        let not_in = FilterNode {
            cmp: "nin".into(),
            ..is_in.clone()
        };
        assert!(!not_in.matches(&t));
        let exists = FilterNode {
            key: "team".into(),
            cmp: "ex".into(),
            ..Default::default()
        };
        assert!(exists.matches(&t) && !exists.matches(&tags(&[])));
    }

    #[test]
    fn trees_combine_leaves() {
        let t = tags(&[("team", "eng"), ("level", "3")]);
        let and = FilterNode {
            op: "and".into(),
            nodes: vec![leaf("team", "eq", "eng"), leaf("level", "gte", "3")],
            ..Default::default()
        };
        let or = FilterNode {
            op: "or".into(),
            nodes: vec![leaf("team", "eq", "ops"), leaf("level", "lt", "3")],
            ..Default::default()
        };
        let not = FilterNode {
            op: "not".into(),
            nodes: vec![or.clone()],
            ..Default::default()
        };
        for f in [&and, &or, &not] {
            f.validate().unwrap();
        }
        assert!(and.matches(&t));
        assert!(!or.matches(&t));
        assert!(not.matches(&t));
    }

    #[test]
    fn malformed_trees_are_refused() {
        let bad = [
            FilterNode::default(),
            leaf("", "eq", "x"),
            leaf("k", "eq", ""),
            leaf("k", "like", "x"),
            FilterNode {
                cmp: "in".into(),
                key: "k".into(),
                ..Default::default()
            },
            FilterNode {
                op: "and".into(),
                ..Default::default()
            },
            FilterNode {
                op: "not".into(),
                nodes: vec![leaf("a", "eq", "1"), leaf("b", "eq", "2")],
                ..Default::default()
            },
            FilterNode {
                op: "xor".into(),
                nodes: vec![leaf("a", "eq", "1")],
                ..Default::default()
            },
        ];
        for f in bad {
            assert!(f.validate().is_err(), "{f:?}");
        }
        let wide = FilterNode {
            op: "or".into(),
            nodes: vec![leaf("a", "eq", "1"); MAX_NODES],
            ..Default::default()
        };
        assert!(wide.validate().unwrap_err().contains("nodes"));
        let many = FilterNode {
            key: "a".into(),
            cmp: "in".into(),
            vals: vec!["x".into(); MAX_VALS + 1],
            ..Default::default()
        };
        assert!(many.validate().unwrap_err().contains("vals"));
        let mut deep = leaf("a", "eq", "1");
        for _ in 0..MAX_DEPTH {
            deep = FilterNode {
                op: "not".into(),
                nodes: vec![deep],
                ..Default::default()
            };
        }
        assert!(deep.validate().is_err());
    }
}
