//! Tenant dashboards on ClickHouse: the `.sql` files of `query/sql/clickhouse/` (cost by day,
//! cost by model, agent share for a tenant and a range), run with bound parameters. They give
//! the lake reports' numbers (a test checks it); dashboard tools can run the files as they are.
//!
//! Not here: the lake's reports (`reports`), the ClickHouse sink (`tokenmeter-aggregate`).

use crate::{Error, Result};
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;

/// Cost per local day and currency.
pub const COST_BY_DAY_SQL: &str = include_str!("../sql/clickhouse/cost_by_day.sql");
/// Tokens and cost per provider, model and currency.
pub const COST_BY_MODEL_SQL: &str = include_str!("../sql/clickhouse/cost_by_model.sql");
/// Agent share per currency.
pub const AGENT_SHARE_SQL: &str = include_str!("../sql/clickhouse/agent_share.sql");

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct DayCost {
    pub day: String,
    pub currency: Option<String>,
    pub requests: i64,
    pub tokens: i64,
    /// Units of 1e-12.
    pub cost: Option<i128>,
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct ModelCost {
    pub provider: String,
    pub model: String,
    pub currency: Option<String>,
    pub tokens: i64,
    pub cost: Option<i128>,
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct AgentShare {
    pub currency: Option<String>,
    pub agent_tokens: i64,
    pub total_tokens: i64,
    pub agent_cost: Option<i128>,
    pub total_cost: Option<i128>,
}

/// The dashboards of one rollup table.
pub struct Dashboard {
    parts: String,
}

/// A range as UTC seconds: [start, end).
pub type Range = (u32, u32);

impl Dashboard {
    /// Dashboards over `database.table_complete` (the rows of complete INSERTs).
    pub fn new(database: &str, table: &str) -> Result<Self> {
        if ![database, table]
            .iter()
            .all(|n| tokenmeter_schemas::clickhouse::is_plain_identifier(n))
        {
            return Err(Error::UnknownOption {
                what: "ClickHouse database or table",
                given: format!("{database}.{table}"),
                expected: "plain identifiers (letters, digits, _)",
            });
        }
        Ok(Dashboard {
            parts: tokenmeter_aggregate::clickhouse::complete_table(database, table),
        })
    }

    /// Local midnights of `from` and `to` (exclusive) in `tz`, as UTC seconds.
    pub fn range(&self, tz: Tz, from: NaiveDate, to: NaiveDate) -> Range {
        let s = |d| crate::localtime::day_start(tz, d).timestamp() as u32;
        (s(from), s(to))
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{{parts}}", &self.parts)
    }

    pub async fn cost_by_day(
        &self,
        client: &clickhouse::Client,
        tenant: &str,
        tz: Tz,
        (start, end): Range,
    ) -> Result<Vec<DayCost>> {
        client
            .query(&self.sql(COST_BY_DAY_SQL))
            .bind(tz.name())
            .bind(tenant)
            .bind(start)
            .bind(end)
            .fetch_all()
            .await
            .map_err(Error::clickhouse("cost by day"))
    }

    pub async fn cost_by_model(
        &self,
        client: &clickhouse::Client,
        tenant: &str,
        range: Range,
    ) -> Result<Vec<ModelCost>> {
        self.per_tenant(client, COST_BY_MODEL_SQL, "cost by model", tenant, range)
            .await
    }

    pub async fn agent_share(
        &self,
        client: &clickhouse::Client,
        tenant: &str,
        range: Range,
    ) -> Result<Vec<AgentShare>> {
        self.per_tenant(client, AGENT_SHARE_SQL, "agent share", tenant, range)
            .await
    }

    /// A dashboard whose parameters are tenant, start and end.
    async fn per_tenant<T>(
        &self,
        client: &clickhouse::Client,
        template: &str,
        what: &str,
        tenant: &str,
        (start, end): Range,
    ) -> Result<Vec<T>>
    where
        T: clickhouse::RowOwned + for<'b> Deserialize<'b>,
    {
        client
            .query(&self.sql(template))
            .bind(tenant)
            .bind(start)
            .bind(end)
            .fetch_all()
            .await
            .map_err(Error::clickhouse(what))
    }
}
