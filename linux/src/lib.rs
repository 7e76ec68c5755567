//! Placeholder: the epoll event loop arrives with the event-loop issue; nothing here yet.
