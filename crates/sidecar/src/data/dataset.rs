//! Datasets of examples: a directory whose Parquet (or CSV) files are its partitions, read into
//! Arrow batches and checked against a feature spec, with errors naming the file and column.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::data::spec::DataSpec;
use retort_model::encode::Value;
use retort_model::manifest::FeatureKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
}

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub path: PathBuf,
    /// Path relative to the dataset directory: the partition's stable name.
    pub name: String,
    pub format: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a readable {format} file: {message}")]
    Corrupt { path: String, format: &'static str, message: String },
    #[error("{path}: missing column `{column}`")]
    MissingColumn { path: String, column: String },
    #[error("{path}: column `{column}` has type {found}; expected {expected}")]
    ColumnType { path: String, column: String, found: String, expected: String },
    #[error("{path}: column `{column}`, row {row}: {problem}")]
    Value { path: String, column: String, row: usize, problem: String },
}

/// A directory of partitions, sorted by name. Hidden files and names ending in `.tmp` are
/// skipped: writers land a partition by renaming it into place when it is whole.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub partitions: Vec<Partition>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset, DataError> {
        let mut partitions = Vec::new();
        collect(dir, dir, &mut partitions)?;
        partitions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Dataset { dir: dir.to_path_buf(), partitions })
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<Partition>) -> Result<(), DataError> {
    let io = |source| DataError::Io { path: dir.display().to_string(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if file_name.starts_with('.') || file_name.ends_with(".tmp") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => Format::Parquet,
            Some("csv") => Format::Csv,
            _ => continue,
        };
        let name = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        out.push(Partition { path, name, format });
    }
    Ok(())
}

/// A partition read into memory: its batches and, per requested column, its index.
pub struct Examples {
    pub path: String,
    pub batches: Vec<RecordBatch>,
    /// Requested column name → index in every batch.
    pub columns: BTreeMap<String, usize>,
}

impl Examples {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The typed view of `column` in `batch`.
    pub fn column(&self, batch: usize, column: &str) -> Column<'_> {
        let ix = self.columns[column];
        Column::of(self.batches[batch].column(ix))
    }
}

impl Partition {
    /// Reads the named columns (all must exist), checking each against what `spec` says of it.
    pub fn read(&self, spec: &DataSpec, columns: &[&str]) -> Result<Examples, DataError> {
        let path = self.path.display().to_string();
        let batches = match self.format {
            Format::Parquet => read_parquet(&self.path, columns)?,
            Format::Csv => read_csv(&self.path, spec, columns)?,
        };
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(Schema::empty()),
        };
        let mut indices = BTreeMap::new();
        for &name in columns {
            let Ok(ix) = schema.index_of(name) else {
                if batches.is_empty() {
                    continue;
                }
                return Err(DataError::MissingColumn { path, column: name.to_string() });
            };
            check_type(&path, name, schema.field(ix).data_type(), expected_type(spec, name))?;
            indices.insert(name.to_string(), ix);
        }
        let vectors_as_text: Vec<usize> = indices
            .iter()
            .filter(|(name, ix)| {
                expected_type(spec, name) == Expected::Vector && !is_list(schema.field(**ix).data_type())
            })
            .map(|(_, ix)| *ix)
            .collect();
        let mut batches = batches;
        if !vectors_as_text.is_empty() {
            // CSV (and text Parquet) vectors become lists here, once, so every reader of a
            // partition sees one type whatever the file's format.
            let mut offset = 0;
            for batch in &mut batches {
                *batch = lists_from_text(&path, batch, &vectors_as_text, offset)?;
                offset += batch.num_rows();
            }
        }
        Ok(Examples { path, batches, columns: indices })
    }
}

