//! Logged impressions back to feature columns: the context features as the request gave them
//! (the log keeps them as JSON), the item features as the server read them (the features the
//! request gave the candidate over its item in the catalog version that served), written in the
//! examples' column types so that the trainer encodes each row as the server encoded it.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use retort_model::catalog::{Catalog, Overlay};
use retort_model::encode::{FeatureSource, Value, id_text};
use retort_model::manifest::{FeatureColumn, FeatureKind, Side};
use retort_model::request::Features;

/// A value the spec's kind does not take, written as missing; counted per feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub feature: String,
    pub rows: u64,
    /// The first such row's request id, and why.
    pub example: String,
}

/// Column builders for the spec's features, one appended row at a time.
pub struct FeatureColumns<'s> {
    features: &'s [FeatureColumn],
    builders: Vec<Builder>,
    unfit: Vec<Option<Unfit>>,
}

enum Builder {
    Text(StringBuilder),
    Number(Float64Builder),
    Vector(ListBuilder<Float64Builder>),
}

/// One logged row's sources: its context, and the candidate as the server saw it.
pub struct Sources<'a> {
    pub context: &'a Features<'a>,
    pub item: &'a dyn FeatureSource,
}

/// Parses a logged JSON object of features (a context, a candidate's overrides) with the
/// request decoder the server used.
pub fn parse_features(json: &str) -> Result<Features<'_>, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// The candidate `item_id` as the server read it: `overrides` over its item in `catalog`.
pub fn candidate<'a>(
    overrides: &'a Features<'a>,
    catalog: Option<&'a Catalog>,
    item_id: &'a str,
) -> Overlay<'a, Features<'a>> {
    match catalog {
        None => Overlay::alone(overrides),
        Some(c) => Overlay {
            request: overrides,
            item: c.get(item_id),
            id: Some((c.id_column.as_str(), Cow::Borrowed(item_id))),
        },
    }
}

impl<'s> FeatureColumns<'s> {
    pub fn new(features: &'s [FeatureColumn], rows: usize) -> FeatureColumns<'s> {
        let builders = features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Categorical { .. } => {
                    Builder::Text(StringBuilder::with_capacity(rows, rows * 8))
                }
                FeatureKind::Number { .. } => Builder::Number(Float64Builder::with_capacity(rows)),
                FeatureKind::Vector { .. } => {
                    Builder::Vector(ListBuilder::new(Float64Builder::new()).with_field(Field::new(
                        "item",
                        DataType::Float64,
                        false,
                    )))
                }
            })
            .collect();
        FeatureColumns { features, builders, unfit: vec![None; features.len()] }
    }

    /// The spec's columns, in its order, as [`FeatureColumns::finish`] builds them.
    pub fn fields(features: &[FeatureColumn]) -> Vec<Field> {
        features
            .iter()
            .map(|f| {
                let t = match &f.kind {
                    FeatureKind::Categorical { .. } => DataType::Utf8,
                    FeatureKind::Number { .. } => DataType::Float64,
                    FeatureKind::Vector { .. } => {
                        DataType::List(Arc::new(Field::new("item", DataType::Float64, false)))
                    }
                };
                Field::new(&f.name, t, true)
            })
            .collect()
    }

    pub fn push(&mut self, sources: &Sources<'_>, request_id: &str) {
        for (i, f) in self.features.iter().enumerate() {
            let value = match f.side {
                Side::Context => sources.context.get(&f.name),
                Side::Item => sources.item.get(&f.name),
            };
            if let Err(problem) = append(&mut self.builders[i], &f.kind, &value) {
                let unfit = self.unfit[i].get_or_insert_with(|| Unfit {
                    feature: f.name.clone(),
                    rows: 0,
                    example: format!("request {request_id}: {problem}"),
                });
                unfit.rows += 1;
            }
        }
    }

    pub fn finish(self) -> (Vec<ArrayRef>, Vec<Unfit>) {
        let arrays = self
            .builders
            .into_iter()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Text(mut b) => Arc::new(b.finish()),
                    Builder::Number(mut b) => Arc::new(b.finish()),
                    Builder::Vector(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        (arrays, self.unfit.into_iter().flatten().collect())
    }
}

/// Appends `value` in the kind's column type, exactly as the encoder would read it (an integer
/// id as its decimal text, every number as the f64 it was); a value the kind does not take is
/// appended as null and the problem returned.
fn append(builder: &mut Builder, kind: &FeatureKind, value: &Value<'_>) -> Result<(), String> {
    match (builder, kind) {
        (Builder::Text(b), _) => match id_text(value, &mut [0; 20]) {
            Ok(Some(id)) => b.append_value(id),
            Ok(None) => b.append_null(),
            Err(problem) => {
                b.append_null();
                return Err(problem);
            }
        },
        (Builder::Number(b), _) => match *value {
            Value::Missing => b.append_null(),
            Value::Int(i) => b.append_value(i as f64),
            Value::Uint(u) => b.append_value(u as f64),
            Value::Float(x) => b.append_value(x),
            ref other => {
                b.append_null();
                return Err(format!("expected a number, got {other:?}"));
            }
        },
        (Builder::Vector(b), FeatureKind::Vector { dim, .. }) => match value {
            Value::Missing => b.append_null(),
            Value::List(items) if items.len() == *dim => {
                b.values().append_slice(items);
                b.append(true);
            }
            other => {
                b.append_null();
                return Err(format!("expected a list of {dim} numbers, got {other:?}"));
            }
        },
        (Builder::Vector(_), _) => {
            unreachable!("a vector column is built for a vector feature. This is a bug.")
        }
    }
    Ok(())
}

/// A batch of `fields` from `columns`.
pub fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("the columns are built to the fields")
}
