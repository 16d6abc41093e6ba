//! The two SQL dialects reports are written in: DataFusion over the embedded store, and
//! ClickHouse (18.16 and later). Each hook renders one construct the two spell differently, so
//! a report is written once and means the same on both stores.

/// The calendar bucket of a report, in the tenant's time zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    #[default]
    Day,
    Week,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Week => "week",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Granularity::Hour, Granularity::Day, Granularity::Week].into_iter().find(|g| g.name() == text)
    }
}

/// Which engine a report's SQL is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    DataFusion,
    /// `datetime64`: instants are `DateTime64(3)` (ClickHouse ≥ 20.1) rather than `UInt64` ms.
    ClickHouse {
        datetime64: bool,
    },
}

/// `text` as a ClickHouse string literal: backslashes and quotes escaped.
pub fn clickhouse_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Dialect {
    /// A string literal.
    pub fn string(self, text: &str) -> String {
        match self {
            Dialect::DataFusion => format!("'{}'", text.replace('\'', "''")),
            Dialect::ClickHouse { .. } => clickhouse_string(text),
        }
    }

    /// A date literal from days since 1970-01-01.
    pub fn date(self, date32: i32) -> String {
        let text = convoflow_events::date32_to_string(date32);
        match self {
            Dialect::DataFusion => format!("DATE '{text}'"),
            Dialect::ClickHouse { .. } => format!("toDate('{text}')"),
        }
    }

    /// An instant column as epoch milliseconds.
    pub fn ms(self, column: &str) -> String {
        match self {
            Dialect::DataFusion => format!("CAST({column} AS BIGINT)"),
            Dialect::ClickHouse { datetime64: false } => column.to_owned(),
            Dialect::ClickHouse { datetime64: true } => format!("toUnixTimestamp64Milli({column})"),
        }
    }

    /// A 64-bit integer (ClickHouse's `count()` is unsigned, and `UNION ALL` branches must agree).
    pub fn int(self, expr: &str) -> String {
        match self {
            Dialect::DataFusion => format!("CAST({expr} AS BIGINT)"),
            Dialect::ClickHouse { .. } => format!("toInt64({expr})"),
        }
    }

    /// A nullable double, for columns that are null in some `UNION ALL` branches.
    pub fn float(self, expr: &str) -> String {
        match self {
            Dialect::DataFusion => format!("CAST({expr} AS DOUBLE)"),
            Dialect::ClickHouse { .. } => format!("CAST({expr} AS Nullable(Float64))"),
        }
    }

    /// The continuous percentile `q` of the non-null `column` over the group, interpolated
    /// between the two nearest values (`percentile_cont`), null for an empty group. ClickHouse
    /// 18.16 has no interpolating quantile, so it is spelled out on the sorted values
    /// (`groupArray` skips nulls) the way DataFusion computes it, interpolation weight truncated
    /// to 6 decimals included, so both stores give the same figure.
    pub fn percentile(self, q: f64, column: &str) -> String {
        match self {
            Dialect::DataFusion => format!("percentile_cont({q}) WITHIN GROUP (ORDER BY {column})"),
            Dialect::ClickHouse { .. } => {
                let values = format!("arraySort(groupArray({column}))");
                let n = format!("length({values})");
                let index = format!("({q} * ({n} - 1))");
                let lower = format!("arrayElement({values}, toUInt64(floor({index})) + 1)");
                let upper = format!("arrayElement({values}, toUInt64(ceil({index})) + 1)");
                let weight = format!("(floor(({index} - floor({index})) * 1000000) / 1000000)");
                format!("if({n} = 0, NULL, {lower} + ({upper} - {lower}) * {weight})")
            }
        }
    }

    /// The instant at which the tenant-local hour, day or ISO week (Monday) holding the instant
    /// `column` begins, as epoch ms.
    pub fn bucket(self, granularity: Granularity, column: &str, timezone: &str) -> String {
        match self {
            Dialect::DataFusion => format!(
                "CAST(date_trunc('{}', arrow_cast({column}, 'Timestamp(Millisecond, Some(\"{timezone}\"))')) AS BIGINT)",
                granularity.name()
            ),
            Dialect::ClickHouse { .. } => {
                let local = format!("toDateTime(intDiv({}, 1000), '{timezone}')", self.ms(column));
                match granularity {
                    Granularity::Hour => format!("toInt64(toStartOfHour({local})) * 1000"),
                    Granularity::Day => format!("toInt64(toDateTime(toDate({local}), '{timezone}')) * 1000"),
                    Granularity::Week => format!("toInt64(toDateTime(toMonday({local}), '{timezone}')) * 1000"),
                }
            }
        }
    }

    /// The ISO weekday of a date column, 1 = Monday … 7 = Sunday.
    pub fn iso_weekday(self, column: &str) -> String {
        match self {
            // 1970-01-01 was a Thursday.
            Dialect::DataFusion => format!("(CAST(CAST({column} AS INT) AS BIGINT) + 3) % 7 + 1"),
            Dialect::ClickHouse { .. } => format!("toInt64(toDayOfWeek({column}))"),
        }
    }

    /// `value` of the row with the least `by` in the group.
    pub fn first_by(self, value: &str, by: &str) -> String {
        match self {
            Dialect::DataFusion => format!("first_value({value} ORDER BY {by} ASC NULLS LAST)"),
            Dialect::ClickHouse { .. } => format!("argMin({value}, {by})"),
        }
    }

    /// The integers 1..=n as a one-column table `step`, to cross join with.
    pub fn steps(self, n: usize) -> String {
        let numbers: Vec<String> = (1..=n.max(1)).map(|k| k.to_string()).collect();
        match self {
            Dialect::DataFusion => format!("(SELECT * FROM (VALUES ({})) AS v(step))", numbers.join("), (")),
            Dialect::ClickHouse { .. } => format!("(SELECT arrayJoin([{}]) AS step)", numbers.join(", ")),
        }
    }
}
