//! Monthly budgets and their alerts — the pure part: periods, scopes, month-to-date spend,
//! threshold crossings, the alert message and the per-partition alert ledger's format.
//!
//! - **Period**: the calendar month in UTC of an event's `time` (not of its arrival): an event of
//!   2026-10-31T23:59:59Z counts toward October even if it arrives in November, and spend starts
//!   from zero at 00:00 UTC on the first of each month.
//! - **Scope**: a tenant (`[[tenant.budget]]` without `agent`: every event of the tenant) or one
//!   agent of a tenant (`agent = "id"`: the tenant's events whose `data.agent.id` is that id). An
//!   agent's event counts toward both its agent budget and its tenant's budget.
//! - **Spend**: the sum of [`crate::billing::event_amount`] over the scope's events of the month
//!   (contract or list price, FX of the UTC date, contract discount, no tiers: never less than
//!   the bill). Event-level, so a list price that changes mid-hour is applied exactly. Events no
//!   price covers add nothing; events whose FX rate is missing are left out and reported.
//! - **Crossing**: threshold `t` of a budget of `amount` is reached when `spend × 100 ≥ amount × t`
//!   (exact integers, no division). Evaluation is by level, not by edge: after each committed
//!   batch, every threshold its scopes have reached and the ledger does not hold yet is due. So a
//!   threshold crossed while alerts were not evaluated (a crash, a budget added mid-month) is
//!   raised at the next evaluation of its month, and never twice.
//!
//! Not here: reading committed events and the ledger from the lake ([`crate::lake`]), Kafka and
//! the webhook (`tokenmeter-ingest`'s `alerts`).

use crate::billing::event_amount;
use crate::prices::{Budget, Money, PriceBook};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use tokenmeter_schemas::Buckets;

/// A budget period: one calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl Period {
    /// The month `t` falls in (UTC).
    pub fn of(t: DateTime<Utc>) -> Period {
        Period::of_date(t.date_naive())
    }

    /// The month of a UTC date.
    pub fn of_date(d: NaiveDate) -> Period {
        Period {
            year: d.year(),
            month: d.month(),
        }
    }

    /// Its first day.
    pub fn first_day(&self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }

    /// The first day of the next month.
    pub fn next_first_day(&self) -> NaiveDate {
        let (y, m) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        NaiveDate::from_ymd_opt(y, m, 1).expect("valid month")
    }

    /// Every date of the month.
    pub fn days(&self) -> Vec<NaiveDate> {
        self.first_day()
            .iter_days()
            .take_while(|d| *d < self.next_first_day())
            .collect()
    }
}

impl fmt::Display for Period {
    /// `YYYY-MM`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Whom a budget covers: a tenant, or one agent of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub tenant: String,
    pub agent: Option<String>,
}

impl Scope {
    /// The agent id, or `*` for the whole tenant (as alert ids spell it).
    pub fn agent_label(&self) -> &str {
        self.agent.as_deref().unwrap_or("*")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tenant, self.agent_label())
    }
}

/// The identity of an alert: `budget:{tenant}:{agent or *}:{YYYY-MM}:{threshold}`. One alert per
/// identity, ever: the alerts topic holds it once, and it is the webhook's `Idempotency-Key`.
pub fn alert_id(scope: &Scope, period: Period, threshold: u32) -> String {
    format!(
        "budget:{}:{}:{period}:{threshold}",
        scope.tenant,
        scope.agent_label()
    )
}

#[derive(Debug, Clone, Default)]
struct TenantBudgets {
    currency: String,
    tenant: Option<Budget>,
    agents: HashMap<String, Budget>,
}

/// The budgets of a price book, by tenant.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    tenants: HashMap<String, TenantBudgets>,
}

impl Budgets {
    /// Every `[[tenant.budget]]` of the book.
    pub fn from_book(book: &PriceBook) -> Budgets {
        let mut tenants = HashMap::new();
        for c in book.contracts() {
            if c.budgets.is_empty() {
                continue;
            }
            let mut t = TenantBudgets {
                currency: book.billing_currency(&c.tenant).to_string(),
                ..Default::default()
            };
            for b in &c.budgets {
                match &b.agent {
                    Some(a) => {
                        t.agents.insert(a.clone(), b.clone());
                    }
                    None => t.tenant = Some(b.clone()),
                }
            }
            tenants.insert(c.tenant.clone(), t);
        }
        Budgets { tenants }
    }

