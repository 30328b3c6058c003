//! The feedback log: what users did with what they were shown, one row per event, named by the
//! request and item it is about, so that a join with the impression log labels the shown rows.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::writer::Record;

/// One batch of events as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// When the server received the batch, in milliseconds since the epoch: what rotation and
    /// a join's watermark go by (an event's own time may be far older).
    pub received_ms: i64,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub request_id: String,
    /// The item's id as text (an integer id as its decimal digits), as the impression log keeps it.
    pub item_id: String,
    /// The event type (`play`, `like`, `skip`, …): a config maps event types to tasks.
    pub event: String,
    /// When it happened, in milliseconds since the epoch.
    pub ts_ms: i64,
    pub value: Option<f64>,
}

pub mod columns {
    pub const REQUEST_ID: &str = "request_id";
    pub const ITEM_ID: &str = "item_id";
    pub const EVENT: &str = "event";
    pub const TS_MS: &str = "ts_ms";
    pub const VALUE: &str = "value";
    pub const RECEIVED_MS: &str = "received_ms";
}

#[derive(Debug, Default)]
pub struct FeedbackBatch {
    request_id: StringBuilder,
    item_id: StringBuilder,
    event: StringBuilder,
    ts_ms: Int64Builder,
    value: Float64Builder,
    received_ms: Int64Builder,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use columns::*;
    Arc::new(Schema::new(vec![
        Field::new(REQUEST_ID, DataType::Utf8, false),
        Field::new(ITEM_ID, DataType::Utf8, false),
        Field::new(EVENT, DataType::Utf8, false),
        Field::new(TS_MS, DataType::Int64, false),
        Field::new(VALUE, DataType::Float64, true),
        Field::new(RECEIVED_MS, DataType::Int64, false),
    ]))
});

impl Record for Feedback {
    type Batch = FeedbackBatch;
    const LOG: &'static str = "feedback";
    const DICTIONARY: &'static [&'static str] = &[columns::EVENT];

    fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    fn rows(&self) -> usize {
        self.events.len()
    }

    fn arrived_ms(&self) -> i64 {
        self.received_ms
    }

    fn append(self, b: &mut FeedbackBatch) {
        for e in &self.events {
            b.request_id.append_value(&e.request_id);
            b.item_id.append_value(&e.item_id);
            b.event.append_value(&e.event);
            b.ts_ms.append_value(e.ts_ms);
            b.value.append_option(e.value);
            b.received_ms.append_value(self.received_ms);
        }
    }

    fn finish(b: &mut FeedbackBatch) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(b.request_id.finish()),
            Arc::new(b.item_id.finish()),
            Arc::new(b.event.finish()),
            Arc::new(b.ts_ms.finish()),
            Arc::new(b.value.finish()),
            Arc::new(b.received_ms.finish()),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the columns are built to the schema")
    }
}

/// Every event of a complete feedback partition, with the time its batch was received.
pub fn read(path: &std::path::Path) -> Result<Vec<(Event, i64)>, crate::partition::PartitionError> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    let mut out = Vec::new();
    for batch in crate::partition::batches(path, Feedback::LOG, &SCHEMA)? {
        let text = |i: usize| batch.column(i).as_string::<i32>();
        let (request_id, item_id, event) = (text(0), text(1), text(2));
        let ts = batch.column(3).as_primitive::<Int64Type>();
        let value = batch.column(4).as_primitive::<Float64Type>();
        let received = batch.column(5).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            out.push((
                Event {
                    request_id: request_id.value(i).to_string(),
                    item_id: item_id.value(i).to_string(),
                    event: event.value(i).to_string(),
                    ts_ms: ts.value(i),
                    value: (!value.is_null(i)).then(|| value.value(i)),
                },
                received.value(i),
            ));
        }
    }
    Ok(out)
}