fn read_parquet(path: &Path, columns: &[&str]) -> Result<Vec<RecordBatch>, DataError> {
    let p = path.display().to_string();
    let corrupt = |e: parquet::errors::ParquetError| DataError::Corrupt {
        path: p.clone(),
        format: "Parquet",
        message: e.to_string(),
    };
    let file = File::open(path).map_err(|source| DataError::Io { path: p.clone(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?;
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for &name in columns {
        match schema.index_of(name) {
            Ok(ix) => roots.push(ix),
            Err(_) => return Err(DataError::MissingColumn { path: p, column: name.to_string() }),
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).with_batch_size(8192).build().map_err(corrupt)?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| DataError::Corrupt {
        path: p.clone(),
        format: "Parquet",
        message: e.to_string(),
    })
}

/// CSV has no types: the spec gives them. Ids and categorical values are read as text (an
/// integer id hashes as its decimal text anyway), vectors as numbers separated by `;`.
fn read_csv(path: &Path, spec: &DataSpec, columns: &[&str]) -> Result<Vec<RecordBatch>, DataError> {
    let p = path.display().to_string();
    let io = |source| DataError::Io { path: p.clone(), source };
    let mut header = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(File::open(path).map_err(io)?), &mut header)
        .map_err(io)?;
    let names: Vec<&str> = header.trim_end_matches(['\r', '\n']).split(',').collect();
    let fields: Vec<Field> = names.iter().map(|n| Field::new(*n, csv_type(spec, n), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let reader = arrow_csv::ReaderBuilder::new(schema.clone())
        .with_header(true)
        .with_batch_size(8192)
        .build(File::open(path).map_err(io)?)
        .map_err(|e| DataError::Corrupt { path: p.clone(), format: "CSV", message: e.to_string() })?;
    let mut projection = Vec::new();
    for &name in columns {
        match schema.index_of(name) {
            Ok(ix) => projection.push(ix),
            Err(_) => return Err(DataError::MissingColumn { path: p, column: name.to_string() }),
        }
    }
    reader
        .map(|b| {
            b.and_then(|b| b.project(&projection)).map_err(|e| DataError::Corrupt {
                path: p.clone(),
                format: "CSV",
                message: e.to_string(),
            })
        })
        .collect()
}

fn csv_type(spec: &DataSpec, column: &str) -> DataType {
    match expected_type(spec, column) {
        Expected::Number | Expected::Label => DataType::Float64,
        Expected::Timestamp => DataType::Int64,
        Expected::Id | Expected::Categorical | Expected::Vector | Expected::Any => DataType::Utf8,
    }
}

/// What a column must hold, by its role in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Id,
    Timestamp,
    Categorical,
    Number,
    Vector,
    Label,
    Any,
}

fn expected_type(spec: &DataSpec, column: &str) -> Expected {
    if column == spec.columns.example_id || column == spec.columns.request_id {
        return Expected::Id;
    }
    if column == spec.columns.ts {
        return Expected::Timestamp;
    }
    if let Some(f) = spec.features.iter().find(|f| f.name == column) {
        return match f.kind {
            FeatureKind::Categorical { .. } => Expected::Categorical,
            FeatureKind::Number { .. } => Expected::Number,
            FeatureKind::Vector { .. } => Expected::Vector,
        };
    }
    if spec.tasks.iter().any(|t| t.column() == column || t.truth.as_deref() == Some(column)) {
        return Expected::Label;
    }
    Expected::Any
}

fn is_list(found: &DataType) -> bool {
    match found {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    }
}

/// Numbers separated by `;` (`0.5;1.5;-2`), the text form of a vector in CSV. An empty field is
/// null, not an empty vector.
pub fn vector_from_text(text: &str) -> Result<Vec<f64>, String> {
    text.split(';')
        .map(|x| {
            let x = x.trim();
            x.parse::<f64>().map_err(|_| {
                format!("`{x}` in `{text}` is not a number (a vector is numbers separated by `;`)")
            })
        })
        .collect()
}

/// `batch` with the text columns at `columns` parsed into lists of float64.
fn lists_from_text(
    path: &str,
    batch: &RecordBatch,
    columns: &[usize],
    offset: usize,
) -> Result<RecordBatch, DataError> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for &ix in columns {
        let Column::Str(text) = Column::of(&arrays[ix]) else { continue };
        let mut list = arrow_array::builder::ListBuilder::new(arrow_array::builder::Float64Builder::new());
        for row in 0..text.len() {
            if text.is_null(row) || text.str_value(row).trim().is_empty() {
                list.append_null();
                continue;
            }
            let values = vector_from_text(text.str_value(row)).map_err(|problem| DataError::Value {
                path: path.to_string(),
                column: fields[ix].name().clone(),
                row: offset + row,
                problem,
            })?;
            list.values().append_slice(&values);
            list.append(true);
        }
        let array: ArrayRef = Arc::new(list.finish());
        fields[ix] = Field::new(fields[ix].name(), array.data_type().clone(), true);
        arrays[ix] = array;
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| DataError::Corrupt {
        path: path.to_string(),
        format: "CSV",
        message: e.to_string(),
    })
}

fn check_type(path: &str, column: &str, found: &DataType, expected: Expected) -> Result<(), DataError> {
    let is_int = matches!(found, DataType::Int64 | DataType::Int32 | DataType::UInt32 | DataType::UInt64);
    let is_float = matches!(found, DataType::Float64 | DataType::Float32);
    let is_text = matches!(found, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let is_list = is_list(found);
    let (ok, wanted) = match expected {
        Expected::Id | Expected::Categorical => (is_int || is_text, "a string or an integer"),
        Expected::Timestamp => (is_int, "an integer (seconds since the epoch)"),
        Expected::Number => (is_int || is_float, "a number"),
        Expected::Vector => (is_list || is_text, "a list of floats"),
        Expected::Label => {
            (is_int || is_float || matches!(found, DataType::Boolean), "a number or a boolean")
        }
        Expected::Any => (true, "anything"),
    };
    if ok {
        Ok(())
    } else {
        Err(DataError::ColumnType {
            path: path.to_string(),
            column: column.to_string(),
            found: found.to_string(),
            expected: wanted.to_string(),
        })
    }
}

/// A column of one batch, typed once so that reading a row is a match, not a downcast.
#[derive(Clone, Copy)]
pub enum Column<'a> {
    Str(&'a dyn StrArray),
    I64(&'a arrow_array::Int64Array),
    I32(&'a arrow_array::Int32Array),
    F64(&'a arrow_array::Float64Array),
    F32(&'a arrow_array::Float32Array),
    Bool(&'a arrow_array::BooleanArray),
    List(&'a arrow_array::ListArray),
    FixedList(&'a arrow_array::FixedSizeListArray),
    Unsupported(&'a dyn Array),
}

/// String arrays of either offset width.
pub trait StrArray: Array {
    fn str_value(&self, row: usize) -> &str;
}

impl StrArray for arrow_array::StringArray {
    fn str_value(&self, row: usize) -> &str {
        self.value(row)
    }
}

impl StrArray for arrow_array::LargeStringArray {
    fn str_value(&self, row: usize) -> &str {
        self.value(row)
    }
}

impl<'a> Column<'a> {
    pub fn of(array: &'a ArrayRef) -> Column<'a> {
        match array.data_type() {
            DataType::Utf8 => Column::Str(array.as_string::<i32>()),
            DataType::LargeUtf8 => Column::Str(array.as_string::<i64>()),
            DataType::Int64 => Column::I64(array.as_primitive::<Int64Type>()),
            DataType::Int32 => Column::I32(array.as_primitive::<Int32Type>()),
            DataType::Float64 => Column::F64(array.as_primitive::<Float64Type>()),
            DataType::Float32 => Column::F32(array.as_primitive::<Float32Type>()),
            DataType::Boolean => Column::Bool(array.as_boolean()),
            DataType::List(_) => Column::List(array.as_list::<i32>()),
            DataType::FixedSizeList(_, _) => Column::FixedList(array.as_fixed_size_list()),
            _ => Column::Unsupported(array.as_ref()),
        }
    }

    fn array(&self) -> &dyn Array {
        match self {
            Column::Str(a) => *a as &dyn Array,
            Column::I64(a) => *a,
            Column::I32(a) => *a,
            Column::F64(a) => *a,
            Column::F32(a) => *a,
            Column::Bool(a) => *a,
            Column::List(a) => *a,
            Column::FixedList(a) => *a,
            Column::Unsupported(a) => *a,
        }
    }

    pub fn is_null(&self, row: usize) -> bool {
        self.array().is_null(row)
    }

    /// The value at `row` as a feature value.
    pub fn value(&self, row: usize) -> Value<'a> {
        if self.is_null(row) {
            return Value::Missing;
        }
        match *self {
            Column::Str(a) => Value::Str(a.str_value(row)),
            Column::I64(a) => Value::Int(a.value(row)),
            Column::I32(a) => Value::Int(a.value(row) as i64),
            Column::F64(a) => Value::Float(a.value(row)),
            Column::F32(a) => Value::Float(a.value(row) as f64),
            Column::Bool(a) => Value::Bool(a.value(row)),
            Column::List(a) => floats(&a.value(row)),
            Column::FixedList(a) => floats(&a.value(row)),
            Column::Unsupported(_) => Value::Other("an unsupported column type"),
        }
    }

    /// The value at `row` as a number (labels, timestamps); `None` when null or not numeric.
    pub fn number(&self, row: usize) -> Option<f64> {
        if self.is_null(row) {
            return None;
        }
        match *self {
            Column::I64(a) => Some(a.value(row) as f64),
            Column::I32(a) => Some(a.value(row) as f64),
            Column::F64(a) => Some(a.value(row)),
            Column::F32(a) => Some(a.value(row) as f64),
            Column::Bool(a) => Some(if a.value(row) { 1.0 } else { 0.0 }),
            Column::Str(a) => a.str_value(row).trim().parse().ok(),
            _ => None,
        }
    }

    /// The value at `row` as an id: text or integer, rendered as text.
    pub fn id(&self, row: usize) -> Option<Cow<'a, str>> {
        if self.is_null(row) {
            return None;
        }
        match *self {
            Column::Str(a) => Some(Cow::Borrowed(a.str_value(row))),
            Column::I64(a) => Some(Cow::Owned(a.value(row).to_string())),
            Column::I32(a) => Some(Cow::Owned(a.value(row).to_string())),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.array().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn floats(values: &ArrayRef) -> Value<'static> {
    match values.data_type() {
        DataType::Float32 => Value::List(Cow::Owned(
            values.as_primitive::<Float32Type>().iter().map(|v| v.unwrap_or(f32::NAN) as f64).collect(),
        )),
        DataType::Float64 => Value::List(Cow::Owned(
            values.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        )),
        _ => Value::Other("a list holding non-numbers"),
    }
}