    /// Number of budgets.
    pub fn len(&self) -> usize {
        self.tenants
            .values()
            .map(|t| usize::from(t.tenant.is_some()) + t.agents.len())
            .sum()
    }

    /// Whether the book has no budget.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Whether any budget covers events of `tenant` (events of other tenants need no rating).
    pub fn watches(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// The budget of a scope.
    pub fn budget(&self, scope: &Scope) -> Option<&Budget> {
        let t = self.tenants.get(&scope.tenant)?;
        match &scope.agent {
            None => t.tenant.as_ref(),
            Some(a) => t.agents.get(a),
        }
    }

    /// The currency a tenant's budgets (and its bills) are in.
    pub fn currency(&self, tenant: &str) -> Option<&str> {
        self.tenants.get(tenant).map(|t| t.currency.as_str())
    }

    /// The scopes an event of `tenant` by `agent` counts toward: the tenant's budget and the
    /// agent's, those that exist.
    pub fn scopes(&self, tenant: &str, agent: Option<&str>) -> Vec<Scope> {
        let Some(t) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(2);
        if t.tenant.is_some() {
            out.push(Scope {
                tenant: tenant.to_string(),
                agent: None,
            });
        }
        if let Some(a) = agent
            && t.agents.contains_key(a)
        {
            out.push(Scope {
                tenant: tenant.to_string(),
                agent: Some(a.to_string()),
            });
        }
        out
    }
}

/// One committed event, as budgets read it (from a batch in memory or a raw-event file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendEvent {
    pub tenant: String,
    pub agent: Option<String>,
    pub provider: String,
    pub model: String,
    /// Event time at the lake's precision (microseconds), so a batch in memory and the same batch
    /// read back from its files rate identically.
    pub time: DateTime<Utc>,
    pub buckets: Buckets,
}

impl SpendEvent {
    /// From an event of a batch, its time truncated to microseconds as the lake stores it.
    pub fn of(p: &crate::PricedEvent) -> SpendEvent {
        let e = &p.event;
        SpendEvent {
            tenant: e.tenant_id.clone(),
            agent: e.data.agent.as_ref().map(|a| a.id.clone()),
            provider: e.data.provider.clone(),
            model: e.data.model.clone(),
            time: DateTime::from_timestamp_micros(p.time.timestamp_micros()).unwrap_or(p.time),
            buckets: p.buckets,
        }
    }
}

/// Spend per (period, scope).
pub type Spend = BTreeMap<(Period, Scope), Money>;

/// What rating a set of events for budgets gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rated {
    pub spend: Spend,
    /// Events of watched tenants that could not be rated (a missing FX rate), with the first
    /// error's text: they are left out of the spend.
    pub unrated: u64,
    pub first_error: Option<String>,
}

/// Rate `events` for `budgets`: each event's [`event_amount`], added to every scope it counts
/// toward, in the month of its time. Events of tenants without budgets are skipped unrated.
pub fn rate<'a>(
    book: &PriceBook,
    budgets: &Budgets,
    events: impl IntoIterator<Item = &'a SpendEvent>,
) -> Rated {
    let mut out = Rated::default();
    for e in events {
        if !budgets.watches(&e.tenant) {
            continue;
        }
        let scopes = budgets.scopes(&e.tenant, e.agent.as_deref());
        if scopes.is_empty() {
            continue;
        }
        let amount = match event_amount(book, &e.tenant, &e.provider, &e.model, e.time, &e.buckets)
        {
            Ok(Some(a)) => a,
            Ok(None) => continue, // no price: unpriced usage adds nothing
            Err(err) => {
                out.unrated += 1;
                out.first_error.get_or_insert_with(|| err.to_string());
                continue;
            }
        };
        let period = Period::of(e.time);
        for s in scopes {
            *out.spend.entry((period, s)).or_default() += amount;
        }
    }
    out
}

/// The thresholds of a budget that `spend` has reached: `spend × 100 ≥ amount × t`.
pub fn reached(budget: &Budget, spend: Money) -> impl Iterator<Item = u32> + '_ {
    budget
        .thresholds
        .iter()
        .copied()
        .filter(move |t| spend.saturating_mul(100) >= budget.amount.saturating_mul(*t as i128))
}

