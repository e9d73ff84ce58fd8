//! The batch system (being written): mailboxes, router and a fixed pool of pollers.
