//! Read-only SQL over the catalog: one query (SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE) per
//! call, collected into record batches. DDL, DML and other statements (SET, PREPARE, transactions)
//! are refused with [`Error::ReadOnly`] before anything runs: first by the statement's leading
//! keyword, so even `INSERT INTO no_such_table` gets the read-only answer, then on the plan (which
//! catches e.g. `EXPLAIN ANALYZE CREATE TABLE`), then by DataFusion's own [`SQLOptions`] check.
//!
//! Not here: the tables (see [`crate::catalog`]).

use crate::{Error, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;

/// DataFusion's guard for every query this crate runs: no DDL, no DML, no statements.
pub fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

const DDL: &str = "DDL (CREATE/DROP/ALTER/TRUNCATE)";
const DML: &str = "DML (INSERT/UPDATE/DELETE/COPY)";
const STATEMENT: &str =
    "a statement that is not a query (SET, PREPARE, EXECUTE, transactions, ...)";

/// The kind of a statement by its leading keyword; `None` for a query.
fn kind_by_keyword(statement: &str) -> Option<&'static str> {
    let first = statement
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" | "EXPLAIN" | "SHOW" | "DESCRIBE" | "DESC" | "TABLE" => None,
        "CREATE" | "DROP" | "ALTER" | "TRUNCATE" => Some(DDL),
        "INSERT" | "UPDATE" | "DELETE" | "COPY" | "MERGE" | "REPLACE" => Some(DML),
        _ => Some(STATEMENT),
    }
}

/// The kind of the first node of `plan` that is not a query, if any.
fn kind_in_plan(plan: &LogicalPlan) -> Option<&'static str> {
    let mut found = None;
    // The closure never fails.
    let _ = plan.apply_with_subqueries(|node| {
        found = match node {
            LogicalPlan::Ddl(_) => Some(DDL),
            LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => Some(DML),
            LogicalPlan::Statement(_) => Some(STATEMENT),
            _ => None,
        };
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

fn short(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Run one read-only query against the catalog and collect its rows. The result always has at
/// least one batch (possibly empty), so its schema is known even with no rows.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect)?;
    if let Some(kind) = kind_by_keyword(&statement.to_string()) {
        return Err(Error::ReadOnly {
            kind,
            statement: short(sql),
        });
    }
    let plan = state.statement_to_plan(statement).await?;
    if let Some(kind) = kind_in_plan(&plan) {
        return Err(Error::ReadOnly {
            kind,
            statement: short(sql),
        });
    }
    read_only_options().verify_plan(&plan)?;
    collect_with_schema(ctx.execute_logical_plan(plan).await?).await
}

/// Collect a data frame; an empty result is one empty batch with the frame's schema.
pub(crate) async fn collect_with_schema(df: DataFrame) -> Result<Vec<RecordBatch>> {
    let schema = df.schema().as_arrow().clone();
    let mut batches = df.collect().await?;
    batches.retain(|b| b.num_rows() > 0);
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema.into()));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::open_catalog;

    async fn ctx() -> (tempfile::TempDir, SessionContext) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open_catalog(dir.path()).await.unwrap();
        (dir, ctx)
    }

    #[tokio::test]
    async fn queries_run() {
        let (_dir, ctx) = ctx().await;
        for sql in [
            "SELECT COUNT(*) FROM usage_events",
            "  with x as (select 1 as a) select a from x",
            "(SELECT tenant_id FROM usage_hourly)",
            "VALUES (1), (2)",
            "EXPLAIN SELECT * FROM usage_hourly WHERE date >= '2026-11-01'",
            "SHOW TABLES",
            "DESCRIBE usage_events",
            "SELECT * FROM usage_hourly_parts;",
        ] {
            let batches = run_sql(&ctx, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(!batches.is_empty(), "{sql}");
        }
        let b = run_sql(&ctx, "SELECT * FROM usage_events").await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].num_rows(), 0);
        assert_eq!(b[0].schema().field(0).name(), "event_id");
    }

    #[tokio::test]
    async fn everything_else_is_refused_as_read_only() {
        let (_dir, ctx) = ctx().await;
        for (sql, kind) in [
            ("CREATE TABLE t (a INT)", DDL),
            ("create table t as select * from usage_events", DDL),
            ("DROP TABLE usage_events", DDL),
            ("DROP VIEW usage_hourly", DDL),
            ("CREATE VIEW v AS SELECT 1", DDL),
            (
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'",
                DDL,
            ),
            ("INSERT INTO usage_events SELECT * FROM usage_events", DML),
            ("INSERT INTO no_such_table VALUES (1)", DML),
            ("DELETE FROM usage_events", DML),
            ("COPY (SELECT 1) TO '/tmp/out.parquet'", DML),
            ("SET datafusion.execution.batch_size = 1", STATEMENT),
            ("PREPARE p AS SELECT 1", STATEMENT),
            ("EXPLAIN CREATE TABLE t (a INT)", DDL),
        ] {
            match run_sql(&ctx, sql).await {
                Err(e @ Error::ReadOnly { kind: k, .. }) => {
                    assert_eq!(k, kind, "{sql}");
                    assert!(
                        e.to_string().starts_with("tokenmeter sql is read-only: "),
                        "{e}"
                    );
                }
                other => panic!("{sql}: expected a read-only refusal, got {other:?}"),
            }
        }
        // Nothing changed.
        run_sql(&ctx, "SELECT * FROM usage_hourly").await.unwrap();
        assert!(ctx.table_exist("t").is_ok_and(|e| !e));
        let e = run_sql(&ctx, "DROP TABLE usage_events").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokenmeter sql is read-only: DDL (CREATE/DROP/ALTER/TRUNCATE) is not allowed (got `DROP TABLE usage_events`); query the tables usage_events, usage_hourly and usage_hourly_parts with SELECT, EXPLAIN, SHOW or DESCRIBE"
        );
    }

    #[tokio::test]
    async fn one_statement_at_a_time() {
        let (_dir, ctx) = ctx().await;
        assert!(
            run_sql(&ctx, "SELECT 1; DROP TABLE usage_events")
                .await
                .is_err()
        );
        run_sql(&ctx, "SELECT * FROM usage_events").await.unwrap();
    }
}