/// A threshold reached and not yet alerted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: String,
    pub scope: Scope,
    pub period: Period,
    pub threshold: u32,
    /// The budget's amount, scale 12.
    pub budget: Money,
    /// Month-to-date spend of the scope when it was found reached, scale 12.
    pub spend: Money,
    pub currency: String,
}

impl Due {
    /// The alert message, found reached after the batch ending at `through_offset` of
    /// `topic`/`partition` was committed.
    pub fn alert(
        &self,
        topic: &str,
        partition: i32,
        through_offset: i64,
        now: DateTime<Utc>,
    ) -> Alert {
        Alert {
            id: self.id.clone(),
            tenant_id: self.scope.tenant.clone(),
            agent_id: self.scope.agent.clone(),
            period: self.period.to_string(),
            threshold: self.threshold,
            budget: money_str(self.budget, 12),
            threshold_amount: money_str(self.budget * self.threshold as i128, 14),
            spend: money_str(self.spend, 12),
            currency: self.currency.clone(),
            time: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            topic: topic.to_string(),
            partition,
            through_offset,
        }
    }
}

/// An exact decimal string without trailing zeros.
fn money_str(v: i128, scale: u32) -> String {
    Decimal::from_i128_with_scale(v, scale)
        .normalize()
        .to_string()
}

/// Month-to-date spend of the budgeted scopes of one Kafka partition, for the months loaded
/// (from the lake's committed events, then kept up to date batch by batch).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    months: BTreeMap<Period, HashMap<Scope, Money>>,
}

/// Months kept in memory per partition; older ones are read from the lake again when touched.
pub const MAX_MONTHS: usize = 24;

impl Tracker {
    /// Whether a month's spend is known.
    pub fn is_loaded(&self, p: Period) -> bool {
        self.months.contains_key(&p)
    }

    /// Set a month's spend (its committed events so far).
    pub fn load(&mut self, p: Period, spend: HashMap<Scope, Money>) {
        self.months.insert(p, spend);
    }

    /// Add a batch's spend (its months must be loaded); returns the (period, scope) pairs it
    /// touched.
    pub fn add(&mut self, spend: &Spend) -> BTreeSet<(Period, Scope)> {
        let mut touched = BTreeSet::new();
        for ((p, s), v) in spend {
            let m = self
                .months
                .get_mut(p)
                .expect("a month is loaded before spend is added to it");
            *m.entry(s.clone()).or_default() += *v;
            touched.insert((*p, s.clone()));
        }
        touched
    }

    /// Month-to-date spend of a scope (0 when nothing was spent or the month is not loaded).
    pub fn spend(&self, p: Period, s: &Scope) -> Money {
        self.months
            .get(&p)
            .and_then(|m| m.get(s))
            .copied()
            .unwrap_or(0)
    }

    /// Drop the oldest months beyond [`MAX_MONTHS`].
    pub fn trim(&mut self) {
        while self.months.len() > MAX_MONTHS {
            self.months.pop_first();
        }
    }

    /// The thresholds the `touched` scopes have reached whose alert id is not in `alerted`, in
    /// (period, scope, threshold) order.
    pub fn due(
        &self,
        budgets: &Budgets,
        touched: &BTreeSet<(Period, Scope)>,
        alerted: &HashSet<String>,
    ) -> Vec<Due> {
        let mut out = Vec::new();
        for (p, s) in touched {
            let Some(b) = budgets.budget(s) else {
                continue;
            };
            let spend = self.spend(*p, s);
            for t in reached(b, spend) {
                let id = alert_id(s, *p, t);
                if alerted.contains(&id) {
                    continue;
                }
                out.push(Due {
                    id,
                    scope: s.clone(),
                    period: *p,
                    threshold: t,
                    budget: b.amount,
                    spend,
                    currency: budgets.currency(&s.tenant).unwrap_or_default().to_string(),
                });
            }
        }
        out
    }
}

