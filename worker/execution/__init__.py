"""One execution on the Redis side: the rq job function's run, the channels it writes
(events, logs, outcome) and the log shipper that feeds them."""
