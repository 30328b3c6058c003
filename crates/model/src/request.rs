//! The `POST /v1/rank` request body, decoded straight from the bytes it arrived in: strings
//! borrow from the body where JSON escaping allows, and feature values are kept as whatever
//! JSON type they were so the encoder can name a wrong one instead of failing the whole parse.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::encode::{FeatureSource, Value};

/// Every field's errors name the field (`top_k: invalid value: integer -1, expected usize`):
/// serde_json's own name only a line and column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest<'a> {
    #[serde(borrow, default, deserialize_with = "named::request_id")]
    pub request_id: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "named::model")]
    pub model: Option<Text<'a>>,
    /// Latency budget, enforced by admission control.
    #[serde(default, deserialize_with = "named::budget_ms")]
    pub budget_ms: Option<f64>,
    #[serde(borrow, deserialize_with = "named::context")]
    pub context: Features<'a>,
    #[serde(borrow, deserialize_with = "candidates")]
    pub candidates: Vec<Candidate<'a>>,
    /// Head → weight; replaces the model's default objective when given.
    #[serde(borrow, default, deserialize_with = "named::objective")]
    pub objective: Option<Objective<'a>>,
    /// The best this many; without it, the server's default (`default_top_k`).
    #[serde(default, deserialize_with = "named::top_k")]
    pub top_k: Option<usize>,
    /// Whether each answered candidate carries its serving heads' values beside its score.
    #[serde(default, deserialize_with = "named::heads")]
    pub heads: bool,
}

/// Deserialisers that put the field's name in front of its error.
mod named {
    use super::*;

    macro_rules! named {
        ($($field:ident: $t:ty),* $(,)?) => {$(
            pub fn $field<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                <$t>::deserialize(d).map_err(|e| prefixed(stringify!($field), e))
            }
        )*};
    }

    /// `e` with the field's name in front, unless it is a syntax error: those stay as they are,
    /// so that a body that is not JSON still reads as malformed (400), not invalid (422).
    pub fn prefixed<E: de::Error>(field: &str, e: E) -> E {
        prefixed_with(format_args!("`{field}`"), e)
    }

    pub fn prefixed_with<E: de::Error>(prefix: impl std::fmt::Display, e: E) -> E {
        let message = e.to_string();
        if is_syntax(&message) || message.starts_with('`') {
            e
        } else {
            E::custom(format_args!("{prefix}: {message}"))
        }
    }

    /// serde_json's syntax errors, which a field's decoder passes on from the parser.
    fn is_syntax(message: &str) -> bool {
        [
            "EOF while parsing",
            "expected `",
            "expected ident",
            "expected value",
            "invalid escape",
            "invalid number",
            "number out of range",
            "invalid unicode code point",
            "control character",
            "key must be a string",
            "lone leading surrogate",
            "trailing comma",
            "trailing characters",
            "unexpected end of hex escape",
            "recursion limit exceeded",
        ]
        .iter()
        .any(|p| message.starts_with(p))
    }

    named!(
        request_id: Option<Text<'a>>,
        model: Option<Text<'a>>,
        budget_ms: Option<f64>,
        context: Features<'a>,
        objective: Option<Objective<'a>>,
        top_k: Option<usize>,
        heads: bool,
    );
}

/// The candidates, each error naming the candidate's index.
fn candidates<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<Candidate<'a>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Candidate<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of candidates")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(4096));
            loop {
                let i = out.len();
                match seq.next_element::<Candidate<'de>>() {
                    Ok(Some(c)) => out.push(c),
                    Ok(None) => return Ok(out),
                    Err(e) => {
                        return Err(named::prefixed_with(format_args!("`candidates`: candidate {i}"), e));
                    }
                }
            }
        }
    }
    d.deserialize_seq(V).map_err(|e| named::prefixed("candidates", e))
}

/// One candidate: an object with its `id`, and optionally `features` and a `prior` (never a
/// positional array, which a derived decoder would also take); or its id alone (`"t1"`, `42`),
/// whose features then come from the server's catalog.
#[derive(Debug)]
pub struct Candidate<'a> {
    pub id: CandidateId<'a>,
    pub features: Features<'a>,
    /// The caller's own score, used to order candidates the model did not score.
    pub prior: Option<f64>,
}

