//! Consolidated tables: the sum of all updates, each row with a positive multiplicity.

use crate::table::{same_name, Table};
use convoflow_events::Event;
use serde::{Deserialize, Serialize};

/// Rows of one table with their multiplicities; `consolidate` sorts, merges and drops zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection<R> {
    pub updates: Vec<(R, i64)>,
}

impl<R> Default for Collection<R> {
    fn default() -> Self {
        Collection { updates: Vec::new() }
    }
}

impl<R: Ord> Collection<R> {
    pub fn push(&mut self, row: R, diff: i64) {
        self.updates.push((row, diff));
    }

    /// In place: no second copy of the rows, and no sort buffer (rows equal under `Ord` are
    /// identical, so an unstable sort gives the same result).
    pub fn consolidate(&mut self) {
        self.updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.updates.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
        self.updates.retain(|(_, diff)| *diff != 0);
    }

    /// The rows of a consolidated collection, each repeated by its multiplicity (which is 1 for
    /// every table here; a negative one would be a bug and is reported by `negative_rows`).
    pub fn rows(&self) -> impl Iterator<Item = &R> {
        self.updates.iter().flat_map(|(row, diff)| std::iter::repeat_n(row, (*diff).max(0) as usize))
    }

    pub fn negative_rows(&self) -> usize {
        self.updates.iter().filter(|(_, diff)| *diff < 0).count()
    }

    pub fn len(&self) -> usize {
        self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    pub fn extend(&mut self, other: Collection<R>) {
        self.updates.extend(other.updates);
    }

    /// Two consolidated collections as one, consolidated: a linear merge of their sorted runs, in
    /// which a row and its retraction cancel.
    pub fn merge_consolidated(&mut self, other: Collection<R>) {
        if other.updates.is_empty() {
            return;
        }
        if self.updates.is_empty() {
            self.updates = other.updates;
            return;
        }
        let mine = std::mem::take(&mut self.updates);
        let mut merged = Vec::with_capacity(mine.len() + other.updates.len());
        let mut left = mine.into_iter().peekable();
        let mut right = other.updates.into_iter().peekable();
        loop {
            let order = match (left.peek(), right.peek()) {
                (Some(a), Some(b)) => a.0.cmp(&b.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            match order {
                std::cmp::Ordering::Less => merged.extend(left.next()),
                std::cmp::Ordering::Greater => merged.extend(right.next()),
                std::cmp::Ordering::Equal => {
                    if let (Some((row, a)), Some((_, b))) = (left.next(), right.next()) {
                        if a + b != 0 {
                            merged.push((row, a + b));
                        }
                    }
                }
            }
        }
        self.updates = merged;
    }
}

/// The registry of derived tables, in SPEC order: `name: Row => Update variant`. Calls
/// `$callback!` with the list, so every per-table item (`Update`, `TableSet`, the stores' state)
/// is generated from these lines; each row type's columns are its [`table!`](crate::table!)
/// declaration. Adding a table is one line here (see docs/DESIGN.md, "How to add a table").
#[macro_export]
macro_rules! for_each_table {
    ($callback:ident) => {
        $callback! {
            responses: $crate::rows::ResponseRow => Response,
            conversation_cycles: $crate::rows::CycleRow => Cycle,
            message_volume: $crate::rows::VolumeRow => Volume,
            contacts: $crate::rows::ContactRow => Contact,
            retention: $crate::rows::RetentionRow => Retention,
            funnel_progress: $crate::rows::FunnelRow => Funnel,
            attribution: $crate::rows::AttributionRow => Attribution,
            message_status: $crate::rows::MessageStatusRow => MessageStatus,
            reactions: $crate::rows::ReactionRow => Reaction,
            session_health: $crate::rows::SessionHealthRow => SessionHealth,
        }
    };
}

/// What is done with each derived table of a [`TableSet`], whatever its row type.
pub trait Visit {
    fn visit<R: Table + Ord>(&mut self, collection: &Collection<R>);
}

macro_rules! table_set {
    ($($table:ident: $row:ty => $variant:ident),+ $(,)?) => {
        /// One change to one table: a row and its multiplicity change.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum Update {
            Event(Box<Event>),
            $($variant($row, i64),)+
        }

        /// Every table the dataflow maintains.
        #[derive(Clone, Debug, Default)]
        pub struct TableSet {
            /// Accepted events; append-only, never retracted. Kept boxed as they came through the
            /// dataflow: growing a vector of whole events would copy hundreds of MB per worker.
            pub events: Vec<Box<Event>>,
            $(pub $table: Collection<$row>,)+
        }

        impl TableSet {
            pub fn apply(&mut self, update: Update) {
                match update {
                    Update::Event(event) => self.events.push(event),
                    $(Update::$variant(row, diff) => self.$table.push(row, diff),)+
                }
            }

            /// Consolidates the derived tables. `events` is append-only and left in arrival order:
            /// sorting a million wide rows costs more than the rest of a replay's bookkeeping.
            pub fn consolidate(&mut self) {
                $(self.$table.consolidate();)+
            }

            /// Appends a later set of consolidated tables to these (consolidated too), each
            /// table merged on a thread of its own; the result is consolidated.
            pub fn merge_consolidated(&mut self, later: TableSet) {
                let TableSet { events, $($table,)+ } = later;
                self.events.extend(events);
                std::thread::scope(|scope| {
                    $(
                        let table = &mut self.$table;
                        scope.spawn(move || table.merge_consolidated($table));
                    )+
                });
            }

            /// Merges another worker's tables into these; call `consolidate` afterwards.
            pub fn merge(&mut self, other: TableSet) {
                self.events.extend(other.events);
                $(self.$table.extend(other.$table);)+
            }

            /// Rows left with a negative multiplicity in any derived table (a bug if ever non-zero).
            pub fn negative_rows(&self) -> usize {
                0 $(+ self.$table.negative_rows())+
            }

            /// Row counts per table, in SPEC order.
            pub fn counts(&self) -> Vec<(&'static str, usize)> {
                vec![("events", self.events.len()), $((stringify!($table), self.$table.len()),)+]
            }

            /// Visits every derived table, in SPEC order.
            pub fn visit(&self, visitor: &mut impl Visit) {
                $(visitor.visit(&self.$table);)+
            }
        }

        /// The derived tables' names, in SPEC order.
        pub const DERIVED_TABLES: &[&str] = &[$(stringify!($table)),+];

        $(const _: () = assert!(
            same_name(<$row as Table>::NAME, stringify!($table)),
            "a registry line's name differs from its row type's table! name"
        );)+
    };
}

for_each_table!(table_set);
