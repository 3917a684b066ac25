//! Writing query and report results: an aligned text table, CSV with a header, a JSON array of
//! objects, or Parquet (to a file only). Decimals never go through floats: CSV and the table print
//! them exactly, JSON writes them as strings ("0.000000000001") and Parquet keeps the type.
//! [`cost_table_with_totals`] adds per-tenant total rows to a cost report for the table format.
//!
//! Not here: computing results (see [`crate::reports`] and [`crate::sqlq`]).

use crate::{Error, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use tokenmeter_schemas::tables::{COST_PRECISION, COST_SCALE};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned text table, for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects, decimals as strings, nulls explicit.
    Json,
    /// Parquet, to a file.
    Parquet,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Parquet => "parquet",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "parquet" => Ok(Format::Parquet),
            _ => Err(Error::UnknownOption {
                what: "format",
                given: s.into(),
                expected: "table, csv, json, parquet",
            }),
        }
    }
}

/// Write `batches` in `format` to the file `out`, or to stdout when `out` is `None` (not for
/// Parquet, which needs a file). `batches` should hold at least one batch (possibly empty) so the
/// columns are known; the functions of this crate always return one.
pub fn write_batches(batches: &[RecordBatch], format: Format, out: Option<&Path>) -> Result<()> {
    match out {
        None if format == Format::Parquet => Err(Error::ParquetNeedsFile),
        None => {
            let io = |source| Error::Io {
                target: "stdout".into(),
                source,
            };
            let mut w = ClosedAware {
                inner: BufWriter::new(std::io::stdout()),
                closed: false,
            };
            let written = write_to(batches, format, &mut w).and_then(|()| w.flush().map_err(io));
            match written {
                // Some writers keep only the text of an I/O error (arrow's CSV writer): give the
                // caller the kind back, so a closed pipe (`| head`) can end the command quietly.
                Err(_) if w.closed => Err(io(std::io::ErrorKind::BrokenPipe.into())),
                r => r,
            }
        }
        Some(path) => {
            let io = |source| Error::Io {
                target: path.display().to_string(),
                source,
            };
            let file = std::fs::File::create(path).map_err(io)?;
            let mut w = BufWriter::new(file);
            write_to(batches, format, &mut w)?;
            w.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)
        }
    }
}

/// A writer that remembers whether a write failed because its reader has gone (`EPIPE`).
struct ClosedAware<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> ClosedAware<W> {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            self.closed |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
        r
    }
}

impl<W: Write> Write for ClosedAware<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

/// Write `batches` in `format` to any writer (Parquet included).
pub fn write_to<W: Write + Send>(batches: &[RecordBatch], format: Format, w: &mut W) -> Result<()> {
    let io = |source| Error::Io {
        target: "the output".into(),
        source,
    };
    match format {
        Format::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(w, "{table}").map_err(io)?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *w);
            for b in batches {
                writer.write(b)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut *w);
            for b in batches {
                writer.write(&decimals_as_strings(b)?)?;
            }
            writer.finish()?;
            writeln!(w).map_err(io)?;
        }
        Format::Parquet => {
            let Some(schema) = batches.first().map(|b| b.schema()) else {
                return Err(Error::NoBatches);
            };
            let mut writer = ArrowWriter::try_new(&mut *w, schema, None)?;
            for b in batches {
                writer.write(b)?;
            }
            writer.close()?;
        }
    }
    Ok(())
}