impl RankRequest<'_> {
    /// The caller's head weights, as [`crate::Model::objective`] takes them.
    pub fn objective(&self) -> Option<impl Iterator<Item = (&str, f64)>> {
        self.objective.as_ref().map(|o| o.0.iter().map(|(k, w)| (k.as_ref(), *w)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Candidate<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &["id", "features", "prior"];
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Candidate<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a candidate id or object (`id`, `features`, `prior`)")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Candidate::id_only(CandidateId::Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Candidate::id_only(CandidateId::Str(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Candidate::id_only(CandidateId::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Candidate::id_only(i64::try_from(v).map_or(CandidateId::Uint(v), CandidateId::Int)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut id, mut features, mut prior) = (None, None, None);
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "id" if id.is_none() => id = Some(map.next_value::<CandidateId<'de>>()?),
                        "features" if features.is_none() => {
                            features = Some(map.next_value::<Features<'de>>()?)
                        }
                        "prior" if prior.is_none() => prior = Some(map.next_value::<Option<f64>>()?),
                        "id" | "features" | "prior" => {
                            return Err(de::Error::custom(format_args!("duplicate field `{}`", &*key)));
                        }
                        other => return Err(de::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(Candidate {
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                    features: features.unwrap_or_default(),
                    prior: prior.flatten(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'a> Candidate<'a> {
    fn id_only(id: CandidateId<'a>) -> Candidate<'a> {
        Candidate { id, features: Features::default(), prior: None }
    }
}

impl FeatureSource for Candidate<'_> {
    fn get(&self, name: &str) -> Value<'_> {
        self.features.get(name)
    }
}

impl CandidateId<'_> {
    /// The id as text, as a catalog keys it (an integer by its decimal digits).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            CandidateId::Str(s) => Cow::Borrowed(s),
            CandidateId::Int(i) => Cow::Owned(i.to_string()),
            CandidateId::Uint(u) => Cow::Owned(u.to_string()),
        }
    }
}

/// A candidate's id, echoed back as it came: a string or a number.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CandidateId<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Uint(u64),
}

impl<'de: 'a, 'a> Deserialize<'de> for CandidateId<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CandidateId<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or integer candidate id")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CandidateId::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CandidateId::Str(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(CandidateId::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(CandidateId::Uint(v), CandidateId::Int))
            }
        }
        d.deserialize_any(V)
    }
}

/// Named feature values. A list, not a map: requests carry a handful of features, and a linear
/// scan over a few entries beats hashing.
#[derive(Debug, Default)]
pub struct Features<'a>(pub Vec<(Cow<'a, str>, FeatureValue<'a>)>);

impl Features<'_> {
    pub fn get(&self, name: &str) -> Value<'_> {
        // Last one wins on a duplicated key, as with any JSON object decoded into a map.
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => Value::Missing,
            Some((_, v)) => v.as_value(),
        }
    }
}

/// Written back as the JSON object it came as, for logs: each value as decoded, except those
/// no feature kind accepts (objects, lists holding non-numbers), which become `null`.
impl Serialize for Features<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            match value {
                FeatureValue::Null | FeatureValue::MixedList | FeatureValue::Object => {
                    map.serialize_entry(name, &())?
                }
                FeatureValue::Bool(b) => map.serialize_entry(name, b)?,
                FeatureValue::Int(i) => map.serialize_entry(name, i)?,
                FeatureValue::Uint(u) => map.serialize_entry(name, u)?,
                FeatureValue::Float(x) => map.serialize_entry(name, x)?,
                FeatureValue::Str(t) => map.serialize_entry(name, t)?,
                FeatureValue::Numbers(v) => map.serialize_entry(name, v)?,
            }
        }
        map.end()
    }
}

impl FeatureSource for Features<'_> {
    fn get(&self, name: &str) -> Value<'_> {
        Features::get(self, name)
    }
}

/// One feature value as JSON gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Numbers(Vec<f64>),
    /// A list holding something other than numbers.
    MixedList,
    Object,
}

