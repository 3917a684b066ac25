//! The ClickHouse side of the contract: the DDL of the rollup tables (`schemas/clickhouse/`).
//! Text only; running it is `tokenmeter-aggregate`'s business.

/// DDL of `{{database}}.{{table}}_parts` and the `{{database}}.{{table}}` view, statements
/// separated by lines holding only `;` (see the file's header).
pub const USAGE_HOURLY_DDL: &str = include_str!("../clickhouse/usage_hourly.sql");