/// A budget alert: the JSON message on the alerts topic (key: the tenant) and the webhook body.
/// Amounts are exact decimal strings in `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// [`alert_id`]; the webhook's `Idempotency-Key`.
    pub id: String,
    pub tenant_id: String,
    /// `null` for a tenant budget.
    pub agent_id: Option<String>,
    /// `YYYY-MM`, a calendar month in UTC.
    pub period: String,
    /// Percent of the budget.
    pub threshold: u32,
    /// The monthly budget.
    pub budget: String,
    /// `budget × threshold / 100`.
    pub threshold_amount: String,
    /// Month-to-date spend when the threshold was found reached: after the committed batch that
    /// ends at `through_offset`.
    pub spend: String,
    pub currency: String,
    /// When the alert was raised (RFC 3339, UTC).
    pub time: String,
    /// The input topic and partition whose committed batch raised it, and that batch's last
    /// offset.
    pub topic: String,
    pub partition: i32,
    pub through_offset: i64,
}

/// Where an alert stands on the alerts topic: the ack's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaAck {
    pub partition: i32,
    pub offset: i64,
}

/// Where an alert stands with the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// No webhook was configured when the alert was raised.
    Off,
    /// To be delivered (after the alerts topic has it).
    Pending,
    /// A 2xx answer was received.
    Delivered,
}

/// One alert in the ledger: intent (`kafka: null`) → on the alerts topic → webhook delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    pub alert: Alert,
    /// `None`: recorded (intent), not known to be on the alerts topic.
    pub kafka: Option<KafkaAck>,
    pub webhook: WebhookState,
}

/// The alert ledger of one input partition: `_state/{topic}/alerts/p{N}.json`, written
/// atomically by the holder of the partition's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    /// Every committed batch up to this offset has been evaluated and its alerts recorded.
    pub evaluated_through: i64,
    pub alerts: Vec<LedgerEntry>,
}

impl Ledger {
    /// An empty ledger that starts evaluating after `evaluated_through`.
    pub fn new(topic: &str, partition: i32, evaluated_through: i64) -> Ledger {
        Ledger {
            version: 1,
            topic: topic.to_string(),
            partition,
            evaluated_through,
            alerts: Vec::new(),
        }
    }

    /// Ids of every recorded alert.
    pub fn ids(&self) -> HashSet<String> {
        self.alerts.iter().map(|e| e.alert.id.clone()).collect()
    }

    /// Record an alert (intent).
    pub fn record(&mut self, alert: Alert, webhook: bool) {
        self.alerts.push(LedgerEntry {
            alert,
            kafka: None,
            webhook: if webhook {
                WebhookState::Pending
            } else {
                WebhookState::Off
            },
        });
    }