impl FeatureValue<'_> {
    fn as_value(&self) -> Value<'_> {
        match self {
            FeatureValue::Null => Value::Missing,
            FeatureValue::Bool(b) => Value::Bool(*b),
            FeatureValue::Int(i) => Value::Int(*i),
            FeatureValue::Uint(u) => Value::Uint(*u),
            FeatureValue::Float(x) => Value::Float(*x),
            FeatureValue::Str(s) => Value::Str(s),
            FeatureValue::Numbers(v) => Value::List(Cow::Borrowed(v)),
            FeatureValue::MixedList => Value::Other("a list holding non-numbers"),
            FeatureValue::Object => Value::Other("an object"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FeatureValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeatureValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a feature value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FeatureValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FeatureValue::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(FeatureValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FeatureValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(FeatureValue::Uint(v), FeatureValue::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(FeatureValue::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FeatureValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FeatureValue::Str(Cow::Owned(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut numbers = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(1024));
                while let Some(item) = seq.next_element::<NumberOrOther>()? {
                    match item {
                        NumberOrOther::Number(x) => numbers.push(x),
                        NumberOrOther::Other => {
                            while seq.next_element::<IgnoredAny>()?.is_some() {}
                            return Ok(FeatureValue::MixedList);
                        }
                    }
                }
                Ok(FeatureValue::Numbers(numbers))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FeatureValue::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// A list element: a number, or anything else (skipped whole).
enum NumberOrOther {
    Number(f64),
    Other,
}

impl<'de> Deserialize<'de> for NumberOrOther {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NumberOrOther;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Number(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NumberOrOther::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NumberOrOther::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NumberOrOther::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Features<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Features<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of features")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8).min(256));
                while let Some((k, v)) = map.next_entry::<Text<'de>, FeatureValue<'de>>()? {
                    out.push((k.0, v));
                }
                Ok(Features(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the body when it can (serde's own `Cow` support does not reach
/// inside an `Option`).
#[derive(Debug, Clone, PartialEq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Not JSON at all (syntax error, truncated body).
    Malformed(String),
    /// JSON, but not a rank request (missing or mistyped fields).
    Invalid(String),
}

/// Decodes a rank request.
pub fn decode(body: &[u8]) -> Result<RankRequest<'_>, DecodeError> {
    // A derived decoder takes a struct's fields from a positional array too.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(DecodeError::Invalid("a rank request is a JSON object, not an array".into()));
    }
    // Validated whole at once (a fast scan over ASCII), so that the parser need not check each
    // string it borrows: a tenth of the decoding time of a body of features.
    let text = std::str::from_utf8(body).map_err(|e| {
        DecodeError::Malformed(format!("the request body is not UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    serde_json::from_str::<RankRequest>(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::Invalid(e.to_string()),
        _ => DecodeError::Malformed(e.to_string()),
    })
}

/// Head weights in the order the caller wrote them.
#[derive(Debug)]
pub struct Objective<'a>(pub Vec<(Cow<'a, str>, f64)>);

impl<'de: 'a, 'a> Deserialize<'de> for Objective<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Objective<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of head weights")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<Text<'de>, f64>()? {
                    out.push((k.0, v));
                }
                Ok(Objective(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_design_example() {
        let body = br#"{"request_id": "r-1", "model": "music-ranker", "budget_ms": 25,
 "context": {"user_id": "u42", "country": "SE", "hour": 21},
 "candidates": [{"id": "t1", "features": {"artist_id": "a9", "duration_s": 201.0}}, {"id": 7}],
 "objective": {"play": 1.0, "like": 0.5, "skip": -1.0}, "top_k": 50}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.request_id.as_deref(), Some("r-1"));
        assert_eq!(r.model.as_deref(), Some("music-ranker"));
        assert_eq!(r.budget_ms, Some(25.0));
        assert_eq!(r.context.get("hour"), Value::Int(21));
        assert_eq!(r.context.get("user_id"), Value::Str("u42"));
        assert_eq!(r.context.get("absent"), Value::Missing);
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(r.candidates[0].get("duration_s"), Value::Float(201.0));
        assert_eq!(r.candidates[1].id, CandidateId::Int(7));
        let objective = r.objective.unwrap();
        assert_eq!(objective.0[2], (Cow::Borrowed("skip"), -1.0));
        assert_eq!(r.top_k, Some(50));
        // Borrowed, not copied, when there is nothing to unescape.
        assert!(matches!(r.request_id, Some(Text(Cow::Borrowed(_)))));
    }

    #[test]
    fn features_are_written_back_as_they_came_but_what_no_feature_accepts() {
        let body = br#"{"context": {"user_id": "u\"42", "hour": 21, "big": 18446744073709551615,
 "skip_rate": 0.25, "new": true, "emb": [1, -0.5], "none": null, "obj": {"a": 1}, "mixed": [1, "x"]},
 "candidates": []}"#;
        let r = decode(body).unwrap();
        assert_eq!(
            serde_json::to_string(&r.context).unwrap(),
            r#"{"user_id":"u\"42","hour":21,"big":18446744073709551615,"skip_rate":0.25,"new":true,"emb":[1.0,-0.5],"none":null,"obj":null,"mixed":null}"#
        );
    }

    // See: issue 16 (2).
    #[test]
    fn a_candidate_may_be_its_id_alone() {
        let r = decode(br#"{"context": {}, "candidates": ["t1", 7, 18446744073709551615, {"id": "t4"}]}"#)
            .unwrap();
        let ids: Vec<_> = r.candidates.iter().map(|c| c.id.text().into_owned()).collect();
        assert_eq!(ids, ["t1", "7", "18446744073709551615", "t4"]);
        assert!(r.candidates.iter().all(|c| c.features.0.is_empty() && c.prior.is_none()));
        assert!(matches!(r.candidates[0].id, CandidateId::Str(Cow::Borrowed("t1"))));
        for bad in ["[1.5]", "[true]", "[null]", "[[\"t1\"]]"] {
            let body = format!(r#"{{"context": {{}}, "candidates": {bad}}}"#);
            match decode(body.as_bytes()) {
                Err(DecodeError::Invalid(m)) => assert!(m.contains("candidate 0"), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn keeps_odd_values_for_the_encoder_to_name() {
        let body = br#"{"context": {"a": null, "b": [1, 2.5], "c": [1, "x", [2]], "d": {"x": 1}, "e": true, "f": "caf\u00e9"},
            "candidates": []}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.context.get("a"), Value::Missing);
        assert_eq!(r.context.get("b"), Value::List(Cow::Owned(vec![1.0, 2.5])));
        assert_eq!(r.context.get("c"), Value::Other("a list holding non-numbers"));
        assert_eq!(r.context.get("d"), Value::Other("an object"));
        assert_eq!(r.context.get("e"), Value::Bool(true));
        assert_eq!(r.context.get("f"), Value::Str("café"));
    }

    #[test]
    fn tells_malformed_from_invalid() {
        assert!(matches!(decode(b"{\"context\": {"), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
        assert!(
            matches!(decode(b"{\"context\": {}}"), Err(DecodeError::Invalid(m)) if m.contains("candidates"))
        );
        assert!(
            matches!(decode(b"{\"context\": {}, \"candidates\": [], \"topk\": 3}"), Err(DecodeError::Invalid(m)) if m.contains("topk"))
        );
        assert!(matches!(decode(b"{\"context\": [], \"candidates\": []}"), Err(DecodeError::Invalid(_))));
        // A byte that is not UTF-8, inside a string, is named by its place in the body.
        let bad = b"{\"context\": {\"f\": \"caf\xe9\"}, \"candidates\": []}";
        assert!(
            matches!(decode(bad), Err(DecodeError::Malformed(m)) if m.contains("not UTF-8") && m.contains("byte 22")),
            "{:?}",
            decode(bad).err()
        );
    }

    // See: issue 14 (G, 4).
    #[test]
    fn refuses_arrays_for_objects_and_names_the_field_at_fault() {
        let invalid = |body: &str| match decode(body.as_bytes()) {
            Err(DecodeError::Invalid(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        assert!(invalid(r#"[{"a": 1}, [{"id": "t1"}]]"#).contains("not an array"));
        let m = invalid(r#"{"context": {}, "candidates": [{"id": "t0"}, ["t1", {}]]}"#);
        assert!(m.contains("candidate 1") && m.contains("candidate id or object"), "{m}");
        let m = invalid(r#"{"context": {}, "candidates": [], "top_k": -1}"#);
        assert!(m.starts_with("`top_k`") && m.contains("-1"), "{m}");
        assert_eq!(m.matches(" at line ").count(), 1, "{m}");
        let m = invalid(r#"{"context": {}, "candidates": [], "budget_ms": "fast"}"#);
        assert!(m.starts_with("`budget_ms`"), "{m}");
        let m = invalid(r#"{"context": {}, "candidates": [{"id": "t0", "feature": {}}]}"#);
        assert!(m.contains("candidate 0") && m.contains("`feature`"), "{m}");
        let m = invalid(r#"{"context": {}, "candidates": [{"features": {}}]}"#);
        assert!(m.contains("candidate 0") && m.contains("`id`"), "{m}");
        let m = invalid(r#"{"context": {}, "candidates": {}}"#);
        assert!(m.starts_with("`candidates`"), "{m}");
        let r = decode(
            br#"{"context": {"u": 18446744073709551615}, "candidates": [{"id": "t", "prior": null}]}"#,
        )
        .unwrap();
        assert_eq!(r.context.get("u"), Value::Uint(u64::MAX));
        assert_eq!(r.candidates[0].prior, None);
    }
}
