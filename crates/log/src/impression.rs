//! The impression log: one row per candidate an answer showed, with what the server knew when it
//! ranked it, so that a join with what users did afterwards gives training rows whose inputs are
//! exactly what was served.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::writer::Record;

/// One answered request, as logged: the request's fields once, then each shown candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    pub request_id: String,
    /// When the request arrived, in milliseconds since the epoch.
    pub arrived_ms: i64,
    pub model: String,
    pub version: String,
    /// The catalog the candidates were looked up in, and its version.
    pub catalog: Option<(String, String)>,
    /// The request's context features as a JSON object.
    pub context: String,
    /// The degraded mode of the answer (`fallback`, `truncated`, …); `None` for a full answer.
    pub degraded: Option<&'static str>,
    /// The share of requests to this model that are logged, for weighting.
    pub sample_rate: f64,
    /// The serving heads' names, in the order of each [`Shown::heads`].
    pub heads: Arc<[String]>,
    pub shown: Vec<Shown>,
}

/// One shown candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub item_id: String,
    /// Its place in the answer, 0 for the top.
    pub position: u32,
    /// The combined score; `None` for a candidate a degraded answer listed unscored.
    pub score: Option<f32>,
    /// One value per serving head; empty when unscored.
    pub heads: Vec<f32>,
    /// The item features the request gave this candidate itself, as a JSON object (`None`:
    /// none, every feature came from the catalog or took its default).
    pub overrides: Option<String>,
}

/// Column names, in schema order.
pub mod columns {
    pub const REQUEST_ID: &str = "request_id";
    pub const TS_MS: &str = "ts_ms";
    pub const MODEL: &str = "model";
    pub const VERSION: &str = "version";
    pub const CATALOG: &str = "catalog";
    pub const CATALOG_VERSION: &str = "catalog_version";
    pub const CONTEXT: &str = "context";
    pub const ITEM_ID: &str = "item_id";
    pub const POSITION: &str = "position";
    pub const SCORE: &str = "score";
    pub const HEADS: &str = "heads";
    pub const OVERRIDES: &str = "overrides";
    pub const DEGRADED: &str = "degraded";
    pub const SAMPLE_RATE: &str = "sample_rate";
}

/// The columns of the rows appended so far.
#[derive(Debug)]
pub struct ImpressionBatch {
    request_id: StringBuilder,
    ts_ms: Int64Builder,
    model: StringBuilder,
    version: StringBuilder,
    catalog: StringBuilder,
    catalog_version: StringBuilder,
    context: StringBuilder,
    item_id: StringBuilder,
    position: Int32Builder,
    score: Float32Builder,
    heads: MapBuilder<StringBuilder, Float32Builder>,
    overrides: StringBuilder,
    degraded: StringBuilder,
    sample_rate: Float64Builder,
}

impl Default for ImpressionBatch {
    fn default() -> Self {
        ImpressionBatch {
            request_id: StringBuilder::new(),
            ts_ms: Int64Builder::new(),
            model: StringBuilder::new(),
            version: StringBuilder::new(),
            catalog: StringBuilder::new(),
            catalog_version: StringBuilder::new(),
            context: StringBuilder::new(),
            item_id: StringBuilder::new(),
            position: Int32Builder::new(),
            score: Float32Builder::new(),
            heads: MapBuilder::new(None, StringBuilder::new(), Float32Builder::new()),
            overrides: StringBuilder::new(),
            degraded: StringBuilder::new(),
            sample_rate: Float64Builder::new(),
        }
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use columns::*;
    // The map's type as its builder makes it, so the schema and the arrays always agree.
    let heads = MapBuilder::new(None, StringBuilder::new(), Float32Builder::new()).finish();
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text(REQUEST_ID, false),
        Field::new(TS_MS, DataType::Int64, false),
        text(MODEL, false),
        text(VERSION, false),
        text(CATALOG, true),
        text(CATALOG_VERSION, true),
        text(CONTEXT, false),
        text(ITEM_ID, false),
        Field::new(POSITION, DataType::Int32, false),
        Field::new(SCORE, DataType::Float32, true),
        Field::new(HEADS, arrow_array::Array::data_type(&heads).clone(), true),
        text(OVERRIDES, true),
        text(DEGRADED, true),
        Field::new(SAMPLE_RATE, DataType::Float64, false),
    ]))
});

