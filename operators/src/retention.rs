//! `retention` — SPEC §5.5, weekly cohorts. Cohort = `cohort_week` of `contacts`. A contact is
//! retained in week offset k ≥ 0 when it sent at least one `message.received` in local ISO week
//! `cohort_week + 7k days`. Rows only where `retained > 0`: `tenant_id, cohort_week, week_offset,
//! cohort_size, retained`. Input: the per-contact cohort memberships from `contacts.rs`, whose
//! retractions move a contact between cohorts when an earlier message arrives late.

use crate::reduce::reduce;
use crate::rows::RetentionRow;
use crate::rows::Text;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::dataflow::StreamVec;

#[derive(Default, Serialize, Deserialize)]
pub struct Cohort {
    size: i64,
    retained: BTreeMap<i32, i64>,
}

/// `(tenant_id, cohort_week)`
pub type CohortKey = (Text, i32);

/// A contact joining (+1) or leaving (−1) a cohort (`None`) or its retained set in a week offset.
pub type Membership = (Option<i32>, i64);

pub fn retention<'s>(keyed: StreamVec<'s, u64, (CohortKey, Membership)>) -> StreamVec<'s, u64, (RetentionRow, i64)> {
    reduce(
        keyed,
        "Retention",
        |cohort: &mut Cohort, (week_offset, diff): Membership| match week_offset {
            None => cohort.size += diff,
            Some(k) => *cohort.retained.entry(k).or_default() += diff,
        },
        |(tenant_id, cohort_week): &CohortKey, cohort| {
            cohort
                .retained
                .iter()
                .filter(|(_, &retained)| retained > 0)
                .map(|(&week_offset, &retained)| RetentionRow {
                    tenant_id: tenant_id.clone(),
                    cohort_week: *cohort_week,
                    week_offset,
                    cohort_size: cohort.size,
                    retained,
                })
                .collect()
        },
    )
}
