//! Rendering query results as an aligned table, CSV with a header line, or a JSON array.

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            other => Err(format!("unknown format `{other}` (expected table, csv or json)")),
        }
    }
}

pub fn format_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<String, ArrowError> {
    match format {
        OutputFormat::Table => Ok(pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
            }
            String::from_utf8(out).map_err(|e| ArrowError::CsvError(e.to_string()))
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
            }
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            String::from_utf8(out).map_err(|e| ArrowError::JsonError(e.to_string()))
        }
    }
}