    /// The entry of an alert id.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut LedgerEntry> {
        self.alerts.iter_mut().find(|e| e.alert.id == id)
    }

    /// Alerts not known to be on the alerts topic.
    pub fn unsent(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.alerts.iter().filter(|e| e.kafka.is_none())
    }

    /// Alerts on the topic whose webhook delivery is pending.
    pub fn undelivered(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.alerts
            .iter()
            .filter(|e| e.kafka.is_some() && e.webhook == WebhookState::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOK: &str = r#"
currency = "USD"

[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2025-01-01T00:00:00Z"
input = "2"
output = "8"

[[price]]
provider = "openai"
model = "gpt-4.1"
effective_from = "2026-10-15T10:30:00Z"
input = "1"
output = "4"

[[fx]]
from = "USD"
to = "EUR"
rate = "0.5"
effective = "2026-01-01"

[[tenant]]
id = "acme"

[[tenant.budget]]
amount = "10"

[[tenant.budget]]
agent = "bot"
amount = "4"
thresholds = [25, 100]

[[tenant]]
id = "globex"
billing_currency = "EUR"

[[tenant.discount]]
percent = "10"

[[tenant.budget]]
agent = "bot"
amount = "100"
"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// An event of `input` uncached input tokens (and no output).
    fn ev(tenant: &str, agent: Option<&str>, time: &str, input: u64) -> SpendEvent {
        SpendEvent {
            tenant: tenant.into(),
            agent: agent.map(str::to_string),
            provider: "openai".into(),
            model: "gpt-4.1".into(),
            time: t(time),
            buckets: Buckets {
                uncached_input: input,
                ..Default::default()
            },
        }
    }

    fn scope(tenant: &str, agent: Option<&str>) -> Scope {
        Scope {
            tenant: tenant.into(),
            agent: agent.map(str::to_string),
        }
    }

    const USD: Money = 1_000_000_000_000;

    #[test]
    fn periods_are_utc_months_and_roll_over_at_midnight_of_the_first() {
        let p = Period::of(t("2026-10-31T23:59:59.999999Z"));
        assert_eq!(p.to_string(), "2026-10");
        assert_eq!(Period::of(t("2026-11-01T00:00:00Z")).to_string(), "2026-11");
        // An offset time is placed by its UTC instant: 08:00 in Shanghai on the 1st is still
        // October in UTC.
        assert_eq!(
            Period::of(t("2026-11-01T07:59:59+08:00")).to_string(),
            "2026-10"
        );
        assert_eq!(p.days().len(), 31);
        assert_eq!(
            Period::of_date(NaiveDate::from_ymd_opt(2028, 2, 3).unwrap())
                .days()
                .len(),
            29
        );
        let dec = Period::of(t("2026-12-10T00:00:00Z"));
        assert_eq!(dec.next_first_day().to_string(), "2027-01-01");
    }

    #[test]
    fn agent_events_count_toward_the_agent_and_the_tenant() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let b = Budgets::from_book(&book);
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.scopes("acme", Some("bot")),
            [scope("acme", None), scope("acme", Some("bot"))]
        );
        assert_eq!(b.scopes("acme", Some("other")), [scope("acme", None)]);
        assert_eq!(b.scopes("acme", None), [scope("acme", None)]);
        // globex has an agent budget only: its other events count toward nothing.
        assert_eq!(b.scopes("globex", None), []);
        assert_eq!(
            b.scopes("globex", Some("bot")),
            [scope("globex", Some("bot"))]
        );
        assert!(b.scopes("initech", Some("bot")).is_empty());
        assert_eq!(b.currency("globex"), Some("EUR"));
    }

    #[test]
    fn spend_is_event_level_with_contract_fx_and_discount() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let b = Budgets::from_book(&book);
        let events = [
            // 1M input at $2 = $2, before the mid-hour price change…
            ev("acme", Some("bot"), "2026-10-15T10:29:59Z", 1_000_000),
            // …and at $1 after it, in the same hour: an hourly rollup could not tell them apart.
            ev("acme", None, "2026-10-15T10:30:00Z", 1_000_000),
            // globex: $1 × 0.5 EUR/USD × 0.9 = €0.45.
            ev("globex", Some("bot"), "2026-10-20T00:00:00Z", 1_000_000),
            ev("globex", None, "2026-10-20T00:00:00Z", 1_000_000),
            ev("initech", None, "2026-10-20T00:00:00Z", 1_000_000),
            // November is another period.
            ev("acme", None, "2026-11-01T00:00:00Z", 3_000_000),
        ];
        let r = rate(&book, &b, &events);
        let oct = Period::of(t("2026-10-01T00:00:00Z"));
        let nov = Period::of(t("2026-11-01T00:00:00Z"));
        assert_eq!(
            r.spend,
            Spend::from([
                ((oct, scope("acme", None)), 3 * USD),
                ((oct, scope("acme", Some("bot"))), 2 * USD),
                ((oct, scope("globex", Some("bot"))), 45 * USD / 100),
                ((nov, scope("acme", None)), 3 * USD),
            ])
        );
        assert_eq!(r.unrated, 0);
    }

    #[test]
    fn crossings_are_found_once_at_or_above_the_threshold() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let b = Budgets::from_book(&book);
        let oct = Period::of(t("2026-10-01T00:00:00Z"));
        let acme = scope("acme", None);
        let mut tr = Tracker::default();
        tr.load(oct, HashMap::new());
        let mut alerted = HashSet::new();
        let mut step = |tr: &mut Tracker, amount: Money| {
            let touched = tr.add(&Spend::from([((oct, acme.clone()), amount)]));
            let due = tr.due(&b, &touched, &alerted);
            alerted.extend(due.iter().map(|d| d.id.clone()));
            due.iter()
                .map(|d| (d.threshold, d.spend))
                .collect::<Vec<_>>()
        };
        // Budget $10, thresholds 50/80/100. Just below 50 %: nothing.
        assert_eq!(step(&mut tr, 5 * USD - 1), []);
        // Exactly 50 %: reached.
        assert_eq!(step(&mut tr, 1), [(50, 5 * USD)]);
        // More spend within the same band: nothing new.
        assert_eq!(step(&mut tr, USD), []);
        // One batch over both 80 and 100 %: both, with the same spend.
        assert_eq!(step(&mut tr, 5 * USD), [(80, 11 * USD), (100, 11 * USD)]);
        assert_eq!(step(&mut tr, USD), []);
        assert_eq!(
            alert_id(&acme, oct, 80),
            "budget:acme:*:2026-10:80",
            "the alert id's form"
        );
        assert!(alerted.contains("budget:acme:*:2026-10:100"));
    }

    #[test]
    fn a_new_month_starts_from_zero_and_alerts_again() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let b = Budgets::from_book(&book);
        let events = [
            ev(
                "acme",
                Some("bot"),
                "2026-10-31T23:59:59.999999Z",
                6_000_000,
            ),
            ev("acme", Some("bot"), "2026-11-01T00:00:00Z", 1_000_000),
        ];
        let r = rate(&book, &b, &events);
        let mut tr = Tracker::default();
        for (p, _) in r.spend.keys() {
            tr.load(*p, HashMap::new());
        }
        let touched = tr.add(&r.spend);
        let due: Vec<String> = tr
            .due(&b, &touched, &HashSet::new())
            .into_iter()
            .map(|d| d.id)
            .collect();
        // October: tenant $6 of $10 → 50 %; agent $6 of $4 → 25 % and 100 %. November: $1 →
        // tenant 10 % (nothing), agent 25 % of $4 exactly.
        assert_eq!(
            due,
            [
                "budget:acme:*:2026-10:50",
                "budget:acme:bot:2026-10:25",
                "budget:acme:bot:2026-10:100",
                "budget:acme:bot:2026-11:25",
            ]
        );
    }

    #[test]
    fn a_threshold_already_reached_is_raised_at_the_next_touch_unless_alerted() {
        let book = PriceBook::parse(BOOK, "b").unwrap();
        let b = Budgets::from_book(&book);
        let oct = Period::of(t("2026-10-01T00:00:00Z"));
        let acme = scope("acme", None);
        let mut tr = Tracker::default();
        // Loaded from the lake already at 90 % (alerts were not evaluated for those batches).
        tr.load(oct, HashMap::from([(acme.clone(), 9 * USD)]));
        let touched = tr.add(&Spend::from([((oct, acme.clone()), 0)]));
        let alerted = HashSet::from(["budget:acme:*:2026-10:50".to_string()]);
        let due = tr.due(&b, &touched, &alerted);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].threshold, due[0].spend), (80, 9 * USD));
        let a = due[0].alert("usage.events", 3, 41, t("2026-11-02T00:00:00Z"));
        assert_eq!(
            (
                a.budget.as_str(),
                a.threshold_amount.as_str(),
                a.spend.as_str()
            ),
            ("10", "8", "9")
        );
        assert_eq!(a.agent_id, None);
        assert_eq!(a.time, "2026-11-02T00:00:00.000Z");
    }

    #[test]
    fn the_ledger_round_trips_and_tracks_states() {
        let mut l = Ledger::new("usage.events", 2, 99);
        let due = Due {
            id: "budget:acme:*:2026-10:50".into(),
            scope: scope("acme", None),
            period: Period::of(t("2026-10-01T00:00:00Z")),
            threshold: 50,
            budget: 10 * USD,
            spend: 5 * USD,
            currency: "USD".into(),
        };
        l.record(
            due.alert("usage.events", 2, 120, t("2026-10-02T00:00:00Z")),
            true,
        );
        assert_eq!(l.unsent().count(), 1);
        assert_eq!(l.undelivered().count(), 0);
        l.get_mut(&due.id).unwrap().kafka = Some(KafkaAck {
            partition: 0,
            offset: 7,
        });
        assert_eq!((l.unsent().count(), l.undelivered().count()), (0, 1));
        let text = serde_json::to_string(&l).unwrap();
        assert!(text.contains("\"webhook\":\"pending\""), "{text}");
        let back: Ledger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
        assert!(back.ids().contains(&due.id));
    }
}
