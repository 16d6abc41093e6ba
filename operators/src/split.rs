//! Typed branches: one stream split into several streams, each of its own record type.
//!
//! [`branches!`] declares the branches as the fields of two structs: a buffer per branch
//! (`Vec<T>`), filled by plain Rust code, and a stream per branch. Routing is a function that puts
//! a record into the buffers it belongs to, usually an exhaustive `match`. A branch that nothing
//! reads, or a record kind with no branch, does not compile; nothing is routed by position, so no
//! record can be dropped by a catch-all arm.

/// Declares a set of typed branches; see the module doc.
///
/// ```ignore
/// branches! {
///     /// What a message contributes to each table.
///     MessageParts => MessageStreams {
///         reactions: (ReactionRow, i64),
///         statuses: (MessageStatusRow, i64),
///     }
/// }
/// let streams = MessageParts::split(stream, "SplitMessages", |record, parts| match record { … });
/// ```
macro_rules! branches {
    ($(#[$doc:meta])* $parts:ident => $streams:ident {
        $($(#[$field_doc:meta])* $field:ident: $item:ty),+ $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Default)]
        pub struct $parts {
            $($(#[$field_doc])* pub $field: Vec<$item>,)+
        }

        /// One stream per branch.
        pub struct $streams<'s> {
            $(pub $field: timely::dataflow::StreamVec<'s, u64, $item>,)+
        }

        impl $parts {
            /// Splits `stream` into one stream per branch: `route` puts each record into the
            /// branches it belongs to, and each branch's records leave at the record's time.
            pub fn split<'s, D: 'static>(
                stream: timely::dataflow::StreamVec<'s, u64, D>,
                name: &str,
                mut route: impl FnMut(D, &mut $parts) + 'static,
            ) -> $streams<'s> {
                use timely::container::CapacityContainerBuilder;
                use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
                use timely::dataflow::operators::generic::OutputBuilder;
                let mut builder = OperatorBuilder::new(name.to_owned(), stream.scope());
                let mut input = builder.new_input(stream, timely::dataflow::channels::pact::Pipeline);
                builder.set_notify_for(0, timely::progress::operate::FrontierInterest::Never);
                $(let $field = builder.new_output::<Vec<$item>>();)+
                let streams = $streams { $($field: $field.1,)+ };
                $(let mut $field = OutputBuilder::<u64, CapacityContainerBuilder<Vec<$item>>>::from($field.0);)+
                builder.build(move |_| {
                    let mut parts = $parts::default();
                    move |_frontiers| {
                        $(let mut $field = $field.activate();)+
                        input.for_each_stamp(|cap, containers| {
                            for container in containers {
                                for record in container.drain(..) {
                                    route(record, &mut parts);
                                }
                            }
                            $(
                                if !parts.$field.is_empty() {
                                    $field.session(&cap).give_container(&mut parts.$field);
                                    parts.$field.clear();
                                }
                            )+
                        });
                    }
                });
                streams
            }
        }
    };
}

pub(crate) use branches;