/// `batch` with every decimal column cast to a string column (exact digits).
fn decimals_as_strings(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if matches!(
            f.data_type(),
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        ) {
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
            columns.push(cast(c, &DataType::Utf8)?);
        } else {
            fields.push(f.as_ref().clone());
            columns.push(Arc::clone(c));
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The cost report's rows with, after each tenant's rows, one total row per currency of that
/// tenant: provider and model `*`, token_type `total`, the tenant's tokens and cost in that
/// currency (cost null for unpriced usage, whose currency is null; listed last). For the table
/// format.
pub fn cost_table_with_totals(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Err(Error::NotACostReport("there are no batches".into()));
    };
    let schema = first.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names != COST_COLUMNS {
        return Err(Error::NotACostReport(format!(
            "the columns are {names:?}, not {COST_COLUMNS:?}"
        )));
    }
    let all = concat_batches(&schema, batches)?;
    let strings = (0..5)
        .map(|i| cast(all.column(i), &DataType::Utf8))
        .collect::<Result<Vec<_>, _>>()?;
    let text = |col: usize, row: usize| {
        let a = strings[col].as_string::<i32>();
        a.is_valid(row).then(|| a.value(row))
    };
    let tokens = cast(all.column(5), &DataType::Int64)?;
    let tokens = tokens.as_primitive::<Int64Type>();
    let cost = cast(all.column(6), &cost_type())?;
    let cost = cost.as_primitive::<Decimal128Type>();

    let mut out = CostRows::with_capacity(all.num_rows());
    // Totals of the current tenant per currency; the key sorts unpriced (None) last.
    let mut totals = Totals::new();
    for i in 0..all.num_rows() {
        if i > 0 && text(0, i) != text(0, i - 1) {
            out.push_totals(text(0, i - 1), std::mem::take(&mut totals));
        }
        let (t, c) = (
            tokens.is_valid(i).then(|| tokens.value(i)),
            cost.is_valid(i).then(|| cost.value(i)),
        );
        out.push(
            [text(0, i), text(1, i), text(2, i), text(3, i), text(4, i)],
            t,
            c,
        );
        let priced = text(3, i).is_some();
        let sum = totals
            .entry((!priced, text(3, i)))
            .or_insert((0, priced.then_some(0)));
        sum.0 += t.unwrap_or(0);
        sum.1 = sum.1.zip(c).map(|(a, b)| a + b);
    }
    if all.num_rows() > 0 {
        out.push_totals(text(0, all.num_rows() - 1), totals);
    }
    Ok(vec![out.finish()?])
}

/// Columns of the cost report, in order.
const COST_COLUMNS: [&str; 7] = [
    "tenant_id",
    "provider",
    "model",
    "currency",
    "token_type",
    "tokens",
    "cost",
];

fn cost_type() -> DataType {
    DataType::Decimal128(COST_PRECISION, COST_SCALE)
}

/// Tokens and cost per currency of one tenant; the key sorts unpriced usage (currency `None`)
/// last.
type Totals<'a> = BTreeMap<(bool, Option<&'a str>), (i64, Option<i128>)>;

/// Builders of cost-report rows.
struct CostRows {
    text: [StringBuilder; 5],
    tokens: Int64Builder,
    cost: Decimal128Builder,
}

impl CostRows {
    fn with_capacity(n: usize) -> Self {
        Self {
            text: std::array::from_fn(|_| StringBuilder::with_capacity(n, n * 8)),
            tokens: Int64Builder::with_capacity(n),
            cost: Decimal128Builder::with_capacity(n).with_data_type(cost_type()),
        }
    }

    fn push(&mut self, text: [Option<&str>; 5], tokens: Option<i64>, cost: Option<i128>) {
        for (b, v) in self.text.iter_mut().zip(text) {
            b.append_option(v);
        }
        self.tokens.append_option(tokens);
        self.cost.append_option(cost);
    }