impl Record for Impression {
    type Batch = ImpressionBatch;
    const LOG: &'static str = "impressions";
    const DICTIONARY: &'static [&'static str] =
        &[columns::MODEL, columns::VERSION, columns::CATALOG, columns::CATALOG_VERSION, columns::DEGRADED];

    fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    fn rows(&self) -> usize {
        self.shown.len()
    }

    fn arrived_ms(&self) -> i64 {
        self.arrived_ms
    }

    fn append(self, b: &mut ImpressionBatch) {
        for shown in &self.shown {
            b.request_id.append_value(&self.request_id);
            b.ts_ms.append_value(self.arrived_ms);
            b.model.append_value(&self.model);
            b.version.append_value(&self.version);
            b.catalog.append_option(self.catalog.as_ref().map(|c| &c.0));
            b.catalog_version.append_option(self.catalog.as_ref().map(|c| &c.1));
            b.context.append_value(&self.context);
            b.item_id.append_value(&shown.item_id);
            b.position.append_value(shown.position as i32);
            b.score.append_option(shown.score);
            if shown.score.is_some() {
                for (name, value) in self.heads.iter().zip(&shown.heads) {
                    b.heads.keys().append_value(name);
                    b.heads.values().append_value(*value);
                }
            }
            b.heads.append(shown.score.is_some()).expect("keys and values are appended in pairs");
            b.overrides.append_option(shown.overrides.as_deref());
            b.degraded.append_option(self.degraded);
            b.sample_rate.append_value(self.sample_rate);
        }
    }

    fn finish(b: &mut ImpressionBatch) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(b.request_id.finish()),
            Arc::new(b.ts_ms.finish()),
            Arc::new(b.model.finish()),
            Arc::new(b.version.finish()),
            Arc::new(b.catalog.finish()),
            Arc::new(b.catalog_version.finish()),
            Arc::new(b.context.finish()),
            Arc::new(b.item_id.finish()),
            Arc::new(b.position.finish()),
            Arc::new(b.score.finish()),
            Arc::new(b.heads.finish()),
            Arc::new(b.overrides.finish()),
            Arc::new(b.degraded.finish()),
            Arc::new(b.sample_rate.finish()),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the columns are built to the schema")
    }
}

/// One row of an impression partition, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub request_id: String,
    pub ts_ms: i64,
    pub model: String,
    pub version: String,
    pub catalog: Option<(String, String)>,
    pub context: String,
    pub item_id: String,
    pub position: u32,
    pub score: Option<f32>,
    /// Head name and value, in the serving heads' order; empty when unscored.
    pub heads: Vec<(String, f32)>,
    pub overrides: Option<String>,
    pub degraded: Option<String>,
    pub sample_rate: f64,
}

/// Every row of a complete impression partition, in the order written.
pub fn read(path: &std::path::Path) -> Result<Vec<Row>, crate::partition::PartitionError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
    use arrow_array::{Array, MapArray};

    let mut rows = Vec::new();
    for batch in crate::partition::batches(path, Impression::LOG, &SCHEMA)? {
        let text = |i: usize| batch.column(i).as_string::<i32>();
        let (request_id, model, version, catalog, catalog_version, context, item_id, overrides, degraded) =
            (text(0), text(2), text(3), text(4), text(5), text(6), text(7), text(11), text(12));
        let ts = batch.column(1).as_primitive::<Int64Type>();
        let position = batch.column(8).as_primitive::<Int32Type>();
        let score = batch.column(9).as_primitive::<Float32Type>();
        let heads: &MapArray = batch.column(10).as_map();
        let sample_rate = batch.column(13).as_primitive::<Float64Type>();
        let opt = |a: &arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        for i in 0..batch.num_rows() {
            let head_values = if heads.is_null(i) {
                Vec::new()
            } else {
                let entries = heads.value(i);
                let names = entries.column(0).as_string::<i32>();
                let values = entries.column(1).as_primitive::<Float32Type>();
                (0..entries.len()).map(|j| (names.value(j).to_string(), values.value(j))).collect()
            };
            rows.push(Row {
                request_id: request_id.value(i).to_string(),
                ts_ms: ts.value(i),
                model: model.value(i).to_string(),
                version: version.value(i).to_string(),
                catalog: opt(catalog, i).zip(opt(catalog_version, i)),
                context: context.value(i).to_string(),
                item_id: item_id.value(i).to_string(),
                position: position.value(i) as u32,
                score: (!score.is_null(i)).then(|| score.value(i)),
                heads: head_values,
                overrides: opt(overrides, i),
                degraded: opt(degraded, i),
                sample_rate: sample_rate.value(i),
            });
        }
    }
    Ok(rows)
}
