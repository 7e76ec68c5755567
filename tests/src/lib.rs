//! Placeholder: the behavioural suite arrives with the event-loop issue; nothing here yet.