    fn push_totals(&mut self, tenant: Option<&str>, totals: Totals<'_>) {
        for ((_, currency), (tokens, cost)) in totals {
            self.push(
                [tenant, Some("*"), Some("*"), currency, Some("total")],
                Some(tokens),
                cost,
            );
        }
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let mut fields: Vec<Field> = COST_COLUMNS[..5]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect();
        fields.push(Field::new("tokens", DataType::Int64, true));
        fields.push(Field::new("cost", cost_type(), true));
        let mut columns: Vec<ArrayRef> = self
            .text
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.tokens.finish()));
        columns.push(Arc::new(self.cost.finish()));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use datafusion::assert_batches_eq;

    fn cost_batch() -> RecordBatch {
        let s = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let schema = Arc::new(Schema::new(vec![
            Field::new("tenant_id", DataType::Utf8, false),
            Field::new("provider", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("currency", DataType::Utf8, true),
            Field::new("token_type", DataType::Utf8, false),
            Field::new("tokens", DataType::Int64, true),
            Field::new("cost", cost_type(), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                s(vec![Some("t1"), Some("t1"), Some("t1"), Some("t2")]),
                s(vec![
                    Some("anthropic"),
                    Some("openai"),
                    Some("openai"),
                    Some("openai"),
                ]),
                s(vec![
                    Some("claude"),
                    Some("gpt-x"),
                    Some("gpt-x"),
                    Some("gpt-x"),
                ]),
                s(vec![None, Some("USD"), Some("USD"), Some("USD")]),
                s(vec![
                    Some("output"),
                    Some("uncached_input"),
                    Some("output"),
                    Some("output"),
                ]),
                Arc::new(Int64Array::from(vec![4, 1000, 45, 7])),
                Arc::new(
                    Decimal128Array::from(vec![
                        None,
                        Some(3_000_000_000),
                        Some(675_000_000),
                        Some(1),
                    ])
                    .with_data_type(cost_type()),
                ),
            ],
        )
        .unwrap()
    }

    fn render(batches: &[RecordBatch], format: Format) -> String {
        let mut out = Vec::new();
        write_to(batches, format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn totals_follow_each_tenant() {
        let b = cost_batch();
        let (first, rest) = (b.slice(0, 2), b.slice(2, 2));
        let with = cost_table_with_totals(&[first, rest]).unwrap();
        assert_batches_eq!(
            [
                "+-----------+-----------+--------+----------+----------------+--------+----------------+",
                "| tenant_id | provider  | model  | currency | token_type     | tokens | cost           |",
                "+-----------+-----------+--------+----------+----------------+--------+----------------+",
                "| t1        | anthropic | claude |          | output         | 4      |                |",
                "| t1        | openai    | gpt-x  | USD      | uncached_input | 1000   | 0.003000000000 |",
                "| t1        | openai    | gpt-x  | USD      | output         | 45     | 0.000675000000 |",
                "| t1        | *         | *      | USD      | total          | 1045   | 0.003675000000 |",
                "| t1        | *         | *      |          | total          | 4      |                |",
                "| t2        | openai    | gpt-x  | USD      | output         | 7      | 0.000000000001 |",
                "| t2        | *         | *      | USD      | total          | 7      | 0.000000000001 |",
                "+-----------+-----------+--------+----------+----------------+--------+----------------+",
            ],
            &with
        );
        let empty = cost_table_with_totals(&[b.slice(0, 0)]).unwrap();
        assert_eq!(empty[0].num_rows(), 0);
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(matches!(
            cost_table_with_totals(&[other]),
            Err(Error::NotACostReport(_))
        ));
    }

    #[test]
    fn json_is_an_array_of_objects_with_exact_decimal_strings() {
        let b = cost_batch().slice(2, 2);
        let json: serde_json::Value = serde_json::from_str(&render(&[b], Format::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"tenant_id": "t1", "provider": "openai", "model": "gpt-x", "currency": "USD",
                 "token_type": "output", "tokens": 45, "cost": "0.000675000000"},
                {"tenant_id": "t2", "provider": "openai", "model": "gpt-x", "currency": "USD",
                 "token_type": "output", "tokens": 7, "cost": "0.000000000001"},
            ])
        );
        let nulls: serde_json::Value =
            serde_json::from_str(&render(&[cost_batch().slice(0, 1)], Format::Json)).unwrap();
        assert_eq!(nulls[0]["currency"], serde_json::Value::Null);
        assert_eq!(nulls[0]["cost"], serde_json::Value::Null);
        assert_eq!(
            render(&[cost_batch().slice(0, 0)], Format::Json).trim(),
            "[]"
        );
    }

    #[test]
    fn csv_has_a_header_and_exact_values() {
        let dates = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "period_start",
                DataType::Date32,
                false,
            )])),
            vec![Arc::new(Date32Array::from(vec![20_393]))],
        )
        .unwrap();
        assert_eq!(render(&[dates], Format::Csv), "period_start\n2025-11-01\n");
        assert_eq!(
            render(&[cost_batch().slice(0, 2)], Format::Csv),
            "tenant_id,provider,model,currency,token_type,tokens,cost\n\
             t1,anthropic,claude,,output,4,\n\
             t1,openai,gpt-x,USD,uncached_input,1000,0.003000000000\n"
        );
        assert_eq!(
            render(&[cost_batch().slice(0, 0)], Format::Csv),
            "tenant_id,provider,model,currency,token_type,tokens,cost\n"
        );
    }

    #[test]
    fn parquet_needs_a_file_and_round_trips() {
        let b = cost_batch();
        assert!(matches!(
            write_batches(std::slice::from_ref(&b), Format::Parquet, None),
            Err(Error::ParquetNeedsFile)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        write_batches(std::slice::from_ref(&b), Format::Parquet, Some(&path)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                file,
            )
            .unwrap()
            .build()
            .unwrap();
        let back: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
        assert_eq!(back, vec![b]);
        assert!(matches!(
            write_batches(&[], Format::Parquet, Some(&path)),
            Err(Error::NoBatches)
        ));
    }

    #[test]
    fn table_is_aligned() {
        let text = render(&[cost_batch().slice(3, 1)], Format::Table);
        assert!(
            text.contains(
                "| t2        | openai   | gpt-x | USD      | output     | 7      | 0.000000000001 |"
            ),
            "{text}"
        );
        assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
    }
}
